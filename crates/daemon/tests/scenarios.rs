//! One scenario suite, two deployments: what a user sees must not depend
//! on whether lockstep runs as one node (embedded log, local object store)
//! or as a 3-node cluster (the real broker and S3 API `.ci/run` starts).
//! Every scenario below runs, unchanged, against both; requests go to
//! different nodes where there are several.
//!
//! Covered: event-id deduplication, Idempotency-Key replay and its header,
//! dead-letter listing, late events, serve-and-ingest, views apply,
//! backfill, and all of it surviving a SIGKILL of every node. The oracle is
//! the batch engine (`lockstep run`) over the first delivery of each event.
//!
//! The cluster half needs LOCKSTEP_TEST_KAFKA and
//! LOCKSTEP_TEST_S3_ENDPOINT/BUCKET; it fails without them when
//! LOCKSTEP_REQUIRE_KAFKA is set (as `.ci/run` sets it).

mod support;

use lockstep_api::Client;
use lockstep_core::value::{Row, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::*;

const SECRET: &str = "scenario-cluster-secret";

/// The canonical pipeline, deduplicating by `event_id`.
fn pipeline() -> String {
    let sql = SQL.replace("shards = 16)", "shards = 16, event_id = 'event_id')");
    assert_ne!(sql, SQL, "the canonical table's WITH clause changed");
    sql
}

/// A deployment the scenarios run against.
struct Deployment {
    root: tempfile::TempDir,
    nodes: Vec<Daemon>,
}

impl Deployment {
    fn one_node() -> Deployment {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("node-1");
        std::fs::create_dir_all(&dir).unwrap();
        let d = Daemon::start_sql(
            &dir,
            free_addr(),
            &pipeline(),
            &[("checkpoint-interval", "1 second")],
            &[],
        );
        Deployment {
            root,
            nodes: vec![d],
        }
    }

    fn three_nodes(kafka: &str, s3: &str, bucket: &str) -> Deployment {
        let root = tempfile::tempdir().unwrap();
        let tag = format!("{}-{}", std::process::id(), rand_suffix());
        let topic = format!("scenarios-{tag}");
        let store = format!("s3://{bucket}/scenarios-{tag}");
        let mut nodes: Vec<Daemon> = Vec::new();
        for i in 0..3 {
            let dir = root.path().join(format!("node-{}", i + 1));
            std::fs::create_dir_all(&dir).unwrap();
            let id = format!("node-{}", i + 1);
            let seeds = nodes
                .iter()
                .map(|d| d.addr.clone())
                .collect::<Vec<_>>()
                .join(",");
            let mut flags = vec![
                ("node-id", id.as_str()),
                ("cluster-secret", SECRET),
                ("kafka-brokers", kafka),
                ("kafka-topic", topic.as_str()),
                ("object-store", store.as_str()),
                ("checkpoint-interval", "1 second"),
            ];
            if !seeds.is_empty() {
                flags.push(("seeds", seeds.as_str()));
            }
            nodes.push(Daemon::start_sql(
                &dir,
                free_addr(),
                &pipeline(),
                &flags,
                &[
                    ("AWS_ENDPOINT_URL", s3),
                    ("AWS_ACCESS_KEY_ID", "lockstep"),
                    ("AWS_SECRET_ACCESS_KEY", "lockstep-secret"),
                    ("AWS_REGION", "us-east-1"),
                ],
            ));
        }
        let d = Deployment { root, nodes };
        d.wait_every_shard_owned();
        d
    }

    fn wait_every_shard_owned(&self) {
        if self.nodes.len() == 1 {
            return;
        }
        let start = Instant::now();
        loop {
            // every shard owned and none moving, spread evenly: the
            // rebalancing after the nodes joined is over
            let owned = self.nodes.iter().all(|n| {
                n.client().cluster().ok().flatten().is_some_and(|st| {
                    let counts: Vec<usize> = st.nodes.iter().map(|m| m.shards).collect();
                    st.nodes.len() == self.nodes.len()
                        && !st.shards.is_empty()
                        && st
                            .shards
                            .iter()
                            .all(|s| s.owner.is_some() && s.moving_to.is_none())
                        && counts
                            .iter()
                            .max()
                            .zip(counts.iter().min())
                            .is_some_and(|(a, b)| a - b <= 1)
                })
            });
            if owned {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the cluster did not form: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Node `i` (modulo the number of nodes): scenarios spread requests.
    fn node(&self, i: usize) -> Client {
        self.nodes[i % self.nodes.len()].client()
    }

    fn dir(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    /// SIGKILL of every node, then all started again at once with the same
    /// configuration and addresses, as an orchestrator restarts them.
    fn kill_and_restart_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        std::thread::scope(|s| {
            for n in &mut self.nodes {
                s.spawn(move || n.restart());
            }
        });
        self.wait_every_shard_owned();
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let log = n.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "--- node-{} ---\n{}\n",
                    i + 1,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }
}

/// What the scenarios sent, as the oracle needs it: the first delivery of
/// every event id, in order.
#[derive(Default)]
struct Sent {
    events: Vec<Row>,
    ids: HashSet<String>,
}

impl Sent {
    fn record(&mut self, rows: &[Row]) {
        for r in rows {
            if self.ids.insert(r[0].to_string()) {
                self.events.push(r.clone());
            }
        }
    }
}

/// Serve-and-ingest of `row` through `c`, retried while it answers 503
/// (a shard moving or restarting).
fn serve_and_ingest(c: &Client, row: &Row) -> serde_json::Value {
    let schema = &catalog().tables[0].schema;
    for _ in 0..100 {
        match c.post_json(
            "/v1/views/user_ad_features/features?ingest=true",
            lockstep_io::render_json(row, schema).as_bytes(),
        ) {
            Ok(v) => return v,
            Err(e) if e.status() == Some(503) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("serve-and-ingest: {e}"),
        }
    }
    panic!("serve-and-ingest did not answer within 100 retries")
}

/// Ingests `rows` through `c`, retried as a client does while the node
/// answers 503 + Retry-After (on one node, while a views apply runs).
fn ingest(c: &Client, rows: &[Row], key: Option<&str>) -> lockstep_api::Reply {
    let mut headers = Vec::new();
    if let Some(k) = key {
        headers.push(("Idempotency-Key", k));
    }
    let body = jsonl(rows);
    let mut r = None;
    for _ in 0..1200 {
        let got = c
            .request(
                "POST",
                "/v1/tables/ad_events/events",
                Some(body.as_bytes()),
                &headers,
            )
            .unwrap();
        if got.status != 503 {
            r = Some(got);
            break;
        }
        assert_eq!(got.retry_after.as_deref(), Some("1"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = r.expect("ingest still answered 503 after 2 minutes of retries");
    assert_eq!(
        r.status,
        200,
        "ingest: {}",
        String::from_utf8_lossy(&r.body)
    );
    r
}

/// Sum of a counter over every node's /metrics.
fn counter(d: &Deployment, name: &str) -> u64 {
    (0..d.nodes.len())
        .map(|i| {
            let m = d.node(i).request("GET", "/metrics", None, &[]).unwrap();
            String::from_utf8_lossy(&m.body)
                .lines()
                .filter(|l| l.starts_with(&format!("lockstep_{name}_total ")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .sum()
}

/// The batch engine's rows of `view` of `sql` over `events`, per shard in
/// order (no end-of-input flush: rows waiting for labels are not final
/// online either).
fn batch(sql: &str, view: &str, events: &[Row]) -> Vec<Row> {
    let catalog = std::sync::Arc::new(lockstep_core::parse_pipeline(sql).unwrap());
    let mut e = lockstep_core::Engine::new(catalog.clone(), &[view]).unwrap();
    let mut out = Vec::new();
    let mut per_shard = vec![Vec::new(); catalog.tables[0].shards as usize];
    for r in events {
        let _ = e.push(r, &mut out);
        for em in out.drain(..) {
            per_shard[em.shard as usize].push(em.row);
        }
    }
    per_shard.into_iter().flatten().collect()
}

/// Checkpoints until the committed rows of `view` equal `want` (in a
/// cluster a checkpoint may be taken before a shard read the last records).
fn committed_rows_equal(d: &Deployment, sql: &str, view: &str, want: &[Row], what: &str) {
    let start = Instant::now();
    loop {
        let c = d.node(rand_suffix() as usize);
        let _ = c.checkpoint();
        let out = d.dir().join(format!("export-{}.parquet", rand_suffix()));
        // 503 means retry (a control plane electing, a shard restarting)
        let got = match lockstep_offline::export(&c, view, &out) {
            Ok(_) => {
                let catalog = lockstep_core::parse_pipeline(sql).unwrap();
                lockstep_io::read_rows(&out, &catalog.view(view).unwrap().1.output).unwrap()
            }
            Err(e) if start.elapsed() > Duration::from_secs(60) => {
                panic!("{what}: export failed: {e}\n{}", d.logs())
            }
            Err(_) => Vec::new(),
        };
        if got.len() >= want.len() || start.elapsed() > Duration::from_secs(60) {
            assert_rows_eq(&got, want, what);
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn run_all(mut d: Deployment) {
    let sql = pipeline();
    let rows = events(4000, 60, 7);
    let schema = &catalog().tables[0].schema;
    let mut sent = Sent::default();

    // 1. event ids: a producer's blind retries (no Idempotency-Key), to
    // another node, are applied once
    ingest(&d.node(0), &rows[..1500], None);
    sent.record(&rows[..1500]);
    let retry = ingest(&d.node(1), &rows[200..400], None);
    assert_eq!(retry.json()["accepted"], 200, "retries are accepted…");
    // … and serve-and-ingest of an event already in answers 409
    let again = d
        .node(2)
        .request(
            "POST",
            "/v1/views/user_ad_features/features?ingest=true",
            Some(lockstep_io::render_json(&rows[300], schema).as_bytes()),
            &[],
        )
        .unwrap();
    assert_eq!(
        again.status,
        409,
        "{}",
        String::from_utf8_lossy(&again.body)
    );

    // 2. Idempotency-Key: a retry to the node that answered gets the same
    // reply, marked replayed; a retry elsewhere changes nothing either
    let key = format!("batch-{}", rand_suffix());
    let first = ingest(&d.node(0), &rows[1500..2000], Some(&key));
    assert!(!first.replayed);
    let replay = ingest(&d.node(0), &rows[1500..2000], Some(&key));
    assert!(replay.replayed, "Idempotent-Replayed");
    assert_eq!(replay.json(), first.json());
    let elsewhere = ingest(&d.node(1), &rows[1500..2000], Some(&key));
    assert_eq!(elsewhere.json()["accepted"], 500);
    sent.record(&rows[1500..2000]);
    // the key with another body, on the node that took it: refused, and
    // none of those events goes in (they are sent properly below)
    let reused = d
        .node(0)
        .request(
            "POST",
            "/v1/tables/ad_events/events",
            Some(jsonl(&rows[2000..2010]).as_bytes()),
            &[("Idempotency-Key", key.as_str())],
        )
        .unwrap();
    assert_eq!(
        reused.status,
        422,
        "{}",
        String::from_utf8_lossy(&reused.body)
    );

    // 3. dead letters: a bad event sent to one node is listed by any node
    let marker = format!("not-an-event-{}", rand_suffix());
    let mut body = jsonl(&rows[2000..2100]);
    body.push_str(&format!("{{\"{marker}\": true}}\n"));
    let r = d
        .node(2)
        .request(
            "POST",
            "/v1/tables/ad_events/events",
            Some(body.as_bytes()),
            &[],
        )
        .unwrap();
    assert_eq!(r.json()["rejected"], 1);
    sent.record(&rows[2000..2100]);
    for i in 0..d.nodes.len() {
        let listed = d.node(i).dead_letters("ad_events", 1000).unwrap();
        assert!(listed.unreachable.is_empty(), "{:?}", listed.unreachable);
        let found: Vec<_> = listed
            .dead_letters
            .iter()
            .filter(|l| l.raw.contains(&marker))
            .collect();
        assert_eq!(found.len(), 1, "node {i} lists the dead letter once");
        assert!(found[0].reason.contains("missing"), "{}", found[0].reason);
    }

    // 4. late events: far below their shard's watermark, not in any row
    let late_before = counter(&d, "late_events");
    let mut late = rows[10].clone();
    late[0] = Value::BigInt(1_000_000);
    ingest(&d.node(1), &[late.clone()], None);
    sent.record(&[late]);
    // an event a century ahead (a wrong clock) is refused, a dead letter,
    // and moves no watermark: the rows below stay the oracle's
    let mut ahead = rows[2050].clone();
    ahead[0] = Value::BigInt(2_000_000);
    ahead[6] = Value::Timestamp(4_923_000_000_000);
    let r = d
        .node(2)
        .request(
            "POST",
            "/v1/tables/ad_events/events",
            Some(jsonl(&[ahead]).as_bytes()),
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let reason = r.json()["errors"][0]["reason"].to_string();
    assert!(reason.contains("max_event_time_ahead"), "{reason}");
    let listed = d.node(0).dead_letters("ad_events", 10).unwrap();
    assert!(listed
        .dead_letters
        .iter()
        .any(|l| l.reason.contains("max_event_time_ahead")));

    // 5. serve-and-ingest: the features served are the training row's
    let mut served = Vec::new();
    for (i, r) in rows[2100..2400]
        .iter()
        .filter(|r| r[3] == Value::text("impression"))
        .take(6)
        .enumerate()
    {
        let f = serve_and_ingest(&d.node(i), r);
        assert_eq!(f["training_row"]["will_exist"], true, "{f}");
        served.push((r.clone(), f["features"].clone()));
    }
    let mut served_rows: Vec<Row> = served.iter().map(|(r, _)| r.clone()).collect();
    // … and says when an event will have no training row, and why: a
    // click fails the view's QUALIFY, an event below the watermark is late
    let click = rows[2100..3000]
        .iter()
        .find(|r| r[3] == Value::text("click"))
        .expect("a click among the events")
        .clone();
    let f = serve_and_ingest(&d.node(1), &click);
    assert_eq!(f["training_row"]["will_exist"], false, "{f}");
    assert_eq!(f["training_row"]["reason"], "not_qualified", "{f}");
    let mut late = rows[20].clone();
    late[0] = Value::BigInt(1_000_001);
    late[3] = Value::text("impression");
    let f = serve_and_ingest(&d.node(2), &late);
    assert_eq!(f["training_row"]["will_exist"], false, "{f}");
    assert_eq!(f["training_row"]["reason"], "late", "{f}");
    served_rows.push(click);
    served_rows.push(late);
    sent.record(&served_rows);
    let rest: Vec<Row> = rows[2100..3000]
        .iter()
        .filter(|r| !served_rows.contains(r))
        .cloned()
        .collect();
    ingest(&d.node(2), &rest, None);
    sent.record(&rest);

    let want = batch(&sql, VIEW, &sent.events);
    committed_rows_equal(&d, &sql, VIEW, &want, "training rows");
    assert!(
        counter(&d, "late_events") > late_before,
        "the late event was counted"
    );
    // the 200 blind retries and the event served twice (a shard that
    // re-reads its input after a restart counts its repeats again)
    assert!(counter(&d, "duplicate_events") >= 201);
    let view = catalog().view(VIEW).unwrap().1.clone();
    let exported = exported(&d.node(0), &d.dir());
    let mut compared = 0;
    for (r, features) in &served {
        // (a 202 answers "ingested, features not computed": nothing to compare)
        let Some(row) = exported
            .iter()
            .find(|x| x[0] == r[0])
            .filter(|_| !features.is_null())
        else {
            continue;
        };
        compared += 1;
        let row: serde_json::Value =
            serde_json::from_str(&lockstep_io::render_json(row, &view.output)).unwrap();
        for (i, col) in view.output.columns.iter().enumerate() {
            if !view.label_columns.contains(&i) {
                assert_eq!(features[&col.name], row[&col.name], "{}", col.name);
            }
        }
    }
    assert!(compared >= 3, "only {compared} served events have rows yet");

    // 6. views apply: a new view, rebuilt from the archive on every shard
    let new_sql = format!(
        "{sql}
CREATE VIEW campaign_clicks AS
SELECT event_id, user_id, event_time,
  COUNT(*) FILTER (WHERE kind = 'click') OVER (
    PARTITION BY user_id, campaign_id ORDER BY event_time
    RANGE BETWEEN INTERVAL '30' MINUTE PRECEDING AND CURRENT ROW) AS clicks_30m
FROM ad_events;"
    );
    // with events arriving meanwhile, to every node
    let during = rows[3000..3500].to_vec();
    let applied = std::thread::scope(|sc| {
        let feeder = sc.spawn(|| {
            for (i, chunk) in during.chunks(25).enumerate() {
                ingest(&d.node(i), chunk, None);
            }
        });
        let applied = d.node(1).apply_views(new_sql.as_bytes()).unwrap();
        feeder.join().unwrap();
        applied
    });
    sent.record(&during);
    assert!(
        applied.added.contains(&"campaign_clicks".to_string()),
        "{applied:?}"
    );
    let want_new = batch(&new_sql, "campaign_clicks", &sent.events);
    committed_rows_equal(
        &d,
        &new_sql,
        "campaign_clicks",
        &want_new,
        "the new view's rows",
    );

    // 7. backfill: the same view replayed over the archive as a job
    let out = d.dir().join("backfill.parquet");
    let report = lockstep_offline::backfill_with(
        &d.node(2),
        None,
        "campaign_clicks",
        None,
        None,
        &out,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.events, sent.events.len() as u64);
    let catalog = lockstep_core::parse_pipeline(&new_sql).unwrap();
    let schema_new = catalog.view("campaign_clicks").unwrap().1.output.clone();
    assert_rows_eq(
        &lockstep_io::read_rows(&out, &schema_new).unwrap(),
        &want_new,
        "backfilled rows",
    );
    let jobs = d.node(0).backfill_jobs().unwrap();
    assert!(
        jobs.jobs
            .iter()
            .any(|j| j.view.as_deref() == Some("campaign_clicks")),
        "{jobs:?}"
    );

    // 8. every node SIGKILLed and started again: nothing is lost, and the
    // event ids and keys seen before are still remembered
    d.kill_and_restart_all();
    let replay = ingest(&d.node(0), &rows[1500..2000], Some(&key));
    assert!(replay.replayed, "the key survives SIGKILL");
    ingest(&d.node(1), &rows[..1000], None);
    ingest(&d.node(2), &rows[3500..4000], None);
    sent.record(&rows[3500..4000]);
    let want = batch(&new_sql, VIEW, &sent.events);
    committed_rows_equal(
        &d,
        &new_sql,
        VIEW,
        &want,
        "rows after SIGKILL of every node",
    );
}

#[test]
fn scenarios_on_one_node() {
    run_all(Deployment::one_node());
}

#[test]
fn scenarios_on_a_three_node_cluster() {
    let (Ok(kafka), Ok(s3), Ok(bucket)) = (
        std::env::var("LOCKSTEP_TEST_KAFKA"),
        std::env::var("LOCKSTEP_TEST_S3_ENDPOINT"),
        std::env::var("LOCKSTEP_TEST_S3_BUCKET"),
    ) else {
        assert!(
            std::env::var("LOCKSTEP_REQUIRE_KAFKA").is_err(),
            "LOCKSTEP_REQUIRE_KAFKA is set but the broker or S3 server is missing"
        );
        eprintln!("skipped: no broker/S3; `bash .ci/run` starts both");
        return;
    };
    let d = Deployment::three_nodes(&kafka, &s3, &bucket);
    // the test broker is one: the topic's replication (default 3) and
    // min.insync.replicas (default 2) are capped to it, with a warning
    let log = d.nodes[0].log();
    assert!(
        log.contains("replication factor 3 asked for, but the cluster has 1 broker(s)")
            && log.contains("min.insync.replicas 2 asked for"),
        "{log}"
    );
    run_all(d);
}

/// A topic deleted and created again under a node's feet (same name, same
/// partitions, offsets from 0 again) leaves the shards whose checkpoints
/// read past its new end failed, visibly: in /v1/status, in the metric,
/// and /readyz answers 503. They do not silently skip the new records.
#[test]
fn a_topic_created_again_leaves_its_shards_failed_and_the_node_unready() {
    let (Ok(kafka), Ok(s3), Ok(bucket)) = (
        std::env::var("LOCKSTEP_TEST_KAFKA"),
        std::env::var("LOCKSTEP_TEST_S3_ENDPOINT"),
        std::env::var("LOCKSTEP_TEST_S3_BUCKET"),
    ) else {
        assert!(
            std::env::var("LOCKSTEP_REQUIRE_KAFKA").is_err(),
            "LOCKSTEP_REQUIRE_KAFKA is set but the broker or S3 server is missing"
        );
        eprintln!("skipped: no broker/S3; `bash .ci/run` starts both");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let tag = format!("{}-{}", std::process::id(), rand_suffix());
    let topic = format!("recreated-{tag}");
    let store = format!("s3://{bucket}/recreated-{tag}");
    let flags = [
        ("node-id", "node-1"),
        ("cluster-secret", SECRET),
        ("kafka-brokers", kafka.as_str()),
        ("kafka-topic", topic.as_str()),
        ("object-store", store.as_str()),
    ];
    let mut d = Daemon::start_sql(
        root.path(),
        free_addr(),
        &pipeline(),
        &flags,
        &[
            ("AWS_ENDPOINT_URL", s3.as_str()),
            ("AWS_ACCESS_KEY_ID", "lockstep"),
            ("AWS_SECRET_ACCESS_KEY", "lockstep-secret"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let c = d.client();
    // ready once a member with its shards running
    let mut ready = false;
    for _ in 0..600 {
        if c.request("GET", "/readyz", None, &[]).unwrap().status == 200 {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "the node never became ready\n{}", d.log());
    ingest(&c, &events(800, 40, 21), None);
    // every shard's checkpoint past its records
    let mut covered = false;
    let mut last = String::new();
    for _ in 0..300 {
        let r = c.request("POST", "/v1/checkpoint", None, &[]).unwrap();
        let st = c.status().unwrap();
        let read: u64 = r.json()["checkpoints"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["log_offset"].as_u64()).sum())
            .unwrap_or(0);
        if r.status == 200 && st.lag == 0 && read == 800 {
            covered = true;
            break;
        }
        last = format!(
            "checkpoint {}: {}; lag {}, events {}",
            r.status,
            String::from_utf8_lossy(&r.body),
            st.lag,
            st.events
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(covered, "{last}");
    d.kill();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(lockstep_log::kafka::KafkaLog::delete_topic(&kafka, &topic))
        .unwrap();
    d.start_again(); // creates the topic again: same name, 16 partitions
    let c = d.client();
    // not ready, and (once its shards are up) saying why
    let mut not_ready = None;
    let mut last = String::new();
    for _ in 0..600 {
        let r = c.request("GET", "/readyz", None, &[]).unwrap();
        last = format!("{} {}", r.status, String::from_utf8_lossy(&r.body));
        if r.status == 503 && last.contains("created again") {
            not_ready = Some(r);
            break;
        }
        assert_ne!(r.status, 200, "ready on a topic created again\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(not_ready.is_some(), "{last}\n{}", d.log());
    // the cluster recorded the first topic's id: the new one has another,
    // and no shard reads it (not even one whose offsets it would cover);
    // the shards come up one by one
    let mut st = None;
    for _ in 0..600 {
        if let Ok(s) = c.status() {
            let all = s.shards.len() == 16 && s.shards.iter().all(|s| s.failed.is_some());
            st = Some(s);
            if all {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = st.unwrap_or_else(|| panic!("no status\n{}", d.log()));
    let failed: Vec<_> = st.shards.iter().filter(|s| s.failed.is_some()).collect();
    assert_eq!(failed.len(), 16, "{st:?}");
    assert!(
        failed[0].failed.as_ref().unwrap().contains("its id is"),
        "{:?}",
        failed[0].failed
    );
    let metrics =
        String::from_utf8_lossy(&c.request("GET", "/metrics", None, &[]).unwrap().body).to_string();
    let gauge: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lockstep_shards_failed "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no shards_failed gauge\n{metrics}"));
    assert_eq!(gauge as usize, failed.len());
}
