//! `lockstep gen`: writes the `ad_events` table of the canonical pipeline with
//! realistic, deterministic data (see the `lockstep-gen` crate).

use anyhow::Context;
use lockstep_core::value::{Row, Value};
use lockstep_gen::{AdEvent, GenConfig, Generator};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The canonical pipeline, compiled into the binary so `gen` and `quickstart`
/// work from any directory.
pub const CANONICAL_SQL: &str = include_str!("../../../config/ad_features.sql");
pub const CANONICAL_VIEW: &str = "user_ad_features";

#[derive(Debug, Clone)]
pub struct GenArgs {
    pub config: GenConfig,
    pub out: PathBuf,
}

/// One generated event as a row of `ad_events` (column order of the table).
pub fn to_row(e: AdEvent) -> Row {
    vec![
        Value::BigInt(e.event_id),
        Value::Text(Arc::from(e.user_id)),
        Value::BigInt(e.campaign_id),
        Value::text(e.kind.as_str()),
        Value::Text(Arc::from(e.ip)),
        Value::Text(Arc::from(e.user_agent)),
        Value::Timestamp(e.event_time_ms),
    ]
}

/// Writes `config.events` events to `out` (.parquet, .jsonl or .csv) and
/// returns how many were written.
pub fn generate(args: &GenArgs) -> anyhow::Result<u64> {
    let gen = Generator::new(args.config.clone())
        .map_err(|e| anyhow::anyhow!("bad generator settings: {e}"))?;
    let catalog = crate::pipeline::compile(CANONICAL_SQL, "canonical pipeline")?;
    let schema = catalog.tables[0].schema.clone();
    if has_ext(&args.out, "csv") {
        let mut w = csv::Writer::from_path(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        w.write_record(schema.columns.iter().map(|c| c.name.as_str()))?;
        let mut n = 0;
        for e in gen {
            w.write_record([
                e.event_id.to_string(),
                e.user_id,
                e.campaign_id.to_string(),
                e.kind.as_str().to_string(),
                e.ip,
                e.user_agent,
                lockstep_core::time::format_rfc3339_ms(e.event_time_ms),
            ])?;
            n += 1;
        }
        w.flush()?;
        return Ok(n);
    }
    let mut w = lockstep_io::create_row_writer(&args.out, &schema)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for e in gen {
        w.write(&to_row(e))?;
    }
    Ok(w.finish()?)
}

fn has_ext(p: &Path, ext: &str) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}
