//! lockstepctl: the operator's CLI for lockstepd, over its HTTP API, as a
//! library: [`run`] takes the arguments and writes what the binary prints
//! to `out`, so tests drive exactly what operators run. It links the API's
//! types and client (`lockstep-api`) and the offline readers
//! (`lockstep-offline`), never the daemon.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lockstep_api::Client;
use lockstep_offline as offline;
use serde_json::json;
use serde_json::Value as Json;
use std::io::Write;
use std::path::PathBuf;

/// Writes a line to `out`, failing the command if it cannot.
macro_rules! outln {
    ($out:expr) => { writeln!($out).map_err(anyhow::Error::from)? };
    ($out:expr, $($arg:tt)*) => { writeln!($out, $($arg)*).map_err(anyhow::Error::from)? };
}

mod cluster;
mod export;
mod segments;
mod status;
mod views;

#[derive(Parser)]
#[command(name = "lockstepctl", version, about = "Admin CLI for lockstepd")]
pub struct Cli {
    /// Node API address (or LOCKSTEP_ADDR).
    #[arg(
        long,
        env = "LOCKSTEP_ADDR",
        default_value = "127.0.0.1:7700",
        global = true
    )]
    addr: String,
    /// API token (or LOCKSTEP_TOKEN).
    #[arg(long, env = "LOCKSTEP_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Reach the node over HTTPS, trusting this CA certificate (PEM; or
    /// LOCKSTEP_CA_CERT).
    #[arg(long, env = "LOCKSTEP_CA_CERT", global = true, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Node summary: table, views, events, lag, last checkpoint.
    Status,
    /// Per-shard offsets, lag, watermark and last checkpoint (in a cluster:
    /// owner, owner epoch, lag and last committed checkpoint).
    Shards,
    /// The cluster: leader, epochs, nodes.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Cluster members.
    Nodes {
        #[command(subcommand)]
        cmd: NodesCmd,
    },
    /// The shard moves the coordinator makes now to balance the cluster.
    Rebalance,
    /// The committed checkpoint of every shard (cluster).
    Checkpoints,
    /// The views the node runs.
    Views {
        #[command(subcommand)]
        cmd: ViewsCmd,
    },
    /// Feature lookups.
    Features {
        #[command(subcommand)]
        cmd: FeaturesCmd,
    },
    /// Checkpoints.
    Checkpoint {
        #[command(subcommand)]
        cmd: CheckpointCmd,
    },
    /// Archived and training segments.
    Segments {
        #[command(subcommand)]
        cmd: SegmentsCmd,
    },
    /// Writes the committed training rows of a view (per shard, log order).
    Export {
        #[arg(long)]
        view: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Replays the archived log through a view's operators.
    Backfill {
        #[arg(long)]
        view: String,
        /// Only rows with event time >= this (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only rows with event time < this (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Take the view from this pipeline file instead of the node's (a new
        /// or changed view of the node's table).
        #[arg(long)]
        sql: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum ClusterCmd {
    /// Leader, term, checkpoint epochs and the members.
    Status,
    /// Backfill jobs (running and recently finished), or one job's shards.
    Backfills { job: Option<String> },
}

#[derive(Subcommand)]
pub(crate) enum NodesCmd {
    List,
    /// Graceful leave: the node's shards move away (each with a last
    /// checkpoint); it then owns none and can be stopped.
    Drain {
        /// The node's id (`node-3` or `3`).
        node: String,
        /// Wait until the node owns no shard and none moves to it (`4 min`,
        /// `240 s`); exits 1 if it still does then (a Kubernetes preStop
        /// hook, systemd's ExecStop).
        #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
        wait: Option<std::time::Duration>,
    },
    /// Ends a drain: the node gets shards again (a drained node that
    /// restarts stays draining until then).
    Activate {
        /// The node's id (`node-3` or `3`).
        node: String,
    },
    /// Removes a node that is down for good (stop it first; the cluster
    /// must have marked it down): its shards are reassigned and a learner
    /// takes its Raft vote.
    Remove {
        /// The node's id (`node-3` or `3`).
        node: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum ViewsCmd {
    List,
    /// Replaces the node's pipeline (same table): shards rebuild from the
    /// archive; new and changed views get their whole training history.
    Apply {
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum FeaturesCmd {
    /// Features of a hypothetical event for KEY now.
    Get { view: String, key: String },
}

#[derive(Subcommand)]
pub(crate) enum CheckpointCmd {
    /// Checkpoints every shard now.
    Now,
}

#[derive(Subcommand)]
pub(crate) enum SegmentsCmd {
    List {
        /// raw, training or late.
        #[arg(long)]
        kind: Option<String>,
        /// Table or view name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Merges small consecutive segments.
    Compact {
        #[arg(long, default_value_t = 64 << 20)]
        target_bytes: u64,
    },
}

fn parse_wait(s: &str) -> std::result::Result<std::time::Duration, String> {
    match lockstep_core::sql::parse_duration_ms(s) {
        Some(ms) if ms > 0 => Ok(std::time::Duration::from_millis(ms as u64)),
        _ => Err(format!(
            "`{s}` is not a duration: write e.g. `4 min`, `240 s` or `500 ms`"
        )),
    }
}

pub(crate) fn print_nodes(out: &mut dyn Write, v: &Json) -> Result<()> {
    let rows = v["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let leader = if n["id"] == v["leader"] {
                " (leader)"
            } else {
                ""
            };
            vec![
                format!("{}{leader}", s(&n["id"])),
                s(&n["addr"]),
                s(&n["state"]),
                if n["voter"] == true {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
                s(&n["shards"]),
            ]
        })
        .collect();
    print_table(out, &["node", "addr", "state", "role", "shards"], rows)
}

/// `/v1/cluster` of the node, or `None` for a node running alone.
pub(crate) fn cluster_view(c: &Client) -> Result<Option<Json>> {
    let r = c.request("GET", "/v1/cluster", None, &[])?;
    match r.status {
        200 => Ok(Some(r.json())),
        404 => Ok(None),
        code => bail!(
            "GET /v1/cluster: HTTP {code}: {}",
            String::from_utf8_lossy(&r.body)
        ),
    }
}

/// Every shard with its owner's offset, partition end and lag (asked of
/// each owner; `-` where an owner does not answer).
pub(crate) fn cluster_shards(c: &Client, v: &Json) -> Vec<Json> {
    let mut shards = v["shards"].as_array().cloned().unwrap_or_default();
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    for n in nodes {
        let Some(addr) = n["addr"].as_str() else {
            continue;
        };
        let local = if n["id"] == v["node"] {
            Some(v.clone())
        } else {
            c.at(addr).get_json("/v1/cluster").ok()
        };
        let Some(local) = local else { continue };
        for (i, sh) in local["shards"].as_array().into_iter().flatten().enumerate() {
            if sh["processed"].is_null() || i >= shards.len() {
                continue;
            }
            let (p, e) = (sh["processed"].as_u64(), sh["end"].as_u64());
            shards[i]["processed"] = sh["processed"].clone();
            shards[i]["end"] = sh["end"].clone();
            if let (Some(p), Some(e)) = (p, e) {
                shards[i]["lag"] = json!(e.saturating_sub(p));
            }
        }
    }
    shards
}

/// Runs lockstepctl with `args` (the first is the program name), writing
/// its output to `out`.
pub fn run_args<I, T>(args: I, out: &mut dyn Write) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            write!(out, "{e}")?;
            return Ok(());
        }
        Err(e) => bail!("{e}"),
    };
    run(cli, out)
}

pub(crate) fn print_table(
    out: &mut dyn Write,
    headers: &[&str],
    rows: Vec<Vec<String>>,
) -> Result<()> {
    let mut width: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        writeln!(out, "{}", s.join("  ").trim_end())
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect())?;
    for r in rows {
        line(r)?;
    }
    Ok(())
}

pub(crate) fn s(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => "-".into(),
        other => other.to_string(),
    }
}

pub(crate) fn parse_time(flag: &str, v: &Option<String>) -> Result<Option<i64>> {
    match v {
        None => Ok(None),
        Some(t) => match lockstep_core::time::parse_timestamp(t) {
            Some(ms) => Ok(Some(ms)),
            None => bail!("--{flag} `{t}` is not a timestamp; write e.g. 2024-01-01T00:00:00Z"),
        },
    }
}

/// What every command needs: the client, the token (to ask other nodes)
/// and the output format.
pub(crate) struct Ctx {
    pub(crate) c: Client,
    pub(crate) json: bool,
}

/// Prints JSON, pretty.
pub(crate) fn show(out: &mut dyn Write, v: &Json) -> Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

/// Runs one parsed command line, writing its output to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let token = cli
        .token
        .clone()
        .context("no API token: pass --token or set LOCKSTEP_TOKEN")?;
    let c = match &cli.ca_cert {
        Some(f) => {
            let pem = std::fs::read(f).with_context(|| format!("--ca-cert {}", f.display()))?;
            Client::with_ca(&cli.addr, &token, &pem)?
        }
        None if cli.addr.starts_with("https://") => {
            bail!("{} is HTTPS: pass --ca-cert FILE (or LOCKSTEP_CA_CERT), the CA that signed the node's certificate", cli.addr)
        }
        None => Client::new(&cli.addr, &token),
    };
    let ctx = Ctx { c, json: cli.json };
    match cli.cmd {
        Cmd::Status => status::status(&ctx, out),
        Cmd::Shards => status::shards(&ctx, out),
        Cmd::Cluster { cmd } => cluster::cluster(cmd, &ctx, out),
        Cmd::Nodes { cmd } => cluster::nodes(cmd, &ctx, out),
        Cmd::Rebalance => cluster::rebalance(&ctx, out),
        Cmd::Checkpoints => cluster::checkpoints(&ctx, out),
        Cmd::Views { cmd } => views::views(cmd, &ctx, out),
        Cmd::Features { cmd } => views::features(cmd, &ctx, out),
        Cmd::Checkpoint { cmd } => segments::checkpoint(cmd, &ctx, out),
        Cmd::Segments { cmd } => segments::segments(cmd, &ctx, out),
        Cmd::Export { view, out: path } => export::export(&ctx, view, path, out),
        Cmd::Backfill {
            view,
            from,
            to,
            sql,
            out: path,
        } => export::backfill(&ctx, (view, from, to, sql, path), out),
    }
}
