//! What the API does differently on one node and in a cluster, behind one
//! trait; the handlers never ask which mode they run in.
//!
//! | | one node ([`Alone`](local::Alone)) | cluster ([`Member`](cluster::Member)) |
//! |---|---|---|
//! | where a shard's requests go | this node's actor | the owner's actor, one hop away; 503 while the serving lease lapsed |
//! | ingest | the writer appends to the embedded log | produced to the topic; the writer keeps dead letters |
//! | serve-and-ingest | through the writer, features from the actor | produced, the owner answers when the record arrives |
//! | checkpoint now | every shard checkpoints | a checkpoint epoch, complete on every owner |
//! | committed segments | the shards' manifests | the replicated manifest |
//! | other nodes (compaction) | none | the live members |
//! | views apply | pipeline file, ingest paused, shards rebuilt | the view registry in Raft, owners rebuild |
//! | backfill jobs | run here, kept in memory | in the replicated state, run by each shard's owner |
//! | dead-letter listing | this node's | every live node's, merged |
#![allow(clippy::result_large_err)]

pub(crate) mod cluster;
pub(crate) mod local;

use super::App;
use crate::node::NodeCtx;
use crate::pipeline::Pipeline;
use crate::segments::SegmentInfo;
use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use futures::future::BoxFuture;
use lockstep_api::{BackfillRequest, CheckpointReply};
use lockstep_core::value::Row;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set on a request one node sends another (which answers it alone,
/// never passing it on).
pub(crate) const FORWARDED: &str = "x-lockstep-forwarded";

/// What each peer answered to a GET: `(address, body or why not)`.
pub(crate) type PeerAnswers = Vec<(String, Result<Vec<u8>, PeerAskError>)>;

/// Why a peer's answer is missing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerAskError {
    #[error("no answer within {0} s")]
    Timeout(u64),
    #[error("answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("{0}")]
    Transport(String),
    #[error("its answer does not parse: {0}")]
    Body(serde_json::Error),
}

/// Where a request for a shard is answered.
pub(crate) enum Route {
    Local,
    Forward(String),
    Unavailable(String),
}

/// Validated events of one ingest request, by shard.
pub(crate) type Events = Vec<(u32, Row)>;

pub(crate) trait NodeMode: Send + Sync {
    /// Where a request for `shard` is answered.
    fn route(&self, ctx: &NodeCtx, shard: u32, headers: &HeaderMap) -> Route;

    /// Sends the request on to the node at `addr` and relays its answer.
    fn forward<'a>(
        &'a self,
        ctx: &'a NodeCtx,
        addr: String,
        body: Option<Bytes>,
        uri: &'a Uri,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Response>;

    /// Why this node should get no traffic now, beyond its shards' own
    /// state (a cluster member: not a member yet, or no word from the
    /// cluster within its lease); empty: none.
    fn not_ready(&self, _ctx: &NodeCtx) -> Vec<String> {
        Vec::new()
    }

    /// The shards this node should be running now, with the end of each
    /// one's log as far as the node knows it.
    fn held_shards(&self, ctx: &NodeCtx) -> Vec<(u32, u64)> {
        (0..ctx.table.shards)
            .map(|s| {
                (
                    s,
                    lockstep_log::Log::end_offset(ctx.log.as_ref(), s).unwrap_or(0),
                )
            })
            .collect()
    }

    /// Checked again when an answer of shard `shard` computed here is
    /// about to be sent: whether this node may still answer for it (a
    /// cluster member: it still holds the shard under a valid lease; a
    /// pause between routing and answering must not let a stale answer
    /// out). `Err`: why not.
    fn still_serving(&self, _ctx: &NodeCtx, _shard: u32) -> Result<(), String> {
        Ok(())
    }

    /// Where an ingest request with Idempotency-Key `key` is answered: a
    /// cluster sends each key's requests to one node (the owner of the
    /// key's shard), so a retry sent anywhere is recognised there and
    /// another body under the key refused. While that node is not known
    /// (the shard is moving or starting) the request is refused (`503`):
    /// decided elsewhere, another body could be taken.
    fn key_home(&self, _ctx: &NodeCtx, _key: &str, _headers: &HeaderMap) -> Route {
        Route::Local
    }

    /// Puts an ingest request's events in the table's log, or leaves them
    /// (and the request's Idempotency-Key) to the writer: what it returns
    /// the writer appends with the request's dead letters. `body_hash` is
    /// the hash of the request's body (with a key).
    fn append<'a>(
        &'a self,
        ctx: &'a NodeCtx,
        key: Option<String>,
        body_hash: u64,
        events: Events,
    ) -> BoxFuture<'a, Result<(Option<String>, Events), Response>>;

    /// Serve-and-ingest: the event's features, computed just before it
    /// enters its shard's state, and the event ingested.
    fn serve_and_ingest<'a>(
        &'a self,
        app: &'a App,
        shard: u32,
        view: &'a str,
        row: Row,
        key: Option<String>,
        started: Instant,
    ) -> BoxFuture<'a, Response>;

    /// Checkpoints every shard now.
    fn checkpoint<'a>(
        &'a self,
        ctx: &'a NodeCtx,
    ) -> BoxFuture<'a, Result<CheckpointReply, Response>>;

    /// Every shard's committed segments.
    fn segments<'a>(
        &'a self,
        ctx: &'a NodeCtx,
    ) -> BoxFuture<'a, Result<Vec<SegmentInfo>, Response>>;

    /// The API addresses of the other live nodes.
    fn peers(&self) -> Vec<String>;

    /// GETs `path` on every other live node (marked [`FORWARDED`], so each
    /// answers for itself alone), concurrently.
    fn ask_peers<'a>(&'a self, ctx: &'a NodeCtx, path: String) -> BoxFuture<'a, PeerAnswers>;

    /// The pipeline a `views apply` replaces, and the version the new one
    /// gets.
    fn current_pipeline<'a>(
        &'a self,
        ctx: &'a NodeCtx,
    ) -> BoxFuture<'a, Result<(Arc<Pipeline>, u64), Response>>;

    /// Makes `new` (its SQL is `new.sql`) the pipeline every shard runs,
    /// rebuilding shards from their archives; answers when it is done.
    fn apply_views<'a>(
        &'a self,
        ctx: &'a Arc<NodeCtx>,
        old: Arc<Pipeline>,
        new: Arc<Pipeline>,
    ) -> BoxFuture<'a, Result<(), Response>>;

    /// Registers a backfill job (`req.sql` set) and starts it; returns its
    /// id once this node can report on it.
    fn start_backfill<'a>(
        &'a self,
        ctx: &'a Arc<NodeCtx>,
        req: BackfillRequest,
    ) -> BoxFuture<'a, Result<String, Response>>;

    /// The running and recently finished backfill jobs.
    fn backfill_jobs(&self) -> Vec<Job>;

    /// The job `id` once finished, or `None` after `timeout`.
    fn backfill_finished<'a>(
        &'a self,
        id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Option<Job>>;
}

/// A backfill job as a node keeps it (in the replicated state, or in the
/// node's memory).
pub(crate) type Job = lockstep_cluster::state::BackfillJob;

/// The mode of a node: the one place that chooses.
pub(crate) fn for_node(ctx: &NodeCtx) -> Arc<dyn NodeMode> {
    match &ctx.cluster {
        Some(cl) => Arc::new(cluster::Member { cl: cl.clone() }),
        None => Arc::new(local::Alone::default()),
    }
}
