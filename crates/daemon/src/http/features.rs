//! Serving: features of a hypothetical event, of a key now, and
//! serve-and-ingest.
#![allow(clippy::result_large_err)]

use super::ingest::idempotency_key;
use super::reply::*;
use super::routing::*;
use super::App;
use crate::clock::now_ms;
use crate::node::NodeCtx;
use crate::shard::{ShardError, ShardMsg};
use crate::writer::{IngestReply, WriteReq};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use lockstep_core::value::{DataType, Row, Value};
use serde::Deserialize;
use std::time::Instant;
use tokio::sync::oneshot;

#[derive(Deserialize)]
pub(crate) struct FeatureQuery {
    ingest: Option<bool>,
}

pub(crate) async fn features(
    State(app): State<App>,
    Path(view): Path<String>,
    Query(q): Query<FeatureQuery>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let ctx = &app.ctx;
    if let Err(r) = check_view(ctx, &view) {
        return r;
    }
    let body = match body_bytes(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not UTF-8");
    };
    let mut row = match app.parser.parse(text.trim()) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad event: {e}")),
    };
    let t = ctx.table.time;
    if row[t].is_null() {
        row[t] = Value::Timestamp(now_ms());
    }
    if let Err(e) = ctx.table.validate(&row) {
        return error(StatusCode::BAD_REQUEST, format!("bad event: {e}"));
    }
    let shard = ctx.table.shard_of(&row);
    match route(ctx, shard, &headers) {
        Route::Local => {}
        Route::Forward(addr) => return forward(ctx, addr, Some(body), &uri, &headers).await,
        Route::Unavailable(why) => return unavailable(why),
    }
    let result = if q.ingest == Some(true) {
        let key = match idempotency_key(&headers) {
            Ok(k) => k,
            Err(r) => return r,
        };
        if ctx.cluster.is_some() {
            return serve_and_ingest_cluster(ctx, shard, &view, row, key, started).await;
        }
        let _gate = ctx.ingest_gate.read().await;
        let (done, rx) = oneshot::channel();
        let req = WriteReq {
            idempotency_key: key,
            events: vec![(shard, row)],
            dead: Vec::new(),
            reply: IngestReply {
                accepted: 1,
                ..IngestReply::default()
            },
            serve: Some(view.clone()),
            done,
        };
        if app.writer.send(req).await.is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down");
        }
        match rx.await {
            Ok(Ok(w)) if w.replayed => return error(
                StatusCode::CONFLICT,
                "this Idempotency-Key was already ingested; its features are in its training row",
            ),
            Ok(Ok(w)) => {
                let f = match w.features {
                    Some(f) => f
                        .await
                        .map_err(|_| "its shard restarted while processing it".to_string())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                    None => Err("no features were computed".to_string()),
                };
                match f {
                    Ok(r) => Ok(r),
                    // the event is durably in: a retry would ingest it twice
                    Err(e) => return ingested_without_features(&e),
                }
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the node is shutting down".into()),
        }
    } else {
        match ask(ctx, shard, |reply| ShardMsg::Serve {
            view: view.clone(),
            event: row,
            reply,
        })
        .await
        {
            Ok(r) => Ok(r),
            Err(resp) => return resp,
        }
    };
    match result {
        Ok(r) => {
            ctx.metrics
                .serve_seconds
                .observe(started.elapsed().as_secs_f64());
            json_response(StatusCode::OK, r)
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Serve-and-ingest on the shard's owner: the actor is told to answer
/// when the record carrying this request's key arrives, then the event is
/// produced; the features are computed just before it enters the state.
pub(crate) async fn serve_and_ingest_cluster(
    ctx: &NodeCtx,
    shard: u32,
    view: &str,
    row: Row,
    key: Option<String>,
    started: Instant,
) -> Response {
    let Some(cl) = &ctx.cluster else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "not in a cluster");
    };
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
    if let Err(e) = crate::cluster::produce(ctx, cl, Some(&key), &[(shard, row)]).await {
        return unavailable(format!(
            "the log did not acknowledge the event ({e}); retry with the same Idempotency-Key"
        ));
    }
    match rx.await {
        Ok(Ok(r)) => {
            ctx.metrics
                .serve_seconds
                .observe(started.elapsed().as_secs_f64());
            json_response(StatusCode::OK, r)
        }
        Ok(Err(e @ ShardError::AlreadyIngested)) => shard_error(e),
        // the event is durably in: a retry would ingest it twice
        Ok(Err(e)) => ingested_without_features(&e.to_string()),
        Err(_) => ingested_without_features("its shard restarted"),
    }
}

/// `202`: the event is durably in, but its features were not computed; a
/// retry would ingest it twice.
fn ingested_without_features(why: &str) -> Response {
    reply(
        StatusCode::ACCEPTED,
        lockstep_api::IngestedWithoutFeatures {
            ingested: true,
            features: None,
            error: format!(
                "the event was ingested, but {why}; its features will be in its training row (do not retry)"
            ),
        },
    )
}

/// A process-unique suffix for generated keys.
pub(crate) fn unique_suffix() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        now_ms(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

pub(crate) async fn features_for_key(
    State(app): State<App>,
    Path((view, key)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let ctx = &app.ctx;
    if let Err(r) = check_view(ctx, &view) {
        return r;
    }
    let t = &ctx.table;
    let mut row = vec![Value::Null; t.schema.len()];
    row[t.key] = match t.schema.columns[t.key].data_type {
        DataType::Text => Value::Text(key.as_str().into()),
        DataType::BigInt => match key.parse() {
            Ok(n) => Value::BigInt(n),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("key `{key}` is not a BIGINT"),
                )
            }
        },
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("keys of type {other} cannot be given in a URL"),
            )
        }
    };
    row[t.time] = Value::Timestamp(now_ms());
    let shard = t.shard_of(&row);
    match route(ctx, shard, &headers) {
        Route::Local => {}
        Route::Forward(addr) => return forward(ctx, addr, None, &uri, &headers).await,
        Route::Unavailable(why) => return unavailable(why),
    }
    match ask(ctx, shard, |reply| ShardMsg::Serve {
        view: view.clone(),
        event: row,
        reply,
    })
    .await
    {
        Ok(r) => {
            ctx.metrics
                .serve_seconds
                .observe(started.elapsed().as_secs_f64());
            json_response(StatusCode::OK, r)
        }
        Err(resp) => resp,
    }
}
