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
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
enum ClusterCmd {
    /// Leader, term, checkpoint epochs and the members.
    Status,
    /// Backfill jobs (running and recently finished), or one job's shards.
    Backfills { job: Option<String> },
}

#[derive(Subcommand)]
enum NodesCmd {
    List,
    /// Graceful leave: the node's shards move away (each with a last
    /// checkpoint); it then owns none and can be stopped.
    Drain {
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
enum ViewsCmd {
    List,
    /// Replaces the node's pipeline (same table): shards rebuild from the
    /// archive; new and changed views get their whole training history.
    Apply {
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum FeaturesCmd {
    /// Features of a hypothetical event for KEY now.
    Get { view: String, key: String },
}

#[derive(Subcommand)]
enum CheckpointCmd {
    /// Checkpoints every shard now.
    Now,
}

#[derive(Subcommand)]
enum SegmentsCmd {
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

fn print_nodes(out: &mut dyn Write, v: &Json) -> Result<()> {
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
fn cluster_view(c: &Client) -> Result<Option<Json>> {
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
fn cluster_shards(token: &str, v: &Json) -> Vec<Json> {
    let mut shards = v["shards"].as_array().cloned().unwrap_or_default();
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    for n in nodes {
        let Some(addr) = n["addr"].as_str() else {
            continue;
        };
        let local = if n["id"] == v["node"] {
            Some(v.clone())
        } else {
            Client::new(addr, token).get_json("/v1/cluster").ok()
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

fn print_table(out: &mut dyn Write, headers: &[&str], rows: Vec<Vec<String>>) -> Result<()> {
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

fn s(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => "-".into(),
        other => other.to_string(),
    }
}

fn parse_time(flag: &str, v: &Option<String>) -> Result<Option<i64>> {
    match v {
        None => Ok(None),
        Some(t) => match lockstep_core::time::parse_timestamp(t) {
            Some(ms) => Ok(Some(ms)),
            None => bail!("--{flag} `{t}` is not a timestamp; write e.g. 2024-01-01T00:00:00Z"),
        },
    }
}

pub fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let token = cli
        .token
        .clone()
        .context("no API token: pass --token or set LOCKSTEP_TOKEN")?;
    let c = Client::new(&cli.addr, &token);
    let json = cli.json;
    let show = |out: &mut dyn Write, v: &Json| -> Result<()> {
        writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
        Ok(())
    };
    match cli.cmd {
        Cmd::Status => {
            let v = c.get_json("/v1/status")?;
            if json {
                show(out, &v)?;
            } else {
                let keys = [
                    "node_id",
                    "table",
                    "views",
                    "shard_count",
                    "events",
                    "lag",
                    "late",
                    "dead_letters",
                    "last_checkpoint",
                    "object_store",
                    "data_dir",
                    "uptime_seconds",
                ];
                for k in keys {
                    let val = match &v[k] {
                        Json::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(", "),
                        x => s(x),
                    };
                    outln!(out, "{k:<16} {val}");
                }
            }
        }
        Cmd::Cluster {
            cmd: ClusterCmd::Status,
        } => {
            let v = c.get_json("/v1/cluster")?;
            if json {
                show(out, &v)?;
            } else {
                for k in [
                    "table",
                    "shard_count",
                    "leader",
                    "term",
                    "epoch",
                    "completed_epoch",
                ] {
                    outln!(out, "{k:<16} {}", s(&v[k]));
                }
                outln!(out);
                print_nodes(out, &v)?;
            }
        }
        Cmd::Cluster {
            cmd: ClusterCmd::Backfills { job },
        } => {
            let v = match &job {
                Some(j) => c.get_json(&format!("/v1/backfill/{j}"))?,
                None => c.get_json("/v1/backfill")?,
            };
            if json {
                show(out, &v)?;
            } else if job.is_some() {
                for k in ["job", "view", "state", "done", "total", "error"] {
                    outln!(out, "{k:<12} {}", s(&v[k]));
                }
                outln!(out);
                outln!(
                    out,
                    "{:>5}  {:>5}  {:>10}  {:>10}  {:>9}  object",
                    "shard",
                    "node",
                    "events",
                    "rows",
                    "millis"
                );
                for p in v["shards"].as_array().into_iter().flatten() {
                    outln!(
                        out,
                        "{:>5}  {:>5}  {:>10}  {:>10}  {:>9.1}  {}",
                        s(&p["shard"]),
                        s(&p["node"]),
                        s(&p["events"]),
                        s(&p["rows"]),
                        p["millis"].as_f64().unwrap_or(0.0),
                        s(&p["path"])
                    );
                }
            } else {
                outln!(
                    out,
                    "{:<24}  {:<20}  {:<8}  {:>9}",
                    "job",
                    "view",
                    "state",
                    "shards"
                );
                for j in v["jobs"].as_array().into_iter().flatten() {
                    outln!(
                        out,
                        "{:<24}  {:<20}  {:<8}  {:>4}/{:<4}",
                        s(&j["job"]),
                        s(&j["view"]),
                        s(&j["state"]),
                        s(&j["done"]),
                        s(&j["total"])
                    );
                }
            }
        }
        Cmd::Nodes {
            cmd: NodesCmd::List,
        } => {
            let v = c.get_json("/v1/cluster")?;
            if json {
                show(out, &v["nodes"])?;
            } else {
                print_nodes(out, &v)?;
            }
        }
        Cmd::Nodes {
            cmd: NodesCmd::Remove { node },
        } => {
            let v = c.post_json(&format!("/v1/cluster/nodes/{node}/remove"), b"")?;
            if json {
                show(out, &v)?;
            } else {
                outln!(
                    out,
                    "node {} removed from the cluster; its shards are reassigned",
                    s(&v["node"])
                );
            }
        }
        Cmd::Nodes {
            cmd: NodesCmd::Drain { node },
        } => {
            let v = c.post_json(&format!("/v1/cluster/nodes/{node}/drain"), b"")?;
            if json {
                show(out, &v)?;
            } else {
                outln!(out,
                    "node {} is draining: {} shards move away, one last checkpoint each; watch `lockstepctl shards`",
                    s(&v["node"]),
                    s(&v["shards_to_move"])
                );
            }
        }
        Cmd::Rebalance => {
            let v = c.post_json("/v1/cluster/rebalance", b"")?;
            if json {
                show(out, &v)?;
            } else {
                let moves = v["planned"].as_array().cloned().unwrap_or_default();
                if moves.is_empty() {
                    outln!(out, "balanced: no moves");
                }
                for m in moves {
                    outln!(out, "{}", s(&m));
                }
            }
        }
        Cmd::Checkpoints => {
            let v = c.get_json("/v1/cluster")?;
            if json {
                show(
                    out,
                    &json!({
                        "epoch": v["epoch"],
                        "completed_epoch": v["completed_epoch"],
                        "checkpoints": v["shards"].as_array().cloned().unwrap_or_default().iter().map(|s| json!({"shard": s["shard"], "checkpoint": s["checkpoint"]})).collect::<Vec<_>>(),
                    }),
                )?;
            } else {
                outln!(
                    out,
                    "epoch {} opened; epoch {} complete on every shard\n",
                    s(&v["epoch"]),
                    s(&v["completed_epoch"])
                );
                let rows = v["shards"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|sh| {
                        let c = &sh["checkpoint"];
                        vec![
                            s(&sh["shard"]),
                            s(&c["seq"]),
                            s(&c["epoch"]),
                            s(&c["offset"]),
                            s(&c["owner"]),
                            s(&c["owner_epoch"]),
                            s(&c["snapshot_objects"]),
                            s(&c["digest"]),
                            s(&c["at"]),
                        ]
                    })
                    .collect();
                print_table(
                    out,
                    &[
                        "shard", "seq", "epoch", "offset", "owner", "owner_ep", "objects",
                        "digest", "at",
                    ],
                    rows,
                )?;
            }
        }
        Cmd::Shards if cluster_view(&c)?.is_some() => {
            let v = cluster_view(&c)?.expect("checked");
            let shards = cluster_shards(&token, &v);
            if json {
                show(out, &Json::Array(shards))?;
            } else {
                let rows = shards
                    .iter()
                    .map(|sh| {
                        vec![
                            s(&sh["shard"]),
                            s(&sh["owner"]),
                            s(&sh["owner_epoch"]),
                            s(&sh["moving_to"]),
                            s(&sh["processed"]),
                            s(&sh["end"]),
                            s(&sh["lag"]),
                            s(&sh["checkpoint"]["seq"]),
                            s(&sh["checkpoint"]["offset"]),
                            s(&sh["checkpoint"]["at"]),
                        ]
                    })
                    .collect();
                print_table(
                    out,
                    &[
                        "shard",
                        "owner",
                        "epoch",
                        "moving_to",
                        "offset",
                        "end",
                        "lag",
                        "ckpt",
                        "ckpt_offset",
                        "ckpt_at",
                    ],
                    rows,
                )?;
            }
        }
        Cmd::Shards => {
            let v = c.get_json("/v1/status")?;
            if json {
                show(out, &v["shards"])?;
            } else {
                let rows = v["shards"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|sh| {
                        vec![
                            s(&sh["shard"]),
                            s(&sh["offset"]),
                            s(&sh["log_end"]),
                            s(&sh["lag"]),
                            s(&sh["events"]),
                            s(&sh["late"]),
                            s(&sh["watermark"]),
                            s(&sh["last_checkpoint"]["seq"]),
                            s(&sh["last_checkpoint"]["log_offset"]),
                            s(&sh["restarts"]),
                        ]
                    })
                    .collect();
                print_table(
                    out,
                    &[
                        "shard",
                        "offset",
                        "log_end",
                        "lag",
                        "events",
                        "late",
                        "watermark",
                        "ckpt",
                        "ckpt_offset",
                        "restarts",
                    ],
                    rows,
                )?;
            }
        }
        Cmd::Views {
            cmd: ViewsCmd::List,
        } => {
            let v = c.get_json("/v1/views")?;
            if json {
                show(out, &v)?;
            } else {
                let rows = v["views"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|vw| {
                        let cols: Vec<String> = vw["columns"]
                            .as_array()
                            .map(|a| a.iter().map(|c| s(&c["name"])).collect())
                            .unwrap_or_default();
                        let labels: Vec<String> = vw["labels"]
                            .as_array()
                            .map(|a| a.iter().map(s).collect())
                            .unwrap_or_default();
                        vec![
                            s(&vw["name"]),
                            s(&vw["table"]),
                            cols.join(","),
                            labels.join(","),
                        ]
                    })
                    .collect();
                print_table(out, &["view", "table", "columns", "labels"], rows)?;
            }
        }
        Cmd::Views {
            cmd: ViewsCmd::Apply { file },
        } => {
            let sql =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let r = c.request("POST", "/v1/views", Some(&sql), &[])?;
            let v = r.json();
            if r.status == 400 {
                bail!(
                    "{}:{}:{}: {}",
                    file.display(),
                    s(&v["line"]),
                    s(&v["column"]),
                    s(&v["error"])
                );
            }
            if json || r.status != 200 {
                show(out, &v)?;
            } else if v["unchanged"] == true {
                outln!(
                    out,
                    "{} is what the node runs (views: {})",
                    file.display(),
                    s(&v["views"])
                );
            } else {
                outln!(out,
                    "applied {}: views {}; added {}, changed {}, removed {}; shards rebuilt from the archive in {} ms",
                    file.display(),
                    s(&v["views"]),
                    s(&v["added"]),
                    s(&v["changed"]),
                    s(&v["removed"]),
                    s(&v["millis"])
                );
            }
            if r.status != 200 {
                bail!("not applied");
            }
        }
        Cmd::Features {
            cmd: FeaturesCmd::Get { view, key },
        } => {
            let v = c.get_json(&format!("/v1/views/{view}/keys/{key}"))?;
            if json {
                show(out, &v)?;
            } else if let Some(m) = v["features"].as_object() {
                for (k, val) in m {
                    outln!(out, "{k:<24} {}", s(val));
                }
            }
        }
        Cmd::Checkpoint {
            cmd: CheckpointCmd::Now,
        } => {
            let v = c.post_json("/v1/checkpoint", b"")?;
            if json {
                show(out, &v)?;
            } else {
                let rows = v["checkpoints"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|r| {
                        vec![
                            s(&r["shard"]),
                            s(&r["seq"]),
                            s(&r["log_offset"]),
                            s(&r["wrote"]),
                            s(&r["slots_written"]),
                            s(&r["bytes_written"]),
                            s(&r["training_rows"]),
                            format!("{:.1}", r["millis"].as_f64().unwrap_or(0.0)),
                        ]
                    })
                    .collect();
                print_table(
                    out,
                    &[
                        "shard",
                        "seq",
                        "offset",
                        "wrote",
                        "slots",
                        "bytes",
                        "training_rows",
                        "ms",
                    ],
                    rows,
                )?;
            }
        }
        Cmd::Segments {
            cmd: SegmentsCmd::List { kind, name },
        } => {
            let mut q = Vec::new();
            if let Some(k) = kind {
                q.push(format!("kind={k}"));
            }
            if let Some(n) = name {
                q.push(format!("name={n}"));
            }
            let v = c.get_json(&format!("/v1/segments?{}", q.join("&")))?;
            if json {
                show(out, &v)?;
            } else {
                let fmt_t = |x: &Json| match x.as_i64() {
                    Some(t) if t != i64::MIN && t != i64::MAX => {
                        lockstep_core::time::format_rfc3339_ms(t)
                    }
                    _ => "-".into(),
                };
                let rows = v["segments"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|g| {
                        vec![
                            s(&g["kind"]),
                            s(&g["name"]),
                            s(&g["shard"]),
                            format!("{}..{}", s(&g["from_offset"]), s(&g["to_offset"])),
                            fmt_t(&g["min_time"]),
                            fmt_t(&g["max_time"]),
                            s(&g["rows"]),
                            s(&g["bytes"]),
                            format!("{:08x}", g["crc32"].as_u64().unwrap_or(0)),
                        ]
                    })
                    .collect();
                print_table(
                    out,
                    &[
                        "kind", "name", "shard", "offsets", "min_time", "max_time", "rows",
                        "bytes", "crc32",
                    ],
                    rows,
                )?;
            }
        }
        Cmd::Segments {
            cmd: SegmentsCmd::Compact { target_bytes },
        } => {
            let v = c.post_json(
                &format!("/v1/segments/compact?target_bytes={target_bytes}"),
                b"",
            )?;
            if json {
                show(out, &v)?;
            } else {
                let rows = v["compactions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|r| {
                        vec![
                            s(&r["shard"]),
                            s(&r["merged_groups"]),
                            s(&r["segments_before"]),
                            s(&r["segments_after"]),
                        ]
                    })
                    .collect();
                print_table(out, &["shard", "merged", "before", "after"], rows)?;
            }
        }
        Cmd::Export { view, out: path } => {
            let r = offline::export(&c, &view, &path)?;
            if json {
                show(out, &serde_json::to_value(&r)?)?;
            } else {
                outln!(
                    out,
                    "wrote {} committed rows of `{view}` from {} segments to {}",
                    r.rows,
                    r.segments,
                    path.display()
                );
            }
        }
        Cmd::Backfill {
            view,
            from,
            to,
            sql,
            out: path,
        } => {
            let (from, to) = (parse_time("from", &from)?, parse_time("to", &to)?);
            let sql = match &sql {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                ),
                None => None,
            };
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} backfill [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
                )
                .expect("progress template")
                .progress_chars("=> "),
            );
            if json {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let r = offline::backfill_with(
                &c,
                sql.as_deref(),
                &view,
                from,
                to,
                &path,
                &mut |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                },
            )?;
            bar.finish_and_clear();
            if json {
                show(out, &serde_json::to_value(&r)?)?;
            } else {
                outln!(
                    out,
                    "replayed {} events from {} segments; wrote {} rows of `{view}` to {}",
                    r.events,
                    r.segments,
                    r.rows,
                    path.display()
                );
            }
        }
    }
    Ok(())
}
