//! lockstepd's configuration: a TOML file with unknown keys refused,
//! overridden key by key by command-line flags (and the token by
//! `LOCKSTEP_TOKEN`), validated once at startup. Every error names the key
//! and says what a valid value looks like.

use lockstep_core::sql::parse_duration_ms;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file as written: every key optional, unknown keys refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node_id: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub token: Option<String>,
    /// A file holding the admin token (instead of `token`).
    pub token_file: Option<PathBuf>,
    /// A token that may only ingest (or LOCKSTEP_INGEST_TOKEN).
    pub ingest_token: Option<String>,
    pub ingest_token_file: Option<PathBuf>,
    /// A token that may only read features (or LOCKSTEP_SERVE_TOKEN).
    pub serve_token: Option<String>,
    pub serve_token_file: Option<PathBuf>,
    /// Serve the API over HTTPS: this certificate (PEM, with its chain)…
    pub tls_cert: Option<PathBuf>,
    /// … and its private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The CA that signed every node's certificate: nodes then call each
    /// other over TLS and check each other's certificate (mutual TLS).
    pub tls_ca: Option<PathBuf>,
    pub pipeline: Option<PathBuf>,
    pub object_store: Option<String>,
    pub checkpoint_interval: Option<String>,
    pub fsync: Option<String>,
    pub idempotency_ttl: Option<String>,
    /// Most events one ingest request may carry (413 beyond).
    pub max_events_per_request: Option<u64>,
    /// Largest event (one JSON line or array item) in bytes (413 beyond).
    pub max_event_bytes: Option<u64>,
    /// Requests handled at once; more are answered 503 + Retry-After.
    pub max_concurrent_requests: Option<u64>,
    /// Dead letters kept at most (the oldest requests' go first).
    pub max_dead_letters: Option<u64>,
    /// How long dead letters are kept.
    pub dead_letter_retention: Option<String>,
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: Option<u64>,
    /// How long a client may take to send a request's headers (slowloris).
    pub header_read_timeout: Option<String>,
    /// How long a request may take, its body included (503 beyond).
    pub request_timeout: Option<String>,
    /// Events appended but not yet through the shard actors above which
    /// ingest is refused with 503 (one node).
    pub max_shard_backlog: Option<u64>,
    /// Idempotency-Keys and event ids one shard remembers at most (the
    /// oldest are forgotten first, before `idempotency_ttl`).
    pub max_dedup_entries: Option<u64>,
    /// A shard more events than this behind its log makes `/readyz` answer
    /// 503 (the node is catching up).
    pub ready_max_lag: Option<u64>,
    /// A shard whose manifest holds more segments than this after a
    /// checkpoint merges its small ones (0: only when asked).
    pub auto_compact_segments: Option<u64>,
    /// The `[cluster]` table: present (or any of its flags given) means
    /// this node is one of a cluster.
    pub cluster: Option<FileCluster>,
    /// The `[kafka]` table (a cluster node's Kafka clients).
    pub kafka: Option<FileKafka>,
}

/// `[kafka]`: settings of a cluster node's Kafka clients.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKafka {
    /// librdkafka properties for every client (`"security.protocol" =
    /// "SSL"`, …); `--kafka-property k=v` adds or replaces one.
    pub properties: Option<std::collections::BTreeMap<String, String>>,
    /// A Kafka client properties file (`key=value` lines, `#` comments),
    /// read at start, under `properties`: keeps a SASL password out of the
    /// config file and the command line (`--kafka-properties-file`).
    pub properties_file: Option<PathBuf>,
}

/// `[cluster]` in the file; flags `--seeds`, `--cluster-secret`,
/// `--kafka-brokers`, `--kafka-topic`, `--advertise`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    /// The nodes' API addresses (`host:port`; this node's own may be
    /// among them); none: start a new cluster.
    pub seeds: Option<Vec<String>>,
    /// Nodes started together with the same seeds found one cluster once
    /// this many of them answer (Consul's `bootstrap_expect`).
    pub bootstrap_expect: Option<u64>,
    pub secret: Option<String>,
    pub kafka_brokers: Option<String>,
    pub kafka_topic: Option<String>,
    /// The address other nodes reach this one at (default: `listen`).
    pub advertise: Option<String>,
    /// A node silent this long is declared down and its shards move.
    pub failure_timeout: Option<String>,
    /// Replication factor of the topic lockstep creates (default 3).
    pub kafka_replication_factor: Option<u64>,
    /// `min.insync.replicas` of the topic lockstep creates (default 2).
    pub kafka_min_insync_replicas: Option<u64>,
    /// What a shard does at an offset gap in its partition: "fail"
    /// (default) or "skip".
    pub on_log_gap: Option<String>,
    /// How many members vote: 3 (default) or 5.
    pub voters: Option<u64>,
    /// A voter held down this long gives its vote to a live learner.
    pub voter_replace_after: Option<String>,
    /// A graceful shard move not done in this time is given up (and may
    /// be planned again).
    pub move_timeout: Option<String>,
}

/// Command-line flags, one per key; a flag given wins over the file.
pub type Overrides = FileConfig;

/// A cluster node's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The Raft member id: the number `node_id` ends with.
    pub raft_id: u64,
    pub seeds: Vec<String>,
    pub bootstrap_expect: Option<usize>,
    pub secret: String,
    pub kafka_brokers: String,
    /// Default: the table's name.
    pub kafka_topic: Option<String>,
    pub advertise: String,
    pub failure_timeout: Duration,
    /// For the topic lockstep creates; capped to the brokers there are,
    /// with a warning.
    pub kafka_replication_factor: i32,
    pub kafka_min_insync_replicas: i32,
    /// `on_log_gap = "skip"`.
    pub skip_log_gaps: bool,
    /// `[kafka] properties`, checked with librdkafka.
    pub kafka_properties: Vec<(String, String)>,
    pub voters: usize,
    pub voter_replace_after: Duration,
    pub move_timeout: Duration,
}

/// When an acknowledged ingest is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before the reply: an acknowledged event survives SIGKILL and power loss.
    Always,
    /// In the background every interval: faster, but an acknowledged event
    /// may be lost if the process or machine dies within the interval (the
    /// log buffers writes in the process until it flushes).
    Every(Duration),
}

/// Where snapshots, archived segments and training rows go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStoreUrl {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl std::fmt::Display for ObjectStoreUrl {
    /// The root as a URL, for status output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectStoreUrl::Local(p) => write!(f, "file://{}", p.display()),
            ObjectStoreUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The admin token: every endpoint.
    pub token: String,
    /// May only ingest (`POST /v1/tables/{table}/events`, features with
    /// `?ingest=true`).
    pub ingest_token: Option<String>,
    /// May only read features.
    pub serve_token: Option<String>,
    /// HTTPS (and, with a CA, mutual TLS between nodes), its files read
    /// and checked.
    pub tls: Option<crate::tls::Tls>,
    pub pipeline: PathBuf,
    pub object_store: ObjectStoreUrl,
    pub checkpoint_interval: Duration,
    pub fsync: Fsync,
    pub idempotency_ttl: Duration,
    pub limits: Limits,
    /// Compact a shard after a checkpoint once its manifest holds more
    /// segments than this (0: never on its own).
    pub auto_compact_segments: usize,
    pub cluster: Option<ClusterConfig>,
}

/// The TLS files, read once when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// Bounds on what one request may ask of a node (docs/operations.md,
/// "Limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_events_per_request: usize,
    pub max_event_bytes: usize,
    pub max_concurrent_requests: usize,
    pub max_dead_letters: u64,
    pub dead_letter_retention: Duration,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_shard_backlog: u64,
    pub max_dedup_entries: u64,
    pub ready_max_lag: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_events_per_request: 100_000,
            max_event_bytes: 1 << 20,
            max_concurrent_requests: 512,
            max_dead_letters: 1_000_000,
            dead_letter_retention: Duration::from_secs(7 * 86_400),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_shard_backlog: 500_000,
            max_dedup_entries: 1_000_000,
            ready_max_lag: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The secrets shipped as examples in `config/*.toml`: refused, so a
/// deployment never runs on a value anyone can read in the repository.
pub const PLACEHOLDER_SECRETS: &[&str] = &["change-me-please", "change-this-cluster-secret"];

/// How to make a real secret, for messages.
const MAKE_ONE: &str = "make one with `head -c 32 /dev/urandom | base64` and pass it in a file (`*_file`), an environment variable or a flag";

/// A secret given as `key` or as a file (`key`_file): not both, at least 8
/// characters, not a shipped placeholder.
fn secret(
    (key, file_key): (&'static str, &'static str),
    value: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<String>, ConfigError> {
    let value = match (value, file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                file_key,
                format!("give `{key}` or `{file_key}`, not both"),
            ))
        }
        (Some(v), None) => v,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(file_key, format!("cannot read {}: {e}", path.display())))?;
            let t = text.trim().to_string();
            if t.is_empty() {
                return Err(invalid(file_key, format!("{} is empty", path.display())));
            }
            t
        }
        (None, None) => return Ok(None),
    };
    check_secret(key, &value)?;
    Ok(Some(value))
}

fn check_secret(key: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.len() < 8 {
        return Err(invalid(key, "must be at least 8 characters"));
    }
    if PLACEHOLDER_SECRETS.contains(&value.trim()) {
        return Err(invalid(
            key,
            format!(
                "is the placeholder shipped in config/*.toml, which anyone can read: {MAKE_ONE}"
            ),
        ));
    }
    Ok(())
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// Reads `path` (if any), applies `flags` over it and `env_token` (the value
/// of `LOCKSTEP_TOKEN`) for the token unless a flag gave one, and validates.
pub fn load(
    path: Option<&Path>,
    flags: &Overrides,
    env_token: Option<String>,
) -> Result<Config, ConfigError> {
    load_with_secret(path, flags, env_token, None)
}

/// [`load`], with `env_secret` (the value of `LOCKSTEP_CLUSTER_SECRET`)
/// for the cluster secret unless a flag gave one.
pub fn load_with_secret(
    path: Option<&Path>,
    flags: &Overrides,
    env_token: Option<String>,
    env_secret: Option<String>,
) -> Result<Config, ConfigError> {
    let file = match path {
        Some(p) => parse_file(p)?,
        None => FileConfig::default(),
    };
    // a secret (value or file) from the first layer that gives it: flags,
    // then the environment, then the file (a flag's file beats the file's
    // value)
    let layered = |flag: (&Option<String>, &Option<PathBuf>),
                   env: Option<String>,
                   in_file: (&Option<String>, &Option<PathBuf>)| {
        if flag.0.is_some() || flag.1.is_some() {
            (flag.0.clone(), flag.1.clone())
        } else if env.is_some() {
            (env, None)
        } else {
            (in_file.0.clone(), in_file.1.clone())
        }
    };
    let token = layered(
        (&flags.token, &flags.token_file),
        env_token,
        (&file.token, &file.token_file),
    );
    let ingest = layered(
        (&flags.ingest_token, &flags.ingest_token_file),
        std::env::var("LOCKSTEP_INGEST_TOKEN").ok(),
        (&file.ingest_token, &file.ingest_token_file),
    );
    let serve = layered(
        (&flags.serve_token, &flags.serve_token_file),
        std::env::var("LOCKSTEP_SERVE_TOKEN").ok(),
        (&file.serve_token, &file.serve_token_file),
    );
    let pick = |f: &Option<String>, c: &Option<String>| f.clone().or_else(|| c.clone());
    let pick_path = |f: &Option<PathBuf>, c: &Option<PathBuf>| f.clone().or_else(|| c.clone());
    let merged = FileConfig {
        node_id: pick(&flags.node_id, &file.node_id),
        data_dir: pick_path(&flags.data_dir, &file.data_dir),
        listen: pick(&flags.listen, &file.listen),
        token: token.0,
        token_file: token.1,
        ingest_token: ingest.0,
        ingest_token_file: ingest.1,
        serve_token: serve.0,
        serve_token_file: serve.1,
        tls_cert: pick_path(&flags.tls_cert, &file.tls_cert),
        tls_key: pick_path(&flags.tls_key, &file.tls_key),
        tls_ca: pick_path(&flags.tls_ca, &file.tls_ca),
        pipeline: pick_path(&flags.pipeline, &file.pipeline),
        object_store: pick(&flags.object_store, &file.object_store),
        checkpoint_interval: pick(&flags.checkpoint_interval, &file.checkpoint_interval),
        fsync: pick(&flags.fsync, &file.fsync),
        idempotency_ttl: pick(&flags.idempotency_ttl, &file.idempotency_ttl),
        max_events_per_request: flags.max_events_per_request.or(file.max_events_per_request),
        max_event_bytes: flags.max_event_bytes.or(file.max_event_bytes),
        max_concurrent_requests: flags
            .max_concurrent_requests
            .or(file.max_concurrent_requests),
        max_dead_letters: flags.max_dead_letters.or(file.max_dead_letters),
        dead_letter_retention: pick(&flags.dead_letter_retention, &file.dead_letter_retention),
        max_connections: flags.max_connections.or(file.max_connections),
        header_read_timeout: pick(&flags.header_read_timeout, &file.header_read_timeout),
        request_timeout: pick(&flags.request_timeout, &file.request_timeout),
        max_shard_backlog: flags.max_shard_backlog.or(file.max_shard_backlog),
        max_dedup_entries: flags.max_dedup_entries.or(file.max_dedup_entries),
        ready_max_lag: flags.ready_max_lag.or(file.ready_max_lag),
        auto_compact_segments: flags.auto_compact_segments.or(file.auto_compact_segments),
        cluster: merge_cluster(flags.cluster.as_ref(), file.cluster.as_ref(), env_secret),
        kafka: merge_kafka(flags.kafka.as_ref(), file.kafka.as_ref()),
    };
    validate(merged)
}

fn merge_cluster(
    flags: Option<&FileCluster>,
    file: Option<&FileCluster>,
    env_secret: Option<String>,
) -> Option<FileCluster> {
    if flags.is_none() && file.is_none() {
        return None;
    }
    let (f, c) = (
        flags.cloned().unwrap_or_default(),
        file.cloned().unwrap_or_default(),
    );
    Some(FileCluster {
        seeds: f.seeds.or(c.seeds),
        bootstrap_expect: f.bootstrap_expect.or(c.bootstrap_expect),
        secret: f.secret.or(env_secret).or(c.secret),
        kafka_brokers: f.kafka_brokers.or(c.kafka_brokers),
        kafka_topic: f.kafka_topic.or(c.kafka_topic),
        advertise: f.advertise.or(c.advertise),
        failure_timeout: f.failure_timeout.or(c.failure_timeout),
        kafka_replication_factor: f.kafka_replication_factor.or(c.kafka_replication_factor),
        kafka_min_insync_replicas: f.kafka_min_insync_replicas.or(c.kafka_min_insync_replicas),
        on_log_gap: f.on_log_gap.or(c.on_log_gap),
        voters: f.voters.or(c.voters),
        voter_replace_after: f.voter_replace_after.or(c.voter_replace_after),
        move_timeout: f.move_timeout.or(c.move_timeout),
    })
}

fn validate_cluster(
    c: FileCluster,
    node_id: &str,
    listen: SocketAddr,
) -> Result<ClusterConfig, ConfigError> {
    let digits: String = node_id
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    // (0 too: a StatefulSet numbers its pods from 0)
    let raft_id = digits.parse::<u64>().ok().ok_or_else(|| {
        invalid(
            "node_id",
            format!("`{node_id}`: in a cluster, node_id must end in a number unique in the cluster, e.g. node-0 or lockstep-3"),
        )
    })?;
    let secret = c.secret.ok_or_else(|| {
        invalid(
            "cluster.secret",
            "is required in a cluster (or set LOCKSTEP_CLUSTER_SECRET): nodes join only with it",
        )
    })?;
    check_secret("cluster.secret", &secret)?;
    let kafka_brokers = c.kafka_brokers.ok_or_else(|| {
        invalid(
            "cluster.kafka_brokers",
            "is required in a cluster: the Kafka bootstrap servers, host:port,…",
        )
    })?;
    let seeds: Vec<String> = c
        .seeds
        .unwrap_or_default()
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for s in &seeds {
        if s.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(invalid(
                "cluster.seeds",
                format!("`{s}` is not host:port (another node's API address)"),
            ));
        }
    }
    let advertise = c.advertise.unwrap_or_else(|| listen.to_string());
    if listen.ip().is_unspecified() && advertise == listen.to_string() {
        return Err(invalid(
            "cluster.advertise",
            format!("listen is {listen}: give the address other nodes reach this one at"),
        ));
    }
    // the seeds besides this node's own address
    let others = {
        let mut o: Vec<&String> = seeds.iter().filter(|s| **s != advertise).collect();
        o.sort();
        o.dedup();
        o.len()
    };
    let bootstrap_expect = match c.bootstrap_expect {
        None => None,
        Some(0) => {
            return Err(invalid(
                "cluster.bootstrap_expect",
                "0: give how many nodes found the cluster together (e.g. 3), or leave it out",
            ))
        }
        Some(n) if seeds.is_empty() && n > 1 => {
            return Err(invalid(
                "cluster.bootstrap_expect",
                format!("{n} nodes found the cluster together, but cluster.seeds names none: list every node's address in the seeds"),
            ))
        }
        Some(n) if n as usize > others + 1 => {
            return Err(invalid(
                "cluster.bootstrap_expect",
                format!("{n} is more nodes than cluster.seeds names ({others} besides this node's own address, and this node)"),
            ))
        }
        Some(n) => Some(n as usize),
    };
    let failure_timeout = duration("cluster.failure_timeout", c.failure_timeout, 2_500)?;
    let kafka_replication_factor = match c.kafka_replication_factor {
        None => 3,
        Some(n @ 1..=32) => n as i32,
        Some(n) => {
            return Err(invalid(
                "cluster.kafka_replication_factor",
                format!("{n} is not a whole number from 1 to 32"),
            ))
        }
    };
    let kafka_min_insync_replicas = match c.kafka_min_insync_replicas {
        None => 2.min(kafka_replication_factor),
        Some(n) if n >= 1 && n as i32 <= kafka_replication_factor => n as i32,
        Some(n) => {
            return Err(invalid(
                "cluster.kafka_min_insync_replicas",
                format!(
                    "{n} must be from 1 to kafka_replication_factor ({kafka_replication_factor})"
                ),
            ))
        }
    };
    let voters = match c.voters {
        None => 3,
        Some(n @ (3 | 5)) => n as usize,
        Some(n) => {
            return Err(invalid(
                "cluster.voters",
                format!("{n}: write 3 (survives one voter down) or 5 (two)"),
            ))
        }
    };
    let voter_replace_after =
        duration("cluster.voter_replace_after", c.voter_replace_after, 60_000)?;
    let move_timeout = duration("cluster.move_timeout", c.move_timeout, 60_000)?;
    let skip_log_gaps = match c.on_log_gap.as_deref() {
        None | Some("fail") => false,
        Some("skip") => true,
        Some(other) => {
            return Err(invalid(
                "cluster.on_log_gap",
                format!("`{other}`: write \"fail\" (stop the shard, the default) or \"skip\" (go on without the missing records)"),
            ))
        }
    };
    Ok(ClusterConfig {
        raft_id,
        seeds,
        bootstrap_expect,
        secret,
        kafka_brokers,
        kafka_topic: c.kafka_topic,
        advertise,
        failure_timeout,
        kafka_replication_factor,
        kafka_min_insync_replicas,
        skip_log_gaps,
        kafka_properties: Vec::new(),
        voters,
        voter_replace_after,
        move_timeout,
    })
}

/// The file's `[kafka]` properties with the flags' over them, key by key.
fn merge_kafka(flags: Option<&FileKafka>, file: Option<&FileKafka>) -> Option<FileKafka> {
    if flags.is_none() && file.is_none() {
        return None;
    }
    let mut properties = std::collections::BTreeMap::new();
    for k in [file, flags].into_iter().flatten() {
        properties.extend(k.properties.clone().unwrap_or_default());
    }
    Some(FileKafka {
        properties: Some(properties),
        properties_file: flags
            .and_then(|k| k.properties_file.clone())
            .or_else(|| file.and_then(|k| k.properties_file.clone())),
    })
}

/// A Kafka client properties file: librdkafka property names, one
/// `key=value` per line (spaces around either trimmed), blank lines and
/// lines starting with `#` or `!` skipped; no escapes or continuations.
/// At most 1 MiB of a regular file (a device or a FIFO is refused, not
/// read). `Err` names the line, never a value.
fn read_properties_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    use std::io::Read;
    const MAX: u64 = 1 << 20;
    let at = |e: std::io::Error| format!("{}: {e}", path.display());
    // metadata follows symlinks (Kubernetes mounts Secrets through them)
    if !std::fs::metadata(path).map_err(at)?.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(at)?
        .take(MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(at)?;
    if bytes.len() as u64 > MAX {
        return Err(format!("{}: larger than 1 MiB", path.display()));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        match line.split_once('=') {
            // librdkafka's names are dotted words: a `:` or a space in
            // the key is a `key: value` line, which this format is not
            Some((k, v))
                if !k.trim().is_empty()
                    && !k.trim().contains(|c: char| c == ':' || c.is_whitespace()) =>
            {
                out.push((k.trim().to_string(), v.trim().to_string()))
            }
            _ => {
                return Err(format!(
                    "{} line {}: write key=value with a librdkafka property name (`#` starts a comment)",
                    path.display(),
                    i + 1
                ))
            }
        }
    }
    Ok(out)
}

/// Parses a config file without validating values (unknown keys refused).
pub fn parse_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn duration(
    key: &'static str,
    v: Option<String>,
    default_ms: i64,
) -> Result<Duration, ConfigError> {
    let ms = match v {
        None => default_ms,
        Some(s) => parse_duration_ms(&s)
            .filter(|ms| *ms > 0)
            .ok_or_else(|| invalid(key, format!("`{s}` is not a positive duration; write e.g. \"5 seconds\", \"500 ms\", \"10 minutes\"")))?,
    };
    Ok(Duration::from_millis(ms as u64))
}

fn validate(c: FileConfig) -> Result<Config, ConfigError> {
    let limits = validate_limits(&c)?;
    let node_id = c.node_id.unwrap_or_else(|| "node-1".to_string());
    if node_id.is_empty()
        || !node_id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        return Err(invalid(
            "node_id",
            format!("`{node_id}` must be non-empty letters, digits, '-' or '_'"),
        ));
    }
    let data_dir = c.data_dir.ok_or_else(|| {
        invalid(
            "data_dir",
            "is required: the directory for the log, state and (by default) the object store",
        )
    })?;
    let listen_s = c.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let listen: SocketAddr = listen_s.parse().map_err(|_| {
        invalid(
            "listen",
            format!("`{listen_s}` is not a socket address; write host:port, e.g. {DEFAULT_LISTEN}"),
        )
    })?;
    let token = secret(("token", "token_file"), c.token, c.token_file)?.ok_or_else(|| invalid("token", "is required (or token_file, or LOCKSTEP_TOKEN): every API call but /healthz, /readyz and /metrics must carry it"))?;
    let ingest_token = secret(
        ("ingest_token", "ingest_token_file"),
        c.ingest_token,
        c.ingest_token_file,
    )?;
    let serve_token = secret(
        ("serve_token", "serve_token_file"),
        c.serve_token,
        c.serve_token_file,
    )?;
    for (key, t) in [
        ("ingest_token", &ingest_token),
        ("serve_token", &serve_token),
    ] {
        if t.as_ref() == Some(&token) {
            return Err(invalid(
                key,
                "is the admin token: give each role its own token",
            ));
        }
    }
    if ingest_token.is_some() && ingest_token == serve_token {
        return Err(invalid(
            "serve_token",
            "is the ingest token: give each role its own token",
        ));
    }
    let pipeline = c.pipeline.ok_or_else(|| {
        invalid(
            "pipeline",
            "is required: the .sql file with CREATE TABLE and CREATE VIEW statements",
        )
    })?;
    let files = match (c.tls_cert, c.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            ca: c.tls_ca,
        }),
        (Some(_), None) => {
            return Err(invalid(
                "tls_key",
                "is required with tls_cert: the certificate's private key (PEM)",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "tls_cert",
                "is required with tls_key: the certificate (PEM, with its chain)",
            ))
        }
        (None, None) if c.tls_ca.is_some() => {
            return Err(invalid(
                "tls_ca",
                "needs tls_cert and tls_key: this node's own certificate, which the CA signed",
            ))
        }
        (None, None) => None,
    };
    let tls = match files {
        Some(files) => {
            if c.cluster.is_some() && files.ca.is_none() {
                return Err(invalid(
                    "tls_ca",
                    "is required in a cluster with TLS: the CA that signed every node's certificate (nodes call each other over TLS and check each other's certificate)",
                ));
            }
            Some(crate::tls::load(files).map_err(|e| invalid(e.key, e.message))?)
        }
        None => None,
    };
    let object_store = match c.object_store {
        None => ObjectStoreUrl::Local(data_dir.join("objects")),
        Some(u) => parse_object_store(&u)?,
    };
    let checkpoint_interval = duration("checkpoint_interval", c.checkpoint_interval, 5_000)?;
    let fsync = match c.fsync.as_deref() {
        None | Some("always") => Fsync::Always,
        Some(s) => match s.strip_prefix("every ") {
            Some(d) => Fsync::Every(duration("fsync", Some(d.to_string()), 0)?),
            None => {
                return Err(invalid(
                    "fsync",
                    format!("`{s}`: write \"always\" or \"every 100 ms\""),
                ))
            }
        },
    };
    let idempotency_ttl = duration("idempotency_ttl", c.idempotency_ttl, 24 * 3_600_000)?;
    let auto_compact_segments = match c.auto_compact_segments {
        None => 64,
        Some(n @ 0..=1_000_000) => n as usize,
        Some(n) => {
            return Err(invalid(
                "auto_compact_segments",
                format!("{n} is not a whole number from 0 (off) to 1000000"),
            ))
        }
    };
    let kafka = c.kafka.unwrap_or_default();
    let mut from_file = std::collections::BTreeMap::new();
    if let Some(path) = &kafka.properties_file {
        from_file
            .extend(read_properties_file(path).map_err(|e| invalid("kafka.properties_file", e))?);
    }
    // the file's lines, then `properties` (and the flags') over them
    from_file.extend(kafka.properties.unwrap_or_default());
    let properties: Vec<(String, String)> = from_file.into_iter().collect();
    let cluster = match c.cluster {
        Some(cl) => {
            let mut cl = validate_cluster(cl, &node_id, listen)?;
            lockstep_log::kafka::check_properties(&properties)
                .map_err(|e| invalid("kafka.properties", e))?;
            cl.kafka_properties = properties;
            Some(cl)
        }
        None if !properties.is_empty() => {
            return Err(invalid(
                "kafka.properties",
                "only a cluster node has Kafka clients (this node has no [cluster] table)",
            ))
        }
        None => None,
    };
    Ok(Config {
        node_id,
        data_dir,
        listen,
        token,
        ingest_token,
        serve_token,
        tls,
        pipeline,
        object_store,
        checkpoint_interval,
        fsync,
        idempotency_ttl,
        limits,
        auto_compact_segments,
        cluster,
    })
}

fn validate_limits(c: &FileConfig) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let count = |key: &'static str, v: Option<u64>, default: usize, max: u64| match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n as usize),
        Some(n) => Err(invalid(
            key,
            format!("{n} is not a whole number from 1 to {max}"),
        )),
    };
    Ok(Limits {
        max_events_per_request: count(
            "max_events_per_request",
            c.max_events_per_request,
            d.max_events_per_request,
            10_000_000,
        )?,
        max_event_bytes: count(
            "max_event_bytes",
            c.max_event_bytes,
            d.max_event_bytes,
            crate::http::MAX_BODY_BYTES as u64,
        )?,
        max_concurrent_requests: count(
            "max_concurrent_requests",
            c.max_concurrent_requests,
            d.max_concurrent_requests,
            1_000_000,
        )?,
        max_dead_letters: count(
            "max_dead_letters",
            c.max_dead_letters,
            d.max_dead_letters as usize,
            1 << 40,
        )? as u64,
        dead_letter_retention: duration(
            "dead_letter_retention",
            c.dead_letter_retention.clone(),
            d.dead_letter_retention.as_millis() as i64,
        )?,
        max_connections: count(
            "max_connections",
            c.max_connections,
            d.max_connections,
            1_000_000,
        )?,
        header_read_timeout: duration(
            "header_read_timeout",
            c.header_read_timeout.clone(),
            d.header_read_timeout.as_millis() as i64,
        )?,
        request_timeout: duration(
            "request_timeout",
            c.request_timeout.clone(),
            d.request_timeout.as_millis() as i64,
        )?,
        max_shard_backlog: count(
            "max_shard_backlog",
            c.max_shard_backlog,
            d.max_shard_backlog as usize,
            1 << 32,
        )? as u64,
        max_dedup_entries: count(
            "max_dedup_entries",
            c.max_dedup_entries,
            d.max_dedup_entries as usize,
            1 << 32,
        )? as u64,
        ready_max_lag: count(
            "ready_max_lag",
            c.ready_max_lag,
            d.ready_max_lag as usize,
            1 << 40,
        )? as u64,
    })
}

fn parse_object_store(u: &str) -> Result<ObjectStoreUrl, ConfigError> {
    if let Some(p) = u.strip_prefix("file://") {
        if p.is_empty() {
            return Err(invalid(
                "object_store",
                "file:// needs a directory, e.g. file:///var/lib/lockstep/objects",
            ));
        }
        return Ok(ObjectStoreUrl::Local(PathBuf::from(p)));
    }
    if let Some(rest) = u.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(
                "object_store",
                "s3:// needs a bucket: s3://bucket/prefix",
            ));
        }
        return Ok(ObjectStoreUrl::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
        });
    }
    Err(invalid(
        "object_store",
        format!("`{u}`: use file:///a/directory or s3://bucket/prefix"),
    ))
}
