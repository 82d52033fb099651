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
    pub pipeline: Option<PathBuf>,
    pub object_store: Option<String>,
    pub checkpoint_interval: Option<String>,
    pub fsync: Option<String>,
    pub idempotency_ttl: Option<String>,
}

/// Command-line flags, one per key; a flag given wins over the file.
pub type Overrides = FileConfig;

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

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub token: String,
    pub pipeline: PathBuf,
    pub object_store: ObjectStoreUrl,
    pub checkpoint_interval: Duration,
    pub fsync: Fsync,
    pub idempotency_ttl: Duration,
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
    let file = match path {
        Some(p) => parse_file(p)?,
        None => FileConfig::default(),
    };
    let pick = |f: &Option<String>, c: &Option<String>| f.clone().or_else(|| c.clone());
    let pick_path = |f: &Option<PathBuf>, c: &Option<PathBuf>| f.clone().or_else(|| c.clone());
    let merged = FileConfig {
        node_id: pick(&flags.node_id, &file.node_id),
        data_dir: pick_path(&flags.data_dir, &file.data_dir),
        listen: pick(&flags.listen, &file.listen),
        token: flags.token.clone().or(env_token).or(file.token),
        pipeline: pick_path(&flags.pipeline, &file.pipeline),
        object_store: pick(&flags.object_store, &file.object_store),
        checkpoint_interval: pick(&flags.checkpoint_interval, &file.checkpoint_interval),
        fsync: pick(&flags.fsync, &file.fsync),
        idempotency_ttl: pick(&flags.idempotency_ttl, &file.idempotency_ttl),
    };
    validate(merged)
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
    let token = c.token.ok_or_else(|| invalid("token", "is required (or set LOCKSTEP_TOKEN): every API call but /healthz and /metrics must carry it"))?;
    if token.len() < 8 {
        return Err(invalid("token", "must be at least 8 characters"));
    }
    let pipeline = c.pipeline.ok_or_else(|| {
        invalid(
            "pipeline",
            "is required: the .sql file with CREATE TABLE and CREATE VIEW statements",
        )
    })?;
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
    Ok(Config {
        node_id,
        data_dir,
        listen,
        token,
        pipeline,
        object_store,
        checkpoint_interval,
        fsync,
        idempotency_ttl,
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
