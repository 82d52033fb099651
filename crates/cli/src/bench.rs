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

/// Current resident set size of this process (Linux `VmRSS`), in KiB.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What one in-window event and one key cost in memory, measured.
#[derive(Debug, Clone)]
pub struct MemoryReport {
    pub buffered_events: u64,
    pub partitions: u64,
    pub held_rows: u64,
    pub rss_delta_bytes: u64,
}

/// Feeds the canonical view `events` generated events over `users` users
/// (uniform popularity, in order, no late data) and reports the state it holds
/// before the end of input, with the growth of the process's memory.
pub fn measure_state(events: u64, users: u64) -> anyhow::Result<MemoryReport> {
    use lockstep_core::Engine;
    use std::sync::Arc;
    let catalog = Arc::new(crate::pipeline::compile(
        CANONICAL_SQL,
        "canonical pipeline",
    )?);
    let config = GenConfig {
        events,
        users,
        seed: 3,
        zipf_exponent: 0.0,
        out_of_order_fraction: 0.0,
        late_fraction: 0.0,
        bot_fraction: 0.0,
        ..GenConfig::default()
    };
    let log: Vec<_> = lockstep_gen::Generator::new(config)
        .map_err(|e| anyhow::anyhow!(e))?
        .map(crate::gen::to_row)
        .collect();
    let mut engine = Engine::new(catalog, &[CANONICAL_VIEW])?;
    let before = rss_kib().unwrap_or(0);
    let mut out = Vec::new();
    for e in &log {
        engine.push(e, &mut out)?;
        out.clear();
    }
    let after = rss_kib().unwrap_or(0);
    let stats = engine.stats();
    let sum = |f: fn(&lockstep_core::window::ViewStats) -> u64| -> u64 {
        stats.iter().map(|s| f(&s.views[0])).sum()
    };
    Ok(MemoryReport {
        buffered_events: sum(|v| v.buffered_events),
        partitions: sum(|v| v.partitions),
        held_rows: sum(|v| v.pending),
        rss_delta_bytes: after.saturating_sub(before) * 1024,
    })
}

/// `lockstep bench memory`: bytes per in-window event (few keys, many events)
/// and per key (many keys, one event each).
pub fn bench_memory(events: u64) -> anyhow::Result<()> {
    let dense = measure_state(events, 100)?;
    let per_event = dense.rss_delta_bytes as f64 / dense.buffered_events.max(1) as f64;
    println!(
        "dense (100 users): {} buffered event copies, {} partitions, {} held rows, RSS +{} MiB → {:.0} bytes per buffered event copy",
        dense.buffered_events,
        dense.partitions,
        dense.held_rows,
        dense.rss_delta_bytes >> 20,
        per_event
    );
    let sparse = measure_state(events, events)?;
    let per_key = (sparse.rss_delta_bytes as f64 - per_event * sparse.buffered_events as f64)
        / sparse.partitions.max(1) as f64;
    println!(
        "sparse ({} users): {} buffered event copies, {} partitions, {} held rows, RSS +{} MiB → {:.0} bytes per partition beyond its events",
        events,
        sparse.buffered_events,
        sparse.partitions,
        sparse.held_rows,
        sparse.rss_delta_bytes >> 20,
        per_key
    );
    Ok(())
}
