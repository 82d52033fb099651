//! Criterion benchmarks of the core operators: the canonical view end to end
//! (no I/O), serving latency, and the exact accumulator.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lockstep_core::value::{Row, Value};
use lockstep_core::window::exact_sum::ExactSum;
use lockstep_core::{parse_pipeline, Engine};
use lockstep_gen::{GenConfig, Generator};
use std::hint::black_box;
use std::sync::Arc;

const SQL: &str = include_str!("../../../config/ad_features.sql");

fn events(n: u64, users: u64) -> Vec<Row> {
    let cfg = GenConfig {
        events: n,
        users,
        seed: 1,
        ..GenConfig::default()
    };
    Generator::new(cfg)
        .unwrap()
        .map(|e| {
            vec![
                Value::BigInt(e.event_id),
                Value::text(&e.user_id),
                Value::BigInt(e.campaign_id),
                Value::text(e.kind.as_str()),
                Value::text(&e.ip),
                Value::text(&e.user_agent),
                Value::Timestamp(e.event_time_ms),
            ]
        })
        .collect()
}

/// A batch whose equal texts share one string.
fn share_texts(batch: &[Row]) -> Vec<Row> {
    let mut seen: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    batch
        .iter()
        .map(|e| {
            e.iter()
                .map(|v| match v {
                    Value::Text(s) => seen
                        .entry(s.to_string())
                        .or_insert_with(|| v.clone())
                        .clone(),
                    other => other.clone(),
                })
                .collect()
        })
        .collect()
}

fn canonical(c: &mut Criterion) {
    let catalog = Arc::new(parse_pipeline(SQL).unwrap());
    let log = events(200_000, 20_000);
    let mut g = c.benchmark_group("canonical_view");
    g.throughput(Throughput::Elements(log.len() as u64));
    g.sample_size(10);
    g.bench_function("push_200k_events", |b| {
        b.iter_batched(
            || Engine::new(catalog.clone(), &[]).unwrap(),
            |mut engine| {
                let mut out = Vec::with_capacity(1024);
                for e in &log {
                    engine.push(e, &mut out).unwrap();
                    out.clear();
                }
                engine.finish(&mut out);
                black_box(out.len())
            },
            BatchSize::LargeInput,
        )
    });
    // as `lockstep run` drives the engine: batches of 4,096 events prepared
    // at once, equal texts of a batch sharing one string (as the Parquet
    // reader's dictionaries give them)
    let batches: Vec<Vec<Row>> = log.chunks(4096).map(share_texts).collect();
    g.bench_function("push_prepared_200k_events", |b| {
        b.iter_batched(
            || Engine::new(catalog.clone(), &[]).unwrap(),
            |mut engine| {
                let mut out = Vec::with_capacity(1024);
                for batch in &batches {
                    let events: Vec<&[Value]> = batch.iter().map(|e| &e[..]).collect();
                    let prepared = engine.prepare(&events);
                    for (i, e) in events.iter().enumerate() {
                        let shard = engine.shard_of(e);
                        engine.push_prepared(shard, e, &prepared, i, &mut out);
                        out.clear();
                    }
                }
                engine.finish(&mut out);
                black_box(out.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut engine = Engine::new(catalog.clone(), &[]).unwrap();
    let mut out = Vec::new();
    for e in &log {
        engine.push(e, &mut out).unwrap();
        out.clear();
    }
    // the heaviest user: serving cost grows with its window contents
    let probe = log
        .iter()
        .rev()
        .find(|e| e[3] == Value::text("impression"))
        .unwrap()
        .clone();
    c.bench_function("serve_one_request", |b| {
        b.iter(|| black_box(engine.serve(0, &probe).unwrap()))
    });
}

fn exact_sum(c: &mut Criterion) {
    let xs: Vec<f64> = (0..1000).map(|i| (i as f64) * 0.37 - 100.0).collect();
    let mut g = c.benchmark_group("exact_sum");
    g.throughput(Throughput::Elements(xs.len() as u64 * 2));
    g.bench_function("add_then_remove_1000", |b| {
        b.iter(|| {
            let mut s = ExactSum::default();
            for x in &xs {
                s.add(*x);
            }
            for x in &xs {
                s.sub(*x);
            }
            black_box(s.value())
        })
    });
    g.finish();
}

criterion_group!(benches, canonical, exact_sum);
criterion_main!(benches);
