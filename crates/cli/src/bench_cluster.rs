//! `lockstep bench cluster`: three local lockstepd processes on a Kafka
//! broker, measured for what the cluster promises:
//!
//! 1. **ingest through the broker**: the rate at which the cluster consumes
//!    and processes a preloaded topic, next to the rate a bare rdkafka
//!    consumer (one per partition, as the cluster reads) reads it;
//! 2. **failover**: SIGKILL a node; how long until the failure is detected,
//!    and how long after that each of its shards serves again (through a
//!    surviving node);
//! 3. **graceful drain**: the serving unavailability of each moved shard.
//!
//! The nodes share a local-directory object store (one machine).

use crate::node::LocalNode;
use anyhow::{bail, Context};
use lockstep_api::Client;
use lockstep_log::kafka::{KafkaConfig, KafkaLog, OutRecord};
use serde_json::{json, Value as Json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct ClusterBenchArgs {
    pub brokers: String,
    pub events: u64,
    pub users: u64,
    pub dir: PathBuf,
    /// The nodes' `--checkpoint-interval`.
    pub checkpoint_interval: String,
}

const VIEW_PATH: &str = "/v1/views/user_ad_features/features";

pub(crate) struct Nodes {
    pub(crate) nodes: Vec<LocalNode>,
}

impl Nodes {
    pub(crate) fn cluster(&self, i: usize) -> anyhow::Result<Json> {
        Ok(self.nodes[i].client().get_json("/v1/cluster")?)
    }
}

pub(crate) fn wait(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            bail!("gave up waiting for {what} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub(crate) fn start_node(
    a: &ClusterBenchArgs,
    i: usize,
    seeds: &str,
    topic: &str,
    sql: &std::path::Path,
) -> anyhow::Result<LocalNode> {
    let dir = a.dir.join(format!("node-{}", i + 1));
    std::fs::create_dir_all(&dir)?;
    let id = format!("node-{}", i + 1);
    let objects = format!("file://{}", a.dir.join("objects").display());
    let mut flags = vec![
        ("node-id", id.as_str()),
        ("cluster-secret", "bench-cluster-secret"),
        ("kafka-brokers", a.brokers.as_str()),
        ("kafka-topic", topic),
        ("object-store", objects.as_str()),
    ];
    if !seeds.is_empty() {
        flags.push(("seeds", seeds));
    }
    LocalNode::start_with(&dir, sql, &a.checkpoint_interval, &flags)
}

/// One key per shard, for probing each shard's serving.
fn probe_keys(shards: u32) -> Vec<String> {
    let mut keys = vec![String::new(); shards as usize];
    let mut left = shards;
    let mut i = 0u64;
    while left > 0 {
        let k = format!("probe-{i}");
        let s = lockstep_core::shard::shard_of_bytes(k.as_bytes(), shards) as usize;
        if keys[s].is_empty() {
            keys[s] = k;
            left -= 1;
        }
        i += 1;
    }
    keys
}

fn serves(c: &Client, key: &str) -> bool {
    let body = format!("{{\"user_id\":\"{key}\",\"kind\":\"impression\",\"campaign_id\":1}}");
    matches!(c.request("POST", VIEW_PATH, Some(body.as_bytes()), &[]), Ok(r) if r.status == 200)
}

fn owners(st: &Json) -> Vec<Option<u64>> {
    st["shards"]
        .as_array()
        .map(|s| s.iter().map(|s| s["owner"].as_u64()).collect())
        .unwrap_or_default()
}

/// The shards a node owns.
fn owned_by(st: &Json, node: u64) -> Vec<usize> {
    owners(st)
        .iter()
        .enumerate()
        .filter(|(_, o)| **o == Some(node))
        .map(|(s, _)| s)
        .collect()
}

/// Total processed and partition end over the nodes' own shards.
pub(crate) fn progress(nodes: &Nodes) -> (u64, u64) {
    let (mut p, mut e) = (0, 0);
    for i in 0..nodes.nodes.len() {
        if let Ok(st) = nodes.cluster(i) {
            for s in st["shards"].as_array().into_iter().flatten() {
                p += s["processed"].as_u64().unwrap_or(0);
                e += s["end"].as_u64().unwrap_or(0);
            }
        }
    }
    (p, e)
}

/// What a benchmark on a broker starts from: a fresh `dir` holding the
/// canonical pipeline, its table, and a new topic (named `prefix-…`) for it
/// on `brokers`, connected.
pub(crate) struct BrokerBench {
    pub(crate) sql: PathBuf,
    pub(crate) table: lockstep_core::Table,
    pub(crate) topic: String,
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) log: KafkaLog,
}

pub(crate) fn prepare(
    dir: &std::path::Path,
    brokers: &str,
    prefix: &str,
) -> anyhow::Result<BrokerBench> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let sql = dir.join("ad_features.sql");
    std::fs::write(&sql, crate::gen::CANONICAL_SQL)?;
    let catalog = crate::pipeline::compile(crate::gen::CANONICAL_SQL, "canonical pipeline")?;
    let table = catalog.tables[0].clone();
    let topic = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        lockstep_daemon::clock::now_ms()
    );
    let rt = tokio::runtime::Runtime::new()?;
    let log = rt
        .block_on(KafkaLog::connect(KafkaConfig::new(
            brokers,
            &topic,
            table.shards,
            prefix,
        )))
        .with_context(|| format!("connecting to Kafka at {brokers}"))?;
    Ok(BrokerBench {
        sql,
        table,
        topic,
        rt,
        log,
    })
}

pub fn bench_cluster(a: &ClusterBenchArgs) -> anyhow::Result<()> {
    let BrokerBench {
        sql,
        table,
        topic,
        rt,
        log,
    } = prepare(&a.dir, &a.brokers, "bench")?;
    let shards = table.shards;

    // 1. the cluster, balanced over three nodes, on the empty topic
    let mut nodes = Nodes { nodes: Vec::new() };
    nodes.nodes.push(start_node(a, 0, "", &topic, &sql)?);
    let seeds = nodes.nodes[0].addr.clone();
    for i in 1..3 {
        nodes.nodes.push(start_node(a, i, &seeds, &topic, &sql)?);
    }
    wait_balanced(&nodes, shards)?;

    // 2. the nodes paused (SIGSTOP), the topic is loaded as lockstep's
    // ingest writes it; then they continue and consume it all
    for n in &nodes.nodes {
        n.signal("STOP")?;
    }
    println!("loading {} events into topic {topic} ...", a.events);
    let gen = lockstep_gen::Generator::new(lockstep_gen::GenConfig {
        events: a.events,
        users: a.users,
        seed: 7,
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    let mut batch: Vec<(u32, String, Vec<u8>)> = Vec::new();
    // each partition's end, from the broker's acknowledgements
    let mut ends = vec![0u64; shards as usize];
    let mut flush = |batch: &mut Vec<(u32, String, Vec<u8>)>| -> anyhow::Result<()> {
        let recs: Vec<OutRecord> = batch
            .iter()
            .map(|(s, k, v)| OutRecord {
                shard: *s,
                key: k.as_bytes(),
                value: v,
                bincode: true,
                idempotency: None,
                body_hash: None,
                timestamp_ms: None,
            })
            .collect();
        let offsets = rt.block_on(log.produce(&recs))?;
        for ((s, _, _), o) in batch.iter().zip(offsets) {
            ends[*s as usize] = ends[*s as usize].max(o + 1);
        }
        batch.clear();
        Ok(())
    };
    for e in gen {
        let row = crate::gen::to_row(e);
        batch.push((
            table.shard_of(&row),
            row[table.key].to_string(),
            lockstep_io::raw::encode_event(&row),
        ));
        if batch.len() == 20_000 {
            flush(&mut batch)?;
        }
    }
    flush(&mut batch)?;
    let produce_secs = started.elapsed().as_secs_f64();
    let node_pids: Vec<u32> = nodes.nodes.iter().filter_map(LocalNode::pid).collect();
    let broker_pids = pids_named("tansu");
    let cpu0 = (cpu_seconds(&node_pids), cpu_seconds(&broker_pids));
    let started = Instant::now();
    for n in &nodes.nodes {
        n.signal("CONT")?;
    }
    wait(
        "the cluster to process the topic",
        Duration::from_secs(600),
        || progress(&nodes).0 >= a.events,
    )?;
    let cluster_secs = started.elapsed().as_secs_f64();
    let cluster_rate = a.events as f64 / cluster_secs;
    let cpu = (
        cpu_seconds(&node_pids) - cpu0.0,
        cpu_seconds(&broker_pids) - cpu0.1,
    );
    println!(
        "  CPU while the cluster consumed: the three nodes {:.1} s, the broker on this machine {:.1} s (of {:.1} s × 2 cores)",
        cpu.0, cpu.1, cluster_secs
    );
    let st = nodes.cluster(0)?;
    let still_balanced = (1..=3).all(|n| owners(&st).contains(&Some(n)));

    // 3. a bare rdkafka consumer per partition, in parallel, reads the same
    let started = Instant::now();
    let read: u64 = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..shards)
            .map(|s| {
                let (log, end) = (&log, ends[s as usize]);
                sc.spawn(move || -> anyhow::Result<u64> {
                    let mut r = log.reader(s, 0)?;
                    let mut n = 0u64;
                    while r.position() < end {
                        n += r.poll(10_000, Duration::from_millis(100))?.len() as u64;
                    }
                    Ok(n)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("reader"))
            .sum::<anyhow::Result<u64>>()
    })?;
    let bare_secs = started.elapsed().as_secs_f64();
    if read != a.events {
        bail!("the bare consumer read {read} of {} events", a.events);
    }

    let bare_rate = a.events as f64 / bare_secs;
    println!(
        "ingest through the broker: the cluster processed {} events in {cluster_secs:.2} s = {cluster_rate:.0} events/s{}; a bare rdkafka consumer (one per partition) reads them at {bare_rate:.0} events/s: {:.0}% (loaded at {:.0} events/s)",
        a.events,
        if still_balanced { "" } else { " (the shard map changed meanwhile)" },
        100.0 * cluster_rate / bare_rate,
        a.events as f64 / produce_secs,
    );

    let keys = probe_keys(shards);

    // 4. failover: SIGKILL a follower, restart it; then the leader
    let st = nodes.cluster(0)?;
    let leader = st["leader"].as_u64().unwrap_or(1);
    let victim = (1..=3u64).find(|n| *n != leader).expect("a follower") as usize - 1;
    let survivor = (0..3)
        .find(|i| *i != victim && (*i as u64 + 1) != leader)
        .unwrap_or(0);
    let (detect_s, recover) = failover(&mut nodes, victim, survivor, &keys, "follower")?;
    restart(&mut nodes, a, victim, survivor, &topic, &sql, shards)?;
    let st = nodes.cluster(survivor)?;
    let leader = st["leader"].as_u64().unwrap_or(1) as usize - 1;
    let survivor = (0..3).find(|i| *i != leader).expect("a follower");
    let (leader_detect_s, leader_recover) =
        failover(&mut nodes, leader, survivor, &keys, "leader")?;
    restart(&mut nodes, a, leader, survivor, &topic, &sql, shards)?;

    // 5. drain a node
    let drained = (0..3).find(|i| *i != survivor).expect("another node");
    let drained_id = drained as u64 + 1;
    let st = nodes.cluster(survivor)?;
    let moving = owned_by(&st, drained_id);
    let probe = nodes.nodes[survivor].client();
    probe.post_json(&format!("/v1/cluster/nodes/node-{drained_id}/drain"), b"")?;
    let mut down_since: Vec<Option<Instant>> = vec![None; moving.len()];
    let mut unavailable = vec![0.0f64; moving.len()];
    wait(
        "the drained node to own nothing",
        Duration::from_secs(120),
        || {
            for (i, &s) in moving.iter().enumerate() {
                let ok = serves(&probe, &keys[s]);
                match (ok, down_since[i]) {
                    (false, None) => down_since[i] = Some(Instant::now()),
                    (true, Some(t)) => {
                        unavailable[i] += t.elapsed().as_secs_f64();
                        down_since[i] = None;
                    }
                    _ => {}
                }
            }
            nodes.cluster(survivor).is_ok_and(|st| {
                owners(&st).iter().all(|o| *o != Some(drained_id))
                    && st["shards"]
                        .as_array()
                        .is_some_and(|s| s.iter().all(|s| s["moving_to"].is_null()))
            }) && down_since.iter().all(Option::is_none)
        },
    )?;
    let max_unavail = unavailable.iter().cloned().fold(0.0, f64::max);
    let mean_unavail = unavailable.iter().sum::<f64>() / unavailable.len().max(1) as f64;
    println!(
        "graceful drain of node-{drained_id} ({} shards moved): serving unavailability per moved shard mean {:.3} s, max {:.3} s",
        moving.len(),
        mean_unavail,
        max_unavail
    );
    let report = json!({
        "events": a.events,
        "produce_events_per_s": a.events as f64 / produce_secs,
        "bare_consumer_events_per_s": bare_rate,
        "cluster_events_per_s": cluster_rate,
        "cluster_vs_bare": cluster_rate / bare_rate,
        "cpu_seconds_nodes": cpu.0,
        "cpu_seconds_broker": cpu.1,
        "failover_detect_s": detect_s,
        "failover_recover_after_detect_s": recover,
        "leader_failover_detect_s": leader_detect_s,
        "leader_failover_recover_after_detect_s": leader_recover,
        "drain_unavailable_s": unavailable,
    });
    std::fs::write(
        a.dir.join("cluster-bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("report: {}", a.dir.join("cluster-bench.json").display());
    for n in &mut nodes.nodes {
        n.kill();
    }
    Ok(())
}

/// User + system CPU seconds of processes, from /proc (0 elsewhere).
/// SIGKILLs node `victim` and measures, through node `survivor`: the time
/// until the cluster marks it down (detection), and for each shard it
/// owned, the time from detection until a feature request for a key of that
/// shard succeeds.
fn failover(
    nodes: &mut Nodes,
    victim: usize,
    survivor: usize,
    keys: &[String],
    what: &str,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let st = nodes.cluster(survivor)?;
    let victim_id = victim as u64 + 1;
    let lost = owned_by(&st, victim_id);
    let probe = nodes.nodes[survivor].client();
    let killed = Instant::now();
    nodes.nodes[victim].kill();
    let mut detected = None;
    let mut back: Vec<Option<Instant>> = vec![None; lost.len()];
    wait(
        "the killed node's shards to serve again",
        Duration::from_secs(60),
        || {
            if detected.is_none() {
                if let Ok(st) = nodes.cluster(survivor) {
                    let down = st["nodes"].as_array().is_some_and(|n| {
                        n.iter()
                            .any(|n| n["id"] == victim_id && n["state"] == "down")
                    });
                    if down {
                        detected = Some(Instant::now());
                    }
                }
            }
            for (i, &s) in lost.iter().enumerate() {
                if back[i].is_none() && detected.is_some() && serves(&probe, &keys[s]) {
                    back[i] = Some(Instant::now());
                }
            }
            back.iter().all(Option::is_some)
        },
    )?;
    let detected = detected.expect("detected");
    let detect_s = detected.duration_since(killed).as_secs_f64();
    let recover: Vec<f64> = back
        .iter()
        .map(|b| b.expect("back").duration_since(detected).as_secs_f64())
        .collect();
    println!(
        "failover after SIGKILL of the {what} node-{victim_id} ({} shards): detected in {detect_s:.2} s; its shards served again {:.2}–{:.2} s after detection",
        lost.len(),
        recover.iter().cloned().fold(f64::INFINITY, f64::min),
        recover.iter().cloned().fold(0.0, f64::max)
    );
    Ok((detect_s, recover))
}

/// Restarts node `i` on its data directory (at a new address) and waits
/// until it has its share of shards back.
fn restart(
    nodes: &mut Nodes,
    a: &ClusterBenchArgs,
    i: usize,
    survivor: usize,
    topic: &str,
    sql: &std::path::Path,
    shards: u32,
) -> anyhow::Result<()> {
    nodes.nodes[i] = start_node(a, i, &seeds_of(nodes, i), topic, sql)?;
    let id = i as u64 + 1;
    wait(
        "the restarted node active with shards",
        Duration::from_secs(120),
        || {
            nodes.cluster(survivor).is_ok_and(|st| {
                owners(&st).iter().filter(|o| **o == Some(id)).count() >= shards as usize / 3
                    && st["shards"]
                        .as_array()
                        .is_some_and(|s| s.iter().all(|s| s["moving_to"].is_null()))
            })
        },
    )
}

pub(crate) fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|st| {
            // fields after the parenthesised command name
            let rest = st.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / 100.0
}

/// Processes whose command name is `name` (the local broker, if any).
pub(crate) fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// Waits until every node owns its share and no shard is moving.
pub(crate) fn wait_balanced(nodes: &Nodes, shards: u32) -> anyhow::Result<()> {
    wait("a balanced shard map", Duration::from_secs(120), || {
        nodes.cluster(0).is_ok_and(|st| {
            let o = owners(&st);
            let moving = st["shards"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| !s["moving_to"].is_null()));
            !moving
                && (1..=3).all(|n| {
                    let c = o.iter().filter(|x| **x == Some(n)).count();
                    c >= shards as usize / 3
                })
        })
    })
}

fn seeds_of(nodes: &Nodes, except: usize) -> String {
    nodes
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != except)
        .map(|(_, n)| n.addr.clone())
        .collect::<Vec<_>>()
        .join(",")
}
