//! `lockstepctl export` and `backfill`: committed rows read, or the
//! archive replayed, through the node's API.

use crate::*;

pub(crate) fn export(ctx: &Ctx, view: String, path: PathBuf, out: &mut dyn Write) -> Result<()> {
    let (c, json) = (&ctx.c, ctx.json);
    let r = offline::export(c, &view, &path)?;
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
    Ok(())
}

pub(crate) fn backfill(
    ctx: &Ctx,
    args: (
        String,
        Option<String>,
        Option<String>,
        Option<PathBuf>,
        PathBuf,
    ),
    out: &mut dyn Write,
) -> Result<()> {
    let (view, from, to, sql, path) = args;
    let (c, json) = (&ctx.c, ctx.json);
    let (from, to) = (parse_time("from", &from)?, parse_time("to", &to)?);
    let sql = match &sql {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
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
        c,
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
    Ok(())
}
