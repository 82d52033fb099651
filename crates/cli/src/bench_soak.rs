//! `lockstep bench soak`: three local lockstepd processes on a Kafka
//! broker, checkpointing every 100 ms under a steady trickle of events for
//! a set time, sampled for what must stay flat over a month: the
//! replicated state's size, the time an apply takes, the control-plane
//! snapshot's size and the Raft log kept, and the nodes' memory.
//!
//! At 100 ms, 30 minutes hold as many checkpoint rounds as a day at the
//! default 5 s (17,280).

use crate::bench_cluster::{
    cpu_seconds, pids_named, prepare, progress, start_node, wait, wait_balanced, BrokerBench,
    ClusterBenchArgs, Nodes,
};
use lockstep_log::kafka::OutRecord;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct SoakArgs {
    pub brokers: String,
    /// How long to run.
    pub seconds: u64,
    /// Events per second produced into the topic.
    pub rate: u64,
    pub users: u64,
    /// The nodes' `--checkpoint-interval`.
    pub checkpoint_interval: String,
    /// Seconds between samples.
    pub sample_every: u64,
    pub dir: PathBuf,
}

/// Checkpoint rounds in a day at the default interval (5 s).
const DAY_OF_ROUNDS: f64 = 86_400.0 / 5.0;

/// One node's `/metrics`: plain samples by name (labels kept in the name),
/// the apply histogram's buckets by bound.
#[derive(Default, Clone)]
struct Scrape {
    values: BTreeMap<String, f64>,
    apply_buckets: BTreeMap<u64, f64>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            if let Some(le) = name
                .strip_prefix("lockstep_raft_apply_seconds_bucket{le=\"")
                .and_then(|r| r.strip_suffix("\"}"))
            {
                // bounds as integer nanoseconds, so they order and add up
                let bound = if le == "+Inf" {
                    u64::MAX
                } else {
                    le.parse::<f64>().map_or(u64::MAX, |b| (b * 1e9) as u64)
                };
                s.apply_buckets.insert(bound, v);
            } else {
                s.values.insert(name.to_string(), v);
            }
        }
        s
    }

    fn get(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0)
    }

    /// The nodes' scrapes added up (histograms and counters).
    fn sum(all: &[Scrape]) -> Scrape {
        let mut s = Scrape::default();
        for one in all {
            for (k, v) in &one.values {
                *s.values.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &one.apply_buckets {
                *s.apply_buckets.entry(*k).or_default() += v;
            }
        }
        s
    }
}

/// The mean and 99th percentile (a bucket's upper bound) of the applies
/// between two summed scrapes, in microseconds.
fn apply_between(before: &Scrape, after: &Scrape) -> (f64, f64, f64) {
    let n = after.get("lockstep_raft_apply_seconds_count")
        - before.get("lockstep_raft_apply_seconds_count");
    if n <= 0.0 {
        return (0.0, 0.0, 0.0);
    }
    let sum = after.get("lockstep_raft_apply_seconds_sum")
        - before.get("lockstep_raft_apply_seconds_sum");
    let mut p99 = f64::INFINITY;
    for (bound, cum) in &after.apply_buckets {
        let prev = before.apply_buckets.get(bound).copied().unwrap_or(0.0);
        if cum - prev >= 0.99 * n {
            p99 = if *bound == u64::MAX {
                f64::INFINITY
            } else {
                *bound as f64 / 1e3
            };
            break;
        }
    }
    (n, sum / n * 1e6, p99)
}

/// Resident memory of a process, MiB (0 when unknown).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

pub fn bench_soak(a: &SoakArgs) -> anyhow::Result<()> {
    if a.rate < 10 || a.seconds == 0 || a.sample_every == 0 {
        anyhow::bail!(
            "bench soak needs --rate of at least 10 events/s, --seconds and --sample-every above 0"
        );
    }
    let BrokerBench {
        sql,
        table,
        topic,
        rt: _rt,
        log,
    } = prepare(&a.dir, &a.brokers, "soak")?;
    let shards = table.shards;
    let cargs = ClusterBenchArgs {
        brokers: a.brokers.clone(),
        events: 0,
        users: a.users,
        dir: a.dir.clone(),
        checkpoint_interval: a.checkpoint_interval.clone(),
    };
    let mut nodes = Nodes { nodes: Vec::new() };
    nodes.nodes.push(start_node(&cargs, 0, "", &topic, &sql)?);
    let seeds = nodes.nodes[0].addr.clone();
    for i in 1..3 {
        nodes
            .nodes
            .push(start_node(&cargs, i, &seeds, &topic, &sql)?);
    }
    wait_balanced(&nodes, shards)?;
    println!(
        "soak: 3 nodes, checkpoint interval {}, {} events/s into topic {topic} for {} s (a day of 5 s checkpoints is {} rounds)",
        a.checkpoint_interval, a.rate, a.seconds, DAY_OF_ROUNDS
    );
    println!(
        "rounds: shard checkpoints / shards; ckpt_ms: a shard checkpoint's mean duration; state and snapshot bytes, log entries kept: the largest over the members; applies: batches applied over the interval, summed over the three members; apply mean and p99 (a bucket's upper bound) over those; rss: the three nodes"
    );

    // the trickle: every 100 ms a tenth of the rate, as lockstep's ingest
    // writes records
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producer = {
        let (stop, produced, log, table) =
            (stop.clone(), produced.clone(), log.clone(), table.clone());
        let (rate, users, seconds) = (a.rate, a.users, a.seconds);
        std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut gen = lockstep_gen::Generator::new(lockstep_gen::GenConfig {
                events: rate.saturating_mul(seconds + 60),
                users,
                seed: 11,
                ..Default::default()
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut next = Instant::now();
            // tick k brings the total to rate * k / 10 (no rounding lost)
            let (mut ticks, mut sent) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                ticks += 1;
                let due = (rate * ticks / 10).saturating_sub(sent) as usize;
                sent += due as u64;
                let batch: Vec<(u32, String, Vec<u8>)> = gen
                    .by_ref()
                    .take(due)
                    .map(|e| {
                        let row = crate::gen::to_row(e);
                        (
                            table.shard_of(&row),
                            row[table.key].to_string(),
                            lockstep_io::raw::encode_event(&row),
                        )
                    })
                    .collect();
                if batch.is_empty() && due > 0 {
                    break;
                }
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
                if !recs.is_empty() {
                    rt.block_on(log.produce(&recs))?;
                }
                produced.fetch_add(recs.len() as u64, Ordering::Relaxed);
                next += Duration::from_millis(100);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            Ok(())
        })
    };

    // each node's scrape; one that fails keeps the node's last (so its
    // counters neither drop nor jump in the sums)
    let scrape_all = |nodes: &Nodes, last: &[Scrape]| -> Vec<Scrape> {
        nodes
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                n.client()
                    .request("GET", "/metrics", None, &[])
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(|r| Scrape::parse(&String::from_utf8_lossy(&r.body)))
                    .or_else(|| last.get(i).cloned())
                    .unwrap_or_default()
            })
            .collect()
    };
    let node_pids: Vec<u32> = nodes.nodes.iter().filter_map(|n| n.pid()).collect();
    let broker_pids = pids_named("tansu");
    let cpu0 = (cpu_seconds(&node_pids), cpu_seconds(&broker_pids));
    println!(
        "{:>6} {:>9} {:>7} {:>9} {:>8} {:>12} {:>10} {:>9} {:>9} {:>10} {:>11} {:>9}",
        "t_s",
        "events",
        "lag",
        "rounds",
        "ckpt_ms",
        "state_bytes",
        "snap_bytes",
        "log_kept",
        "applies",
        "apply_mean",
        "apply_p99",
        "rss_mib"
    );
    let started = Instant::now();
    let mut last = scrape_all(&nodes, &[]);
    let mut before = Scrape::sum(&last);
    let first_scrape = before.clone();
    let mut samples = Vec::new();
    let mut failed = None;
    while started.elapsed() < Duration::from_secs(a.seconds) {
        let left = Duration::from_secs(a.seconds).saturating_sub(started.elapsed());
        std::thread::sleep(Duration::from_secs(a.sample_every).min(left));
        let each = scrape_all(&nodes, &last);
        last = each.clone();
        let now = Scrape::sum(&each);
        let (applies, mean_us, p99_us) = apply_between(&before, &now);
        let most = |name: &str| each.iter().map(|s| s.get(name)).fold(0.0, f64::max);
        let rounds = now.get("lockstep_checkpoints_total") / f64::from(shards);
        // events in the topic the shards' owners have not processed yet
        let (done, end) = progress(&nodes);
        let lag = end.saturating_sub(done);
        let rss: f64 = node_pids.iter().map(|p| rss_mib(*p)).sum();
        // failures since the soak began (the balancing before it fences a few)
        let failures = now.get("lockstep_checkpoint_failures_total")
            - first_scrape.get("lockstep_checkpoint_failures_total");
        let ckpt_n = now.get("lockstep_checkpoint_duration_seconds_count")
            - before.get("lockstep_checkpoint_duration_seconds_count");
        let ckpt_ms = if ckpt_n > 0.0 {
            (now.get("lockstep_checkpoint_duration_seconds_sum")
                - before.get("lockstep_checkpoint_duration_seconds_sum"))
                / ckpt_n
                * 1e3
        } else {
            0.0
        };
        let sample = json!({
            "t_s": started.elapsed().as_secs_f64(),
            "produced": produced.load(Ordering::Relaxed),
            "lag": lag,
            "checkpoints": now.get("lockstep_checkpoints_total"),
            "checkpoint_rounds": rounds,
            "checkpoint_failures": failures,
            "checkpoint_mean_ms": ckpt_ms,
            "state_bytes": most("lockstep_control_plane_state_bytes"),
            "snapshot_bytes": most("lockstep_raft_snapshot_bytes"),
            "raft_log_entries": most("lockstep_raft_log_entries"),
            "raft_applied_index": most("lockstep_raft_applied_index"),
            "applies": applies,
            "apply_mean_us": mean_us,
            "apply_p99_us": p99_us,
            "rss_mib_nodes": rss,
        });
        println!(
            "{:>6.0} {:>9} {:>7} {:>9.0} {:>8.1} {:>12} {:>10} {:>9} {:>9} {:>8.0}µs {:>9}µs {:>9.0}",
            started.elapsed().as_secs_f64(),
            produced.load(Ordering::Relaxed),
            lag,
            rounds,
            ckpt_ms,
            most("lockstep_control_plane_state_bytes"),
            most("lockstep_raft_snapshot_bytes"),
            most("lockstep_raft_log_entries"),
            applies,
            mean_us,
            if p99_us.is_finite() {
                format!("{p99_us:.0}")
            } else {
                "inf".into()
            },
            rss
        );
        samples.push(sample);
        before = now;
        if producer.is_finished() {
            failed = Some("the producer stopped early");
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let produced_result = producer.join();
    let cpu = (
        cpu_seconds(&node_pids) - cpu0.0,
        cpu_seconds(&broker_pids) - cpu0.1,
    );
    let wall = started.elapsed().as_secs_f64();
    // every node still answers after the soak
    wait(
        "every node answering after the soak",
        Duration::from_secs(30),
        || (0..3).all(|i| nodes.cluster(i).is_ok()),
    )?;
    for n in &mut nodes.nodes {
        n.kill();
    }
    match produced_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.context("producing the trickle")),
        Err(_) => anyhow::bail!("the producer thread panicked"),
    }
    if let Some(why) = failed {
        anyhow::bail!("{why}");
    }
    let first = samples.first().cloned().unwrap_or_default();
    let last = samples.last().cloned().unwrap_or_default();
    let f = |s: &serde_json::Value, k: &str| s[k].as_f64().unwrap_or(0.0);
    let max_state = samples
        .iter()
        .map(|s| f(s, "state_bytes"))
        .fold(0.0, f64::max);
    let rounds = f(&last, "checkpoint_rounds");
    println!(
        "state bytes: first sample {:.0}, last {:.0}, largest {:.0} ({:+.1}% first to last); {:.0} checkpoint rounds = {:.2} days of 5 s checkpoints; {:.0} checkpoint failures",
        f(&first, "state_bytes"),
        f(&last, "state_bytes"),
        max_state,
        100.0 * (f(&last, "state_bytes") / f(&first, "state_bytes").max(1.0) - 1.0),
        rounds,
        rounds / DAY_OF_ROUNDS,
        f(&last, "checkpoint_failures"),
    );
    println!(
        "CPU over {wall:.0} s: the three nodes {:.0} s, the broker {:.0} s (of {:.0} s × 2 cores)",
        cpu.0, cpu.1, wall
    );
    let report = json!({
        "checkpoint_interval": a.checkpoint_interval,
        "rate": a.rate,
        "seconds": a.seconds,
        "cpu_seconds_nodes": cpu.0,
        "cpu_seconds_broker": cpu.1,
        "samples": samples,
    });
    let out = a.dir.join("soak.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("report: {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The apply histogram's mean and p99 come from the difference of two
    /// scrapes, bucket by bucket.
    #[test]
    fn apply_latency_between_two_scrapes() {
        let before = Scrape::parse(
            "# HELP x\nlockstep_raft_apply_seconds_sum 1.0\nlockstep_raft_apply_seconds_count 100\n\
             lockstep_raft_apply_seconds_bucket{le=\"0.000001\"} 0\n\
             lockstep_raft_apply_seconds_bucket{le=\"0.000002\"} 50\n\
             lockstep_raft_apply_seconds_bucket{le=\"0.000004\"} 100\n\
             lockstep_raft_apply_seconds_bucket{le=\"+Inf\"} 100\n",
        );
        let after = Scrape::parse(
            "lockstep_raft_apply_seconds_sum 1.0003\nlockstep_raft_apply_seconds_count 200\n\
             lockstep_raft_apply_seconds_bucket{le=\"0.000001\"} 0\n\
             lockstep_raft_apply_seconds_bucket{le=\"0.000002\"} 50\n\
             lockstep_raft_apply_seconds_bucket{le=\"0.000004\"} 198\n\
             lockstep_raft_apply_seconds_bucket{le=\"+Inf\"} 200\n",
        );
        let (n, mean, p99) = apply_between(&before, &after);
        assert_eq!(n, 100.0);
        assert!((mean - 3.0).abs() < 1e-6, "{mean}");
        // 98 of the 100 new applies are within 4 µs: the 99th is above
        assert!(p99.is_infinite(), "{p99}");
        let summed = Scrape::sum(&[before.clone(), before]);
        assert_eq!(summed.get("lockstep_raft_apply_seconds_count"), 200.0);
        assert_eq!(summed.apply_buckets[&4000], 200.0);
    }
}
