//! One node: the pieces a running lockstepd shares (pipeline, log, state
//! store, object store, shard actors, metrics) and its start-up.

use crate::config::{Config, Fsync, ObjectStoreUrl};
use crate::metrics::Metrics;
use crate::segments::open_store;
use crate::shard::{ShardMsg, Supervisor};
use crate::store::StateStore;
use crate::writer::{self, WriteReq};
use lockstep_core::plan::{Catalog, Table, View};
use lockstep_core::value::{Row, Value};
use lockstep_log::{EmbeddedLog, FsyncPolicy};
use object_store::ObjectStore;
use ractor::{Actor, ActorRef};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};

/// The pipeline a node runs: its SQL, plan and views. Replaced as a whole
/// by `views apply`; each shard actor keeps the one its engine was built for.
pub struct Pipeline {
    pub sql: String,
    pub catalog: Arc<Catalog>,
    /// The views the node runs, in engine order.
    pub view_names: Vec<String>,
    /// In a cluster, the version of the cluster's pipeline this is (0 on
    /// one node).
    pub version: u64,
}

/// A stable fingerprint of a view's plan (its compiled form, so formatting
/// changes in the SQL do not count as changes).
pub fn view_fingerprint(v: &View) -> String {
    let text = format!("{v:?}");
    format!(
        "{:08x}{:08x}",
        crc32fast::hash(text.as_bytes()),
        text.len() as u32
    )
}

impl Pipeline {
    pub fn new(sql: String, catalog: Catalog) -> Pipeline {
        let view_names = catalog.views.iter().map(|v| v.name.clone()).collect();
        Pipeline {
            sql,
            catalog: Arc::new(catalog),
            view_names,
            version: 0,
        }
    }

    pub fn with_version(mut self, version: u64) -> Pipeline {
        self.version = version;
        self
    }

    pub fn view_name_refs(&self) -> Vec<&str> {
        self.view_names.iter().map(String::as_str).collect()
    }

    /// Engine view index → its plan.
    pub fn view(&self, v: usize) -> &View {
        let name = &self.view_names[v];
        self.catalog.view(name).expect("running views exist").1
    }

    pub fn view_index(&self, name: &str) -> Option<usize> {
        self.view_names.iter().position(|n| n == name)
    }

    /// Fingerprint of all views in order: a checkpoint taken under another
    /// pipeline cannot be restored under this one.
    pub fn fingerprint(&self) -> String {
        let all: Vec<String> = self
            .catalog
            .views
            .iter()
            .map(|v| format!("{}={}", v.name, view_fingerprint(v)))
            .collect();
        all.join(",")
    }
}

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
    pub log: Arc<EmbeddedLog>,
    pub state: Arc<StateStore>,
    pub objects: Arc<dyn ObjectStore>,
    /// The live actor of each shard (replaced when the supervisor restarts it).
    pub shards: RwLock<Vec<Option<ActorRef<ShardMsg>>>>,
    /// Next log offset each shard has processed up to (for lag and
    /// backpressure).
    pub processed: Vec<AtomicU64>,
    pub restarts: Vec<AtomicU64>,
    /// Held by a shard's running checkpoint task; recovery takes it first,
    /// so a restarted actor never loads under a predecessor's commit.
    pub checkpoint_locks: Vec<Arc<tokio::sync::Mutex<()>>>,
    /// Cluster: the owner epoch this node holds each shard under (0: not
    /// held here).
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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// A log record: the validated event, in table column order.
pub fn encode_event(row: &[Value]) -> Vec<u8> {
    bincode::serde::encode_to_vec(row, bincode_config()).expect("events encode")
}

/// Like [`encode_event`], appending to `buf`.
pub fn encode_event_into(row: &[Value], buf: &mut Vec<u8>) -> Result<(), String> {
    bincode::serde::encode_into_std_write(row, buf, bincode_config())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn decode_event(bytes: &[u8]) -> Result<Row, String> {
    bincode::serde::decode_from_slice(bytes, bincode_config())
        .map(|(r, _)| r)
        .map_err(|e| format!("undecodable log record: {e}"))
}

/// A started node: its shared context and the ingest writer's queue.
pub struct Node {
    pub ctx: Arc<NodeCtx>,
    pub writer: tokio::sync::mpsc::Sender<WriteReq>,
    supervisor: ActorRef<crate::shard::SupMsg>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

/// Reads and checks the pipeline: exactly one table, and its views.
pub fn load_pipeline(path: &std::path::Path) -> Result<(String, Catalog), StartError> {
    let sql = std::fs::read_to_string(path).map_err(|source| StartError::ReadPipeline {
        path: path.display().to_string(),
        source,
    })?;
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
        let table_def = format!("{table:?}");
        match state
            .get_node_key("table")
            .map_err(|e| StartError::DataDir(e.to_string()))?
        {
            Some(old) if old != table_def => {
                return Err(StartError::Pipeline(format!(
                    "{}: table `{}` differs from the table this data directory ({}) was created with (its columns, key, event time, lateness and shards are fixed: its log and archive hold its rows); start it with a new data_dir",
                    config.pipeline.display(),
                    table.name,
                    config.data_dir.display(),
                )))
            }
            Some(_) => {}
            None => state
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
                .map_err(StartError::Pipeline)?
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
            log: Arc::new(log),
            state: Arc::new(state),
            objects,
            shards: RwLock::new(vec![None; n]),
            processed: (0..n).map(|_| AtomicU64::new(0)).collect(),
            restarts: (0..n).map(|_| AtomicU64::new(0)).collect(),
            checkpoint_locks: (0..n)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            held: (0..n).map(|_| AtomicU64::new(0)).collect(),
            cluster: cluster.clone(),
            metrics: Metrics::new(),
            stopping: AtomicBool::new(false),
            started_ms: now_ms(),
            store_id,
            config,
        });
        let (supervisor, _) = Actor::spawn(None, Supervisor, ctx.clone())
            .await
            .map_err(|e| StartError::Actors(e.to_string()))?;
        // every shard now runs (and has rebuilt for) this pipeline
        ctx.state
            .set_node_key("views", &ctx.pipeline().fingerprint())
            .map_err(|e| StartError::DataDir(e.to_string()))?;
        let (writer, writer_thread) =
            writer::start(ctx.clone()).map_err(|e| StartError::DataDir(e.to_string()))?;
        if let Some(cl) = cluster {
            crate::cluster::start_tasks(ctx.clone(), cl, supervisor.clone());
        }
        Ok(Node {
            ctx,
            writer,
            supervisor,
            writer_thread: Some(writer_thread),
        })
    }

    /// Asks every shard to checkpoint and waits for the reports.
    pub async fn checkpoint_all(
        ctx: &NodeCtx,
    ) -> Vec<Result<crate::shard::CheckpointReport, String>> {
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
                Some(rx) => rx
                    .await
                    .unwrap_or_else(|_| Err(format!("shard {s} restarted during the checkpoint"))),
                None => Err(format!("shard {s} is restarting")),
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

/// The pipeline the cluster runs (its view registry), if it has one, checked
/// against this node's table: every node runs the cluster's views.
pub fn cluster_pipeline(
    p: &lockstep_cluster::state::PipelineVersion,
    table: &Table,
) -> Result<Option<Pipeline>, String> {
    if p.version == 0 {
        return Ok(None);
    }
    let catalog = lockstep_core::parse_pipeline(&p.sql).map_err(|e| {
        format!(
            "the cluster's pipeline (version {}) does not parse on this node: {}:{}: {}",
            p.version, e.line, e.column, e.message
        )
    })?;
    match catalog.tables.first() {
        Some(t) if format!("{t:?}") == format!("{table:?}") => {}
        _ => {
            return Err(format!(
                "the cluster's pipeline (version {}) declares table `{}` differently from this node's pipeline file; every node runs the cluster's table",
                p.version, table.name
            ))
        }
    }
    Ok(Some(
        Pipeline::new(p.sql.clone(), catalog).with_version(p.version),
    ))
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
    let kafka = lockstep_log::kafka::KafkaLog::connect(lockstep_log::kafka::KafkaConfig::new(
        &c.kafka_brokers,
        &topic,
        table.shards,
        &config.node_id,
    ))
    .await
    .map_err(|e| StartError::Cluster {
        key: "cluster.kafka_brokers",
        message: e.to_string(),
    })?;
    let cp = lockstep_cluster::ControlPlane::start_with(
        lockstep_cluster::CpConfig {
            node: c.raft_id,
            addr: c.advertise.clone(),
            seeds: c.seeds.clone(),
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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .max_idle_connections_per_host(32)
        .build()
        .into();
    Ok(Arc::new(crate::cluster::ClusterCtx {
        cp,
        kafka,
        id: c.raft_id,
        ends: (0..table.shards).map(|_| AtomicU64::new(0)).collect(),
        failure_timeout: c.failure_timeout,
        agent,
    }))
}

/// Object store root as configured, for status output.
pub fn describe_store(url: &ObjectStoreUrl) -> String {
    match url {
        ObjectStoreUrl::Local(p) => format!("file://{}", p.display()),
        ObjectStoreUrl::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
    }
}
