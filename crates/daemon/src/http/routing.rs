//! Asking this node's shard actors, and waiting on the replicated state.
#![allow(clippy::result_large_err)]

use super::reply::*;
use crate::node::NodeCtx;
use crate::shard::{Reply, ShardMsg};
use axum::http::StatusCode;
use axum::response::Response;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Sends a request to a shard actor and waits for its answer.
pub(crate) async fn ask<T>(
    ctx: &NodeCtx,
    shard: u32,
    make: impl FnOnce(Reply<T>) -> ShardMsg,
) -> Result<T, Response> {
    let unavailable = || self::unavailable(format!("shard {shard} is restarting; retry"));
    rebuilt(ctx, shard)?;
    let actor = ctx.shard(shard).ok_or_else(unavailable)?;
    let (tx, rx) = oneshot::channel();
    actor.send_message(make(tx)).map_err(|_| unavailable())?;
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(shard_error(e)),
        Err(_) => Err(unavailable()),
    }
}

/// 503 while the shard rebuilds under a new pipeline (its actor would
/// answer only after the rebuild).
fn rebuilt(ctx: &NodeCtx, shard: u32) -> Result<(), Response> {
    if ctx.rebuilding[shard as usize].load(std::sync::atomic::Ordering::Relaxed) {
        return Err(unavailable(format!(
            "shard {shard} is rebuilding its state for the new views; retry"
        )));
    }
    Ok(())
}

/// Checks that `view` runs now.
pub(crate) fn check_view(ctx: &NodeCtx, view: &str) -> Result<(), Response> {
    let p = ctx.pipeline();
    match p.view_index(view) {
        Some(_) => Ok(()),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("unknown view `{view}`; views: {}", p.view_names.join(", ")),
        )),
    }
}

/// Asks every shard this node holds (on one node, all); 503 if one of them
/// is restarting.
pub(crate) async fn all_shards<T>(
    ctx: &NodeCtx,
    make: impl Fn(Reply<T>) -> ShardMsg,
) -> Result<Vec<T>, Response> {
    let mut waits = Vec::new();
    for s in (0..ctx.table.shards).filter(|s| ctx.holds(*s)) {
        rebuilt(ctx, s)?;
        let (tx, rx) = oneshot::channel();
        let sent = ctx
            .shard(s)
            .map(|a| a.send_message(make(tx)).is_ok())
            .unwrap_or(false);
        waits.push((s, sent, rx));
    }
    let mut out = Vec::new();
    for (s, sent, rx) in waits {
        let unavailable = || {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("shard {s} is restarting; retry"),
            )
        };
        if !sent {
            return Err(unavailable());
        }
        match rx.await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => return Err(shard_error(e)),
            Err(_) => return Err(unavailable()),
        }
    }
    Ok(out)
}

/// Waits, as this member applies the replicated state, until `done` gives
/// an answer; after `within`, `Err` with the last state seen.
pub(crate) async fn wait_for<T>(
    cl: &crate::cluster::ClusterCtx,
    within: std::time::Duration,
    mut done: impl FnMut(&lockstep_cluster::state::ClusterState) -> Option<T>,
) -> Result<T, Arc<lockstep_cluster::state::ClusterState>> {
    let mut rx = cl.cp.subscribe();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let st = rx.borrow_and_update().clone();
        if let Some(t) = done(&st) {
            return Ok(t);
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .map_or(true, |r| r.is_err())
        {
            return Err(st);
        }
    }
}
