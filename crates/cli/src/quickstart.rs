//! `lockstep quickstart`: the first-hour demo. Generates a stream, runs the
//! canonical view through the streaming path (one event at a time, with
//! serving calls interleaved) and through the batch path (`lockstep run` over
//! a Parquet file), checks the two agree row for row, bit for bit, and leaves
//! the training set as Parquet.

use crate::gen::{GenArgs, CANONICAL_SQL, CANONICAL_VIEW};
use crate::run::{run, RunArgs};
use anyhow::{bail, Context};
use lockstep_core::value::rows_bit_eq;
use lockstep_core::{Emitted, Engine, Row};
use lockstep_gen::GenConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct QuickstartArgs {
    pub dir: PathBuf,
    pub events: u64,
    pub users: u64,
    pub seed: u64,
    /// Serve features for the next event before ingesting every Nth event.
    pub serve_every: u64,
}

#[derive(Debug, Clone)]
pub struct QuickstartReport {
    pub events: u64,
    pub rows: u64,
    pub late: u64,
    pub served: u64,
    pub stream_events_per_sec: f64,
    pub batch_events_per_sec: f64,
    pub identical: bool,
    pub training: PathBuf,
}

pub fn quickstart(args: &QuickstartArgs) -> anyhow::Result<QuickstartReport> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let sql_path = args.dir.join("ad_features.sql");
    std::fs::write(&sql_path, CANONICAL_SQL)?;
    let events_path = args.dir.join("events.parquet");
    println!(
        "1/4 generating {} ad events for {} users (seed {}) → {}",
        args.events,
        args.users,
        args.seed,
        events_path.display()
    );
    crate::gen::generate(&GenArgs {
        config: GenConfig {
            events: args.events,
            users: args.users,
            seed: args.seed,
            ..GenConfig::default()
        },
        out: events_path.clone(),
    })?;

    println!("2/4 streaming path: one event at a time through the engine, serving features every {} events", args.serve_every);
    let catalog = Arc::new(crate::pipeline::compile(
        CANONICAL_SQL,
        "canonical pipeline",
    )?);
    let mut engine = Engine::new(catalog.clone(), &[CANONICAL_VIEW])?;
    let schema = engine.table().schema.clone();
    let mut stream_rows: Vec<Row> = Vec::new();
    let mut out: Vec<Emitted> = Vec::new();
    let mut served = 0u64;
    let mut late = 0u64;
    let start = Instant::now();
    for (i, item) in lockstep_io::open_events(&events_path, &schema)?.enumerate() {
        let Ok(event) = item? else { continue };
        if args.serve_every > 0 && (i as u64).is_multiple_of(args.serve_every) {
            engine.serve(0, &event)?;
            served += 1;
        }
        if let lockstep_core::Outcome::Late { .. } = engine.push(&event, &mut out)? {
            late += 1;
        }
        stream_rows.extend(out.drain(..).map(|e| e.row));
    }
    engine.finish(&mut out);
    stream_rows.extend(out.drain(..).map(|e| e.row));
    let stream_secs = start.elapsed().as_secs_f64();

    let training = args.dir.join("training.parquet");
    println!(
        "3/4 batch path: lockstep run --sql {} --view {CANONICAL_VIEW} --input {} --output {}",
        sql_path.display(),
        events_path.display(),
        training.display()
    );
    let summary = run(&RunArgs {
        sql: sql_path,
        view: CANONICAL_VIEW.to_string(),
        input: events_path,
        output: training.clone(),
        strict: false,
    })?;

    println!("4/4 comparing the two paths row by row");
    let out_schema = catalog.views[0].output.clone();
    let batch_rows = lockstep_io::read_rows(&training, &out_schema)?;
    let identical = batch_rows.len() == stream_rows.len()
        && batch_rows
            .iter()
            .zip(&stream_rows)
            .all(|(a, b)| rows_bit_eq(a, b));
    let report = QuickstartReport {
        events: args.events,
        rows: summary.rows,
        late,
        served,
        stream_events_per_sec: args.events as f64 / stream_secs.max(1e-9),
        batch_events_per_sec: summary.events_per_sec(),
        identical,
        training,
    };
    println!();
    println!("events            {}", report.events);
    println!(
        "training rows     {} (impressions with features and a 15-minute click label)",
        report.rows
    );
    println!(
        "late events       {} (in {})",
        report.late,
        summary
            .late_path
            .as_ref()
            .map_or("-".into(), |p| p.display().to_string())
    );
    println!("serving calls     {}", report.served);
    println!(
        "streaming path    {:.0} events/s",
        report.stream_events_per_sec
    );
    println!(
        "batch path        {:.0} events/s (Parquet in, Parquet out)",
        report.batch_events_per_sec
    );
    println!(
        "stream == batch   {}",
        if identical {
            "yes: every row identical, floats bit for bit"
        } else {
            "NO"
        }
    );
    println!("training set      {}", report.training.display());
    if !identical {
        bail!(
            "the streaming and batch paths disagree ({} vs {} rows)",
            stream_rows.len(),
            batch_rows.len()
        );
    }
    Ok(report)
}
