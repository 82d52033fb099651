//! One node: the pieces a running lockstepd shares (pipeline, log, state
//! store, object store, shard actors, metrics) and its start-up.

use crate::clock::now_ms;
use crate::config::{Config, Fsync};
use crate::metrics::Metrics;
use crate::pipeline::{cluster_pipeline, table_fingerprint, Pipeline};
use crate::segments::open_store;
use crate::shard::{ShardError, ShardMsg, Supervisor};
use crate::store::StateStore;
use crate::writer::{self, WriteReq};
use lockstep_core::plan::{Catalog, Table};
use lockstep_log::{EmbeddedLog, FsyncPolicy};
use object_store::ObjectStore;
use ractor::{Actor, ActorRef};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// What every part of a running node shares.
pub struct NodeCtx {
    pub config: Config,
    /// The table: fixed for the data directory.
    pub table: Table,
    pipeline: RwLock<Arc<Pipeline>>,
    /// Held for writing while `views apply` swaps the pipeline: ingest
    /// holds it for reading, so no event enters during the swap.
    pub ingest_gate: tokio::sync::RwLock<()>,
    /// One `views apply` at a time.
    pub apply_lock: tokio::sync::Mutex<()>,
    /// One compaction merge at a time on this node.
    pub compactions: tokio::sync::Semaphore,
    /// Backfills reading the archive on this node now: segments a
    /// compaction replaced are deleted only when none is (a backfill reads
    /// the segments it listed as its replay reaches them).
    pub archive_readers: std::sync::atomic::AtomicUsize,
    pub log: Arc<EmbeddedLog>,
    pub state: Arc<StateStore>,
    pub objects: Arc<dyn ObjectStore>,
    /// The live actor of each shard (replaced when the supervisor restarts it).
    pub shards: RwLock<Vec<Option<ActorRef<ShardMsg>>>>,
    /// Next log offset each shard has processed up to (for lag and
    /// backpressure).
    pub processed: Vec<AtomicU64>,
    /// Next log offset the ingest writer has appended up to, per shard
    /// (one node; with `processed`, the shards' backlog).
    pub appended: Vec<AtomicU64>,
    pub restarts: Vec<AtomicU64>,
    /// Per shard: why it cannot go on reading its log (cluster: records it
    /// needs are gone from the topic), until an operator acts.
    pub failed: Vec<std::sync::Mutex<Option<String>>>,
    /// Per shard: its actor is rebuilding under a new pipeline (requests
    /// for it answer 503 instead of waiting in its mailbox).
    pub rebuilding: Vec<std::sync::atomic::AtomicBool>,
    /// Held by a shard's running checkpoint task; recovery takes it first,
    /// so a restarted actor never loads under a predecessor's commit.
    pub checkpoint_locks: Vec<Arc<tokio::sync::Mutex<()>>>,
    /// The owner epoch this node holds each shard under (0: not held
    /// here; one node holds all, as under epoch 1).
    pub held: Vec<AtomicU64>,
    /// Cluster mode: the control plane and the Kafka log.
    pub cluster: Option<Arc<crate::cluster::ClusterCtx>>,
    pub metrics: Metrics,
    pub stopping: AtomicBool,
    pub started_ms: i64,
    /// Random id of this data directory, in every object name it writes.
    pub store_id: String,
}

impl NodeCtx {
    /// The shards that cannot go on reading their log, with why.
    pub fn failed_shards(&self) -> Vec<(u32, String)> {
        self.failed
            .iter()
            .enumerate()
            .filter_map(|(s, f)| Some((s as u32, f.lock().expect("failed lock").clone()?)))
            .collect()
    }

    /// Events appended to the log on this node and not yet through their
    /// shard actors.
    pub fn backlog(&self) -> u64 {
        self.appended
            .iter()
            .zip(&self.processed)
            .map(|(a, p)| {
                a.load(Ordering::Relaxed)
                    .saturating_sub(p.load(Ordering::Relaxed))
            })
            .sum()
    }

    /// The pipeline now running.
    pub fn pipeline(&self) -> Arc<Pipeline> {
        self.pipeline.read().expect("pipeline lock").clone()
    }

    pub fn set_pipeline(&self, p: Arc<Pipeline>) {
        *self.pipeline.write().expect("pipeline lock") = p;
    }

    /// A segment file extension: this data directory's id, then `format`.
    pub fn ext(&self, format: &str) -> String {
        format!("{}.{format}", self.store_id)
    }

    /// Whether this node holds shard `s` (runs, or should run, its actor).
    pub fn holds(&self, s: u32) -> bool {
        self.held[s as usize].load(std::sync::atomic::Ordering::Relaxed) != 0
    }

    pub fn shard(&self, s: u32) -> Option<ActorRef<ShardMsg>> {
        self.shards
            .read()
            .expect("shard registry")
            .get(s as usize)
            .cloned()
            .flatten()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("config key `pipeline`: cannot read {path}: {source}")]
    ReadPipeline {
        path: String,
        source: std::io::Error,
    },
    #[error("config key `pipeline`: {path}:{line}:{column}: {message}")]
    Sql {
        path: String,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("config key `pipeline`: {0}")]
    Pipeline(String),
    #[error("config key `data_dir`: {0}")]
    DataDir(String),
    #[error("config key `object_store`: {0}")]
    ObjectStore(String),
    #[error("starting the shard actors: {0}")]
    Actors(String),
    #[error("config key `{key}`: {message}")]
    Cluster { key: &'static str, message: String },
}

/// A started node: its shared context and the ingest writer's queue.
pub struct Node {
    pub ctx: Arc<NodeCtx>,
    pub writer: tokio::sync::mpsc::Sender<WriteReq>,
    /// The Idempotency-Keys the writer accepted.
    pub keys: writer::Keys,
    supervisor: ActorRef<crate::shard::SupMsg>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

/// Reads and checks the pipeline: exactly one table, and its views.
pub fn load_pipeline(path: &std::path::Path) -> Result<(String, Catalog), StartError> {
    let sql = std::fs::read_to_string(path).map_err(|source| StartError::ReadPipeline {
        path: path.display().to_string(),
        source,
    })?;
    if sql.len() > crate::pipeline::MAX_SQL_BYTES {
        return Err(StartError::Pipeline(format!(
            "{} is {} bytes; a pipeline may be at most {} (config key `pipeline`)",
            path.display(),
            sql.len(),
            crate::pipeline::MAX_SQL_BYTES
        )));
    }
    let catalog = lockstep_core::parse_pipeline(&sql).map_err(|e| StartError::Sql {
        path: path.display().to_string(),
        line: e.line,
        column: e.column,
        message: e.message.clone(),
    })?;
    if catalog.tables.len() != 1 {
        return Err(StartError::Pipeline(format!(
            "{} declares {} tables; a node runs one table (give each table its own node)",
            path.display(),
            catalog.tables.len()
        )));
    }
    if catalog.views.is_empty() {
        return Err(StartError::Pipeline(format!(
            "{} declares no views",
            path.display()
        )));
    }
    Ok((sql, catalog))
}

impl Node {
    pub async fn start(config: Config) -> Result<Node, StartError> {
        Node::start_with(config, |_| {}).await
    }

    /// Like [`Node::start`]; in a cluster, `serving` gets the control-plane
    /// member before it joins, to serve its internal routes (the leader
    /// calls back while adding it).
    pub async fn start_with(
        config: Config,
        serving: impl FnOnce(&Arc<lockstep_cluster::ControlPlane>),
    ) -> Result<Node, StartError> {
        let (sql, catalog) = load_pipeline(&config.pipeline)?;
        let table = catalog.tables[0].clone();
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartError::DataDir(format!("{}: {e}", config.data_dir.display())))?;
        let (log, state) = open_data_dir(&config, &table)?;
        let objects =
            open_store(&config.object_store).map_err(|e| StartError::ObjectStore(e.to_string()))?;
        let store_id = state
            .store_id()
            .map_err(|e| StartError::DataDir(e.to_string()))?;
        let n = table.shards as usize;
        let cluster = match &config.cluster {
            Some(c) => Some(start_cluster(&config, c, &table, serving).await?),
            None => None,
        };
        let pipeline = match &cluster {
            Some(cl) => cluster_pipeline(&cl.state().pipeline, &table)
                .map_err(|e| StartError::Pipeline(e.to_string()))?
                .unwrap_or_else(|| Pipeline::new(sql, catalog)),
            None => Pipeline::new(sql, catalog),
        };
        if pipeline.version > 0 {
            tracing::info!(
                version = pipeline.version,
                views = ?pipeline.view_names,
                "running the cluster's pipeline (`views apply` changes it; the local pipeline file is not used)"
            );
        }
        let ctx = Arc::new(NodeCtx {
            table,
            pipeline: RwLock::new(Arc::new(pipeline)),
            ingest_gate: tokio::sync::RwLock::new(()),
            apply_lock: tokio::sync::Mutex::new(()),
            compactions: tokio::sync::Semaphore::new(1),
            archive_readers: std::sync::atomic::AtomicUsize::new(0),
            log: Arc::new(log),
            state: Arc::new(state),
            objects,
            shards: RwLock::new(vec![None; n]),
            processed: (0..n).map(|_| AtomicU64::new(0)).collect(),
            appended: (0..n).map(|_| AtomicU64::new(0)).collect(),
            restarts: (0..n).map(|_| AtomicU64::new(0)).collect(),
            failed: (0..n).map(|_| std::sync::Mutex::new(None)).collect(),
            rebuilding: (0..n)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            checkpoint_locks: (0..n)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            // one node holds every shard for good (as under owner epoch
            // 1); a cluster member holds what the shard map gives it
            held: (0..n)
                .map(|_| AtomicU64::new(u64::from(cluster.is_none())))
                .collect(),
            cluster: cluster.clone(),
            metrics: Metrics::new(),
            stopping: AtomicBool::new(false),
            started_ms: now_ms(),
            store_id,
            config,
        });
        if let Some(cl) = &ctx.cluster {
            ctx.metrics.register_control_plane(&cl.cp.sm_stats());
        }
        let (supervisor, _) = Actor::spawn(None, Supervisor, ctx.clone())
            .await
            .map_err(|e| StartError::Actors(e.to_string()))?;
        // every shard now runs (and has rebuilt for) this pipeline
        ctx.state
            .set_node_key("views", &ctx.pipeline().fingerprint())
            .map_err(|e| StartError::DataDir(e.to_string()))?;
        let (writer, writer_thread, keys) =
            writer::start(ctx.clone()).map_err(|e| StartError::DataDir(e.to_string()))?;
        if let Fsync::Every(every) = ctx.config.fsync {
            start_flusher(Arc::downgrade(&ctx.log), every)
                .map_err(|e| StartError::DataDir(e.to_string()))?;
        }
        if let Some(cl) = cluster {
            crate::cluster::start_tasks(ctx.clone(), cl, supervisor.clone());
        }
        // started: a failed write to the local storage now stops the node,
        // the log flushed first (crate::fatal)
        let log = Arc::downgrade(&ctx.log);
        crate::fatal::arm(move || {
            if let Some(l) = log.upgrade() {
                let _ = l.flush();
            }
        });
        Ok(Node {
            ctx,
            writer,
            keys,
            supervisor,
            writer_thread: Some(writer_thread),
        })
    }

    /// Asks every shard to checkpoint and waits for the reports.
    pub async fn checkpoint_all(
        ctx: &NodeCtx,
    ) -> Vec<Result<crate::shard::CheckpointReport, crate::shard::ShardError>> {
        let mut waits = Vec::new();
        for s in 0..ctx.table.shards {
            let (tx, rx) = tokio::sync::oneshot::channel();
            match ctx.shard(s) {
                Some(a) => {
                    if a.send_message(ShardMsg::Checkpoint { reply: Some(tx) })
                        .is_err()
                    {
                        waits.push(None);
                    } else {
                        waits.push(Some(rx));
                    }
                }
                None => waits.push(None),
            }
        }
        let mut out = Vec::new();
        for (s, w) in waits.into_iter().enumerate() {
            out.push(match w {
                Some(rx) => rx.await.unwrap_or_else(|_| {
                    Err(ShardError::Unavailable(format!(
                        "shard {s} restarted during the checkpoint"
                    )))
                }),
                None => Err(ShardError::Unavailable(format!("shard {s} is restarting"))),
            });
        }
        out
    }

    /// Graceful stop: no new ingest, a last checkpoint, actors stopped.
    pub async fn stop(mut self) {
        self.ctx
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        drop(self.writer);
        if let Some(t) = self.writer_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        for r in Node::checkpoint_all(&self.ctx).await {
            if let Err(e) = r {
                tracing::warn!("final checkpoint: {e}");
            }
        }
        self.supervisor.stop(None);
        let _ = self.ctx.log.flush();
        if let Some(cl) = &self.ctx.cluster {
            cl.cp.shutdown().await;
        }
    }
}

/// Connects to Kafka (creating the topic), starts the control-plane member
/// and checks that the cluster runs this table.
async fn start_cluster(
    config: &Config,
    c: &crate::config::ClusterConfig,
    table: &Table,
    serving: impl FnOnce(&Arc<lockstep_cluster::ControlPlane>),
) -> Result<Arc<crate::cluster::ClusterCtx>, StartError> {
    let topic = c.kafka_topic.clone().unwrap_or_else(|| table.name.clone());
    let kafka_cfg = lockstep_log::kafka::KafkaConfig {
        replication: c.kafka_replication_factor,
        min_insync_replicas: c.kafka_min_insync_replicas,
        properties: c.kafka_properties.clone(),
        ..lockstep_log::kafka::KafkaConfig::new(
            &c.kafka_brokers,
            &topic,
            table.shards,
            &config.node_id,
        )
    };
    let kafka = lockstep_log::kafka::KafkaLog::connect(kafka_cfg)
        .await
        .map_err(|e| StartError::Cluster {
            key: "cluster.kafka_brokers",
            message: e.to_string(),
        })?;
    // the client side of the cluster's mutual TLS (Raft and forwarding)
    let tls = config.tls.as_ref().and_then(|t| t.client.clone());
    let cp = lockstep_cluster::ControlPlane::start_with(
        lockstep_cluster::CpConfig {
            node: c.raft_id,
            addr: c.advertise.clone(),
            seeds: c.seeds.clone(),
            bootstrap_expect: c.bootstrap_expect,
            voters: c.voters,
            secret: c.secret.clone(),
            dir: config.data_dir.join("raft"),
            // a follower calls an election after openraft's leader lease
            // (the maximum election timeout) plus a random election timeout
            // without heartbeats: 1.4-1.8 s, so a dead leader is replaced,
            // and declared down, within 3 s
            heartbeat: std::time::Duration::from_millis(150),
            election_timeout: (
                std::time::Duration::from_millis(500),
                std::time::Duration::from_millis(900),
            ),
            tls: tls.clone(),
        },
        serving,
    )
    .await
    .map_err(|e| StartError::Cluster {
        key: if c.seeds.is_empty() {
            "data_dir"
        } else {
            "cluster.seeds"
        },
        message: e.to_string(),
    })?;
    let st = cp.state();
    if st.shards != 0 && (st.shards != table.shards || st.table != table.name) {
        return Err(StartError::Pipeline(format!(
            "the cluster runs table `{}` with {} shards; this node's pipeline declares `{}` with {} (every node runs the cluster's pipeline)",
            st.table, st.shards, table.name, table.shards
        )));
    }
    let topic_mismatch = record_topic(&cp, &kafka).await;
    let builder = lockstep_cluster::network::peer_client_builder()
        .timeout(std::time::Duration::from_secs(30))
        .pool_max_idle_per_host(32);
    let (builder, scheme) = match tls {
        Some(cfg) => (builder.use_preconfigured_tls(cfg), "https"),
        None => (builder, "http"),
    };
    let http = builder.build().map_err(|e| StartError::Cluster {
        key: "tls_cert",
        message: format!("the forwarding client: {e}"),
    })?;
    Ok(Arc::new(crate::cluster::ClusterCtx {
        cp,
        kafka,
        id: c.raft_id,
        ends: (0..table.shards).map(|_| AtomicU64::new(0)).collect(),
        failure_timeout: c.failure_timeout,
        voter_replace_after: c.voter_replace_after,
        move_timeout: c.move_timeout,
        http,
        scheme,
        skip_log_gaps: c.skip_log_gaps,
        topic_mismatch,
        state_bytes: std::sync::Mutex::new(None),
    }))
}

/// Records the topic's identity (its broker-given id) in the control
/// plane the first time; later, compares. Returns why the topic is not the
/// one the cluster recorded (it was deleted and created again: the offsets
/// in the checkpoints mean nothing in it); the shards then stay failed
/// rather than read it. A broker that reports no topic ids, or a control
/// plane that does not answer, leaves only the offset checks (with a
/// warning).
async fn record_topic(
    cp: &Arc<lockstep_cluster::ControlPlane>,
    kafka: &lockstep_log::kafka::KafkaLog,
) -> Option<String> {
    let k = kafka.clone();
    let id = tokio::task::spawn_blocking(move || k.topic_id(std::time::Duration::from_secs(10)))
        .await
        .map_err(|e| e.to_string());
    let topic = kafka.config().topic.clone();
    let id = match id {
        Ok(Ok(Some(id))) => id,
        Ok(Ok(None)) => {
            tracing::warn!("the broker reports no id for topic `{topic}`: a topic deleted and created again is noticed only by its offsets");
            return None;
        }
        Ok(Err(e)) => {
            tracing::warn!("{e}; the topic's identity is not checked now");
            return None;
        }
        Err(e) => {
            tracing::warn!("describing topic `{topic}`: {e}; its identity is not checked now");
            return None;
        }
    };
    let cmd = lockstep_cluster::state::Command::RecordTopic {
        topic,
        topic_id: id,
    };
    match cp.propose(cmd).await {
        Ok(lockstep_cluster::state::Response::Done) => None,
        Ok(lockstep_cluster::state::Response::Rejected(r)) => {
            tracing::error!("{r}; every shard this node takes stays failed");
            Some(r.to_string())
        }
        Err(e) => {
            tracing::warn!("recording the topic's identity: {e}; not checked now");
            None
        }
    }
}

/// Test fault (debug hooks only): the next flush of `fsync = "every N"`
/// fails as a full disk would make it.
pub static FAIL_NEXT_FLUSH: AtomicBool = AtomicBool::new(false);

/// `fsync = "every N"`: a thread flushes the log every `every`. A flush
/// that fails stops the node, as a failed fsync does under `always`: the
/// events acknowledged since the last flush may not be on disk, and
/// acknowledging more would promise what is not kept. (sled's own
/// background flusher stopped at its first error, silently, and the node
/// went on acknowledging.) The thread ends with the log.
fn start_flusher(
    log: std::sync::Weak<EmbeddedLog>,
    every: std::time::Duration,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("lockstep-flusher".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(log) = log.upgrade() else { return };
            let result = if FAIL_NEXT_FLUSH.swap(false, Ordering::Relaxed) {
                Err("injected fault: the flush failed".to_string())
            } else {
                log.flush().map_err(|e| e.to_string())
            };
            if let Err(e) = result {
                tracing::error!("the log could not fsync: {e}; stopping");
                eprintln!(
                    "lockstepd: the log could not fsync ({e}); stopping so no reply claims what is not known"
                );
                std::process::exit(crate::fatal::EXIT_STORAGE);
            }
        })
        .map(|_| ())
}

/// Opens the data directory's log and state store, checks that it was
/// created for this table, and raises each shard's log end to its last
/// checkpoint (a log truncated below it starts there).
fn open_data_dir(
    config: &Config,
    table: &lockstep_core::Table,
) -> Result<(EmbeddedLog, StateStore), StartError> {
    let policy = match config.fsync {
        Fsync::Always => FsyncPolicy::Always,
        Fsync::Every(d) => FsyncPolicy::EveryMillis(d.as_millis() as u64),
    };
    let log = EmbeddedLog::open(&config.data_dir.join("log"), table.shards, policy)
        .map_err(|e| StartError::DataDir(e.to_string()))?;
    let state = StateStore::open(&config.data_dir.join("state"))
        .map_err(|e| StartError::DataDir(e.to_string()))?;
    // the table is fixed for the data directory: its log and archive
    // hold its rows; views may change (shards rebuild from the archive)
    let table_def = table_fingerprint(table);
    // (directories written before fingerprints were canonical hold the
    // table's `Debug` text: accepted once and rewritten)
    let same = |old: &str| old == table_def || old == format!("{table:?}");
    match state
            .get_node_key("table")
            .map_err(|e| StartError::DataDir(e.to_string()))?
        {
            Some(old) if !same(&old) => {
                return Err(StartError::Pipeline(format!(
                    "{}: table `{}` differs from the table this data directory ({}) was created with (its columns, key, event time, lateness and shards are fixed: its log and archive hold its rows); start it with a new data_dir",
                    config.pipeline.display(),
                    table.name,
                    config.data_dir.display(),
                )))
            }
            Some(old) if old == table_def => {}
            _ => state
                .set_node_key("table", &table_def)
                .map_err(|e| StartError::DataDir(e.to_string()))?,
        }
    for s in 0..table.shards {
        if let Some(info) = state
            .info(s)
            .map_err(|e| StartError::DataDir(e.to_string()))?
        {
            log.raise_end(s, info.log_offset)
                .map_err(|e| StartError::DataDir(e.to_string()))?;
        }
    }
    Ok((log, state))
}
