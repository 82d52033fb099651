//! `lockstepctl status` and `lockstepctl shards`.

use crate::*;

pub(crate) fn status(ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let (c, json) = (&ctx.c, ctx.json);
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
    Ok(())
}

/// Per shard: offsets, lag, watermark, last checkpoint (in a cluster, from
/// the shard map and each owner).
pub(crate) fn shards(ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let (c, json) = (&ctx.c, ctx.json);
    if let Some(v) = cluster_view(c)? {
        let shards = cluster_shards(c, &v);
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
    } else {
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
    Ok(())
}
