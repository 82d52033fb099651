//! `lockstep quickstart`: the first-hour demo, on the real daemon. Starts
//! lockstepd on the embedded default (embedded log, local-directory object
//! store), streams generated events into it over HTTP while serving
//! features, then checks that the three ways of getting a row agree:
//! served features == committed training rows == a backfill over the
//! archived log == `lockstep run` over the same events.

use crate::gen::{to_row, CANONICAL_SQL, CANONICAL_VIEW};
use crate::node::{wait_caught_up, LocalNode};
use anyhow::{bail, Context};
use lockstep_core::value::{rows_bit_eq, Row, Value};
use lockstep_core::Engine;
use lockstep_gen::{GenConfig, Generator};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct QuickstartArgs {
    pub dir: PathBuf,
    pub events: u64,
    pub users: u64,
    pub seed: u64,
    /// Every Nth event is sent through serve-and-ingest (its features come
    /// back and are checked against its training row).
    pub serve_every: u64,
}

#[derive(Debug, Clone)]
pub struct QuickstartReport {
    pub events: u64,
    pub rows: u64,
    pub served_checked: u64,
    pub ingest_events_per_sec: f64,
    pub serve_p50_ms: f64,
    pub serve_p99_ms: f64,
    pub identical: bool,
}

const SENDERS: usize = 3;
const BATCH: usize = 5000;

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn quickstart(args: &QuickstartArgs) -> anyhow::Result<QuickstartReport> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let node_dir = args.dir.join("node");
    if node_dir.exists() {
        std::fs::remove_dir_all(&node_dir)
            .with_context(|| format!("cannot clear {}", node_dir.display()))?;
    }
    let sql_path = args.dir.join("ad_features.sql");
    std::fs::write(&sql_path, CANONICAL_SQL)?;
    let catalog = Arc::new(crate::pipeline::compile(
        CANONICAL_SQL,
        "canonical pipeline",
    )?);
    let table = catalog.tables[0].clone();
    let view = catalog
        .view(CANONICAL_VIEW)
        .expect("canonical view")
        .1
        .clone();

    println!(
        "1/5 generating {} ad events for {} users (seed {})",
        args.events, args.users, args.seed
    );
    let gen = Generator::new(GenConfig {
        events: args.events,
        users: args.users,
        seed: args.seed,
        ..GenConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("bad generator settings: {e}"))?;
    let events: Vec<Row> = gen.map(to_row).collect();
    let events_path = args.dir.join("events.parquet");
    let mut w = lockstep_io::create_row_writer(&events_path, &table.schema)?;
    for e in &events {
        w.write(e)?;
    }
    w.finish()?;

    println!("2/5 starting lockstepd (embedded log, local object store)");
    let mut node = LocalNode::start(&args.dir, &sql_path, "2 seconds")?;
    let client = node.client();
    println!(
        "    http://{}  data {}  log {}",
        node.addr,
        node.data_dir.display(),
        node.log.display()
    );

    println!(
        "3/5 streaming the events over HTTP ({SENDERS} producers, batches of {BATCH}, keyed by user so each shard keeps file order), serving features meanwhile"
    );
    // each producer owns the shards s with s % SENDERS == k, in file order
    let mut lanes: Vec<Vec<(usize, &Row)>> = vec![Vec::new(); SENDERS];
    for (i, e) in events.iter().enumerate() {
        lanes[table.shard_of(e) as usize % SENDERS].push((i, e));
    }
    let served: Mutex<Vec<(Value, serde_json::Value)>> = Mutex::new(Vec::new());
    let latencies: Mutex<Vec<f64>> = Mutex::new(Vec::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for lane in &lanes {
            let (client, served, schema) = (client.clone(), &served, &table.schema);
            let every = args.serve_every;
            handles.push(s.spawn(move || -> anyhow::Result<()> {
                let mut body = String::new();
                let mut n = 0;
                let flush = |body: &mut String, n: &mut usize| -> anyhow::Result<()> {
                    if *n > 0 {
                        crate::node::send_events(&client, "ad_events", body.as_bytes())?;
                        body.clear();
                        *n = 0;
                    }
                    Ok(())
                };
                for &(i, e) in lane {
                    let json = lockstep_io::render_json(e, schema);
                    if every > 0 && (i as u64).is_multiple_of(every) {
                        flush(&mut body, &mut n)?;
                        let f = client.post_json(
                            &format!("/v1/views/{CANONICAL_VIEW}/features?ingest=true"),
                            json.as_bytes(),
                        )?;
                        // null when its shard restarted meanwhile (still ingested)
                        if !f["features"].is_null() {
                            served
                                .lock()
                                .unwrap()
                                .push((e[0].clone(), f["features"].clone()));
                        }
                        continue;
                    }
                    body.push_str(&json);
                    body.push('\n');
                    n += 1;
                    if n == BATCH {
                        flush(&mut body, &mut n)?;
                    }
                }
                flush(&mut body, &mut n)
            }));
        }
        // a model asking for features while the stream goes in
        let reader = {
            let (client, latencies, done, users) = (client.clone(), &latencies, &done, args.users);
            s.spawn(move || {
                let mut k = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    k = (k * 7919 + 13) % users.max(1);
                    let t = Instant::now();
                    let ok = client
                        .request(
                            "GET",
                            &format!("/v1/views/{CANONICAL_VIEW}/keys/u{:06}", k + 1),
                            None,
                            &[],
                        )
                        .is_ok_and(|r| r.status == 200);
                    if ok {
                        latencies
                            .lock()
                            .unwrap()
                            .push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let mut result = Ok(());
        for h in handles {
            if let Err(e) = h.join().expect("producer thread") {
                result = Err(e);
            }
        }
        if result.is_ok() {
            result = wait_caught_up(&client);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().expect("serving thread");
        result
    })?;
    let ingest_secs = start.elapsed().as_secs_f64();

    println!("4/5 checkpoint, export of the committed training rows, backfill over the archive");
    client.post_json("/v1/checkpoint", b"")?;
    let training = args.dir.join("training.parquet");
    let exp = lockstep_offline::export(&client, CANONICAL_VIEW, &training)?;
    let backfill_path = args.dir.join("backfill.parquet");
    let bf_start = Instant::now();
    let bf = lockstep_offline::backfill(
        &client,
        CANONICAL_VIEW,
        None,
        None,
        &backfill_path,
        &mut |_, _| {},
    )?;
    let bf_secs = bf_start.elapsed().as_secs_f64();

    println!("5/5 parity checks");
    let online = lockstep_io::read_rows(&training, &view.output)?;
    let backfilled = lockstep_io::read_rows(&backfill_path, &view.output)?;
    let same = |a: &[Row], b: &[Row]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| rows_bit_eq(x, y))
    };
    let training_eq_backfill = same(&online, &backfilled);
    // `lockstep run`'s engine over the same events, per shard, without the
    // end-of-input flush (rows still waiting for labels are not final online)
    let mut engine = Engine::new(catalog.clone(), &[CANONICAL_VIEW])?;
    let mut out = Vec::new();
    let mut per_shard: Vec<Vec<Row>> = vec![Vec::new(); table.shards as usize];
    for e in &events {
        engine.push(e, &mut out)?;
        for em in out.drain(..) {
            per_shard[em.shard as usize].push(em.row);
        }
    }
    let batch: Vec<Row> = per_shard.into_iter().flatten().collect();
    let training_eq_batch = same(&online, &batch);
    let served = served.into_inner().unwrap();
    let mut served_checked = 0u64;
    let mut served_mismatch = 0u64;
    for (id, features) in &served {
        let Some(row) = online.iter().find(|r| &r[0] == id) else {
            continue; // its label is not final yet
        };
        served_checked += 1;
        let row_json: serde_json::Value =
            serde_json::from_str(&lockstep_io::render_json(row, &view.output))?;
        let agree = view.output.columns.iter().enumerate().all(|(i, c)| {
            view.label_columns.contains(&i) || features[&c.name] == row_json[&c.name]
        });
        if !agree {
            served_mismatch += 1;
        }
    }
    let served_eq = served_mismatch == 0 && served_checked > 0;
    let mut lat = latencies.into_inner().unwrap();
    lat.sort_by(f64::total_cmp);
    node.stop()?;

    let yes = |b: bool| if b { "yes" } else { "NO" };
    let report = QuickstartReport {
        events: args.events,
        rows: online.len() as u64,
        served_checked,
        ingest_events_per_sec: args.events as f64 / ingest_secs,
        serve_p50_ms: percentile(&lat, 0.5),
        serve_p99_ms: percentile(&lat, 0.99),
        identical: training_eq_backfill && training_eq_batch && served_eq,
    };
    println!();
    println!(
        "events ingested         {} in {:.1} s: {:.0} events/s over HTTP, durable and processed",
        args.events, ingest_secs, report.ingest_events_per_sec
    );
    println!(
        "serving while ingesting {} lookups: p50 {:.2} ms, p99 {:.2} ms (HTTP round trip)",
        lat.len(),
        report.serve_p50_ms,
        report.serve_p99_ms
    );
    println!(
        "training rows           {} committed ({} segments)",
        exp.rows, exp.segments
    );
    println!(
        "backfill                {} events replayed in {:.1} s → {} rows",
        bf.events, bf_secs, bf.rows
    );
    println!(
        "served == training      {} ({} served-and-ingested events with final rows checked)",
        yes(served_eq),
        served_checked
    );
    println!("training == backfill    {}", yes(training_eq_backfill));
    println!("training == lockstep run {}", yes(training_eq_batch));
    println!("files");
    println!("  events                {}", events_path.display());
    println!("  training rows         {}", training.display());
    println!("  backfill rows         {}", backfill_path.display());
    println!("  node data             {}", node.data_dir.display());
    println!(
        "  object store          {}",
        node.data_dir.join("objects").display()
    );
    println!("  node log              {}", node.log.display());
    if !report.identical {
        bail!(
            "parity failed: served {}, training == backfill {}, training == batch {}",
            yes(served_eq),
            yes(training_eq_backfill),
            yes(training_eq_batch)
        );
    }
    Ok(report)
}
