//! `lockstepctl cluster`, `nodes`, `rebalance` and `checkpoints`.

use crate::*;

pub(crate) fn cluster(cmd: ClusterCmd, ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let (c, json) = (&ctx.c, ctx.json);
    match cmd {
        ClusterCmd::Status => {
            let v = c.get_json("/v1/cluster")?;
            if json {
                show(out, &v)?;
            } else {
                for k in [
                    "cluster_id",
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
        ClusterCmd::Backfills { job } => {
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
    }
    Ok(())
}

pub(crate) fn nodes(cmd: NodesCmd, ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let (c, json) = (&ctx.c, ctx.json);
    match cmd {
        NodesCmd::List => {
            let v = c.get_json("/v1/cluster")?;
            if json {
                show(out, &v["nodes"])?;
            } else {
                print_nodes(out, &v)?;
            }
        }
        NodesCmd::Remove { node } => {
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
        NodesCmd::Activate { node } => {
            let v = c.post_json(&format!("/v1/cluster/nodes/{node}/activate"), b"")?;
            if json {
                show(out, &v)?;
            } else {
                outln!(out, "node {} is {}", s(&v["node"]), s(&v["state"]));
            }
        }
        NodesCmd::Drain { node, wait } => {
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
            if let Some(wait) = wait {
                let id = v["node"].as_u64().unwrap_or_default();
                wait_drained(c, id, wait)?;
                if !json {
                    outln!(out, "node {id} owns no shard");
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn rebalance(ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let (c, json) = (&ctx.c, ctx.json);
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
    Ok(())
}

pub(crate) fn checkpoints(ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let (c, json) = (&ctx.c, ctx.json);
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
                "shard", "seq", "epoch", "offset", "owner", "owner_ep", "objects", "digest", "at",
            ],
            rows,
        )?;
    }
    Ok(())
}

/// Waits until node `id` owns no shard and no shard moves to it.
fn wait_drained(c: &Client, id: u64, wait: std::time::Duration) -> Result<()> {
    let start = std::time::Instant::now();
    let mut left = usize::MAX;
    loop {
        // a node that does not answer (an election, a restart) is asked
        // again until the time is up
        if let Ok(v) = c.get_json("/v1/cluster") {
            left = v["shards"].as_array().map_or(usize::MAX, |shards| {
                shards
                    .iter()
                    .filter(|sh| sh["owner"] == id || sh["moving_to"] == id)
                    .count()
            });
            if left == 0 {
                return Ok(());
            }
        }
        if start.elapsed() >= wait {
            bail!(
                "node {id} still owns {} after {wait:?}; watch `lockstepctl shards`",
                if left == usize::MAX {
                    "shards (the cluster did not answer)".to_string()
                } else {
                    format!("{left} shards")
                }
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
