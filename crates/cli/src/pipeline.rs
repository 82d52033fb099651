//! Loading a pipeline file with errors that name the file, line and column.

use anyhow::{anyhow, Context};
use lockstep_core::{parse_pipeline, Catalog};
use std::path::Path;

/// Reads and compiles a `.sql` pipeline file.
pub fn load(path: &Path) -> anyhow::Result<Catalog> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read pipeline file {}", path.display()))?;
    compile(&text, &path.display().to_string())
}

/// Compiles pipeline text; `origin` names it in errors.
pub fn compile(text: &str, origin: &str) -> anyhow::Result<Catalog> {
    parse_pipeline(text).map_err(|e| {
        let line_text = text
            .lines()
            .nth(e.line.saturating_sub(1) as usize)
            .unwrap_or("");
        let caret = " ".repeat(e.column.saturating_sub(1) as usize);
        anyhow!(
            "{origin}:{}:{}: {}\n  {line_text}\n  {caret}^",
            e.line,
            e.column,
            e.message
        )
    })
}
