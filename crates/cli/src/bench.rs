//! `lockstep bench batch`: end-to-end throughput of the offline path on
//! generated data, with the process's peak memory.

use crate::gen::{GenArgs, CANONICAL_SQL, CANONICAL_VIEW};
use crate::run::{run, RunArgs};
use lockstep_gen::GenConfig;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub events: u64,
    pub users: u64,
    pub dir: PathBuf,
    /// Input format: parquet, jsonl or csv.
    pub format: String,
    /// Reuse an existing input file of the same name.
    pub reuse: bool,
}

pub fn bench_batch(args: &BenchArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let input = args.dir.join(format!(
        "bench-{}-{}.{}",
        args.events, args.users, args.format
    ));
    if !(args.reuse && input.exists()) {
        println!("generating {} events → {}", args.events, input.display());
        crate::gen::generate(&GenArgs {
            config: GenConfig {
                events: args.events,
                users: args.users,
                seed: 7,
                ..GenConfig::default()
            },
            out: input.clone(),
        })?;
    }
    let sql = args.dir.join("ad_features.sql");
    std::fs::write(&sql, CANONICAL_SQL)?;
    let output = args.dir.join("bench-rows.parquet");
    let before = peak_rss_kib();
    let s = run(&RunArgs {
        sql,
        view: CANONICAL_VIEW.into(),
        input,
        output: output.clone(),
        strict: false,
    })?;
    s.print(&output);
    println!(
        "bench batch: {} events, {:.2}s, {:.0} events/s, peak RSS {} MiB (before run {} MiB)",
        s.events_read,
        s.elapsed.as_secs_f64(),
        s.events_per_sec(),
        peak_rss_kib().unwrap_or(0) / 1024,
        before.unwrap_or(0) / 1024
    );
    Ok(())
}

/// Peak resident set size of this process (Linux `VmHWM`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
