//! Where a request is answered: this node's shard actors, or (in a
//! cluster) the shard's owner, one hop away.
#![allow(clippy::result_large_err)]

use super::reply::*;
use crate::node::NodeCtx;
use crate::shard::{Reply, ShardMsg};
use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Set on a request one node forwards to another (which never forwards
/// it again).
pub(crate) const FORWARDED: &str = "x-lockstep-forwarded";

/// Where a request for a shard is answered (cluster mode).
pub(crate) enum Route {
    Local,
    Forward(String),
    Unavailable(String),
}

pub(crate) fn route(ctx: &NodeCtx, shard: u32, headers: &HeaderMap) -> Route {
    let Some(cl) = &ctx.cluster else {
        return Route::Local;
    };
    if ctx.shard(shard).is_some() {
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

/// Sends the request on to the node at `addr` and relays its answer.
pub(crate) async fn forward(
    ctx: &NodeCtx,
    addr: String,
    post_body: Option<Bytes>,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Response {
    let Some(cl) = &ctx.cluster else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "not in a cluster");
    };
    let client = lockstep_api::Client::with_agent(cl.agent.clone(), &addr, &ctx.config.token);
    let path = uri
        .path_and_query()
        .map_or(uri.path(), |p| p.as_str())
        .to_string();
    let idem = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let method = if post_body.is_some() { "POST" } else { "GET" };
    let sent = tokio::task::spawn_blocking(move || {
        let mut h = vec![(FORWARDED, "1")];
        if let Some(k) = &idem {
            h.push(("idempotency-key", k.as_str()));
        }
        client.request(method, &path, post_body.as_deref(), &h)
    })
    .await;
    match sent {
        Ok(Ok(reply)) => {
            let code = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut r = json_response(code, String::from_utf8_lossy(&reply.body).into_owned());
            if let Some(v) = reply
                .retry_after
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        Ok(Err(e)) => unavailable(format!(
            "the shard's owner at {addr} did not answer ({e}); retry"
        )),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Sends a request to a shard actor and waits for its answer.
pub(crate) async fn ask<T>(
    ctx: &NodeCtx,
    shard: u32,
    make: impl FnOnce(Reply<T>) -> ShardMsg,
) -> Result<T, Response> {
    let unavailable = || self::unavailable(format!("shard {shard} is restarting; retry"));
    let actor = ctx.shard(shard).ok_or_else(unavailable)?;
    let (tx, rx) = oneshot::channel();
    actor.send_message(make(tx)).map_err(|_| unavailable())?;
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(shard_error(e)),
        Err(_) => Err(unavailable()),
    }
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

pub(crate) async fn all_shards<T>(
    ctx: &NodeCtx,
    make: impl Fn(Reply<T>) -> ShardMsg,
) -> Result<Vec<T>, Response> {
    let mut waits = Vec::new();
    for s in 0..ctx.table.shards {
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

/// Opens a cluster checkpoint epoch and waits until every shard's owner
/// has committed a checkpoint for it.
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
