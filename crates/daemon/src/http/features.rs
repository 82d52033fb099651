//! Serving: features of a hypothetical event, of a key now, and
//! serve-and-ingest.
#![allow(clippy::result_large_err)]

use super::ingest::idempotency_key;
use super::mode::Route;
use super::reply::*;
use super::routing::*;
use super::App;
use crate::clock::now_ms;
use crate::shard::ShardMsg;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use lockstep_core::value::{DataType, Value};
use serde::Deserialize;
use std::time::Instant;

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
    arrived: Option<axum::Extension<super::Arrived>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // the request's deadline counts from its arrival, upload included
    let started = arrived.map_or_else(Instant::now, |a| a.0 .0);
    let ctx = &app.ctx;
    if let Err(r) = check_view(ctx, &view) {
        return r;
    }
    let body = match body_bytes(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let limit = ctx.config.limits.max_event_bytes;
    if body.len() > limit {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the event is {} bytes; the largest accepted is {limit} (max_event_bytes)",
                body.len()
            ),
        );
    }
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
    if q.ingest == Some(true) {
        // an event ingest would refuse is not served as if it were in
        if let Err(e) = ctx.table.check_time(&row, now_ms()) {
            return error(StatusCode::BAD_REQUEST, format!("bad event: {e}"));
        }
    }
    let shard = ctx.table.shard_of(&row);
    match app.mode.route(ctx, shard, &headers) {
        Route::Local => {}
        Route::Forward(addr) => {
            return app
                .mode
                .forward(ctx, addr, Some(body), &uri, &headers)
                .await
        }
        Route::Unavailable(why) => return unavailable(why),
    }
    if q.ingest == Some(true) {
        let key = match idempotency_key(&headers) {
            Ok(k) => k,
            Err(r) => return r,
        };
        return app
            .mode
            .serve_and_ingest(&app, shard, &view, row, key, started)
            .await;
    }
    match ask(ctx, shard, |reply| ShardMsg::Serve {
        view: view.clone(),
        event: row,
        reply,
    })
    .await
    {
        Ok(body) => match app.mode.still_serving(ctx, shard) {
            Ok(()) => served(ctx, started, body),
            Err(why) => unavailable(why),
        },
        Err(resp) => resp,
    }
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
    match app.mode.route(ctx, shard, &headers) {
        Route::Local => {}
        Route::Forward(addr) => return app.mode.forward(ctx, addr, None, &uri, &headers).await,
        Route::Unavailable(why) => return unavailable(why),
    }
    match ask(ctx, shard, |reply| ShardMsg::Serve {
        view: view.clone(),
        event: row,
        reply,
    })
    .await
    {
        Ok(body) => match app.mode.still_serving(ctx, shard) {
            Ok(()) => served(ctx, started, body),
            Err(why) => unavailable(why),
        },
        Err(resp) => resp,
    }
}
