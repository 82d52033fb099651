//! Reading a node's committed output from the outside: `export` (the
//! committed training rows) and `backfill` (replaying the archived raw
//! segments through the same operators). Both go through the HTTP API, so
//! they need no access to the node's object store credentials.

use lockstep_api::{
    BackfillJob, BackfillJobState, BackfillPart, BackfillRequest, Client, ClientError, SegmentInfo,
};
use lockstep_core::value::Value;
use lockstep_core::{Catalog, Engine};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> OfflineError {
    OfflineError::Other(e.to_string())
}

/// The node's pipeline, parsed here exactly as the node parsed it.
pub fn fetch_pipeline(client: &Client) -> Result<Catalog, OfflineError> {
    let p = client.pipeline()?;
    lockstep_core::parse_pipeline(&p.sql).map_err(|e| other(format!("the node's pipeline: {e}")))
}

/// Committed segments of a kind and name, by shard, in log order.
pub fn list_segments(
    client: &Client,
    kind: &str,
    name: &str,
) -> Result<Vec<SegmentInfo>, OfflineError> {
    let mut segs = client.segments(Some(kind), Some(name), None)?.segments;
    segs.sort_by_key(|s| (s.shard, s.from_offset));
    Ok(segs)
}

/// Fetches a segment and checks it against its manifest checksum.
pub fn fetch_segment(client: &Client, s: &SegmentInfo) -> Result<bytes::Bytes, OfflineError> {
    let b = client.object(&s.path)?;
    let crc = crc32fast::hash(&b);
    if crc != s.crc32 {
        return Err(other(format!(
            "segment {} is damaged: checksum {crc:08x}, manifest says {:08x}",
            s.path, s.crc32
        )));
    }
    Ok(bytes::Bytes::from(b))
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OfflineReport {
    pub segments: usize,
    pub events: u64,
    pub rows: u64,
}

/// Writes the committed training rows of `view` to `out` (per shard, in log
/// order).
pub fn export(client: &Client, view: &str, out: &Path) -> Result<OfflineReport, OfflineError> {
    let catalog = fetch_pipeline(client)?;
    let (_, v) = catalog
        .view(view)
        .ok_or_else(|| other(format!("unknown view `{view}`")))?;
    let segs = list_segments(client, "training", view)?;
    let mut w = lockstep_io::create_row_writer(out, &v.output).map_err(other)?;
    let mut report = OfflineReport::default();
    for s in &segs {
        let bytes = fetch_segment(client, s)?;
        for r in lockstep_io::rows_from_parquet(&s.path, bytes, &v.output).map_err(other)? {
            w.write(&r).map_err(other)?;
            report.rows += 1;
        }
        report.segments += 1;
    }
    w.finish().map_err(other)?;
    Ok(report)
}

/// Replays the archived raw segments through `view`'s operators, shard by
/// shard in log order, and writes the rows whose event time lies in
/// `[from, to)` (when given). With the whole archive this reproduces the
/// committed training rows exactly; rows still waiting for their labels at
/// the end of the archive are not emitted, as online.
pub fn backfill(
    client: &Client,
    view: &str,
    from: Option<i64>,
    to: Option<i64>,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<OfflineReport, OfflineError> {
    backfill_with(client, None, view, from, to, out, progress)
}

/// The catalog a backfill runs: the node's, or (with `pipeline`) a new or
/// changed view of the node's table. The table must match the node's
/// (name, columns, key, event time, lateness, shards).
pub fn backfill_catalog(
    node: Catalog,
    pipeline: Option<&str>,
    view: &str,
) -> Result<Arc<Catalog>, OfflineError> {
    let catalog = match pipeline {
        None => node,
        Some(sql) => {
            let c = lockstep_core::parse_pipeline(sql)
                .map_err(|e| other(format!("the pipeline file: {e}")))?;
            let (_, v) = c
                .view(view)
                .ok_or_else(|| other(format!("the pipeline file has no view `{view}`")))?;
            let (mine, theirs) = (&c.tables[v.table], &node.tables[0]);
            if mine.name != theirs.name
                || mine.schema != theirs.schema
                || mine.key != theirs.key
                || mine.time != theirs.time
                || mine.shards != theirs.shards
                || mine.lateness_ms != theirs.lateness_ms
            {
                return Err(other(format!(
                    "view `{view}` reads table `{}`, which differs from the node's table `{}` (columns, key, event time, lateness and shards must match to replay its archive)",
                    mine.name, theirs.name
                )));
            }
            c
        }
    };
    if catalog.view(view).is_none() {
        return Err(other(format!("unknown view `{view}`")));
    }
    Ok(Arc::new(catalog))
}

/// Where a replay's reader passes each event of a segment, in log order.
pub type EventSink<'a> = dyn FnMut(lockstep_core::value::Row) -> Result<(), OfflineError> + 'a;

/// Replays archived raw segments through `view`: `segs` in log order
/// (shard by shard, each from offset 0 without gaps), calling `emit` with
/// each row whose event time is in `[from, to)` and `progress` after each
/// segment with the events replayed so far. `read` reads a segment,
/// passing each of its events in order to the function it is given (as
/// they arrive: nothing asks for a whole segment in memory).
#[allow(clippy::too_many_arguments)]
pub fn replay(
    catalog: &Arc<Catalog>,
    view: &str,
    segs: &[SegmentInfo],
    from: Option<i64>,
    to: Option<i64>,
    read: &mut dyn FnMut(&SegmentInfo, &mut EventSink) -> Result<(), OfflineError>,
    emit: &mut dyn FnMut(lockstep_core::value::Row) -> Result<(), OfflineError>,
    progress: &mut dyn FnMut(u64),
) -> Result<OfflineReport, OfflineError> {
    let (_, v) = catalog
        .view(view)
        .ok_or_else(|| other(format!("unknown view `{view}`")))?;
    let table = &catalog.tables[v.table];
    let time_col = v.output.index_of(&table.schema.columns[table.time].name);
    if (from.is_some() || to.is_some()) && time_col.is_none() {
        return Err(other(format!(
            "view `{view}` does not output `{}`, so --from/--to cannot select its rows",
            table.schema.columns[table.time].name
        )));
    }
    let mut engine = Engine::new(catalog.clone(), &[view]).map_err(other)?;
    let mut report = OfflineReport::default();
    let mut emitted = Vec::new();
    let mut expect: Option<(u32, u64)> = None;
    for s in segs {
        match expect {
            Some((shard, off)) if shard == s.shard && off != s.from_offset => {
                return Err(other(format!(
                    "archive of shard {shard} has a gap: {off}..{}",
                    s.from_offset
                )))
            }
            _ => {}
        }
        expect = Some((s.shard, s.to_offset));
        let shard = s.shard;
        read(s, &mut |row| {
            engine.push_to_shard(shard, &row, &mut emitted);
            report.events += 1;
            for e in emitted.drain(..) {
                let keep = match time_col.map(|c| &e.row[c]) {
                    Some(Value::Timestamp(t)) => {
                        from.is_none_or(|f| *t >= f) && to.is_none_or(|u| *t < u)
                    }
                    _ => true,
                };
                if keep {
                    emit(e.row)?;
                    report.rows += 1;
                }
            }
            Ok(())
        })?;
        report.segments += 1;
        progress(report.events);
    }
    Ok(report)
}

/// A backfill of `view` (of the node's pipeline, or of `pipeline`) over
/// the archive, run by the node as a job (`POST /v1/backfill`): on a
/// cluster every node replays the shards it owns, in parallel; alone, the
/// node replays each shard. The rows, one object per shard, are collected
/// in shard order into `out`.
pub fn backfill_with(
    client: &Client,
    pipeline: Option<&str>,
    view: &str,
    from: Option<i64>,
    to: Option<i64>,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<OfflineReport, OfflineError> {
    backfill_by_job(client, pipeline, view, from, to, out, progress)
}

/// A backfill job: `POST /v1/backfill?wait=false` (retried while the node
/// answers 503, e.g. a cluster's control plane electing a leader), then its progress until every
/// shard is done. Returns the finished job; a failed job is an error.
pub fn run_backfill_job(
    client: &Client,
    req: &BackfillRequest,
) -> Result<BackfillJob, OfflineError> {
    let mut last = None;
    let mut job = None;
    for _ in 0..30 {
        match client.start_backfill(req) {
            Ok(started) => {
                job = Some(started.job);
                break;
            }
            Err(e) if e.status() == Some(503) => last = Some(e.to_string()),
            Err(e) => return Err(e.into()),
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let Some(job) = job else {
        return Err(other(format!(
            "POST /v1/backfill: still unavailable after 30 tries: {}",
            last.unwrap_or_default()
        )));
    };
    let mut misses = 0;
    loop {
        let j = match client.backfill_job(&job) {
            Ok(j) => j,
            // this member may apply the job a moment after the leader did
            Err(e) if misses < 100 && e.status().is_some() => {
                misses += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match j.state {
            BackfillJobState::Done => return Ok(j),
            BackfillJobState::Failed => {
                return Err(other(format!(
                    "backfill job {job} failed: {}",
                    j.error.as_deref().unwrap_or("?")
                )))
            }
            BackfillJobState::Running => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

/// A backfill job: the node (or every node of a cluster, the shards it
/// owns) replays the archive and writes the rows to the object store;
/// this collects them in shard order into `out`.
fn backfill_by_job(
    client: &Client,
    pipeline: Option<&str>,
    view: &str,
    from: Option<i64>,
    to: Option<i64>,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<OfflineReport, OfflineError> {
    let catalog = backfill_catalog(fetch_pipeline(client)?, pipeline, view)?;
    let (_, v) = catalog.view(view).expect("checked");
    let total: u64 = list_segments(client, "raw", &catalog.tables[v.table].name)?
        .iter()
        .map(|s| s.rows)
        .sum();
    let req = BackfillRequest {
        view: view.to_string(),
        from,
        to,
        sql: pipeline.map(str::to_string),
    };
    let mut parts: Vec<BackfillPart> = run_backfill_job(client, &req)?.shards.unwrap_or_default();
    parts.sort_by_key(|p| p.shard);
    let mut w = lockstep_io::create_row_writer(out, &v.output).map_err(other)?;
    let mut report = OfflineReport::default();
    for p in &parts {
        let b = client.object(&p.path)?;
        if crc32fast::hash(&b) != p.crc32 {
            return Err(other(format!("backfill object {} is damaged", p.path)));
        }
        for r in lockstep_io::rows_from_parquet(&p.path, bytes::Bytes::from(b), &v.output)
            .map_err(other)?
        {
            w.write(&r).map_err(other)?;
            report.rows += 1;
        }
        report.events += p.events;
        report.segments += 1;
        progress(report.events, total);
    }
    w.finish().map_err(other)?;
    Ok(report)
}
