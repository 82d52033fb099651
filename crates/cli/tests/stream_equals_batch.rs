//! The offline path (`lockstep run` over a file) and the streaming path (the
//! engine fed one event at a time, with serving calls interleaved) produce the
//! same rows in the same order, floats bit for bit — over generated logs with
//! out-of-order and late deliveries, through Parquet and JSON lines, for any
//! number of shard worker threads (`lockstep run --threads`).

use lockstep_cli::gen::{generate, GenArgs, CANONICAL_SQL, CANONICAL_VIEW};
use lockstep_cli::run::{run, RunArgs};
use lockstep_core::value::rows_bit_eq;
use lockstep_core::{parse_pipeline, Engine, Outcome, Row};
use lockstep_gen::GenConfig;
use std::path::Path;
use std::sync::Arc;

fn streaming_rows(events: &Path, serve_every: usize) -> (Vec<Row>, u64) {
    let catalog = Arc::new(parse_pipeline(CANONICAL_SQL).unwrap());
    let mut engine = Engine::new(catalog, &[CANONICAL_VIEW]).unwrap();
    let schema = engine.table().schema.clone();
    let mut rows = Vec::new();
    let mut out = Vec::new();
    let mut late = 0;
    for (i, item) in lockstep_io::open_events(events, &schema)
        .unwrap()
        .enumerate()
    {
        let event = item.unwrap().unwrap();
        if i % serve_every == 0 {
            engine.serve(0, &event).unwrap();
        }
        if let Outcome::Late { .. } = engine.push(&event, &mut out).unwrap() {
            late += 1;
        }
        rows.extend(out.drain(..).map(|e| e.row));
    }
    engine.finish(&mut out);
    rows.extend(out.drain(..).map(|e| e.row));
    (rows, late)
}

fn check(seed: u64, input_ext: &str, output_ext: &str, threads: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join(format!("events.{input_ext}"));
    let config = GenConfig {
        events: 30_000,
        users: 300,
        seed,
        out_of_order_fraction: 0.05,
        late_fraction: 0.01,
        ..GenConfig::default()
    };
    generate(&GenArgs {
        config,
        out: events.clone(),
    })
    .unwrap();
    let sql = dir.path().join("p.sql");
    std::fs::write(&sql, CANONICAL_SQL).unwrap();
    let output = dir.path().join(format!("rows.{output_ext}"));
    let summary = run(&RunArgs {
        sql,
        view: CANONICAL_VIEW.into(),
        input: events.clone(),
        output: output.clone(),
        strict: false,
        idempotency_ttl_ms: lockstep_cli::run::DEFAULT_IDEMPOTENCY_TTL_MS,
        now_ms: lockstep_cli::run::wall_clock_ms(),
        threads,
    })
    .unwrap();
    let (stream, late) = streaming_rows(&events, 7);
    assert!(late > 0, "seed {seed}: the log should contain late events");
    assert_eq!(summary.late, late, "seed {seed}: late counts differ");
    let catalog = parse_pipeline(CANONICAL_SQL).unwrap();
    let batch = lockstep_io::read_rows(&output, &catalog.views[0].output).unwrap();
    assert_eq!(batch.len(), stream.len(), "seed {seed}: row counts differ");
    assert!(!batch.is_empty());
    for (i, (b, s)) in batch.iter().zip(&stream).enumerate() {
        assert!(
            rows_bit_eq(b, s),
            "seed {seed}, {threads} threads: row {i} differs:\n batch  {b:?}\n stream {s:?}"
        );
    }
    std::fs::read_to_string(lockstep_io::late_path(&output)).unwrap()
}

#[test]
fn parquet_in_parquet_out() {
    // one worker, two, and seven (an uneven split of the 16 shards)
    for (seed, threads) in [(1, 1), (2, 2), (3, 7)] {
        check(seed, "parquet", "parquet", threads);
    }
}

#[test]
fn jsonl_in_jsonl_out() {
    check(4, "jsonl", "jsonl", 16);
}

#[test]
fn csv_in_parquet_out() {
    check(5, "csv", "parquet", 0);
}

#[test]
fn late_events_file_is_the_same_for_any_thread_count() {
    let one = check(6, "parquet", "jsonl", 1);
    assert!(one.lines().count() > 10, "the log should have late events");
    for threads in [3, 16] {
        assert_eq!(
            check(6, "parquet", "jsonl", threads),
            one,
            "{threads} threads"
        );
    }
}
