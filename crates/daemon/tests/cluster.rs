//! A 3-node cluster of real lockstepd processes on the real broker (tansu)
//! and the real S3 API (moto), both started by `.ci/run`, under continuous
//! ingest with faults. After each, the committed training rows and the
//! served features must equal the batch engine (`lockstep run`) over the
//! topic's contents: nothing lost, nothing twice.
//!
//! Needs LOCKSTEP_TEST_KAFKA and LOCKSTEP_TEST_S3_ENDPOINT/BUCKET; skipped
//! without them unless LOCKSTEP_REQUIRE_KAFKA is set. Seeded by
//! LOCKSTEP_CLUSTER_SEED (printed on failure).

mod support;

use lockstep_api::Client;
use lockstep_core::value::{Row, Value};
use lockstep_log::kafka::{KafkaConfig, KafkaLog};
use rand::{RngExt, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const SECRET: &str = "cluster-secret-for-tests";

struct Env {
    kafka: String,
    s3: String,
    bucket: String,
}

fn env() -> Option<Env> {
    let kafka = std::env::var("LOCKSTEP_TEST_KAFKA").ok();
    let s3 = std::env::var("LOCKSTEP_TEST_S3_ENDPOINT").ok();
    let bucket = std::env::var("LOCKSTEP_TEST_S3_BUCKET").ok();
    match (kafka, s3, bucket) {
        (Some(kafka), Some(s3), Some(bucket)) => Some(Env { kafka, s3, bucket }),
        _ => {
            assert!(
                std::env::var("LOCKSTEP_REQUIRE_KAFKA").is_err(),
                "LOCKSTEP_REQUIRE_KAFKA is set but the broker or S3 server is missing"
            );
            eprintln!("skipped: no broker/S3 (LOCKSTEP_TEST_KAFKA, LOCKSTEP_TEST_S3_ENDPOINT); `bash .ci/run` starts both");
            None
        }
    }
}

/// A TCP proxy in front of a node: the other nodes reach it only through
/// this (it advertises this address), so cutting it cuts the way in; its
/// [`Egress`] cuts the way out.
struct Proxy {
    addr: String,
    target: Arc<Mutex<String>>,
    cut: Arc<AtomicBool>,
    open: Open,
}

/// A proxy's open connections, by id; a connection leaves when it closes
/// (so a long test does not run out of file descriptors).
#[derive(Clone, Default)]
struct Open {
    conns: Arc<Mutex<HashMap<u64, (String, TcpStream)>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Open {
    /// Copies bytes both ways between `a` and `b` until either side closes.
    fn relay(&self, target: String, a: TcpStream, b: TcpStream) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (Ok(a2), Ok(b2), Ok(held)) = (a.try_clone(), b.try_clone(), a.try_clone()) else {
            return;
        };
        self.conns.lock().unwrap().insert(id, (target, held));
        let (mut a, mut b, mut a2, mut b2) = (a, b, a2, b2);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut b2, &mut a2);
            let _ = a2.shutdown(Shutdown::Both);
        });
        let conns = self.conns.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut a, &mut b);
            let _ = b.shutdown(Shutdown::Both);
            conns.lock().unwrap().remove(&id);
        });
    }

    /// Breaks the open connections `which` selects by target.
    fn break_where(&self, which: impl Fn(&str) -> bool) {
        for (t, s) in self.conns.lock().unwrap().values() {
            if which(t) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Proxy {
    fn start(target: String) -> Proxy {
        let target = Arc::new(Mutex::new(target));
        let target_addr = target.clone();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let open = Open::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(inbound) = conn else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let to = target.lock().unwrap().clone();
                let Ok(outbound) = TcpStream::connect(&to) else {
                    continue;
                };
                o.relay(to, inbound, outbound);
            }
        });
        Proxy {
            addr,
            target: target_addr,
            cut,
            open,
        }
    }

    /// Refuses new connections and breaks the open ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.open.break_where(|_| true);
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The way out of a node: its HTTP clients (Raft RPCs, pings, forwards,
/// S3) reach everything through this proxy (`ALL_PROXY`), which can refuse
/// the other nodes' addresses: with [`Proxy`], a two-way cut. (Kafka's
/// client ignores the variable: the broker stays reachable, as it would
/// for a node cut off from its peers only.) Speaks CONNECT (ureq) and
/// absolute-form requests (reqwest, for plain http).
struct Egress {
    addr: String,
    /// Targets refused while cut.
    blocked: Arc<Mutex<HashSet<String>>>,
    open: Open,
}

impl Egress {
    fn start() -> Egress {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let blocked: Arc<Mutex<HashSet<String>>> = Default::default();
        let open = Open::default();
        let (b, o) = (blocked.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let (b, o) = (b.clone(), o.clone());
                std::thread::spawn(move || egress_conn(client, &b, &o));
            }
        });
        Egress {
            addr,
            blocked,
            open,
        }
    }

    fn cut(&self, targets: Vec<String>) {
        let mut b = self.blocked.lock().unwrap();
        b.extend(targets);
        self.open.break_where(|t| b.contains(t));
    }

    fn heal(&self) {
        self.blocked.lock().unwrap().clear();
    }
}

fn egress_conn(mut client: TcpStream, blocked: &Mutex<HashSet<String>>, open: &Open) {
    use std::io::{Read, Write};
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let first = text.lines().next().unwrap_or_default().to_string();
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let connect = method == "CONNECT";
    let host = if connect {
        target.to_string()
    } else {
        target
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("")
            .to_string()
    };
    // a cut host, or one that does not answer, is what the network would
    // make it: the connection drops (an HTTP status from the proxy would
    // reach a client that sends plain-HTTP requests through it as the
    // target's own answer)
    if blocked.lock().unwrap().contains(&host) {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(mut server) = TcpStream::connect(&host) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    if connect {
        let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
    } else if server.write_all(&head).is_err() {
        return;
    }
    open.relay(host, client, server);
}

/// A cluster under test: its nodes, topic and store.
struct Cluster {
    env: Env,
    topic: String,
    store: String,
    root: tempfile::TempDir,
    nodes: Vec<Daemon>,
    down: Vec<bool>,
    /// The pipeline every node runs.
    sql: String,
    /// Per node: the proxy the others reach it through, and the one it
    /// reaches them through.
    proxies: Vec<Proxy>,
    egress: Vec<Egress>,
    /// The number in the first node's id (`node-1`; a StatefulSet's
    /// `node-0`).
    first_ordinal: usize,
    /// Mutual TLS: the CA that signs every node's certificate.
    pki: Option<TestPki>,
    /// Flags every node gets.
    flags: Vec<(String, String)>,
}

impl Cluster {
    fn start(env: Env, n: usize) -> Cluster {
        Cluster::start_sql(env, n, SQL)
    }

    fn start_sql(env: Env, n: usize, sql: &str) -> Cluster {
        Cluster::start_numbered(env, n, sql, 1)
    }

    /// `n` nodes named `node-<first>`, `node-<first + 1>`, …
    fn start_numbered(env: Env, n: usize, sql: &str, first: usize) -> Cluster {
        let tag = format!("{}-{}", std::process::id(), rand_suffix());
        let mut c = Cluster {
            topic: format!("ad_events-{tag}"),
            store: format!("s3://{}/cluster-{tag}", env.bucket),
            env,
            root: tempfile::tempdir().unwrap(),
            nodes: Vec::new(),
            down: Vec::new(),
            sql: sql.to_string(),
            proxies: Vec::new(),
            egress: Vec::new(),
            first_ordinal: first,
            pki: None,
            flags: Vec::new(),
        };
        for _ in 0..n {
            c.add_node();
        }
        c
    }

    /// `n` nodes started one by one, each with `flags` too.
    fn start_with_flags(env: Env, n: usize, flags: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster::start_numbered(env, 0, SQL, 1);
        c.flags = flags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for _ in 0..n {
            c.add_node();
        }
        c
    }

    fn dir(&self, i: usize) -> std::path::PathBuf {
        let d = self.root.path().join(format!("node-{}", i + 1));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn seeds(&self) -> String {
        self.nodes
            .iter()
            .zip(&self.down)
            .filter(|(_, down)| !**down)
            .map(|(d, _)| d.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `len + 1`, joining through the running ones.
    fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let seeds = self.seeds();
        let d = self.spawn(i, &seeds);
        self.nodes.push(d);
        self.down.push(false);
        i
    }

    /// `n` nodes numbered from `first`, started at once with the same
    /// seeds (every node's address, its own included) and
    /// `--bootstrap-expect n`, as Kubernetes starts a StatefulSet's pods in
    /// parallel: they find each other and form one cluster.
    fn start_together(env: Env, n: usize, sql: &str, first: usize) -> Cluster {
        Cluster::start_together_tls(env, n, sql, first, false)
    }

    /// [`Cluster::start_together`]; with `tls`, every node serves HTTPS
    /// with a certificate of one test CA and checks its peers' (mutual
    /// TLS), and the test's clients trust that CA.
    fn start_together_tls(env: Env, n: usize, sql: &str, first: usize, tls: bool) -> Cluster {
        let mut c = Cluster::start_numbered(env, 0, sql, first);
        if tls {
            c.pki = Some(TestPki::new(c.root.path(), "cluster"));
        }
        for _ in 0..n {
            c.proxies.push(Proxy::start(free_addr()));
            c.egress.push(Egress::start());
        }
        let seeds = c
            .proxies
            .iter()
            .map(|p| p.addr.clone())
            .collect::<Vec<_>>()
            .join(",");
        let expect = n.to_string();
        for i in 0..n {
            let d = c.launch(i, &seeds, &[("bootstrap-expect", expect.as_str())]);
            c.nodes.push(d);
            c.down.push(false);
        }
        for d in &c.nodes {
            d.wait_up();
        }
        c
    }

    fn spawn(&mut self, i: usize, seeds: &str) -> Daemon {
        if self.proxies.len() <= i {
            let listen = free_addr();
            self.proxies.push(Proxy::start(listen));
            self.egress.push(Egress::start());
        }
        let d = self.launch(i, seeds, &[]);
        d.wait_up();
        d
    }

    /// Starts node `i` behind its proxies (made already), without waiting.
    fn launch(&mut self, i: usize, seeds: &str, extra: &[(&str, &str)]) -> Daemon {
        let egress = format!("http://{}", self.egress[i].addr);
        let listen = self.proxy_target(i);
        let id = format!("node-{}", i + self.first_ordinal);
        let advertise = self.proxies[i].addr.clone();
        let mut flags = vec![
            ("advertise", advertise.as_str()),
            ("node-id", id.as_str()),
            ("cluster-secret", SECRET),
            ("kafka-brokers", self.env.kafka.as_str()),
            ("kafka-topic", self.topic.as_str()),
            ("object-store", self.store.as_str()),
            ("checkpoint-interval", "1 second"),
        ];
        if !seeds.is_empty() {
            flags.push(("seeds", seeds));
        }
        flags.extend_from_slice(extra);
        let common: Vec<(String, String)> = self.flags.clone();
        flags.extend(common.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let files = self.pki.as_ref().map(|pki| {
            let (cert, key) = pki.node(&id);
            (
                cert.display().to_string(),
                key.display().to_string(),
                pki.ca.clone(),
            )
        });
        if let Some((cert, key, ca)) = &files {
            flags.push(("tls-cert", cert.as_str()));
            flags.push(("tls-key", key.as_str()));
            flags.push(("tls-ca", ca.to_str().unwrap()));
        }
        let env = [
            ("AWS_ENDPOINT_URL", self.env.s3.as_str()),
            ("AWS_ACCESS_KEY_ID", "lockstep"),
            ("AWS_SECRET_ACCESS_KEY", "lockstep-secret"),
            ("AWS_REGION", "us-east-1"),
            ("ALL_PROXY", egress.as_str()),
            ("LOCKSTEP_PEER_PROXY", egress.as_str()),
            // unlisted objects are collected soon, so a wrong keep-list
            // would lose committed data within the test
            ("LOCKSTEP_GC_GRACE_MS", "3000"),
        ];
        match &files {
            Some((_, _, ca)) => {
                Daemon::launch_tls(&self.dir(i), listen, &self.sql, &flags, &env, ca)
            }
            None => Daemon::launch_sql(&self.dir(i), listen, &self.sql, &flags, &env),
        }
    }

    /// Cuts node `x` off from the other nodes, both ways.
    fn cut(&self, x: usize) {
        self.proxies[x].cut();
        let others = (0..self.proxies.len())
            .filter(|&j| j != x)
            .flat_map(|j| [self.proxies[j].addr.clone(), self.proxy_target(j)])
            .collect();
        self.egress[x].cut(others);
    }

    /// Cuts node `x`'s calls to the other nodes, one way: theirs still
    /// reach it (it answers pings and hears the Raft log), but it can
    /// propose nothing and forward nothing.
    fn cut_outgoing(&self, x: usize) {
        let others = (0..self.proxies.len())
            .filter(|&j| j != x)
            .flat_map(|j| [self.proxies[j].addr.clone(), self.proxy_target(j)])
            .collect();
        self.egress[x].cut(others);
    }

    /// The length of node `i`'s log so far.
    fn log_len(&self, i: usize) -> usize {
        std::fs::read_to_string(self.dir(i).join("lockstepd.log"))
            .unwrap_or_default()
            .len()
    }

    /// Node `i`'s log lines after byte `from`.
    fn log_since(&self, i: usize, from: usize) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir(i).join("lockstepd.log")).unwrap_or_default();
        log.get(from..)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn heal(&self, x: usize) {
        self.proxies[x].heal();
        self.egress[x].heal();
    }

    fn proxy_target(&self, i: usize) -> String {
        self.proxies[i].target.lock().unwrap().clone()
    }

    /// SIGKILL.
    fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
        self.down[i] = true;
    }

    /// Restarts a killed node on its data directory (listening on a new
    /// port behind the same advertised proxy).
    fn restart(&mut self, i: usize) {
        let listen = free_addr();
        *self.proxies[i].target.lock().unwrap() = listen.clone();
        self.nodes[i].restart_at(listen);
        self.down[i] = false;
    }

    fn live(&self) -> Vec<Client> {
        self.nodes
            .iter()
            .zip(&self.down)
            .filter(|(_, down)| !**down)
            .map(|(d, _)| d.client())
            .collect()
    }

    /// The last lines of each node's log (whole logs are copied to
    /// LOCKSTEP_KEEP_LOGS, a directory, when it is set).
    fn logs(&self) -> String {
        let mut s = String::new();
        let keep = std::env::var("LOCKSTEP_KEEP_LOGS").ok();
        for (i, down) in self.down.iter().enumerate() {
            let log =
                std::fs::read_to_string(self.dir(i).join("lockstepd.log")).unwrap_or_default();
            if let Some(k) = &keep {
                let _ = std::fs::create_dir_all(k);
                let _ = std::fs::write(Path::new(k).join(format!("node-{}.log", i + 1)), &log);
            }
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            s.push_str(&format!(
                "--- node-{} ({}) ---\n{}\n",
                i + 1,
                if *down { "down" } else { "up" },
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        s
    }

    /// Waits until `f` holds for the cluster state as a live node sees it.
    fn wait_state(&self, what: &str, timeout: Duration, f: impl Fn(&serde_json::Value) -> bool) {
        let start = Instant::now();
        let mut last = serde_json::Value::Null;
        while start.elapsed() < timeout {
            for c in self.live() {
                if let Ok(st) = c.get_json("/v1/cluster") {
                    if f(&st) {
                        return;
                    }
                    last = st;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "gave up waiting for {what}; last state {last:#}\n{}",
            self.logs()
        );
    }
}

/// Ingests a batch through some live node, retrying (with the same
/// Idempotency-Key, on other nodes) until one acknowledges it.
fn ingest(cluster: &Cluster, body: &[u8], key: &str, rng: &mut rand::rngs::StdRng) {
    ingest_once(cluster, body, key, rng);
    // now and then the client retries a request that did succeed (its
    // answer was lost): the shards must apply it once
    if rng.random_range(0..5) == 0 {
        ingest_once(cluster, body, key, rng);
    }
}

fn ingest_once(cluster: &Cluster, body: &[u8], key: &str, rng: &mut rand::rngs::StdRng) {
    let start = Instant::now();
    let mut last;
    loop {
        let live = cluster.live();
        let c = &live[rng.random_range(0..live.len())];
        match c.request(
            "POST",
            "/v1/tables/ad_events/events",
            Some(body),
            &[("Idempotency-Key", key)],
        ) {
            Ok(r) if r.status == 200 => return,
            Ok(r) if r.status == 503 => {
                last = format!("{}: 503 {}", c.base(), String::from_utf8_lossy(&r.body));
            }
            Ok(r) => panic!(
                "ingest: HTTP {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
            Err(e) => last = format!("{}: {e}", c.base()),
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no node took batch {key}; the last answer: {last}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The topic's contents, per partition in offset order, with retried
/// duplicates (same Idempotency-Key and index) dropped, as the shards do.
fn topic_rows(env: &Env, topic: &str, shards: u32) -> (Vec<Vec<Row>>, Vec<u64>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = rt
        .block_on(KafkaLog::connect(KafkaConfig::new(
            &env.kafka,
            topic,
            shards,
            "test-oracle",
        )))
        .unwrap();
    let mut out = Vec::new();
    let mut ends = Vec::new();
    for s in 0..shards {
        let mut r = log.reader(s, 0).unwrap();
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        let mut idle = 0;
        while idle < 10 {
            let recs = r.poll(10_000, Duration::from_millis(100)).unwrap();
            if recs.is_empty() {
                idle += 1;
                continue;
            }
            idle = 0;
            for rec in recs {
                if let Some(k) = &rec.idempotency {
                    if !seen.insert(k.clone()) {
                        continue;
                    }
                }
                rows.push(lockstep_io::raw::decode_event(&rec.value).unwrap());
            }
        }
        out.push(rows);
        ends.push(r.position());
    }
    (out, ends)
}

/// Waits until every shard's committed checkpoint covers its partition up
/// to `ends`.
fn wait_checkpoints_cover(cluster: &Cluster, ends: &[u64]) {
    cluster.wait_state(
        "checkpoints covering the topic",
        Duration::from_secs(120),
        |st| {
            st["shards"].as_array().is_some_and(|s| {
                s.len() == ends.len()
                    && s.iter()
                        .zip(ends)
                        .all(|(s, end)| s["checkpoint"]["offset"].as_u64() == Some(*end))
            })
        },
    );
}

/// The batch engine (what `lockstep run` does) over each partition's
/// events in order: the committed rows grouped per shard, and the engine.
fn batch_per_shard(per_shard: &[Vec<Row>]) -> (Vec<Row>, lockstep_core::Engine) {
    let mut engine = lockstep_core::Engine::new(catalog(), &[VIEW]).unwrap();
    let mut by_shard = vec![Vec::new(); per_shard.len()];
    let mut out = Vec::new();
    for rows in per_shard {
        for r in rows {
            engine.push(r, &mut out).unwrap();
            for em in out.drain(..) {
                by_shard[em.shard as usize].push(em.row);
            }
        }
    }
    (by_shard.into_iter().flatten().collect(), engine)
}

fn event_ids(rows: &[Row]) -> Vec<i64> {
    rows.iter()
        .map(|r| match r[0] {
            Value::BigInt(id) => id,
            _ => panic!("event_id"),
        })
        .collect()
}

/// Compares the cluster's committed training rows and served features with
/// the batch engine over the topic's contents, once every shard has
/// checkpointed all of its partition.
fn check_exactly_once(cluster: &Cluster, sent: &[Row], dir: &Path) -> Vec<Row> {
    let shards = catalog().tables[0].shards;
    let (per_shard, ends) = topic_rows(&cluster.env, &cluster.topic, shards);
    // nothing lost, nothing twice in what the log holds
    let mut got_ids: Vec<i64> = per_shard.iter().flat_map(|r| event_ids(r)).collect();
    let mut want_ids = event_ids(sent);
    got_ids.sort_unstable();
    want_ids.sort_unstable();
    assert_eq!(got_ids, want_ids, "the topic holds each sent event once");
    // every shard's committed checkpoint covers its whole partition
    wait_checkpoints_cover(cluster, &ends);
    // the oracle: the batch engine per shard over the partition contents
    let all: Vec<Row> = per_shard.iter().flatten().cloned().collect();
    let catalog = catalog();
    let (want, mut engine) = batch_per_shard(&per_shard);
    let c = &cluster.live()[0];
    let got = exported(c, dir);
    assert_rows_eq(&got, &want, "cluster training rows vs the batch engine");
    // served features, through every live node (forwarded to the owners)
    let table = &catalog.tables[0];
    for (i, probe) in all.iter().step_by(all.len() / 7 + 1).enumerate() {
        let mut ev = probe.clone();
        ev[table.time] = match ev[table.time] {
            Value::Timestamp(t) => Value::Timestamp(t + 3_600_000 + i as i64),
            _ => unreachable!(),
        };
        let body = lockstep_io::render_json(&ev, &table.schema);
        let expect = engine.serve(0, &ev).unwrap();
        let view = &catalog.view(VIEW).unwrap().1.output;
        let expect: serde_json::Value =
            serde_json::from_str(&lockstep_io::render_json(&expect, view)).unwrap();
        for node in cluster.live() {
            let got = node
                .post_json("/v1/views/user_ad_features/features", body.as_bytes())
                .unwrap_or_else(|e| panic!("serving: {e}\n{}", cluster.logs()));
            assert_eq!(got["features"], expect, "served features for {ev:?}");
        }
    }
    want
}

fn seed() -> u64 {
    seed_from("LOCKSTEP_CLUSTER_SEED")
}

/// Prints the seed if the test fails.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster test failed with LOCKSTEP_CLUSTER_SEED={}", self.0);
        }
    }
}

/// Starts a 3-node cluster, streams `n` events in batches through random
/// live nodes, calling `fault(batch index, cluster)` before each batch, and
/// checks exactly-once at the end.
fn scenario(n: u64, fault: impl FnMut(usize, usize, &mut Cluster, &mut rand::rngs::StdRng)) {
    scenario_with(n, &[], fault)
}

/// [`scenario`], every node started with `flags` too.
fn scenario_with(
    n: u64,
    flags: &[(&str, &str)],
    mut fault: impl FnMut(usize, usize, &mut Cluster, &mut rand::rngs::StdRng),
) {
    let Some(env) = env() else { return };
    let seed = seed();
    let _guard = SeedGuard(seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start_with_flags(env, 3, flags);
    cluster.wait_state(
        "every shard owned by a live node",
        Duration::from_secs(60),
        |st| {
            st["nodes"].as_array().is_some_and(|n| n.len() == 3)
                && st["shards"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty() && s.iter().all(|s| !s["owner"].is_null()))
        },
    );
    let rows = events(n, 120, seed);
    let batches: Vec<&[Row]> = rows.chunks(150).collect();
    for (i, b) in batches.iter().enumerate() {
        fault(i, batches.len(), &mut cluster, &mut rng);
        ingest(
            &cluster,
            jsonl(b).as_bytes(),
            &format!("batch-{i}"),
            &mut rng,
        );
    }
    cluster.wait_state("every node active", Duration::from_secs(60), |st| {
        st["nodes"].as_array().is_some_and(|n| {
            n.iter()
                .all(|n| n["state"] == "active" || n["state"] == "draining")
        })
    });
    let want = check_exactly_once(&cluster, &rows, cluster.root.path());
    // compaction on every owner, through the replicated manifest, keeps
    // the rows and their order
    let c = &cluster.live()[0];
    let before = c.get_json("/v1/segments?kind=training").unwrap()["segments"]
        .as_array()
        .unwrap()
        .len();
    let r = c.post_json("/v1/segments/compact", b"").unwrap();
    assert!(!r["compactions"].as_array().unwrap().is_empty(), "{r}");
    let after = c.get_json("/v1/segments?kind=training").unwrap()["segments"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        after < before,
        "compaction merged nothing: {before} → {after}"
    );
    assert_rows_eq(
        &exported(c, cluster.root.path()),
        &want,
        "training rows after compaction",
    );
    // a backfill runs each shard on its owner, and its rows are the
    // committed training rows
    let job = serde_json::to_value(
        lockstep_offline::run_backfill_job(c, &backfill_request("user_ad_features")).unwrap(),
    )
    .unwrap();
    let owners: HashSet<u64> = job["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["node"].as_u64().unwrap())
        .collect();
    assert!(owners.len() >= 2, "the shards replayed on one node: {job}");
    let out = cluster.root.path().join("backfill.parquet");
    lockstep_offline::backfill(c, VIEW, None, None, &out, &mut |_, _| {}).unwrap();
    let schema = catalog().view(VIEW).unwrap().1.output.clone();
    assert_rows_eq(
        &lockstep_io::read_rows(&out, &schema).unwrap(),
        &want,
        "cluster backfill vs training rows",
    );
    if std::env::var("LOCKSTEP_SHOW_LOGS").is_ok() {
        eprintln!("{}", cluster.logs());
    }
}

fn node_state(st: &serde_json::Value, id: u64) -> String {
    st["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == id))
        .and_then(|n| n["state"].as_str())
        .unwrap_or("")
        .to_string()
}

fn owns_none(st: &serde_json::Value, id: u64) -> bool {
    st["shards"]
        .as_array()
        .is_some_and(|s| s.iter().all(|s| s["owner"] != id && s["moving_to"] != id))
}

fn leader(cluster: &Cluster) -> usize {
    for c in cluster.live() {
        if let Ok(st) = c.get_json("/v1/cluster") {
            if let Some(l) = st["leader"].as_u64() {
                return l as usize - cluster.first_ordinal;
            }
        }
    }
    panic!("no leader known\n{}", cluster.logs());
}

#[test]
fn three_nodes_survive_a_sigkill_under_ingest_exactly_once() {
    let mut victim = 0;
    scenario(6000, |i, n, cluster, rng| {
        if i == 1 {
            // batch-0 was taken; another body under its key is refused by
            // every node (each key is decided on one node), never applied
            let mut other = events(3, 5, 4242);
            for (k, r) in other.iter_mut().enumerate() {
                r[0] = Value::BigInt(9_000_000 + k as i64);
            }
            for c in cluster.live() {
                let r = c
                    .request(
                        "POST",
                        "/v1/tables/ad_events/events",
                        Some(jsonl(&other).as_bytes()),
                        &[("Idempotency-Key", "batch-0")],
                    )
                    .unwrap();
                assert_eq!(
                    r.status,
                    422,
                    "another body under a used key: {}",
                    String::from_utf8_lossy(&r.body)
                );
            }
            // marked as passed on already, it is not passed again: the
            // key's node refuses it, the others cannot decide on the key
            // and answer 503 (before, they took it, and only the shards'
            // dead letters stopped the other body)
            let mut statuses: Vec<u16> = cluster
                .live()
                .iter()
                .map(|c| {
                    c.request(
                        "POST",
                        "/v1/tables/ad_events/events",
                        Some(jsonl(&other).as_bytes()),
                        &[
                            ("Idempotency-Key", "batch-0"),
                            ("x-lockstep-forwarded", "1"),
                        ],
                    )
                    .unwrap()
                    .status
                })
                .collect();
            statuses.sort();
            assert_eq!(
                statuses,
                vec![422, 503, 503],
                "the key's node and the others"
            );
        }
        let (kill_at, back_at) = (n / 3, 2 * n / 3);
        if i == kill_at {
            victim = rng.random_range(0..3);
            cluster.kill(victim);
        }
        if i == (kill_at + back_at) / 2 {
            // the failure is detected and the victim's shards run elsewhere
            let id = victim as u64 + 1;
            cluster.wait_state(
                "the victim's shards reassigned",
                Duration::from_secs(60),
                |st| node_state(st, id) == "down" && owns_none(st, id),
            );
        }
        if i == back_at {
            cluster.restart(victim);
        }
    });
}

#[test]
fn drain_a_node_add_a_fourth_and_kill_the_leader() {
    scenario(6000, |i, n, cluster, rng| {
        if i == n / 4 {
            // graceful leave: its shards move with a last checkpoint each
            let drained = rng.random_range(0..3);
            let id = drained as u64 + 1;
            // as a preStop hook does it: returns once the node owns nothing
            let addr = cluster.nodes[(drained + 1) % 3].addr.clone();
            let node = format!("node-{id}");
            let mut out = Vec::new();
            let r = lockstep_ctl::run_args(
                [
                    "lockstepctl",
                    "--addr",
                    &addr,
                    "--token",
                    TOKEN,
                    "nodes",
                    "drain",
                    &node,
                    "--wait",
                    "60 s",
                ],
                &mut out,
            );
            let out = String::from_utf8_lossy(&out);
            assert!(r.is_ok(), "{r:?}: {out}\n{}", cluster.logs());
            assert!(out.contains("owns no shard"), "{out}");
            let st = cluster.live()[0].get_json("/v1/cluster").unwrap();
            assert!(
                node_state(&st, id) == "draining" && owns_none(&st, id),
                "{st}"
            );
            // decommissioned: stopped, then removed from the cluster, so
            // its Raft vote goes to the next node (without that, killing
            // the leader below would leave one of three voters)
            let c = cluster.nodes[(drained + 1) % 3].client();
            let r = c
                .request(
                    "POST",
                    &format!("/v1/cluster/nodes/node-{id}/remove"),
                    Some(b""),
                    &[],
                )
                .unwrap();
            assert_eq!(r.status, 409, "a live node is not removed: {}", r.json());
            // a drained node that crashes and comes back is draining still
            // (it came back active, and took shards again)
            cluster.kill(drained);
            cluster.wait_state("the killed node down", Duration::from_secs(60), |st| {
                node_state(st, id) == "down"
            });
            cluster.restart(drained);
            cluster.wait_state(
                "the restarted node back, draining",
                Duration::from_secs(60),
                |st| node_state(st, id) == "draining",
            );
            // the coordinator has planned twice since it saw the node back
            // (it opens a checkpoint epoch every second in the same loop)
            let back_at = c.get_json("/v1/cluster").unwrap()["epoch"]
                .as_u64()
                .unwrap();
            let start = Instant::now();
            let st = loop {
                let st = c.get_json("/v1/cluster").unwrap();
                if st["epoch"].as_u64().unwrap() >= back_at + 2 {
                    break st;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "no epoch opened: {st}"
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            assert!(
                node_state(&st, id) == "draining" && owns_none(&st, id),
                "the restarted drained node got shards: {st}"
            );
            cluster.kill(drained);
            cluster.wait_state("the stopped node down", Duration::from_secs(60), |st| {
                node_state(st, id) == "down"
            });
            let r = c
                .post_json(&format!("/v1/cluster/nodes/node-{id}/remove"), b"")
                .unwrap();
            assert_eq!(r["removed"], true, "{r}");
            cluster.wait_state("the node gone", Duration::from_secs(60), |st| {
                st["nodes"]
                    .as_array()
                    .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["id"] != id))
            });
        }
        if i == n / 2 {
            let added = cluster.add_node();
            let id = added as u64 + 1;
            cluster.wait_state(
                "the new node owning shards, a voter",
                Duration::from_secs(60),
                |st| {
                    st["shards"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s["owner"] == id))
                        && st["nodes"].as_array().is_some_and(|n| {
                            n.iter().filter(|n| n["voter"] == true).count() == 3
                                && n.iter().any(|n| n["id"] == id && n["voter"] == true)
                        })
                },
            );
        }
        if i == 3 * n / 4 {
            let l = leader(cluster);
            cluster.kill(l);
            let id = l as u64 + 1;
            cluster.wait_state(
                "a new leader, the old one's shards moved",
                Duration::from_secs(60),
                |st| {
                    st["leader"].as_u64().is_some_and(|x| x != id)
                        && node_state(st, id) == "down"
                        && owns_none(st, id)
                },
            );
            cluster.restart(l);
        }
    });
}

/// Started the way a Kubernetes StatefulSet starts its pods in parallel:
/// `node-0`, `node-1`, `node-2` (ids from 0 were refused) all at once, each
/// with the same seeds naming all three, itself included, and
/// `--bootstrap-expect 3` (such nodes formed no cluster: each waited for
/// another to found it). They form one cluster with one id on every node.
/// Then a node that owns shards loses its data directory and comes back
/// with the same flags: it rejoins that cluster under its id (it used to
/// found a second one, or take Raft votes it had forgotten), and what was
/// ingested through any node, before and after, is in the log and the
/// training rows once.
#[test]
fn nodes_started_together_form_one_cluster_and_a_wiped_node_rejoins() {
    let Some(env) = env() else { return };
    let mut cluster = Cluster::start_together(env, 3, SQL, 0);
    cluster.wait_state(
        "every shard owned by one of node-0..2, node-0 among the owners",
        Duration::from_secs(60),
        |st| {
            st["nodes"].as_array().is_some_and(|n| n.len() == 3)
                && st["shards"].as_array().is_some_and(|s| {
                    (0..3u64).all(|id| s.iter().any(|s| s["owner"] == id))
                        && s.iter()
                            .all(|s| s["owner"].as_u64().is_some_and(|o| o <= 2))
                })
        },
    );
    let ids = |cluster: &Cluster| -> Vec<String> {
        cluster
            .live()
            .iter()
            .map(|c| {
                c.get_json("/v1/cluster").unwrap()["cluster_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let id = ids(&cluster)[0].clone();
    assert_eq!(id.len(), 20, "{id}");
    assert_eq!(ids(&cluster), vec![id.clone(); 3], "one cluster, one id");
    // the control plane's gauges: one leader, a term, the state's size
    let gauge = |c: &Client, name: &str| -> f64 {
        let r = c.request("GET", "/metrics", None, &[]).unwrap();
        let text = String::from_utf8_lossy(&r.body).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let live = cluster.live();
    let leaders: f64 = live.iter().map(|c| gauge(c, "lockstep_raft_leader")).sum();
    assert_eq!(leaders, 1.0);
    for c in &live {
        assert!(gauge(c, "lockstep_raft_term") >= 1.0);
        assert!(gauge(c, "lockstep_control_plane_state_bytes") > 100.0);
        assert_eq!(gauge(c, "lockstep_members_down"), 0.0);
        // every member applied the log so far (membership, assignments)
        // and keeps it: nothing snapshotted and purged yet
        assert!(gauge(c, "lockstep_raft_apply_seconds_count") >= 1.0);
        assert!(gauge(c, "lockstep_raft_log_entries") >= 3.0);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // 50 minutes of events: rows become final past the 15-minute label
    let rows = events(3000, 40, 11);
    let (before, after) = rows.split_at(1500);
    for (i, b) in before.chunks(150).enumerate() {
        ingest(
            &cluster,
            jsonl(b).as_bytes(),
            &format!("zero-{i}"),
            &mut rng,
        );
    }
    // a follower that owns shards loses its disk
    let l = leader(&cluster);
    let w = (l + 1) % 3;
    cluster.kill(w);
    std::fs::remove_dir_all(cluster.dir(w).join("data")).unwrap();
    cluster.restart(w);
    let back = cluster.nodes[w].client();
    let start = Instant::now();
    loop {
        let st = back.get_json("/v1/cluster").unwrap();
        let voters = st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["voter"] == true)
            .count();
        if st["cluster_id"] == id.as_str()
            && st["nodes"].as_array().unwrap().len() == 3
            && voters == 3
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the wiped node is not back in its cluster: {st}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ids(&cluster), vec![id.clone(); 3], "still one cluster");
    // the leader forgot its old Raft membership before it joined again
    assert!(
        cluster
            .nodes
            .iter()
            .any(|d| d.log().contains("a member lost its data directory")),
        "{}",
        cluster.logs()
    );
    for (i, b) in after.chunks(150).enumerate() {
        ingest(
            &cluster,
            jsonl(b).as_bytes(),
            &format!("zero-after-{i}"),
            &mut rng,
        );
    }
    check_exactly_once(&cluster, &rows, cluster.root.path());
}

/// Three nodes over mutual TLS (`--tls-cert`, `--tls-key`, `--tls-ca`),
/// started together: Raft, joins, pings and forwarded requests all go
/// over TLS with each node's certificate checked, the test's clients
/// reach every node over HTTPS, and the run is exactly once. An internal
/// call that knows the cluster secret but presents no certificate is
/// refused; plain HTTP gets no answer.
#[test]
fn a_cluster_over_mutual_tls_forms_forwards_and_refuses_calls_without_a_certificate() {
    let Some(env) = env() else { return };
    let cluster = Cluster::start_together_tls(env, 3, SQL, 1, true);
    cluster.wait_state(
        "every shard owned by one of three nodes",
        Duration::from_secs(60),
        |st| {
            st["nodes"].as_array().is_some_and(|n| n.len() == 3)
                && st["shards"]
                    .as_array()
                    .is_some_and(|s| (1..=3u64).all(|id| s.iter().any(|s| s["owner"] == id)))
        },
    );
    let node = cluster.nodes[0].addr.clone();
    // the cluster secret alone does not open the internal routes
    let ca = std::fs::read(&cluster.pki.as_ref().unwrap().ca).unwrap();
    let no_cert = lockstep_api::Client::with_ca(&node, TOKEN, &ca).unwrap();
    let r = no_cert
        .request(
            "POST",
            "/internal/cluster/ping",
            Some(b""),
            &[("x-lockstep-cluster-secret", SECRET)],
        )
        .unwrap();
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("client certificate"));
    let plain = Client::new(&node, TOKEN).request("GET", "/healthz", None, &[]);
    assert!(plain.is_err(), "plain HTTP was answered");
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let rows = events(3000, 40, 17);
    for (i, b) in rows.chunks(150).enumerate() {
        ingest(&cluster, jsonl(b).as_bytes(), &format!("tls-{i}"), &mut rng);
    }
    check_exactly_once(&cluster, &rows, cluster.root.path());
    // every node answers for every user once all is processed: the
    // non-owners forward to the owners over TLS, and all agree. Asked for
    // each user's last event again, so the windows hold the user's history.
    let mut last: HashMap<String, Row> = HashMap::new();
    for r in &rows {
        last.insert(r[1].to_string(), r.clone());
    }
    let mut asks: Vec<String> = last
        .values()
        .map(|r| jsonl(std::slice::from_ref(r)).trim().to_string())
        .collect();
    asks.sort();
    let answers: Vec<Vec<serde_json::Value>> = cluster
        .live()
        .iter()
        .map(|c| {
            asks.iter()
                .map(|body| {
                    let start = Instant::now();
                    loop {
                        let r = c
                            .request(
                                "POST",
                                "/v1/views/user_ad_features/features",
                                Some(body.as_bytes()),
                                &[],
                            )
                            .unwrap();
                        if r.status == 200 {
                            break r.json();
                        }
                        assert!(
                            r.status == 503 && start.elapsed() < Duration::from_secs(30),
                            "{}",
                            r.json()
                        );
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .collect()
        })
        .collect();
    assert_eq!(answers[0].len(), 40);
    let seen = |a: &serde_json::Value| {
        ["impressions_24h", "clicks_24h"]
            .iter()
            .any(|k| a["features"][k].as_i64().is_some_and(|n| n > 0))
    };
    assert!(answers[0].iter().all(seen), "{:?}", answers[0]);
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
}

/// Voters that heal: four nodes, three voting. A voter SIGKILLed and held
/// down past `voter_replace_after` gives its vote to the learner; then a
/// second of the first voters dies, and the cluster still has a majority
/// of its voters (without the replacement, one of three): it elects, moves
/// the dead nodes' shards and commits checkpoints, and the run is exactly
/// once.
#[test]
fn a_voter_down_too_long_is_replaced_by_a_learner() {
    let Some(env) = env() else { return };
    let mut cluster = Cluster::start_with_flags(env, 4, &[("voter-replace-after", "2 seconds")]);
    let voters = |st: &serde_json::Value| -> Vec<u64> {
        st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["voter"] == true)
            .map(|n| n["id"].as_u64().unwrap())
            .collect()
    };
    cluster.wait_state(
        "three voters and a learner",
        Duration::from_secs(60),
        |st| st["nodes"].as_array().is_some_and(|n| n.len() == 4) && voters(st).len() == 3,
    );
    let st = cluster.live()[0].get_json("/v1/cluster").unwrap();
    let first = voters(&st);
    assert!(!first.contains(&4), "{st}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let rows = events(3000, 40, 23);
    let (a, b) = rows.split_at(1000);
    let (b, c) = b.split_at(1000);
    for (i, ch) in a.chunks(100).enumerate() {
        ingest(
            &cluster,
            jsonl(ch).as_bytes(),
            &format!("v-a-{i}"),
            &mut rng,
        );
    }
    // a voter that does not lead dies
    let l = leader(&cluster) as u64 + 1;
    let gone: Vec<u64> = first.iter().copied().filter(|v| *v != l).collect();
    cluster.kill(gone[0] as usize - 1);
    cluster.wait_state(
        "the learner voting in the dead voter's place",
        Duration::from_secs(60),
        |st| {
            let v = voters(st);
            v.contains(&4) && !v.contains(&gone[0]) && v.len() == 3
        },
    );
    for (i, ch) in b.chunks(100).enumerate() {
        ingest(
            &cluster,
            jsonl(ch).as_bytes(),
            &format!("v-b-{i}"),
            &mut rng,
        );
    }
    // a second of the first voters dies: two of the three voters remain
    cluster.kill(gone[1] as usize - 1);
    for (i, ch) in c.chunks(100).enumerate() {
        ingest(
            &cluster,
            jsonl(ch).as_bytes(),
            &format!("v-c-{i}"),
            &mut rng,
        );
    }
    check_exactly_once(&cluster, &rows, cluster.root.path());
}

/// Once every node owns shards: one of the followers (the leader's
/// successors, picked by `rng`).
fn a_follower_owning_shards(cluster: &Cluster, rng: &mut rand::rngs::StdRng) -> usize {
    cluster.wait_state("every node owning shards", Duration::from_secs(60), |st| {
        (1..=3u64).all(|id| {
            st["shards"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["owner"] == id))
        })
    });
    let l = leader(cluster);
    (l + 1 + rng.random_range(0..2)) % 3
}

/// SIGSTOP or SIGCONT to a node's process.
fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

/// A node paused (SIGSTOP) past its lease while its shards move away and
/// the others ingest on, then resumed: asked for every user at once, it
/// answers `503` or something other than the state it had when paused
/// (unless that state is still the user's); it is ready again once back in
/// the cluster; and the run stays exactly once (the scenario's check: it
/// committed nothing stale).
#[test]
fn a_paused_node_answers_nothing_stale_and_is_ready_again() {
    // the paused node, and its answers for every user just before
    let mut paused: Option<(usize, Vec<(String, String)>)> = None;
    scenario(6000, |i, n, cluster, rng| {
        // one event a user (120 users), an hour after the last event:
        // the features of each user's whole history
        let probes = || {
            let rows = events((n * 150) as u64, 120, 1);
            let at = rows
                .iter()
                .filter_map(|r| match r[6] {
                    Value::Timestamp(t) => Some(t),
                    _ => None,
                })
                .max()
                .unwrap()
                + 3_600_000;
            let mut by_user: HashMap<String, Row> = HashMap::new();
            for r in rows {
                by_user.insert(r[1].to_string(), r);
            }
            let schema = catalog().tables[0].schema.clone();
            let mut out: Vec<String> = by_user
                .into_values()
                .map(|mut ev| {
                    ev[6] = Value::Timestamp(at);
                    lockstep_io::render_json(&ev, &schema)
                })
                .collect();
            out.sort();
            out
        };
        let ask = |c: &Client, body: &str| {
            c.request(
                "POST",
                "/v1/views/user_ad_features/features",
                Some(body.as_bytes()),
                &[],
            )
            .unwrap()
        };
        // an answer, waiting out 503s (shards moving, an election)
        let settled = |c: &Client, body: &str| {
            for _ in 0..300 {
                let r = ask(c, body);
                if r.status == 200 {
                    return String::from_utf8_lossy(&r.body).into_owned();
                }
                assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("no answer for {body}");
        };
        if i == n / 3 {
            let x = a_follower_owning_shards(cluster, rng);
            let before: Vec<(String, String)> = probes()
                .into_iter()
                .map(|b| {
                    let a = settled(&cluster.nodes[x].client(), &b);
                    (b, a)
                })
                .collect();
            signal(cluster.nodes[x].pid(), "-STOP");
            // the scenario ingests through the others meanwhile
            cluster.down[x] = true;
            paused = Some((x, before));
            let id = x as u64 + 1;
            cluster.wait_state(
                "the paused node's shards moved",
                Duration::from_secs(60),
                |st| node_state(st, id) == "down" && owns_none(st, id),
            );
        }
        if i == n / 3 + 4 {
            // four batches later (the users' state moved on): resume it
            let (x, before) = paused.take().unwrap();
            signal(cluster.nodes[x].pid(), "-CONT");
            cluster.down[x] = false;
            let resumed = cluster.nodes[x].client();
            // at once, before it hears from the cluster again
            let got: Vec<(u16, String)> = before
                .iter()
                .map(|(b, _)| {
                    let r = ask(&resumed, b);
                    (r.status, String::from_utf8_lossy(&r.body).into_owned())
                })
                .collect();
            // ready again once back in the cluster, its shards running
            let start = Instant::now();
            loop {
                let r = resumed.request("GET", "/readyz", None, &[]).unwrap();
                if r.status == 200 {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(90),
                    "the resumed node never became ready: {}\n{}",
                    String::from_utf8_lossy(&r.body),
                    cluster.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            // what each user's features are now (no events arrive in this
            // hook), once every node is caught up
            let start = Instant::now();
            while !cluster.live().iter().all(|c| {
                c.status().is_ok_and(|s| s.lag == 0)
                    && c.request("GET", "/readyz", None, &[]).unwrap().status == 200
            }) {
                assert!(
                    start.elapsed() < Duration::from_secs(90),
                    "{}",
                    cluster.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            let other = cluster.nodes[(x + 1) % 3].client();
            let (mut refused, mut answered, mut moved_on) = (0, 0, 0);
            for ((body, stale), (status, answer)) in before.iter().zip(&got) {
                let now = settled(&other, body);
                if &now != stale {
                    moved_on += 1;
                }
                match status {
                    503 => refused += 1,
                    200 => {
                        answered += 1;
                        assert!(
                            answer != stale || &now == stale,
                            "the resumed node answered from the state it had when paused: {answer}, now {now}"
                        );
                    }
                    s => panic!("{s}: {answer}"),
                }
            }
            eprintln!(
                "resumed node: {refused} answers refused, {answered} answered; {moved_on} of {} users' features moved on while it was paused",
                before.len()
            );
            assert!(
                moved_on > 0,
                "no user's features changed while the node was paused"
            );
        }
    });
}

/// The number after `key` in a log line (`shard: 3`).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// A move whose owner cannot hand off is given up, planned again, and at
/// its second time out forced. The owner's calls to the other nodes are
/// cut one way while it is drained: it still answers pings and hears the
/// Raft log (so it is not marked down), but cannot commit its last
/// checkpoint nor propose the hand-off, nor even restart a shard. Past
/// `cluster.move_timeout` the coordinator cancels each stuck move and the
/// planner starts it again; the second time out gives the shard to the
/// move's target without a hand-off (a new owner epoch fences the old
/// owner). So the drain completes while the cut lasts, ingest goes on
/// through the others (a key whose shard the cut node held could not be
/// taken before), and the run stays exactly once.
#[test]
fn a_stalled_move_is_given_up_then_forced() {
    // the node cut one way
    let mut cut: Option<usize> = None;
    scenario_with(
        6000,
        &[("move-timeout", "2 seconds")],
        |i, n, cluster, rng| {
            if i == n / 3 {
                let x = a_follower_owning_shards(cluster, rng);
                let id = x as u64 + 1;
                let logged: Vec<usize> = (0..3).map(|j| cluster.log_len(j)).collect();
                cluster.cut_outgoing(x);
                let c = cluster.nodes[(x + 1) % 3].client();
                let r = c
                    .request(
                        "POST",
                        &format!("/v1/cluster/nodes/node-{id}/drain"),
                        Some(b""),
                        &[],
                    )
                    .unwrap();
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                // drained while the cut lasts: never marked down
                cluster.wait_state(
                    "the one-way cut node drained",
                    Duration::from_secs(90),
                    |st| {
                        let state = node_state(st, id);
                        assert_ne!(state, "down", "the cut node was taken for dead: {st}");
                        state == "draining" && owns_none(st, id)
                    },
                );
                // the coordinators' logs: a move given up, started again,
                // then the same shard forced to its target
                let lines: Vec<String> = (0..3)
                    .filter(|&j| j != x)
                    .flat_map(|j| cluster.log_since(j, logged[j]))
                    .collect();
                let forced: Vec<u64> = lines
                    .iter()
                    .filter(|l| l.contains("never handed off") && l.contains("Assign"))
                    .filter_map(|l| number_after(l, "shard: "))
                    .collect();
                assert!(!forced.is_empty(), "no move was forced\n{}", cluster.logs());
                let shard = forced[0];
                let given_up = lines.iter().position(|l| {
                    l.contains("given up") && l.contains(&format!("CancelMove {{ shard: {shard}, "))
                });
                let again = given_up.and_then(|k| {
                    lines[k..].iter().position(|l| {
                        l.contains("rebalance")
                            && l.contains(&format!("StartMove {{ shard: {shard}, to: "))
                    })
                });
                assert!(
                    again.is_some(),
                    "shard {shard} was forced without being given up and started again first\n{}",
                    cluster.logs()
                );
                eprintln!("shard {shard}'s move off node-{id}: given up, started again, forced");
                cut = Some(x);
            }
            if i == 2 * n / 3 {
                let x = cut.take().unwrap();
                cluster.egress[x].heal();
                let id = x as u64 + 1;
                // healed, it stays draining and gets nothing back
                cluster.wait_state("the healed node back", Duration::from_secs(60), |st| {
                    node_state(st, id) == "draining" && owns_none(st, id)
                });
            }
        },
    );
}

#[test]
fn a_node_cut_off_is_fenced_and_rejoins_after_healing() {
    // the node cut off, and how long its log was then
    let mut cut: Option<(usize, usize)> = None;
    scenario(6000, |i, n, cluster, rng| {
        if i == n / 3 {
            // a follower that owns shards: cut off, it keeps running as a
            // zombie
            let x = a_follower_owning_shards(cluster, rng);
            let logged = std::fs::read_to_string(cluster.dir(x).join("lockstepd.log"))
                .unwrap_or_default()
                .len();
            cluster.cut(x);
            cut = Some((x, logged));
            let id = x as u64 + 1;
            cluster.wait_state(
                "the cut-off node's shards moved",
                Duration::from_secs(60),
                |st| {
                    st["leader"].as_u64() != Some(id)
                        && node_state(st, id) == "down"
                        && owns_none(st, id)
                },
            );
            // the zombie serves nothing: its lease ran out before its
            // shards were given away, so it cannot answer with features
            // their new owners have moved past
            let table = catalog().tables[0].clone();
            let zombie = cluster.nodes[x].client();
            let mut probed = HashSet::new();
            for ev in events(3000, 3000, 7) {
                if !probed.insert(table.shard_of(&ev)) {
                    continue;
                }
                let body = lockstep_io::render_json(&ev, &table.schema);
                let r = zombie
                    .request(
                        "POST",
                        "/v1/views/user_ad_features/features",
                        Some(body.as_bytes()),
                        &[],
                    )
                    .unwrap();
                assert_eq!(
                    r.status,
                    503,
                    "the cut-off node answered for shard {}: {}",
                    table.shard_of(&ev),
                    String::from_utf8_lossy(&r.body)
                );
            }
        }
        if i == 2 * n / 3 {
            let (x, logged) = cut.take().unwrap();
            // the zombie cannot act on its shards: its checkpoints cannot
            // commit (no leader reachable, or fenced), or a shard it was
            // given just before the cut cannot even start
            let log = cluster.dir(x).join("lockstepd.log");
            let start = Instant::now();
            while !std::fs::read_to_string(&log).unwrap_or_default()[logged..]
                .lines()
                .any(|l| l.contains("checkpoint failed") || l.contains("not started"))
            {
                if start.elapsed() > Duration::from_secs(60) {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    let notable: Vec<&str> = log
                        .lines()
                        .filter(|l| l.contains("lockstep") && !l.contains(" DEBUG "))
                        .collect();
                    panic!(
                        "the cut-off node-{} never tried to act on its shards; its log:\n{}",
                        x + 1,
                        notable.join("\n")
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            cluster.heal(x);
        }
    });
}

#[test]
fn other_producers_records_are_applied_once_by_event_id_and_bad_ones_dead_lettered() {
    let Some(env) = env() else { return };
    let seed = seed();
    let _guard = SeedGuard(seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sql = SQL.replace("shards = 16)", "shards = 16, event_id = 'event_id')");
    assert_ne!(sql, SQL, "the canonical table's WITH clause changed");
    let cluster = Cluster::start_sql(env, 1, &sql);
    cluster.wait_state("every shard owned", Duration::from_secs(60), |st| {
        st["shards"]
            .as_array()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| !s["owner"].is_null()))
    });
    // an external producer: JSON values keyed by user_id, no Idempotency-Key;
    // a fifth of the events delivered twice, some much later
    let catalog = catalog();
    let table = &catalog.tables[0];
    let rows = events(3000, 80, seed);
    let mut dup_at: Vec<Vec<&Row>> = vec![Vec::new(); rows.len() + 1];
    for (i, r) in rows.iter().enumerate() {
        if rng.random_range(0..5) == 0 {
            dup_at[rng.random_range(i + 1..=rows.len())].push(r);
        }
    }
    let mut sends: Vec<&Row> = Vec::new();
    for (i, dups) in dup_at.iter().enumerate() {
        sends.extend(dups.iter().copied());
        if i < rows.len() {
            sends.push(&rows[i]);
        }
    }
    // the first half is produced, then checkpointed, then the second;
    // sends[50] will carry a timestamp a century ahead (below), and the
    // second half repeats every first-half event of its shard: a shard
    // whose dedup clock that stamp moved would forget their ids
    let half = sends.len() / 2;
    let stamped_shard = table.shard_of(sends[50]);
    let repeats: Vec<&Row> = sends[..half]
        .iter()
        .copied()
        .filter(|r| table.shard_of(r) == stamped_shard)
        .collect();
    assert!(repeats.len() > 10);
    sends.extend(repeats);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = rt
        .block_on(KafkaLog::connect(KafkaConfig::new(
            &cluster.env.kafka,
            &cluster.topic,
            table.shards,
            "external",
        )))
        .unwrap();
    let keys: Vec<String> = sends.iter().map(|r| r[table.key].to_string()).collect();
    let values: Vec<String> = sends
        .iter()
        .map(|r| lockstep_io::render_json(r, &table.schema))
        .collect();
    let mut recs: Vec<lockstep_log::kafka::OutRecord> = (0..sends.len())
        .map(|i| lockstep_log::kafka::OutRecord {
            shard: table.shard_of(sends[i]),
            key: keys[i].as_bytes(),
            value: values[i].as_bytes(),
            bincode: false,
            idempotency: None,
            body_hash: None,
            timestamp_ms: None,
        })
        .collect();
    // one producer's clock a century ahead stamps an early record: it must
    // not expire the event ids the shards remember (the duplicates after
    // it are still skipped)
    recs[50].timestamp_ms = Some(4_923_000_000_000);
    // and one record that is not an event at all
    recs.push(lockstep_log::kafka::OutRecord {
        shard: 3,
        key: b"nobody",
        value: b"{not json",
        bincode: false,
        idempotency: None,
        body_hash: None,
        timestamp_ms: None,
    });
    // the first three records carry an Idempotency-Key (an older
    // lockstep's or a client's producer); two records of another body
    // under that key, in the second round, on shards that applied part of
    // the first, are dead letters (a shard that saw none of a request
    // cannot tell: lockstep's own ingest decides each key on one node)
    for (i, r) in recs.iter_mut().take(3).enumerate() {
        r.idempotency = Some(("ext-key", i as u32));
        r.body_hash = Some(1);
    }
    let mut reused = events(2, 5, seed ^ 0x5eed);
    for (k, r) in reused.iter_mut().enumerate() {
        r[0] = Value::BigInt(9_000_000 + k as i64);
        r[table.key] = sends[k][table.key].clone();
    }
    let reused_keys: Vec<String> = reused.iter().map(|r| r[table.key].to_string()).collect();
    let reused_values: Vec<String> = reused
        .iter()
        .map(|r| lockstep_io::render_json(r, &table.schema))
        .collect();
    for (k, (i, r)) in [0u32, 5].into_iter().zip(&reused).enumerate() {
        recs.push(lockstep_log::kafka::OutRecord {
            shard: table.shard_of(r),
            key: reused_keys[k].as_bytes(),
            value: reused_values[k].as_bytes(),
            bincode: false,
            idempotency: Some(("ext-key", i)),
            body_hash: Some(2),
            timestamp_ms: None,
        });
    }
    // in two rounds with checkpoints between (a checkpoint is when a shard
    // forgets old ids)
    rt.block_on(log.produce(&recs[..half])).unwrap();
    let mut first_ends = vec![0u64; table.shards as usize];
    for r in &recs[..half] {
        first_ends[r.shard as usize] += 1;
    }
    wait_checkpoints_cover(&cluster, &first_ends);
    rt.block_on(log.produce(&recs[half..])).unwrap();
    // the oracle: each partition's events in order, first delivery only
    let mut per_shard: Vec<Vec<Row>> = vec![Vec::new(); table.shards as usize];
    let mut seen = HashSet::new();
    for r in &sends {
        if seen.insert(r[0].to_string()) {
            per_shard[table.shard_of(r) as usize].push((*r).clone());
        }
    }
    let mut ends = vec![0u64; table.shards as usize];
    for r in &recs {
        ends[r.shard as usize] += 1;
    }
    wait_checkpoints_cover(&cluster, &ends);
    let (want, _) = batch_per_shard(&per_shard);
    let c = &cluster.live()[0];
    assert_rows_eq(
        &exported(c, cluster.root.path()),
        &want,
        "rows with duplicate deliveries",
    );
    let dead = c.get_json("/v1/segments?kind=dead").unwrap();
    let dead: u64 = dead["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(
        dead, 3,
        "the malformed record and the two under a reused key are dead letters"
    );
    let metrics = c.request("GET", "/metrics", None, &[]).unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    let dups = sends.len() - seen.len();
    assert!(
        text.contains(&format!("duplicate_events_total {dups}")),
        "{dups} duplicates counted: {text}"
    );
    assert!(
        text.contains("idempotency_key_reused_total 2"),
        "two records under a reused key counted: {text}"
    );
    assert!(
        !text.contains("dedup_entries 0\n") && text.contains("dedup_entries "),
        "the remembered ids are counted: {text}"
    );
}

/// The batch engine's rows of `view` of `sql` over each partition's events
/// in order, grouped per shard.
fn batch_view(sql: &str, view: &str, per_shard: &[Vec<Row>]) -> Vec<Row> {
    let catalog = Arc::new(lockstep_core::parse_pipeline(sql).unwrap());
    let mut engine = lockstep_core::Engine::new(catalog, &[view]).unwrap();
    let mut by_shard = vec![Vec::new(); per_shard.len()];
    let mut out = Vec::new();
    for r in per_shard.iter().flatten() {
        engine.push(r, &mut out).unwrap();
        for em in out.drain(..) {
            by_shard[em.shard as usize].push(em.row);
        }
    }
    by_shard.into_iter().flatten().collect()
}

#[test]
fn views_apply_rebuilds_every_shard_and_a_backfill_job_outlives_a_dead_node() {
    let Some(env) = env() else { return };
    let seed = seed();
    let _guard = SeedGuard(seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(env, 3);
    cluster.wait_state("every shard owned", Duration::from_secs(60), |st| {
        st["shards"]
            .as_array()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| !s["owner"].is_null()))
    });
    let rows = events(4000, 100, seed);
    let (a, b) = rows.split_at(2400);
    for (i, batch) in a.chunks(200).enumerate() {
        ingest(
            &cluster,
            jsonl(batch).as_bytes(),
            &format!("a-{i}"),
            &mut rng,
        );
    }
    // the existing view changes (a 2-hour window) and a view is added
    let new_sql = format!(
        "{}
CREATE VIEW clicks_per_campaign AS
SELECT event_id, user_id, event_time,
  COUNT(*) FILTER (WHERE kind = 'click') OVER (
    PARTITION BY user_id, campaign_id ORDER BY event_time
    RANGE BETWEEN INTERVAL '30' MINUTE PRECEDING AND CURRENT ROW) AS clicks_30m
FROM ad_events;",
        SQL.replace("INTERVAL '1' HOUR PRECEDING", "INTERVAL '2' HOUR PRECEDING")
    );
    let via = rng.random_range(0..3);
    let c = &cluster.live()[via];
    // another table is refused, and nothing changes
    let r = c
        .request(
            "POST",
            "/v1/views",
            Some(new_sql.replace("shards = 16", "shards = 4").as_bytes()),
            &[],
        )
        .unwrap();
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let r = c
        .request("POST", "/v1/views", Some(SQL.as_bytes()), &[])
        .unwrap();
    assert_eq!(r.json()["unchanged"], true, "{}", r.json());
    let r = c
        .request("POST", "/v1/views", Some(new_sql.as_bytes()), &[])
        .unwrap();
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&r.body),
        cluster.logs()
    );
    let j = r.json();
    assert_eq!(
        j["added"],
        serde_json::json!(["clicks_per_campaign"]),
        "{j}"
    );
    assert_eq!(j["changed"], serde_json::json!([VIEW]), "{j}");
    assert_eq!(j["version"], 2, "{j}");
    // every node runs the new views
    for node in cluster.live() {
        let v = node.get_json("/v1/views").unwrap();
        assert!(
            v["views"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == "clicks_per_campaign"),
            "{v}"
        );
    }
    for (i, batch) in b.chunks(200).enumerate() {
        if i == 2 {
            // a node restarted with the old pipeline file runs the
            // cluster's pipeline
            let victim = rng.random_range(0..3);
            cluster.kill(victim);
            cluster.restart(victim);
        }
        ingest(
            &cluster,
            jsonl(batch).as_bytes(),
            &format!("b-{i}"),
            &mut rng,
        );
    }
    let shards = catalog().tables[0].shards;
    let (per_shard, ends) = topic_rows(&cluster.env, &cluster.topic, shards);
    wait_checkpoints_cover(&cluster, &ends);
    let dir = cluster.root.path().to_path_buf();
    for node in cluster.live() {
        for view in [VIEW, "clicks_per_campaign"] {
            assert_rows_eq(
                &export_view(&node, &dir, &new_sql, view),
                &batch_view(&new_sql, view, &per_shard),
                &format!("{view} after views apply on a cluster"),
            );
        }
    }
    // a backfill job started just after a node died: the control plane
    // keeps it, and the dead node's shards are replayed by their next owners
    let dead = rng.random_range(0..3);
    cluster.kill(dead);
    let c = cluster.live()[0].clone();
    // (503 while a new leader is elected, if the dead node led)
    let started = Instant::now();
    let r = loop {
        let r = c
            .request(
                "POST",
                "/v1/backfill?wait=false",
                Some(br#"{"view": "clicks_per_campaign"}"#),
                &[],
            )
            .unwrap();
        if r.status != 503 || started.elapsed() > Duration::from_secs(60) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["job"].as_str().unwrap().to_string();
    let started = Instant::now();
    let job = loop {
        let j = c.get_json(&format!("/v1/backfill/{id}")).unwrap();
        if j["state"] != "running" {
            break j;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the backfill job never finished: {j}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(job["state"], "done", "{job}");
    let parts = job["shards"].as_array().unwrap();
    assert_eq!(parts.len(), shards as usize, "{job}");
    assert!(
        parts.iter().all(|p| p["node"] != dead as u64 + 1),
        "the dead node replayed shards: {job}"
    );
    let catalog = lockstep_core::parse_pipeline(&new_sql).unwrap();
    let schema = &catalog.view("clicks_per_campaign").unwrap().1.output;
    let mut got = Vec::new();
    for p in parts {
        let path = p["path"].as_str().unwrap();
        let b = c.get_bytes(&format!("/v1/objects/{path}")).unwrap();
        got.extend(lockstep_io::rows_from_parquet(path, bytes::Bytes::from(b), schema).unwrap());
    }
    assert_rows_eq(
        &got,
        &batch_view(&new_sql, "clicks_per_campaign", &per_shard),
        "backfill job rows after a node died",
    );
    if std::env::var("LOCKSTEP_SHOW_LOGS").is_ok() {
        eprintln!("{}", cluster.logs());
    }
}

fn backfill_request(view: &str) -> lockstep_api::BackfillRequest {
    lockstep_api::BackfillRequest {
        view: view.into(),
        from: None,
        to: None,
        sql: None,
    }
}

#[test]
fn a_member_joins_after_the_replicated_state_grew_past_a_few_mib() {
    let Some(env) = env() else { return };
    let mut cluster = Cluster::start(env, 1);
    cluster.wait_state("every shard owned", Duration::from_secs(60), |st| {
        st["shards"]
            .as_array()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| !s["owner"].is_null()))
    });
    let c = cluster.live()[0].clone();
    // an internal call without the cluster secret is refused before its
    // body is read: a caller sending a slow 90 MiB body gets its 401 while
    // the body is still unsent (before, the node waited for the body, with
    // no deadline)
    {
        use std::io::{Read, Write};
        let host = c.base().trim_start_matches("http://").to_string();
        let mut s = TcpStream::connect(&host).unwrap();
        write!(
            s,
            "POST /internal/raft/append HTTP/1.1\r\nHost: x\r\nContent-Length: 94371840\r\n\r\n"
        )
        .unwrap();
        s.write_all(&[0u8; 4096]).unwrap();
        s.flush().unwrap();
        // a bound on the wait, not a measurement: before the fix no answer
        // ever came
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = [0u8; 64];
        let n = s
            .read(&mut head)
            .expect("an answer before the body is sent");
        let head = String::from_utf8_lossy(&head[..n]);
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    }
    // three pipelines of ~900 KiB each (a long comment): ~2.7 MiB of log
    // entries a new member must receive, beyond axum's default 2 MiB body
    for i in 0..3 {
        let padding = format!("-- {}\n", "x".repeat(900 << 10));
        let sql = format!(
            "{padding}{}",
            SQL.replace("AS impressions_1h", &format!("AS impressions_1h_v{i}"))
        );
        let applied = c.apply_views(sql.as_bytes()).unwrap();
        assert!(applied.applied, "{applied:?}");
    }
    // more than the cap is refused
    let huge = format!("-- {}\n{SQL}", "x".repeat(1 << 20));
    let err = c.apply_views(huge.as_bytes()).unwrap_err();
    assert_eq!(err.status(), Some(413), "{err}");
    // a second node joins, catches up on all of it and takes shards
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cluster.add_node())).is_err() {
        panic!("node 2 did not come up:\n{}", cluster.logs());
    }
    cluster.wait_state(
        "node 2 active with shards",
        Duration::from_secs(120),
        |st| {
            st["nodes"].as_array().is_some_and(|ns| {
                ns.iter().any(|n| {
                    n["id"] == 2 && n["state"] == "active" && n["shards"].as_u64() > Some(0)
                })
            }) && st["pipeline_version"].as_u64() >= Some(4)
        },
    );
    let v2 = cluster.live()[1].views().unwrap();
    assert!(
        v2.views[0]
            .columns
            .iter()
            .any(|c| c.name == "impressions_1h_v2"),
        "the new member runs the last pipeline"
    );
}

/// `--kafka-property` reaches the node's Kafka clients: a node given
/// librdkafka properties starts, becomes ready and takes events; an
/// unknown property stops start-up naming `kafka.properties`, in
/// librdkafka's words.
#[test]
fn kafka_properties_reach_the_clients() {
    let Some(env) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pipeline.sql"), SQL).unwrap();
    let pipeline = dir.path().join("pipeline.sql");
    let topic = format!("ad_events-props-{}-{}", std::process::id(), rand_suffix());
    let e = lockstepd_refuses(
        &dir.path().join("refused"),
        &[
            "--node-id",
            "node-1",
            "--cluster-secret",
            SECRET,
            "--kafka-brokers",
            &env.kafka,
            "--kafka-topic",
            &topic,
            "--pipeline",
            pipeline.to_str().unwrap(),
            "--kafka-property",
            "no.such.property=1",
        ],
    );
    assert!(
        e.contains("kafka.properties") && e.contains("no.such.property"),
        "{e}"
    );
    let store = format!("s3://{}/props-{topic}", env.bucket);
    let node = dir.path().join("node");
    std::fs::create_dir_all(&node).unwrap();
    let d = Daemon::start_sql(
        &node,
        free_addr(),
        SQL,
        &[
            ("node-id", "node-1"),
            ("cluster-secret", SECRET),
            ("kafka-brokers", env.kafka.as_str()),
            ("kafka-topic", topic.as_str()),
            ("object-store", store.as_str()),
            ("kafka-property", "client.rack=rack-a"),
            ("kafka-property", "socket.keepalive.enable=true"),
        ],
        &[
            ("AWS_ENDPOINT_URL", env.s3.as_str()),
            ("AWS_ACCESS_KEY_ID", "lockstep"),
            ("AWS_SECRET_ACCESS_KEY", "lockstep-secret"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let c = d.client();
    let start = Instant::now();
    while c.request("GET", "/readyz", None, &[]).unwrap().status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never ready\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // (a lone node is given its shards one by one: 503 until it holds
    // the events' shards)
    let rows = events(200, 10, 3);
    let start = Instant::now();
    loop {
        let r = c
            .request(
                "POST",
                "/v1/tables/ad_events/events",
                Some(jsonl(&rows).as_bytes()),
                &[("Idempotency-Key", "props-1")],
            )
            .unwrap();
        if r.status == 200 {
            break;
        }
        assert!(
            r.status == 503 && start.elapsed() < Duration::from_secs(60),
            "{} {}\n{}",
            r.status,
            String::from_utf8_lossy(&r.body),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let start = Instant::now();
    while c.status().map_or(0, |s| s.events) < 200 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the events never came through the topic\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
