//! `lockstep bench`: `batch` measures the offline path end to end on
//! generated data, with the process's peak memory; `memory` the state per
//! event and key; `ingest` and `serve` a running lockstepd over HTTP.

use crate::gen::{GenArgs, CANONICAL_SQL, CANONICAL_VIEW};
use crate::run::{run, RunArgs};
use lockstep_gen::GenConfig;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub events: u64,
    pub users: u64,
    pub dir: PathBuf,
    /// Input format: parquet, jsonl or csv.
    pub format: String,
    /// Reuse an existing input file of the same name.
    pub reuse: bool,
    /// Shard worker threads (0: one per core).
    pub threads: usize,
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
        idempotency_ttl_ms: crate::run::DEFAULT_IDEMPOTENCY_TTL_MS,
        now_ms: crate::run::wall_clock_ms(),
        threads: args.threads,
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
    /// Growth of the live heap (bytes allocated and not freed), when the
    /// binary's allocator counts ([`crate::alloc`]); exact, unlike RSS.
    pub heap_delta_bytes: Option<i64>,
    /// After time moved a day past every event: partitions left and the
    /// live heap still grown by, relative to before the first event.
    pub idle_partitions: u64,
    pub idle_heap_delta_bytes: Option<i64>,
    /// Distinct users in the stream (uniform sampling leaves some of the
    /// nominal ones out).
    pub users_seen: u64,
}

/// True when this process's allocator is [`crate::alloc::Counting`]; starts
/// the count.
fn heap_counts() -> bool {
    crate::alloc::start_counting();
    let probe = std::hint::black_box(vec![1u8; 1 << 20]);
    let ok = crate::alloc::live_bytes() >= 1 << 20;
    drop(probe);
    ok
}

/// Feeds the canonical view `events` generated events over `users` users
/// (uniform popularity, in order, no late data) and reports the state it
/// holds before the end of input, with the growth of the process's memory;
/// then one event per shard a day and a half later, so every key goes idle,
/// and what is left.
pub fn measure_state(events: u64, users: u64) -> anyhow::Result<MemoryReport> {
    use lockstep_core::Engine;
    use lockstep_core::Value;
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
    let mut engine = Engine::new(catalog.clone(), &[CANONICAL_VIEW])?;
    let users_seen = {
        let user = catalog.tables[0]
            .schema
            .index_of("user_id")
            .ok_or_else(|| anyhow::anyhow!("the canonical table has no user_id"))?;
        let seen: std::collections::HashSet<&Value> = log.iter().map(|e| &e[user]).collect();
        seen.len() as u64
    };
    // one far-future event per shard, built before measuring
    let schema = &catalog.tables[0].schema;
    let col = |name: &str| {
        schema
            .index_of(name)
            .ok_or_else(|| anyhow::anyhow!("the canonical table has no {name}"))
    };
    let (user_col, time_col, id_col) = (col("user_id")?, col("event_time")?, col("event_id")?);
    let last = log.last().cloned().unwrap_or_default();
    let later = match last.get(time_col) {
        Some(Value::Timestamp(t)) => t + 36 * 3_600_000,
        _ => 36 * 3_600_000,
    };
    let shards = engine.table().shards as usize;
    let mut wake: Vec<Option<Vec<Value>>> = vec![None; shards];
    for n in 0u64.. {
        if wake.iter().all(Option::is_some) || last.is_empty() {
            break;
        }
        let mut e = last.clone();
        e[user_col] = Value::text(&format!("idle-probe-{n}"));
        e[time_col] = Value::Timestamp(later);
        e[id_col] = Value::BigInt(i64::MAX - n as i64);
        let s = engine.shard_of(&e) as usize;
        wake[s].get_or_insert(e);
    }
    let counts = heap_counts();
    let heap = || counts.then(crate::alloc::live_bytes);
    let (before, heap_before) = (rss_kib().unwrap_or(0), heap());
    let mut out = Vec::new();
    for e in &log {
        engine.push(e, &mut out)?;
        out.clear();
    }
    let (after, heap_after) = (rss_kib().unwrap_or(0), heap());
    let stats = engine.stats();
    let sum = |stats: &[lockstep_core::engine::ShardStats],
               f: fn(&lockstep_core::window::ViewStats) -> u64|
     -> u64 { stats.iter().map(|s| f(&s.views[0])).sum() };
    let mut report = MemoryReport {
        buffered_events: sum(&stats, |v| v.buffered_events),
        partitions: sum(&stats, |v| v.partitions),
        held_rows: sum(&stats, |v| v.pending),
        rss_delta_bytes: after.saturating_sub(before) * 1024,
        heap_delta_bytes: heap_after.zip(heap_before).map(|(a, b)| a - b),
        idle_partitions: 0,
        idle_heap_delta_bytes: None,
        users_seen,
    };
    // every shard sweeps on its next event and forgets the idle partitions
    engine.set_sweep_every(1);
    for e in wake.iter().flatten() {
        engine.push(e, &mut out)?;
        out.clear();
    }
    let stats = engine.stats();
    report.idle_partitions = sum(&stats, |v| v.partitions);
    report.idle_heap_delta_bytes = heap().zip(heap_before).map(|(a, b)| a - b);
    Ok(report)
}

/// `lockstep bench memory`: bytes per in-window event (few keys, many
/// events), per key (many keys, one event each) and per idle key (after
/// every event left the window). Counted on the live heap, with RSS beside.
pub fn bench_memory(events: u64) -> anyhow::Result<()> {
    let dense = measure_state(events, 100)?;
    let copies = dense.buffered_events.max(1) as f64;
    let rss_per_event = dense.rss_delta_bytes as f64 / copies;
    let per_event = dense
        .heap_delta_bytes
        .map_or(rss_per_event, |h| h as f64 / copies);
    println!(
        "dense (100 users): {} buffered event copies, {} partitions, {} held rows; heap +{} MiB, RSS +{} MiB → {:.0} bytes per buffered event copy ({:.0} by RSS)",
        dense.buffered_events,
        dense.partitions,
        dense.held_rows,
        dense.heap_delta_bytes.unwrap_or(0) >> 20,
        dense.rss_delta_bytes >> 20,
        per_event,
        rss_per_event,
    );
    let sparse = measure_state(events, events)?;
    let parts = sparse.partitions.max(1) as f64;
    let beyond = |total: f64| (total - per_event * sparse.buffered_events as f64) / parts;
    let per_key = beyond(
        sparse
            .heap_delta_bytes
            .map_or(sparse.rss_delta_bytes as f64, |h| h as f64),
    );
    println!(
        "sparse ({} users): {} buffered event copies, {} partitions, {} held rows; heap +{} MiB, RSS +{} MiB → {:.0} bytes per partition beyond its events ({:.0} by RSS)",
        events,
        sparse.buffered_events,
        sparse.partitions,
        sparse.held_rows,
        sparse.heap_delta_bytes.unwrap_or(0) >> 20,
        sparse.rss_delta_bytes >> 20,
        per_key,
        beyond(sparse.rss_delta_bytes as f64),
    );
    match sparse.idle_heap_delta_bytes {
        Some(h) => println!(
            "idle ({} distinct users, every event a day and a half old): {} partitions left; heap +{} KiB → {:.0} bytes per idle key (user, with its label partitions' slots)",
            sparse.users_seen,
            sparse.idle_partitions,
            h >> 10,
            h as f64 / sparse.users_seen.max(1) as f64
        ),
        None => println!(
            "idle: {} partitions left (heap not counted in this process)",
            sparse.idle_partitions
        ),
    }
    Ok(())
}

/// `lockstep bench ingest|serve`: against a running node (`--addr`,
/// `--token`), or a fresh local one started for the run.
#[derive(Debug, Clone)]
pub struct NodeBenchArgs {
    pub addr: Option<String>,
    pub token: Option<String>,
    pub events: u64,
    pub users: u64,
    pub batch: usize,
    pub threads: usize,
    pub rate: u64,
    pub seconds: u64,
    pub dir: std::path::PathBuf,
}

fn node_for(
    a: &NodeBenchArgs,
) -> anyhow::Result<(Option<crate::node::LocalNode>, lockstep_api::Client)> {
    match &a.addr {
        Some(addr) => {
            let token = a
                .token
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--addr needs --token (or LOCKSTEP_TOKEN)"))?;
            Ok((None, lockstep_api::Client::new(addr, &token)))
        }
        None => {
            let dir = a.dir.join("bench-node");
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(&dir)?;
            let sql = dir.join("ad_features.sql");
            std::fs::write(&sql, crate::gen::CANONICAL_SQL)?;
            let node = crate::node::LocalNode::start(&dir, &sql, "5 seconds")?;
            println!(
                "started lockstepd at {} (data in {})",
                node.addr,
                node.data_dir.display()
            );
            let c = node.client();
            Ok((Some(node), c))
        }
    }
}

/// Generated events as JSON-lines request bodies of `batch` events, in
/// `lanes` lanes: lane k holds the shards s with s % lanes == k, in event
/// order, as producers keyed by user would send them.
fn bodies(
    events: u64,
    users: u64,
    batch: usize,
    seed: u64,
    lanes: usize,
) -> anyhow::Result<Vec<Vec<String>>> {
    let catalog = crate::pipeline::compile(crate::gen::CANONICAL_SQL, "canonical pipeline")?;
    let schema = catalog.tables[0].schema.clone();
    let gen = lockstep_gen::Generator::new(lockstep_gen::GenConfig {
        events,
        users,
        seed,
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let table = &catalog.tables[0];
    let lanes = lanes.max(1);
    let mut out = vec![Vec::new(); lanes];
    let mut cur = vec![String::new(); lanes];
    let mut n = vec![0; lanes];
    for e in gen {
        let row = crate::gen::to_row(e);
        let k = table.shard_of(&row) as usize % lanes;
        cur[k].push_str(&lockstep_io::render_json(&row, &schema));
        cur[k].push('\n');
        n[k] += 1;
        if n[k] == batch {
            out[k].push(std::mem::take(&mut cur[k]));
            n[k] = 0;
        }
    }
    for k in 0..lanes {
        if n[k] > 0 {
            out[k].push(std::mem::take(&mut cur[k]));
        }
    }
    Ok(out)
}

/// One connection per lane, each sending its lane's bodies in order
/// (a `503` is retried: `node::send_events`).
fn send_all(c: &lockstep_api::Client, lanes: &[Vec<String>]) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        let hs: Vec<_> = lanes
            .iter()
            .map(|lane| {
                s.spawn(move || -> anyhow::Result<()> {
                    for b in lane {
                        crate::node::send_events(c, "ad_events", b.as_bytes())?;
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter()
            .try_for_each(|h| h.join().expect("sender thread"))
    })
}

pub fn bench_ingest(a: &NodeBenchArgs) -> anyhow::Result<()> {
    let (node, c) = node_for(a)?;
    println!(
        "encoding {} events as JSON lines, {} per request",
        a.events, a.batch
    );
    let bodies = bodies(a.events, a.users, a.batch, 42, a.threads)?;
    println!(
        "sending with {} connections (each owns a set of shards and keeps their order)",
        a.threads
    );
    let start = Instant::now();
    send_all(&c, &bodies)?;
    let acked = start.elapsed().as_secs_f64();
    crate::node::wait_caught_up(&c)?;
    let processed = start.elapsed().as_secs_f64();
    println!(
        "ingest: {} events acknowledged (durable in the log) in {:.2} s = {:.0} events/s; processed by the shard actors in {:.2} s = {:.0} events/s",
        a.events,
        acked,
        a.events as f64 / acked,
        processed,
        a.events as f64 / processed
    );
    let st = c.get_json("/v1/status")?;
    println!(
        "node: {} events in state, {} late, lag {}",
        st["events"], st["late"], st["lag"]
    );
    drop(node);
    Ok(())
}

pub fn bench_serve(a: &NodeBenchArgs) -> anyhow::Result<()> {
    let (node, c) = node_for(a)?;
    if node.is_some() && a.events > 0 {
        println!("loading {} events so the keys have state", a.events);
        send_all(&c, &bodies(a.events, a.users, a.batch, 7, a.threads)?)?;
        crate::node::wait_caught_up(&c)?;
        // the bulk load's first checkpoint writes every partition; take it
        // now so the run measures the steady state
        c.post_json("/v1/checkpoint", b"")?;
    }
    let threads = a.threads.max(1);
    let per_thread = (a.rate as f64 / threads as f64).max(1.0);
    let interval = std::time::Duration::from_secs_f64(1.0 / per_thread);
    let total = (per_thread * a.seconds as f64) as u64;
    println!(
        "serving: {} requests/s for {} s ({} connections, open loop: latency counts from the scheduled send time)",
        a.rate, a.seconds, threads
    );
    let lat = std::sync::Mutex::new(Vec::new());
    let errors = std::sync::atomic::AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (c, lat, errors) = (c.clone(), &lat, &errors);
            let users = a.users.max(1);
            s.spawn(move || {
                let mut mine = Vec::with_capacity(total as usize);
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
                let offset = interval.mul_f64(t as f64 / threads as f64);
                for i in 0..total {
                    let due = start + offset + interval.mul_f64(i as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = format!("/v1/views/user_ad_features/keys/u{:06}", x % users + 1);
                    match c.request("GET", &key, None, &[]) {
                        Ok(r) if r.status == 200 => mine.push(due.elapsed().as_secs_f64() * 1e3),
                        _ => {
                            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                lat.lock().unwrap().extend(mine);
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let mut lat = lat.into_inner().unwrap();
    lat.sort_by(f64::total_cmp);
    let p = |q| crate::quickstart::percentile(&lat, q);
    let node_side = node_serving_percentiles(&c)?;
    println!(
        "serve: {} ok, {} errors, {:.0} requests/s achieved; latency p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.3} ms",
        lat.len(),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        lat.len() as f64 / secs,
        p(0.5),
        p(0.99),
        p(0.999),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    if let Some((p50, p99, p999)) = node_side {
        println!(
            "inside the node (request in to reply out, all serving since it started; histogram bucket bounds): p50 <= {p50:.3} ms, p99 <= {p99:.3} ms, p999 <= {p999:.3} ms"
        );
    }
    drop(node);
    Ok(())
}

/// Serving latency percentiles from the node's own histogram (ms, bucket
/// upper bounds).
fn node_serving_percentiles(c: &lockstep_api::Client) -> anyhow::Result<Option<(f64, f64, f64)>> {
    // the node's own view: time from request to reply inside lockstepd
    let m = c.request("GET", "/metrics", None, &[])?;
    let text = String::from_utf8_lossy(&m.body);
    let mut buckets = Vec::new();
    let mut count = 0.0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("lockstep_serving_latency_seconds_bucket{le=\"") {
            if let Some((le, n)) = rest.split_once("\"} ") {
                if let (Ok(le), Ok(n)) = (le.parse::<f64>(), n.trim().parse::<f64>()) {
                    buckets.push((le, n));
                }
            }
        } else if let Some(n) = line.strip_prefix("lockstep_serving_latency_seconds_count ") {
            count = n.trim().parse().unwrap_or(0.0);
        }
    }
    let le = |q: f64| {
        buckets
            .iter()
            .find(|(_, n)| *n >= q * count)
            .map_or(f64::NAN, |(le, _)| le * 1e3)
    };
    Ok((count > 0.0).then(|| (le(0.5), le(0.99), le(0.999))))
}
