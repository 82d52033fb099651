//! `lockstepctl views` and `features`.

use crate::*;

pub(crate) fn views(cmd: ViewsCmd, ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let (c, json) = (&ctx.c, ctx.json);
    match cmd {
        ViewsCmd::List => {
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
        ViewsCmd::Apply { file } => {
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
    }
    Ok(())
}

pub(crate) fn features(cmd: FeaturesCmd, ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let (c, json) = (&ctx.c, ctx.json);
    match cmd {
        FeaturesCmd::Get { view, key } => {
            let v = c.get_json(&format!("/v1/views/{view}/keys/{key}"))?;
            if json {
                show(out, &v)?;
            } else if let Some(m) = v["features"].as_object() {
                for (k, val) in m {
                    outln!(out, "{k:<24} {}", s(val));
                }
            }
        }
    }
    Ok(())
}
