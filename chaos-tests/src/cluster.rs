//! The cluster under test as the harness drives it: its nodes (started
//! together with the same flags, as an operator's service manager does),
//! the client targets, and the faults carried out on it.

use crate::faults::{Fault, Step};
use crate::net::{S3Fault, S3Proxy};
use crate::procs::{Broker, Node, NodeSpec};

/// lockstepd's exit status when its local storage failed (fail-stop:
/// restart it; crates/daemon/src/fatal.rs).
const EXIT_STORAGE: i32 = 70;
use crate::workload::{Clients, Targets};
use anyhow::{bail, Context};
use lockstep_api::{Client, ClusterStatus, MemberState};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A node the workload and the monitor may talk to.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: String,
    pub addr: String,
    pub pid: Option<u32>,
}

/// What one fault step did, for the verdict and the report.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    pub index: usize,
    pub fault: Fault,
    pub nodes: Vec<String>,
    /// Seconds since the run started.
    pub started: f64,
    pub healed: f64,
    /// When every node was ready again (`None`: not within the bound).
    pub recovered: Option<f64>,
    /// Filled in from the history at the end: the longest time within the
    /// fault and its recovery with no acknowledged ingest, or no served
    /// answer, and when each resumed after the heal.
    pub unavailable_seconds: f64,
    pub ingest_resumed_after_heal: Option<f64>,
    pub serving_resumed_after_heal: Option<f64>,
    pub note: String,
}

pub struct Cluster {
    pub spec: NodeSpec,
    pub root: PathBuf,
    /// Members, in ordinal order.
    pub nodes: Vec<Node>,
    /// Nodes drained and removed (their directories stay).
    pub removed: Vec<Node>,
    pub targets: Targets,
    pub probes: Arc<RwLock<Vec<Target>>>,
    pub admin: Clients,
    /// In front of the object store (not with `--target`).
    pub s3: Option<S3Proxy>,
    /// The Kafka-protocol broker every node reads and writes (not with
    /// `--target`).
    pub broker: Option<Broker>,
    /// Nodes started again after they stopped on a storage failure.
    pub restarted: Vec<String>,
    /// The node whose disk the last `disk-full` filled: the one node that
    /// may stop on a storage failure (until the next step).
    disk_filled: Option<String>,
    next_ordinal: usize,
}

impl Cluster {
    /// `n` nodes numbered from 0, started at once, each with every node's
    /// address as its seeds and `--bootstrap-expect n`.
    pub fn start(
        spec: NodeSpec,
        root: PathBuf,
        n: usize,
        s3: S3Proxy,
        broker: Broker,
    ) -> anyhow::Result<Cluster> {
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(Node::new(i, &root, &spec)?);
        }
        let seeds = nodes
            .iter()
            .map(|n| n.ingress.addr.clone())
            .collect::<Vec<_>>()
            .join(",");
        for node in &mut nodes {
            node.launch(&spec, &seeds)?;
        }
        for node in &mut nodes {
            node.wait_up(Duration::from_secs(60))?;
        }
        Ok(Cluster::of(spec, root, nodes, Some(s3), Some(broker)))
    }

    /// The cluster of `nodes`, its targets set.
    fn of(
        spec: NodeSpec,
        root: PathBuf,
        nodes: Vec<Node>,
        s3: Option<S3Proxy>,
        broker: Option<Broker>,
    ) -> Cluster {
        let next_ordinal = nodes.iter().map(|n| n.ordinal + 1).max().unwrap_or(0);
        let c = Cluster {
            admin: Clients::with_timeout(&spec.token, Duration::from_secs(30)),
            spec,
            root,
            nodes,
            removed: Vec::new(),
            targets: Arc::new(RwLock::new(Vec::new())),
            probes: Arc::new(RwLock::new(Vec::new())),
            s3,
            broker,
            restarted: Vec::new(),
            disk_filled: None,
            next_ordinal,
        };
        c.update_targets();
        c
    }

    /// A running cluster (`--target`): its nodes answer at `addrs`. With
    /// `proxies` (one `(ingress, egress)` pair per address, in order), each
    /// node must advertise its ingress and send through its egress, which
    /// is checked. Waits up to `bound` for every node to answer.
    pub fn attach(
        addrs: &[String],
        token: &str,
        root: PathBuf,
        hook: Option<String>,
        proxies: Option<Vec<(crate::net::Ingress, crate::net::Egress)>>,
        bound: Duration,
    ) -> anyhow::Result<Cluster> {
        let probe = Clients::with_timeout(token, Duration::from_secs(3));
        let start = Instant::now();
        let mut ids = Vec::new();
        for addr in addrs {
            let status = loop {
                match probe.at(addr).status() {
                    Ok(s) => break s,
                    Err(e) if start.elapsed() > bound => {
                        bail!("{addr} did not answer GET /v1/status within {bound:?}: {e}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            };
            let ordinal: usize = status
                .node_id
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .with_context(|| {
                    format!("{addr}'s node id `{}` ends in no number", status.node_id)
                })?;
            ids.push((status.node_id, ordinal));
        }
        let mut proxies = proxies.map(Vec::into_iter);
        let mut nodes = Vec::new();
        for (addr, (id, ordinal)) in addrs.iter().zip(ids) {
            let pair = match proxies.as_mut().and_then(Iterator::next) {
                Some(pair) => pair,
                // never used: no network fault is allowed without proxies
                None => (
                    crate::net::Ingress::start(addr)?,
                    crate::net::Egress::start()?,
                ),
            };
            nodes.push(Node::remote(&id, ordinal, addr, &root, pair, hook.clone())?);
        }
        let spec = NodeSpec {
            token: token.to_string(),
            bootstrap_expect: nodes.len(),
            ..NodeSpec::default()
        };
        Ok(Cluster::of(spec, root, nodes, None, None))
    }

    /// With proxies: fails unless every member advertises its ingress
    /// proxy (else network faults would not reach it).
    pub fn check_proxied(&self) -> anyhow::Result<()> {
        let state = self
            .states()
            .into_iter()
            .next()
            .context("no member answers GET /v1/cluster")?;
        for n in &self.nodes {
            let m = state
                .nodes
                .iter()
                .find(|m| m.id == n.ordinal as u64)
                .with_context(|| format!("{} is not a member of the cluster", n.id()))?;
            if m.addr != n.ingress.addr {
                bail!(
                    "{} advertises {}, not the harness's proxy {}: start it with --advertise {} and LOCKSTEP_PEER_PROXY={}",
                    n.id(),
                    m.addr,
                    n.ingress.addr,
                    n.ingress.addr,
                    n.egress.url
                );
            }
        }
        Ok(())
    }

    /// Tells the workload and the monitor where the members are now.
    pub fn update_targets(&self) {
        let live: Vec<Target> = self
            .nodes
            .iter()
            .map(|n| Target {
                id: n.id(),
                addr: n.listen.clone(),
                pid: n.pid(),
            })
            .collect();
        *self.targets.write().expect("targets") = live
            .iter()
            .map(|t| (t.id.clone(), t.addr.clone()))
            .collect();
        *self.probes.write().expect("probes") = live;
    }

    fn client(&self, i: usize) -> Client {
        self.admin.at(&self.nodes[i].listen)
    }

    /// The cluster as the members that answer see it: the first answer,
    /// and every answer.
    pub fn states(&self) -> Vec<ClusterStatus> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.running() && !n.paused)
            .filter_map(|(i, _)| {
                Clients::with_timeout(&self.spec.token, Duration::from_secs(3))
                    .at(&self.nodes[i].listen)
                    .cluster()
                    .ok()
                    .flatten()
            })
            .collect()
    }

    /// The member that leads, as the first member to answer says.
    pub fn leader(&self) -> Option<usize> {
        let id = self.states().into_iter().find_map(|s| s.leader)?;
        self.nodes.iter().position(|n| n.ordinal as u64 == id)
    }

    /// Fails if a member's process ended on its own, unless it stopped
    /// because its local storage failed (status 70, lockstepd's
    /// fail-stop): that one is started again, as systemd's
    /// `Restart=on-failure` or Kubernetes would, and counted.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let (spec, seeds) = (self.spec.clone(), self.seeds());
        for n in &mut self.nodes {
            if n.died() {
                if n.exit_code == Some(EXIT_STORAGE)
                    && self.disk_filled.as_deref() == Some(n.id().as_str())
                {
                    eprintln!(
                        "  {} stopped: its storage failed (status {EXIT_STORAGE}); starting it again",
                        n.id()
                    );
                    self.restarted.push(n.id());
                    n.set_seeds(&seeds);
                    n.restart(&spec)?;
                    n.wait_up(Duration::from_secs(60))?;
                    continue;
                }
                bail!(
                    "{}; see {}",
                    n.exited.clone().unwrap_or_default(),
                    n.log().display()
                );
            }
        }
        self.update_targets();
        Ok(())
    }

    /// Every member's address, for `--seeds`.
    fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.ingress.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every member runs and is ready (`/readyz`), every
    /// shard has an owner and is not moving, no member is down, there are
    /// as many voters as the cluster keeps (3, or every member of a smaller
    /// one), and two more checkpoint epochs have completed on every shard
    /// (checkpoints go on).
    pub fn wait_recovered(&mut self, bound: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let probe = Clients::with_timeout(&self.spec.token, Duration::from_secs(3));
        let mut why = String::new();
        let voters = self.nodes.len().min(3);
        // the baseline: the newest completed epoch once every running node
        // answered (a node just restarted may lag behind the others)
        let mut first_epoch: Option<u64> = None;
        while start.elapsed() < bound {
            self.check_alive()?;
            let ready = self.nodes.iter().all(|n| {
                n.running()
                    && probe
                        .at(&n.listen)
                        .request("GET", "/readyz", None, &[])
                        .is_ok_and(|r| r.status == 200)
            });
            let states = self.states();
            let placed = states.first().is_some_and(|s| {
                s.shards
                    .iter()
                    .all(|sh| sh.owner.is_some() && sh.moving_to.is_none())
                    && s.nodes.iter().all(|m| m.state != MemberState::Down)
            });
            let voting = states
                .first()
                .is_some_and(|s| s.nodes.iter().filter(|m| m.voter).count() >= voters);
            let completed = states.iter().map(|s| s.completed_epoch).max();
            let running = self.nodes.iter().filter(|n| n.running()).count();
            if first_epoch.is_none() && states.len() == running {
                first_epoch = completed;
            }
            let checkpointing = completed
                .zip(first_epoch)
                .is_some_and(|(now, first)| now >= first + 2);
            if ready && placed && voting && checkpointing {
                return Ok(start.elapsed());
            }
            why = format!("every node ready: {ready}; every shard placed and no member down: {placed}; {voters} voters: {voting}; checkpoint epochs completing: {checkpointing} (completed {completed:?}, {first_epoch:?} when the wait began)");
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("the cluster did not recover within {bound:?} ({why})")
    }

    /// Waits until, for every shard, its owner has processed its whole
    /// log, its watermark has reached `min_watermark_ms` (the closing
    /// events were read), and its committed checkpoint covers the log.
    pub fn wait_committed(&self, bound: Duration, min_watermark_ms: i64) -> anyhow::Result<()> {
        let start = Instant::now();
        let probe = Clients::with_timeout(&self.spec.token, Duration::from_secs(5));
        let mut why = String::new();
        while start.elapsed() < bound {
            let statuses: Vec<lockstep_api::NodeStatus> = self
                .nodes
                .iter()
                .filter_map(|n| probe.at(&n.listen).status().ok())
                .collect();
            let committed = self.states().into_iter().next();
            let mut behind = Vec::new();
            if let Some(c) = &committed {
                for sh in &c.shards {
                    let st = statuses
                        .iter()
                        .flat_map(|s| &s.shards)
                        .find(|x| x.shard == sh.shard);
                    let ok = st.is_some_and(|st| {
                        st.lag == 0
                            && st.offset == st.log_end
                            && st
                                .watermark
                                .as_deref()
                                .and_then(crate::workload::parse_rfc3339)
                                .is_some_and(|w| w >= min_watermark_ms)
                            && sh.checkpoint.as_ref().map(|c| c.offset) == Some(st.log_end)
                    });
                    if !ok {
                        behind.push(format!(
                            "{}: {}",
                            sh.shard,
                            st.map_or("no owner answers".to_string(), |st| format!(
                                "offset {} of {}, watermark {:?}, checkpoint {:?}",
                                st.offset,
                                st.log_end,
                                st.watermark,
                                sh.checkpoint.as_ref().map(|c| c.offset)
                            ))
                        ));
                    }
                }
                if behind.is_empty() {
                    return Ok(());
                }
            }
            why = behind.join("; ");
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!("the checkpoints did not cover the log within {bound:?}: {why}")
    }

    fn pick(&self, step: &Step) -> usize {
        step.pick as usize % self.nodes.len()
    }

    /// Carries out one step: the fault, held for `step.hold`, then healed.
    /// Returns the nodes it acted on and a note.
    pub fn inject(
        &mut self,
        step: &Step,
        healed: &mut dyn FnMut(),
    ) -> anyhow::Result<(Vec<String>, String)> {
        let hold = step.hold;
        self.disk_filled = None;
        match step.fault {
            Fault::Kill | Fault::LeaderKill => {
                let i = if step.fault == Fault::LeaderKill {
                    self.leader().context("no leader to kill")?
                } else {
                    self.pick(step)
                };
                self.nodes[i].kill()?;
                self.update_targets();
                std::thread::sleep(hold);
                let (spec, seeds) = (self.spec.clone(), self.seeds());
                self.nodes[i].set_seeds(&seeds);
                self.nodes[i].restart(&spec)?;
                self.nodes[i].wait_up(Duration::from_secs(60))?;
                self.update_targets();
                healed();
                Ok((vec![self.nodes[i].id()], "SIGKILL, restarted".into()))
            }
            Fault::Pause => {
                let i = self.pick(step);
                self.nodes[i].pause()?;
                std::thread::sleep(hold);
                self.nodes[i].resume()?;
                healed();
                Ok((vec![self.nodes[i].id()], "SIGSTOP, SIGCONT".into()))
            }
            Fault::Partition => {
                let i = self.pick(step);
                self.nodes[i].ingress.cut();
                self.nodes[i].egress.cut();
                std::thread::sleep(hold);
                self.nodes[i].ingress.heal();
                self.nodes[i].egress.heal();
                healed();
                Ok((vec![self.nodes[i].id()], "cut off both ways".into()))
            }
            Fault::OneWay => {
                let i = self.pick(step);
                self.nodes[i].ingress.cut();
                std::thread::sleep(hold);
                self.nodes[i].ingress.heal();
                healed();
                Ok((
                    vec![self.nodes[i].id()],
                    "its calls go out, none come in".into(),
                ))
            }
            Fault::Latency => {
                for n in &self.nodes {
                    n.ingress.delay(30, 60);
                }
                std::thread::sleep(hold);
                for n in &self.nodes {
                    n.ingress.heal();
                }
                healed();
                Ok((
                    self.nodes.iter().map(Node::id).collect(),
                    "30–90 ms on every chunk into each node".into(),
                ))
            }
            Fault::RollingRestart => {
                let (spec, seeds) = (self.spec.clone(), self.seeds());
                for i in 0..self.nodes.len() {
                    // a node that does not end cleanly on SIGTERM (its
                    // final checkpoint) is a finding
                    if !self.nodes[i].stop(Duration::from_secs(60))? {
                        bail!(
                            "{} did not exit cleanly within 60 s of SIGTERM; see {}",
                            self.nodes[i].id(),
                            self.nodes[i].log().display()
                        );
                    }
                    self.update_targets();
                    self.nodes[i].set_seeds(&seeds);
                    self.nodes[i].restart(&spec)?;
                    self.nodes[i].wait_up(Duration::from_secs(60))?;
                    self.update_targets();
                    self.wait_recovered(Duration::from_secs(120))
                        .with_context(|| format!("after restarting {}", self.nodes[i].id()))?;
                }
                healed();
                Ok((
                    self.nodes.iter().map(Node::id).collect(),
                    "each node SIGTERMed (exit 0) and started again in turn".into(),
                ))
            }
            Fault::DrainAdd => self.drain_add(step),
            Fault::BrokerRestart => {
                let broker = self
                    .broker
                    .as_mut()
                    .context("broker-restart needs the harness's own broker")?;
                if !broker.durable() {
                    bail!("the broker is on in-memory storage: restarting it would lose the log");
                }
                broker.kill();
                std::thread::sleep(hold);
                broker.restart()?;
                healed();
                Ok((
                    Vec::new(),
                    format!(
                        "the broker SIGKILLed, down {:.1} s, started again on its SQLite storage",
                        hold.as_secs_f64()
                    ),
                ))
            }
            Fault::S3Faults => {
                let f = [S3Fault::SlowDown, S3Fault::InternalError, S3Fault::Hang]
                    [step.pick as usize % 3];
                let s3 = self
                    .s3
                    .as_ref()
                    .context("s3-faults needs the harness's own store")?;
                s3.set(f);
                std::thread::sleep(hold);
                s3.set(S3Fault::None);
                healed();
                Ok((
                    self.nodes.iter().map(Node::id).collect(),
                    format!("every S3 request: {}", f.name()),
                ))
            }
            Fault::DiskFull => {
                let i = self.pick(step);
                self.disk_filled = Some(self.nodes[i].id());
                let filled = self.nodes[i].fill_disk()?;
                std::thread::sleep(hold);
                self.nodes[i].free_disk();
                healed();
                Ok((
                    vec![self.nodes[i].id()],
                    format!("its data filesystem filled ({} MiB written)", filled >> 20),
                ))
            }
            Fault::ClockSkew => {
                let i = self.pick(step);
                // 30 s to 5 min, ahead or behind, from the step's pick
                let secs = 30 + i64::from(step.pick / 2 % 271);
                let secs = if step.pick.is_multiple_of(2) {
                    secs
                } else {
                    -secs
                };
                // libfaketime must be in the process, or the skew is a no-op
                let maps = self.nodes[i]
                    .pid()
                    .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/maps")).ok())
                    .unwrap_or_default();
                if !maps.contains("libfaketime") {
                    bail!(
                        "{} does not run under libfaketime (it was not preloaded): no clock skew",
                        self.nodes[i].id()
                    );
                }
                self.nodes[i].skew(secs)?;
                // the node's own clock, as its HTTP `Date` header says.
                // libfaketime re-reads the offset file once its cache is
                // more than a whole second old (it compares whole seconds),
                // so the step shows within about 2 s: poll up to 8 s
                let asked = Instant::now();
                let mut seen = None;
                while asked.elapsed() < Duration::from_secs(8) {
                    std::thread::sleep(Duration::from_millis(250));
                    seen = clock_offset(&self.nodes[i].listen);
                    if secs < 0 && asked.elapsed() > Duration::from_millis(2500) {
                        break;
                    }
                    if seen.is_some_and(|o| (o - secs).abs() <= 3) {
                        break;
                    }
                }
                std::thread::sleep(hold);
                self.nodes[i].skew(0)?;
                healed();
                // (a clock set back is not seen there: the HTTP server
                // renews its cached Date only once its clock passes the
                // cached one's next second)
                let seen = match seen {
                    Some(o) if (o - secs).abs() <= 3 => format!("its Date header was {o:+} s off"),
                    Some(_) if secs < 0 => "behind: not seen in its Date header, which its HTTP server caches".into(),
                    Some(o) => bail!(
                        "{}'s clock was to run {secs:+} s off, and its Date header was {o:+} s off: libfaketime did not take",
                        self.nodes[i].id()
                    ),
                    None => "its Date header could not be read".into(),
                };
                Ok((
                    vec![self.nodes[i].id()],
                    format!("its wall clock {secs:+} s ({seen})"),
                ))
            }
        }
    }

    /// Drains the picked node, stops and removes it, and adds a new one.
    fn drain_add(&mut self, step: &Step) -> anyhow::Result<(Vec<String>, String)> {
        let i = self.pick(step);
        let id = self.nodes[i].id();
        let via = (i + 1) % self.nodes.len();
        let ordinal = self.nodes[i].ordinal as u64;
        self.post_until_ok(via, &format!("/v1/cluster/nodes/{id}/drain"), "drain")?;
        let start = Instant::now();
        loop {
            let drained = self.states().first().is_some_and(|s| {
                s.shards
                    .iter()
                    .all(|sh| sh.owner != Some(ordinal) && sh.moving_to != Some(ordinal))
            });
            if drained {
                break;
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("{id} still owns shards 120 s after its drain");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let mut gone = self.nodes.remove(i);
        self.update_targets();
        if !gone.stop(Duration::from_secs(60))? {
            bail!(
                "the drained {id} did not exit cleanly within 60 s of SIGTERM; see {}",
                gone.log().display()
            );
        }
        // nothing reaches its old address any more
        gone.ingress.cut();
        // removed once the others see it down (409 until then)
        self.post_until_ok(0, &format!("/v1/cluster/nodes/{id}/remove"), "remove")?;
        self.removed.push(gone);
        let mut added = Node::new(self.next_ordinal, &self.root, &self.spec)?;
        self.next_ordinal += 1;
        let seeds = self
            .nodes
            .iter()
            .map(|n| n.ingress.addr.clone())
            .chain(std::iter::once(added.ingress.addr.clone()))
            .collect::<Vec<_>>()
            .join(",");
        added.launch(&self.spec, &seeds)?;
        added.wait_up(Duration::from_secs(60))?;
        let new_id = added.id();
        let new_ordinal = added.ordinal as u64;
        self.nodes.push(added);
        self.update_targets();
        for n in &mut self.nodes {
            n.set_seeds(&seeds);
        }
        // it takes shards (the planner balances onto it)
        let start = Instant::now();
        while !self
            .states()
            .first()
            .is_some_and(|s| s.shards.iter().any(|sh| sh.owner == Some(new_ordinal)))
        {
            if start.elapsed() > Duration::from_secs(120) {
                bail!("the added {new_id} owns no shard after 120 s");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok((
            vec![id.clone(), new_id.clone()],
            format!("{id} drained, stopped and removed; {new_id} added"),
        ))
    }

    /// POSTs to member `via` until it answers 200, retrying other answers
    /// (a 503 in an election, a 409 until a stopped node is seen down) for
    /// up to 120 s.
    fn post_until_ok(&self, via: usize, path: &str, what: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let r = self.client(via).request("POST", path, Some(b""), &[]);
            if r.as_ref().is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(120) {
                let why = match r {
                    Ok(r) => format!("HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body)),
                    Err(e) => e.to_string(),
                };
                bail!("{what} ({path}) not done within 120 s: {why}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops every node gracefully.
    pub fn stop_all(&mut self) {
        for n in self.nodes.iter_mut().filter(|n| !n.is_remote()) {
            let _ = n.stop(Duration::from_secs(30));
        }
    }
}

/// How far the node at `addr` sees the time from this machine's clock, in
/// whole seconds, by its HTTP `Date` header.
fn clock_offset(addr: &str) -> Option<i64> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    let r = agent.get(&format!("http://{addr}/healthz")).call().ok()?;
    let date = r.headers().get("date")?.to_str().ok()?.to_string();
    let theirs = parse_http_date(&date)?;
    let ours = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some(theirs - ours)
}

/// `Mon, 07 Dec 2026 06:53:22 GMT` as seconds since the Unix epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let mut p = s.split_whitespace().skip(1);
    let day: i64 = p.next()?.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| Some(*m) == p.clone().next())? as i64
        + 1;
    p.next();
    let year: i64 = p.next()?.parse().ok()?;
    let hms: Vec<i64> = p
        .next()?
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 {
        return None;
    }
    let ms = crate::workload::parse_rfc3339(&format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        hms[0], hms[1], hms[2]
    ))?;
    Some(ms / 1000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates_are_read() {
        assert_eq!(
            super::parse_http_date("Thu, 01 Jan 1970 00:01:05 GMT"),
            Some(65)
        );
        assert_eq!(
            super::parse_http_date("Fri, 01 Mar 2024 00:00:00 GMT"),
            Some(crate::workload::GENERATED_FROM_MS / 1000)
        );
        assert_eq!(super::parse_http_date("yesterday"), None);
    }
}
