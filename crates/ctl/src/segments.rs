//! `lockstepctl checkpoint` and `segments`.

use crate::*;

pub(crate) fn checkpoint(cmd: CheckpointCmd, ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let (c, json) = (&ctx.c, ctx.json);
    match cmd {
        CheckpointCmd::Now => {
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
    }
    Ok(())
}

pub(crate) fn segments(cmd: SegmentsCmd, ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let (c, json) = (&ctx.c, ctx.json);
    match cmd {
        SegmentsCmd::List { kind, name } => {
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
        SegmentsCmd::Compact { target_bytes } => {
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
    }
    Ok(())
}
