//! Dead-letter output: records the run could not use, kept for inspection.
//!
//! One JSON object per line:
//! `{"kind":"malformed","line":12,"reason":"…","raw":"…"}` (or `"row"` for
//! Parquet input). The file is created on the first record only, so a clean
//! run leaves no empty file behind to puzzle over.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{BadRecord, IoError, Location};
use crate::jsonl::push_json_str;

/// Appends `suffix` to the full file name: `rows.parquet` →
/// `rows.parquet<suffix>`. Keeping the output's own extension in the name
/// ties the side file to its output at a glance.
fn with_suffix(output: &Path, suffix: &str) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Where the dead-letter records for `output` go: `<output>.deadletter.jsonl`.
pub fn dead_letter_path(output: &Path) -> PathBuf {
    with_suffix(output, ".deadletter.jsonl")
}

/// Where late events for `output` go: `<output>.late.jsonl`.
pub fn late_path(output: &Path) -> PathBuf {
    with_suffix(output, ".late.jsonl")
}

/// Writes rejected records as JSON lines, opening the file lazily.
pub struct DeadLetterWriter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    line: Vec<u8>,
    count: u64,
}

impl DeadLetterWriter {
    /// Prepares a writer; nothing is created on disk until the first record.
    pub fn new(path: PathBuf) -> DeadLetterWriter {
        DeadLetterWriter {
            path,
            out: None,
            line: Vec::new(),
            count: 0,
        }
    }

    /// Writes one record. `kind` says why it was rejected, e.g. `"malformed"`
    /// or `"late"`.
    pub fn write(&mut self, kind: &str, bad: &BadRecord) -> Result<(), IoError> {
        let line = &mut self.line;
        line.clear();
        line.extend_from_slice(b"{\"kind\":");
        push_json_str(line, kind);
        let (key, n): (&[u8], u64) = match bad.location {
            Location::Line(n) => (b",\"line\":", n),
            Location::Row(n) => (b",\"row\":", n),
        };
        line.extend_from_slice(key);
        line.extend_from_slice(n.to_string().as_bytes());
        line.extend_from_slice(b",\"reason\":");
        push_json_str(line, &bad.reason);
        line.extend_from_slice(b",\"raw\":");
        push_json_str(line, &bad.raw);
        line.extend_from_slice(b"}\n");

        let out = match &mut self.out {
            Some(out) => out,
            None => {
                let file = File::create(&self.path).map_err(|source| IoError::Create {
                    path: self.path.clone(),
                    source,
                })?;
                self.out.insert(BufWriter::new(file))
            }
        };
        out.write_all(&self.line).map_err(|source| IoError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.count += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes the file (if one was created) and returns the record count.
    pub fn finish(mut self) -> Result<u64, IoError> {
        if let Some(out) = &mut self.out {
            out.flush().map_err(|source| IoError::Write {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(self.count)
    }
}
