//! The API on a cluster member: requests for other nodes' shards go to
//! their owners, events go to the table's topic, checkpoints and the view
//! registry go through the control plane.
#![allow(clippy::result_large_err)]

use super::super::reply::*;
use super::super::routing::wait_for;
use super::super::App;
use super::{Events, Job, NodeMode, PeerAnswers, PeerAskError, Route, FORWARDED};
use crate::clock::now_ms;
use crate::cluster::ClusterCtx;
use crate::node::NodeCtx;
use crate::pipeline::Pipeline;
use crate::segments::SegmentInfo;
use crate::shard::{ShardError, ShardMsg};
use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use futures::future::BoxFuture;
use futures::FutureExt;
use lockstep_api::{BackfillRequest, CheckpointReply, CheckpointReport};
use lockstep_cluster::state::{ClusterState, Command, NodeState, Response as Applied};
use lockstep_core::value::Row;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub(crate) struct Member {
    pub(crate) cl: Arc<ClusterCtx>,
}

impl Member {
    /// Whether the replicated state this node has applied gives it `shard`.
    fn owns(&self, shard: u32) -> bool {
        self.cl
            .state()
            .owners
            .get(shard as usize)
            .is_some_and(|o| o.node == Some(self.cl.id))
    }
}

/// A process-unique suffix for generated keys.
fn unique_suffix() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        now_ms(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

impl NodeMode for Member {
    fn route(&self, ctx: &NodeCtx, shard: u32, headers: &HeaderMap) -> Route {
        let cl = &self.cl;
        // its actor still here, and the state this node has applied still
        // gives it the shard (an actor outlives its shard's move for a
        // moment)
        if ctx.shard(shard).is_some() && self.owns(shard) {
            let silent = cl.cp.since_contact();
            if silent > cl.lease() {
                return Route::Unavailable(format!(
                    "this node has not heard from the cluster for {} ms: shard {shard} may have moved; retry (on another node)",
                    silent.as_millis()
                ));
            }
            return Route::Local;
        }
        let st = cl.state();
        match st.owners.get(shard as usize).and_then(|o| o.node) {
            Some(n) if n == cl.id => {
                Route::Unavailable(format!("shard {shard} is starting on this node; retry"))
            }
            Some(n) if !headers.contains_key(FORWARDED) => match st.nodes.get(&n) {
                Some(i) => Route::Forward(i.addr.clone()),
                None => Route::Unavailable(format!("shard {shard}'s owner is unknown; retry")),
            },
            _ => Route::Unavailable(format!("shard {shard} is moving between nodes; retry")),
        }
    }

    fn forward<'a>(
        &'a self,
        ctx: &'a NodeCtx,
        addr: String,
        body: Option<Bytes>,
        uri: &'a Uri,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Response> {
        async move {
            let path = uri
                .path_and_query()
                .map_or(uri.path(), |p| p.as_str())
                .to_string();
            let mut h: Vec<(&str, String)> = vec![(FORWARDED, "1".into())];
            // the owner gets what is left of this request's time
            let budget_ms = headers
                .get(super::super::DEADLINE_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
                .map(|at| (at - now_ms()).max(1));
            if let Some(b) = budget_ms {
                h.push((super::super::BUDGET_HEADER, b.to_string()));
            }
            if let Some(k) = headers
                .get(lockstep_api::IDEMPOTENCY_KEY)
                .and_then(|v| v.to_str().ok())
            {
                h.push((lockstep_api::IDEMPOTENCY_KEY, k.to_string()));
            }
            let timeout = budget_ms.map_or(ctx.config.limits.request_timeout, |ms| {
                Duration::from_millis(ms as u64 + 1000)
            });
            match self
                .cl
                .call(&addr, &path, &ctx.config.token, body, &h, timeout)
                .await
            {
                Ok(reply) => {
                    let code =
                        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
                    let mut r =
                        json_response(code, String::from_utf8_lossy(&reply.body).into_owned());
                    if let Some(v) = reply
                        .retry_after
                        .and_then(|v| HeaderValue::from_str(&v).ok())
                    {
                        r.headers_mut().insert(header::RETRY_AFTER, v);
                    }
                    if reply.replayed {
                        r.headers_mut().insert(
                            lockstep_api::IDEMPOTENT_REPLAYED,
                            HeaderValue::from_static("true"),
                        );
                    }
                    r
                }
                Err(e) => unavailable(format!(
                    "the shard's owner at {addr} did not answer ({e}); retry"
                )),
            }
        }
        .boxed()
    }

    fn not_ready(&self, _ctx: &NodeCtx) -> Vec<String> {
        let cl = &self.cl;
        let mut why = Vec::new();
        match cl.state().nodes.get(&cl.id).map(|n| &n.state) {
            None => why.push("not a member of the cluster yet".to_string()),
            Some(NodeState::Down) => {
                why.push("the cluster holds this node down (it missed its heartbeats)".into())
            }
            Some(_) => {}
        }
        let silent = cl.cp.since_contact();
        if silent > cl.lease() {
            why.push(format!(
                "no word from the cluster for {} ms (its serving lease is {} ms)",
                silent.as_millis(),
                cl.lease().as_millis()
            ));
        }
        why
    }

    fn held_shards(&self, _ctx: &NodeCtx) -> Vec<(u32, u64)> {
        let cl = &self.cl;
        cl.state()
            .owners
            .iter()
            .enumerate()
            .filter(|(_, o)| o.node == Some(cl.id))
            .map(|(s, _)| {
                (
                    s as u32,
                    cl.ends[s].load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect()
    }

    fn still_serving(&self, ctx: &NodeCtx, shard: u32) -> Result<(), String> {
        // routed again, as if the request arrived now
        match self.route(ctx, shard, &HeaderMap::new()) {
            Route::Local => Ok(()),
            Route::Unavailable(why) => Err(why),
            Route::Forward(_) => Err(format!("shard {shard} left this node; retry")),
        }
    }

    fn key_home(&self, ctx: &NodeCtx, key: &str, headers: &HeaderMap) -> Route {
        let shard = (crate::pipeline::fnv1a64(key.as_bytes()) % u64::from(ctx.table.shards)) as u32;
        self.route(ctx, shard, headers)
    }

    /// The events go to the table's topic; retries are deduplicated by the
    /// shards (the key travels with each record). The writer keeps the
    /// dead letters and the key with its reply: a retry that reaches this
    /// node again is answered with that reply, marked `Idempotent-Replayed`
    /// (its records, produced again, are skipped by the shards).
    fn append<'a>(
        &'a self,
        ctx: &'a NodeCtx,
        key: Option<String>,
        body_hash: u64,
        events: Events,
    ) -> BoxFuture<'a, Result<(Option<String>, Events), Response>> {
        async move {
            if !events.is_empty() {
                let idem = key.as_deref().map(|k| (k, body_hash));
                if let Err(e) = crate::cluster::produce(ctx, &self.cl, idem, &events).await
                {
                    return Err(unavailable(format!(
                        "the log did not acknowledge the events ({e}); retry with the same Idempotency-Key"
                    )));
                }
            }
            Ok((key, Vec::new()))
        }
        .boxed()
    }

    /// On the shard's owner: the actor is told to answer when the record
    /// carrying this request's key arrives, then the event is produced; the
    /// features are computed just before it enters the state.
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
            let (ctx, cl) = (&app.ctx, &self.cl);
            let key = key.unwrap_or_else(|| format!("serve-{}-{}", cl.id, unique_suffix()));
            let Some(actor) = ctx.shard(shard) else {
                return unavailable(format!("shard {shard} is restarting; retry"));
            };
            let (tx, rx) = oneshot::channel();
            let msg = ShardMsg::ServeWhenSeen {
                key: key.clone(),
                view: view.to_string(),
                reply: tx,
            };
            if actor.send_message(msg).is_err() {
                return unavailable(format!("shard {shard} is restarting; retry"));
            }
            // a retry carries the same event; another under the key is refused
            let hash = crate::pipeline::event_hash(&row);
            if let Err(e) = crate::cluster::produce(ctx, cl, Some((&key, hash)), &[(shard, row)]).await {
                return unavailable(format!(
                    "the log did not acknowledge the event ({e}); retry with the same Idempotency-Key"
                ));
            }
            let wait = features_wait(&ctx.config.limits, started);
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(Ok(body))) => served(ctx, started, body),
                Ok(Ok(Err(
                    e @ (ShardError::AlreadyIngested
                    | ShardError::Refused(_)
                    | ShardError::KeyReused(_)),
                ))) => {
                    shard_error(e)
                }
                // the event is durably in: a retry would ingest it twice
                Ok(Ok(Err(e))) => ingested_without_features(&e.to_string()),
                Ok(Err(_)) => ingested_without_features("its shard restarted"),
                Err(_) => ingested_without_features(
                    "its shard had not read it from the log before the request's deadline (request_timeout)",
                ),
            }
        }
        .boxed()
    }

    /// Opens a cluster checkpoint epoch and waits until every shard's owner
    /// has committed a checkpoint for it.
    fn checkpoint<'a>(
        &'a self,
        _ctx: &'a NodeCtx,
    ) -> BoxFuture<'a, Result<CheckpointReply, Response>> {
        async move {
            let cl = &self.cl;
            let epoch = cl.state().epoch + 1;
            let open = Command::OpenEpoch {
                epoch,
                at_ms: now_ms(),
            };
            match cl.cp.propose(open).await {
                // another node opened it first: wait for that one
                Ok(Applied::Done) | Ok(Applied::Rejected(_)) => {}
                Err(e) => return Err(unavailable(e.to_string())),
            }
            let complete = wait_for(cl, Duration::from_secs(60), |st| {
                (st.completed_epoch() >= epoch).then(|| {
                    st.checkpoints
                        .iter()
                        .flatten()
                        .map(|c| CheckpointReport {
                            shard: c.shard,
                            seq: c.seq,
                            log_offset: c.offset,
                            epoch: Some(c.epoch),
                            owner: Some(c.owner),
                            ..CheckpointReport::default()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .await;
            match complete {
                Ok(checkpoints) => Ok(CheckpointReply {
                    epoch: Some(epoch),
                    checkpoints,
                }),
                Err(st) => Err(unavailable(format!(
                    "epoch {epoch} is not complete after 60 s (completed: {}); some shard is moving or down",
                    st.completed_epoch()
                ))),
            }
        }
        .boxed()
    }

    /// The replicated manifest: every shard's, wherever it runs, with
    /// everything committed so far (a read barrier: not this member's
    /// possibly lagging copy).
    fn segments<'a>(
        &'a self,
        _ctx: &'a NodeCtx,
    ) -> BoxFuture<'a, Result<Vec<SegmentInfo>, Response>> {
        async move {
            match self.cl.cp.barrier(Duration::from_secs(10)).await {
                Ok(st) => Ok(st.segments.iter().flat_map(|s| s.iter()).cloned().collect()),
                Err(e) => Err(unavailable(format!("the control plane: {e}"))),
            }
        }
        .boxed()
    }

    fn peers(&self) -> Vec<String> {
        self.cl
            .state()
            .nodes
            .iter()
            .filter(|(n, info)| **n != self.cl.id && info.state != NodeState::Down)
            .map(|(_, info)| info.addr.clone())
            .collect()
    }

    fn ask_peers<'a>(&'a self, ctx: &'a NodeCtx, path: String) -> BoxFuture<'a, PeerAnswers> {
        async move {
            let asks = self.peers().into_iter().map(|addr| {
                let path = path.clone();
                async move {
                    // a peer cut off must not hold the answer for long
                    let got = self
                        .cl
                        .call(
                            &addr,
                            &path,
                            &ctx.config.token,
                            None,
                            &[(FORWARDED, "1".into())],
                            Duration::from_secs(3),
                        )
                        .await;
                    let answer = match got {
                        Ok(r) if r.status == 200 => Ok(r.body.to_vec()),
                        Ok(r) => Err(PeerAskError::Status {
                            status: r.status,
                            body: String::from_utf8_lossy(&r.body).into_owned(),
                        }),
                        Err(e) if e.contains("timed out") => Err(PeerAskError::Timeout(3)),
                        Err(e) => Err(PeerAskError::Transport(e)),
                    };
                    (addr, answer)
                }
            });
            futures::future::join_all(asks).await
        }
        .boxed()
    }

    /// The cluster's view registry, as committed so far.
    fn current_pipeline<'a>(
        &'a self,
        ctx: &'a NodeCtx,
    ) -> BoxFuture<'a, Result<(Arc<Pipeline>, u64), Response>> {
        async move {
            let st = match self.cl.cp.barrier(Duration::from_secs(10)).await {
                Ok(st) => st,
                Err(e) => return Err(unavailable(format!("the control plane: {e}"))),
            };
            match crate::pipeline::cluster_pipeline(&st.pipeline, &ctx.table) {
                Ok(Some(p)) => {
                    let next = p.version + 1;
                    Ok((Arc::new(p), next))
                }
                Ok(None) => Err(unavailable("the cluster is not initialized yet")),
                Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            }
        }
        .boxed()
    }

    /// The new pipeline goes into the replicated view registry; every node
    /// switches to it, each owner rebuilds its shards from the archive in
    /// the object store and commits the rebuild. Returns once every shard's
    /// committed checkpoint is built for the new views. Ingest goes on into
    /// the log meanwhile.
    fn apply_views<'a>(
        &'a self,
        _ctx: &'a Arc<NodeCtx>,
        old: Arc<Pipeline>,
        new: Arc<Pipeline>,
    ) -> BoxFuture<'a, Result<(), Response>> {
        async move {
            let cl = &self.cl;
            let cmd = Command::SetPipeline {
                sql: new.sql.clone(),
                expect_version: old.version,
                at_ms: now_ms(),
            };
            match cl.cp.propose(cmd).await {
                Ok(Applied::Done) => {}
                Ok(Applied::Rejected(why)) => {
                    return Err(error(StatusCode::CONFLICT, why.to_string()))
                }
                Err(e) => {
                    return Err(unavailable(format!(
                        "the control plane did not take the new pipeline ({e}); it may or may not be applied: see `lockstepctl cluster status`"
                    )))
                }
            }
            let fp = new.fingerprint();
            let waiting = |st: &ClusterState| {
                st.checkpoints
                    .iter()
                    .filter(|c| c.as_ref().is_some_and(|c| c.pipeline != fp))
                    .count()
            };
            // (this member may apply the change after the leader answered)
            let outcome = wait_for(cl, Duration::from_secs(600), |st| {
                if st.pipeline.version > new.version {
                    Some(Err(st.pipeline.version))
                } else {
                    (st.pipeline.version == new.version && waiting(st) == 0).then_some(Ok(()))
                }
            })
            .await;
            match outcome {
                Ok(Ok(())) => Ok(()),
                Ok(Err(version)) => Err(error(
                    StatusCode::CONFLICT,
                    format!("another `views apply` replaced this pipeline (the cluster is at version {version})"),
                )),
                Err(st) => Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the new pipeline is applied, but {} shards have not committed their rebuild after 10 minutes; they keep retrying (see the owners' logs and `lockstepctl shards`)", waiting(&st)),
                )),
            }
        }
        .boxed()
    }

    /// The job goes into the replicated state; every shard's owner replays
    /// its shards and records its parts there.
    fn start_backfill<'a>(
        &'a self,
        _ctx: &'a Arc<NodeCtx>,
        req: BackfillRequest,
    ) -> BoxFuture<'a, Result<String, Response>> {
        async move {
            let cl = &self.cl;
            let id = format!("{}-n{}", now_ms(), cl.id);
            let request = serde_json::to_string(&req).expect("requests encode");
            let cmd = Command::BackfillStart {
                id: id.clone(),
                request,
                at_ms: now_ms(),
            };
            match cl.cp.propose(cmd).await {
                Ok(Applied::Done) => {}
                Ok(Applied::Rejected(w)) => return Err(unavailable(w.to_string())),
                Err(e) => return Err(unavailable(format!("the control plane: {e}"))),
            }
            // this member applies the job a moment after the leader: answer
            // once it has, so a `GET /v1/backfill/{job}` here finds it
            let _ = wait_for(cl, Duration::from_secs(10), |st| {
                st.backfill(&id).map(|_| ())
            })
            .await;
            Ok(id)
        }
        .boxed()
    }

    fn backfill_jobs(&self) -> Vec<Job> {
        self.cl.state().backfills.clone()
    }

    fn backfill_finished<'a>(
        &'a self,
        id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Option<Job>> {
        async move {
            wait_for(&self.cl, timeout, |st| {
                st.backfill(id).filter(|j| j.finished_ms.is_some()).cloned()
            })
            .await
            .ok()
        }
        .boxed()
    }
}
