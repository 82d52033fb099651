//! The API on a node that runs alone: every shard is here, the log is the
//! embedded one, the pipeline is the node's file.
#![allow(clippy::result_large_err)]

use super::super::reply::*;
use super::super::routing::all_shards;
use super::super::App;
use super::{Events, Job, NodeMode, PeerAnswers, Route};
use crate::node::{Node, NodeCtx};
use crate::pipeline::Pipeline;
use crate::segments::SegmentInfo;
use crate::shard::ShardMsg;
use crate::writer::{IngestReply, WriteReq};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures::future::BoxFuture;
use futures::FutureExt;
use lockstep_api::{BackfillRequest, CheckpointReply, CheckpointReport};
use lockstep_core::value::Row;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Default)]
pub(crate) struct Alone {
    jobs: Arc<crate::backfill::LocalJobs>,
}

impl NodeMode for Alone {
    fn route(&self, _ctx: &NodeCtx, _shard: u32, _headers: &HeaderMap) -> Route {
        Route::Local
    }

    fn forward<'a>(
        &'a self,
        _ctx: &'a NodeCtx,
        _addr: String,
        _body: Option<Bytes>,
        _uri: &'a Uri,
        _headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Response> {
        async {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "a node alone forwards nothing",
            )
        }
        .boxed()
    }

    fn append<'a>(
        &'a self,
        _ctx: &'a NodeCtx,
        key: Option<String>,
        _body_hash: u64,
        events: Events,
    ) -> BoxFuture<'a, Result<(Option<String>, Events), Response>> {
        // the writer appends them to the embedded log, with the key
        async move { Ok((key, events)) }.boxed()
    }

    fn serve_and_ingest<'a>(
        &'a self,
        app: &'a App,
        shard: u32,
        view: &'a str,
        row: Row,
        key: Option<String>,
        started: Instant,
    ) -> BoxFuture<'a, Response> {
        async move {
            let ctx = &app.ctx;
            if let Err(r) = super::super::ingest::room_for_events(ctx) {
                return r;
            }
            let Ok(_gate) = ctx.ingest_gate.try_read() else {
                return super::super::ingest::views_applying(ctx);
            };
            let (done, rx) = oneshot::channel();
            let body_hash = key.as_ref().map_or(0, |_| {
                crate::pipeline::event_hash(&row)
            });
            let req = WriteReq {
                idempotency_key: key,
                body_hash,
                events: vec![(shard, row)],
                dead: Vec::new(),
                reply: IngestReply {
                    accepted: 1,
                    ..IngestReply::default()
                },
                serve: Some(view.to_string()),
                done,
            };
            if app.writer.send(req).await.is_err() {
                return error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down");
            }
            let written = match rx.await {
                Ok(Ok(w)) => w,
                Ok(Err(e @ crate::writer::WriteError::KeyReused(_))) => {
                    return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
                }
                Ok(Err(e)) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                Err(_) => {
                    return error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down")
                }
            };
            // a repeated Idempotency-Key, or an event id applied before
            if written.replayed || written.duplicates > 0 {
                return shard_error(crate::shard::ShardError::AlreadyIngested);
            }
            let wait = features_wait(&ctx.config.limits, started);
            let features = match written.features {
                Some(f) => match tokio::time::timeout(wait, f).await {
                    Ok(r) => r
                        .map_err(|_| "its shard restarted while processing it".to_string())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                    Err(_) => Err("its shard had not reached it before the request's deadline (request_timeout)".to_string()),
                },
                None => Err("no features were computed".to_string()),
            };
            match features {
                Ok(body) => served(ctx, started, body),
                // the event is durably in: a retry would ingest it twice
                Err(e) => ingested_without_features(&e),
            }
        }
        .boxed()
    }

    fn checkpoint<'a>(
        &'a self,
        ctx: &'a NodeCtx,
    ) -> BoxFuture<'a, Result<CheckpointReply, Response>> {
        async move {
            let results = Node::checkpoint_all(ctx).await;
            let errors: Vec<String> = results
                .iter()
                .filter_map(|r| r.as_ref().err().map(ToString::to_string))
                .collect();
            if !errors.is_empty() {
                return Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("checkpoint failed: {}", errors.join("; ")),
                ));
            }
            let checkpoints = results
                .into_iter()
                .filter_map(Result::ok)
                .map(|r| CheckpointReport {
                    shard: r.shard,
                    seq: r.seq,
                    log_offset: r.log_offset,
                    epoch: None,
                    owner: None,
                    wrote: Some(r.wrote),
                    slots_written: Some(r.slots_written),
                    bytes_written: Some(r.bytes_written),
                    training_rows: Some(r.training_rows),
                    segments: Some(r.segments),
                    millis: Some(r.millis),
                })
                .collect();
            Ok(CheckpointReply {
                epoch: None,
                checkpoints,
            })
        }
        .boxed()
    }

    fn segments<'a>(
        &'a self,
        ctx: &'a NodeCtx,
    ) -> BoxFuture<'a, Result<Vec<SegmentInfo>, Response>> {
        async move {
            let all = all_shards(ctx, |reply| ShardMsg::Segments { reply }).await?;
            Ok(all.into_iter().flatten().collect())
        }
        .boxed()
    }

    fn peers(&self) -> Vec<String> {
        Vec::new()
    }

    fn ask_peers<'a>(&'a self, _ctx: &'a NodeCtx, _path: String) -> BoxFuture<'a, PeerAnswers> {
        async { Vec::new() }.boxed()
    }

    fn current_pipeline<'a>(
        &'a self,
        ctx: &'a NodeCtx,
    ) -> BoxFuture<'a, Result<(Arc<Pipeline>, u64), Response>> {
        async move {
            let p = ctx.pipeline();
            let version = p.version;
            Ok((p, version))
        }
        .boxed()
    }

    /// The new SQL is written to the node's pipeline file first (so a
    /// restart, even in the middle, runs it), ingest pauses, every shard
    /// checkpoints, and each shard actor is sent the swap: it rebuilds its
    /// state from its archive under the new pipeline and answers. Serving
    /// waits in the actors' mailboxes meanwhile.
    fn apply_views<'a>(
        &'a self,
        ctx: &'a Arc<NodeCtx>,
        _old: Arc<Pipeline>,
        new: Arc<Pipeline>,
    ) -> BoxFuture<'a, Result<(), Response>> {
        async move {
            // 1. the new pipeline becomes the node's configuration
            let path = &ctx.config.pipeline;
            if let Err(e) = crate::pipeline::write_file_durably(path, new.sql.as_bytes()) {
                return Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "cannot write the node's pipeline file {}: {e}",
                        path.display()
                    ),
                ));
            }
            // 2. no event enters until every shard runs the new pipeline
            let _gate = ctx.ingest_gate.write().await;
            for r in Node::checkpoint_all(ctx).await {
                if let Err(e) = r {
                    return Err(error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("checkpoint before the swap failed: {e}; the new pipeline is saved and takes effect at the next restart"),
                    ));
                }
            }
            // 3. each shard rebuilds under the new pipeline, in place
            ctx.set_pipeline(new.clone());
            let deadline = Instant::now() + Duration::from_secs(600);
            let swaps = (0..ctx.table.shards).map(|s| swap_shard(ctx, s, deadline));
            for r in futures::future::join_all(swaps).await {
                r?;
            }
            ctx.state
                .set_node_key("views", &new.fingerprint())
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
        .boxed()
    }

    /// This node runs the job, shard after shard, over the segments its
    /// shards have committed.
    fn start_backfill<'a>(
        &'a self,
        ctx: &'a Arc<NodeCtx>,
        req: BackfillRequest,
    ) -> BoxFuture<'a, Result<String, Response>> {
        async move { Ok(self.jobs.start(ctx, req)) }.boxed()
    }

    fn backfill_jobs(&self) -> Vec<Job> {
        self.jobs.jobs()
    }

    fn backfill_finished<'a>(
        &'a self,
        id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Option<Job>> {
        async move { self.jobs.finished(id, timeout).await }.boxed()
    }
}

/// Swaps shard `s` to the node's pipeline and waits for its answer; an
/// actor that is restarting (its successor recovers under the new
/// pipeline, or failed the rebuild and is retried) is asked again.
async fn swap_shard(ctx: &NodeCtx, s: u32, deadline: Instant) -> Result<(), Response> {
    let mut last = String::from("its actor is restarting");
    while Instant::now() < deadline {
        let (tx, rx) = oneshot::channel();
        let sent = ctx
            .shard(s)
            .is_some_and(|a| a.send_message(ShardMsg::Swap { reply: Some(tx) }).is_ok());
        if sent {
            match rx.await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "its actor stopped".into(),
            }
        }
        // the supervisor restarts it (with backoff): ask its successor
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("shard {s} has not rebuilt after 10 minutes ({last}); it keeps retrying (see the node's log and /v1/status)"),
    ))
}
