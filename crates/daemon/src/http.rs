//! The HTTP API (axum). Every endpoint but `/healthz` and `/metrics` needs
//! `Authorization: Bearer <token>`. Errors are JSON: `{"error": "..."}`.
//! See docs/api.md.
// Helpers return the error response itself (`Result<_, Response>`), as axum
// handlers do; a Response is 128 bytes, built once per failed request.
#![allow(clippy::result_large_err)]

use crate::node::{describe_store, now_ms, view_fingerprint, Node, NodeCtx, Pipeline};
use crate::shard::{Reply, ShardMsg, ShardStatus};
use crate::writer::{DeadLetter, EventErrorReport, IngestReply, WriteReq};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lockstep_core::value::{DataType, Row, Value};
use lockstep_io::JsonEventParser;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 32 << 20;

#[derive(Clone)]
pub struct App {
    pub ctx: Arc<NodeCtx>,
    pub writer: mpsc::Sender<WriteReq>,
    parser: Arc<JsonEventParser>,
}

pub fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    let mut r = (code, axum::Json(json!({ "error": msg.into() }))).into_response();
    if code == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn json_response(code: StatusCode, body: String) -> Response {
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

pub fn router(node: &Node) -> Router {
    let app = App {
        parser: Arc::new(JsonEventParser::new(&node.ctx.table.schema)),
        ctx: node.ctx.clone(),
        writer: node.writer.clone(),
    };
    let mut r = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/tables/{table}/events", post(ingest))
        .route("/v1/tables/{table}/deadletters", get(deadletters))
        .route("/v1/views", get(views_list).post(views_apply))
        .route("/v1/views/{view}/features", post(features))
        .route("/v1/views/{view}/keys/{key}", get(features_for_key))
        .route("/v1/status", get(status))
        .route("/v1/pipeline", get(pipeline))
        .route("/v1/checkpoint", post(checkpoint))
        .route("/v1/segments", get(segments))
        .route("/v1/segments/compact", post(compact))
        .route("/v1/objects/{*path}", get(object));
    if std::env::var("LOCKSTEP_DEBUG_HOOKS").as_deref() == Ok("1") {
        r = r.route("/v1/debug/shards/{shard}/fail", post(fail_shard));
    }
    r.fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint; see docs/api.md") })
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// Compares in time independent of where the strings differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/metrics" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if same_secret(t.trim(), &app.ctx.config.token) => next.run(req).await,
        Some(_) => error(StatusCode::UNAUTHORIZED, "invalid API token"),
        None => error(
            StatusCode::UNAUTHORIZED,
            "missing API token: send `Authorization: Bearer <token>`",
        ),
    }
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, "{\"status\":\"ok\"}".into())
}

async fn metrics(State(app): State<App>) -> Response {
    let ctx = &app.ctx;
    ctx.metrics.state_bytes.set(ctx.state.size_on_disk() as i64);
    let lag: u64 = (0..ctx.table.shards)
        .map(|s| {
            let end = lockstep_log::Log::end_offset(ctx.log.as_ref(), s).unwrap_or(0);
            end.saturating_sub(ctx.processed[s as usize].load(std::sync::atomic::Ordering::Relaxed))
        })
        .sum();
    ctx.metrics.log_lag.set(lag as i64);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        ctx.metrics.render(),
    )
        .into_response()
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Response> {
    body.map_err(|rej| {
        let code = rej.status();
        if code == StatusCode::PAYLOAD_TOO_LARGE {
            error(
                code,
                format!("request body is larger than {MAX_BODY_BYTES} bytes; send smaller batches"),
            )
        } else {
            error(code, rej.body_text())
        }
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Response> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(s) if !s.is_empty() && s.len() <= 256 => Ok(Some(s.to_string())),
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 256 visible ASCII characters",
            )),
        },
    }
}

/// One parsed record of an ingest body: its index, the event or why not,
/// and its raw text (for the dead-letter store).
type Parsed<'a> = (usize, Result<Row, String>, &'a str);

fn parse_body<'a>(parser: &JsonEventParser, text: &'a str) -> Result<Vec<Parsed<'a>>, String> {
    if text.trim_start().starts_with('[') {
        let items: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|e| format!("malformed JSON array: {e}"))?;
        Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, raw)| (i, parser.parse(raw.get()), raw.get()))
            .collect())
    } else {
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| (i, parser.parse(l), l))
            .collect())
    }
}

async fn ingest(
    State(app): State<App>,
    Path(table): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ctx = &app.ctx;
    if table != ctx.table.name {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "unknown table `{table}`; this node ingests `{}`",
                ctx.table.name
            ),
        );
    }
    let body = match body_bytes(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not UTF-8: {e}")),
    };
    let parsed = match parse_body(&app.parser, text) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if parsed.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "no events: send JSON lines (one object per line) or a JSON array of objects",
        );
    }
    let now = now_ms();
    let mut events = Vec::with_capacity(parsed.len());
    let mut dead = Vec::new();
    let mut reply = IngestReply::default();
    for (index, row, raw) in parsed {
        let checked = row.and_then(|r| {
            ctx.table
                .validate(&r)
                .map(|()| r)
                .map_err(|e| e.to_string())
        });
        match checked {
            Ok(r) => {
                events.push((ctx.table.shard_of(&r), r));
                reply.accepted += 1;
            }
            Err(reason) => {
                reply.rejected += 1;
                reply.errors.push(EventErrorReport {
                    index,
                    reason: reason.clone(),
                });
                dead.push(DeadLetter {
                    at_ms: now,
                    table: table.clone(),
                    index,
                    reason,
                    raw: raw.to_string(),
                });
            }
        }
    }
    let _gate = ctx.ingest_gate.read().await;
    let (done, rx) = oneshot::channel();
    let req = WriteReq {
        idempotency_key: key,
        events,
        dead,
        reply,
        serve: None,
        done,
    };
    if app.writer.send(req).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down");
    }
    match rx.await {
        Ok(Ok(w)) => {
            let code = if w.reply.accepted == 0 {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            let mut body = serde_json::to_value(&w.reply).expect("replies encode");
            if w.reply.accepted == 0 {
                body["error"] = json!("no event of the request was accepted; see `errors`");
            }
            let mut r = (code, axum::Json(body)).into_response();
            if w.replayed {
                r.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            r
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down"),
    }
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn deadletters(
    State(app): State<App>,
    Path(table): Path<String>,
    Query(q): Query<Limit>,
) -> Response {
    if table != app.ctx.table.name {
        return error(StatusCode::NOT_FOUND, format!("unknown table `{table}`"));
    }
    let list = crate::writer::dead_letters(&app.ctx, q.limit.unwrap_or(100));
    axum::Json(json!({ "dead_letters": list })).into_response()
}

/// Sends a request to a shard actor and waits for its answer.
async fn ask<T>(
    ctx: &NodeCtx,
    shard: u32,
    make: impl FnOnce(Reply<T>) -> ShardMsg,
) -> Result<T, Response> {
    let unavailable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("shard {shard} is restarting; retry"),
        )
    };
    let actor = ctx.shard(shard).ok_or_else(unavailable)?;
    let (tx, rx) = oneshot::channel();
    actor.send_message(make(tx)).map_err(|_| unavailable())?;
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(_) => Err(unavailable()),
    }
}

/// Checks that `view` runs now.
fn check_view(ctx: &NodeCtx, view: &str) -> Result<(), Response> {
    let p = ctx.pipeline();
    match p.view_index(view) {
        Some(_) => Ok(()),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("unknown view `{view}`; views: {}", p.view_names.join(", ")),
        )),
    }
}

#[derive(Deserialize)]
struct FeatureQuery {
    ingest: Option<bool>,
}

async fn features(
    State(app): State<App>,
    Path(view): Path<String>,
    Query(q): Query<FeatureQuery>,
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
    let result = if q.ingest == Some(true) {
        let key = match idempotency_key(&headers) {
            Ok(k) => k,
            Err(r) => return r,
        };
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
                        .unwrap_or_else(|_| Err("its shard restarted while processing it".into())),
                    None => Err("no features were computed".into()),
                };
                match f {
                    Ok(r) => Ok(r),
                    // the event is durably in: a retry would ingest it twice
                    Err(e) => {
                        return (
                            StatusCode::ACCEPTED,
                            axum::Json(json!({
                                "ingested": true,
                                "features": null,
                                "error": format!("the event was ingested, but {e}; its features will be in its training row (do not retry)"),
                            })),
                        )
                            .into_response()
                    }
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

async fn features_for_key(
    State(app): State<App>,
    Path((view, key)): Path<(String, String)>,
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

async fn all_shards<T>(
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
            Ok(Err(e)) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
            Err(_) => return Err(unavailable()),
        }
    }
    Ok(out)
}

async fn status(State(app): State<App>) -> Response {
    let ctx = &app.ctx;
    let shards: Vec<ShardStatus> = match all_shards(ctx, |reply| ShardMsg::Status { reply }).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let last_ckpt = shards
        .iter()
        .map(|s| s.last_checkpoint.at_ms)
        .min()
        .filter(|&t| t > 0);
    axum::Json(json!({
        "node_id": ctx.config.node_id,
        "table": ctx.table.name,
        "views": ctx.pipeline().view_names,
        "shard_count": ctx.table.shards,
        "object_store": describe_store(&ctx.config.object_store),
        "data_dir": ctx.config.data_dir,
        "uptime_seconds": (now_ms() - ctx.started_ms) / 1000,
        "events": shards.iter().map(|s| s.events).sum::<u64>(),
        "late": shards.iter().map(|s| s.late).sum::<u64>(),
        "lag": shards.iter().map(|s| s.lag).sum::<u64>(),
        "dead_letters": ctx.metrics.dead_letters.get(),
        "last_checkpoint": last_ckpt.map(lockstep_core::time::format_rfc3339_ms),
        "shards": shards,
    }))
    .into_response()
}

async fn pipeline(State(app): State<App>) -> Response {
    let ctx = &app.ctx;
    let p = ctx.pipeline();
    axum::Json(json!({
        "sql": p.sql,
        "table": ctx.table.name,
        "shards": ctx.table.shards,
        "views": p.view_names,
    }))
    .into_response()
}

fn describe_views(catalog: &lockstep_core::Catalog) -> serde_json::Value {
    let views: Vec<_> = catalog
        .views
        .iter()
        .map(|v| {
            json!({
                "name": v.name,
                "table": catalog.tables[v.table].name,
                "columns": v.output.columns.iter().map(|c| json!({"name": c.name, "type": c.data_type.to_string()})).collect::<Vec<_>>(),
                "labels": v.label_columns.iter().map(|&i| v.output.columns[i].name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "views": views })
}

async fn views_list(State(app): State<App>) -> Response {
    axum::Json(describe_views(&app.ctx.pipeline().catalog)).into_response()
}

/// `views apply`: replaces the node's pipeline with a new one for the same
/// table. The new SQL is written to the node's pipeline file first (so a
/// restart, even in the middle, runs it), ingest pauses, every shard
/// checkpoints, and each shard restarts under the new pipeline: its state is
/// rebuilt from its archive, and views that are new or changed get their
/// whole training history written. Serving answers 503 meanwhile.
async fn views_apply(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let ctx = &app.ctx;
    let body = match body_bytes(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(sql) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not UTF-8");
    };
    let catalog = match lockstep_core::parse_pipeline(sql) {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": e.message, "line": e.line, "column": e.column})),
            )
                .into_response()
        }
    };
    if catalog.tables.len() != 1 || catalog.views.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "a node's pipeline declares one table and at least one view of it",
        );
    }
    if format!("{:?}", catalog.tables[0]) != format!("{:?}", ctx.table) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "the pipeline's table differs from `{}` as this node runs it (columns, key, event time, lateness and shards are fixed for its data directory)",
                ctx.table.name
            ),
        );
    }
    let _one = ctx.apply_lock.lock().await;
    let old = ctx.pipeline();
    let new = Arc::new(Pipeline::new(sql.to_string(), catalog));
    let fps = |p: &Pipeline| -> Vec<(String, String)> {
        p.catalog
            .views
            .iter()
            .map(|v| (v.name.clone(), view_fingerprint(v)))
            .collect()
    };
    let (old_fps, new_fps) = (fps(&old), fps(&new));
    let added: Vec<&String> = new_fps
        .iter()
        .filter(|(n, _)| !old_fps.iter().any(|(o, _)| o == n))
        .map(|(n, _)| n)
        .collect();
    let removed: Vec<&String> = old_fps
        .iter()
        .filter(|(n, _)| !new_fps.iter().any(|(o, _)| o == n))
        .map(|(n, _)| n)
        .collect();
    let changed: Vec<&String> = new_fps
        .iter()
        .filter(|(n, f)| old_fps.iter().any(|(o, g)| o == n && g != f))
        .map(|(n, _)| n)
        .collect();
    if new.fingerprint() == old.fingerprint() {
        return axum::Json(json!({"applied": true, "unchanged": true, "views": new.view_names}))
            .into_response();
    }
    // 1. the new pipeline becomes the node's configuration
    let path = &ctx.config.pipeline;
    let tmp = path.with_extension("sql.applying");
    if let Err(e) = std::fs::write(&tmp, sql).and_then(|()| std::fs::rename(&tmp, path)) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "cannot write the node's pipeline file {}: {e}",
                path.display()
            ),
        );
    }
    // 2. no event enters until every shard runs the new pipeline
    let _gate = ctx.ingest_gate.write().await;
    for r in Node::checkpoint_all(ctx).await {
        if let Err(e) = r {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("checkpoint before the swap failed: {e}; the new pipeline is saved and takes effect at the next restart"),
            );
        }
    }
    // 3. each shard restarts and rebuilds under the new pipeline
    ctx.set_pipeline(new.clone());
    let old_ids: Vec<Option<ractor::ActorId>> = (0..ctx.table.shards)
        .map(|s| ctx.shard(s).map(|a| a.get_id()))
        .collect();
    for s in 0..ctx.table.shards {
        if let Some(a) = ctx.shard(s) {
            let _ = a.send_message(ShardMsg::Stop);
        }
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let done = (0..ctx.table.shards).all(|s| {
            let now = ctx.shard(s).map(|a| a.get_id());
            now.is_some() && now != old_ids[s as usize]
        });
        if done {
            break;
        }
        if Instant::now() > deadline {
            // the supervisor keeps retrying; the node's log says why
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "some shards have not finished rebuilding after 10 minutes; they keep retrying (see the node's log and /v1/status)",
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if let Err(e) = ctx.state.set_node_key("views", &new.fingerprint()) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    axum::Json(json!({
        "applied": true,
        "added": added,
        "removed": removed,
        "changed": changed,
        "views": new.view_names,
        "millis": started.elapsed().as_millis() as u64,
    }))
    .into_response()
}

async fn checkpoint(State(app): State<App>) -> Response {
    let results = Node::checkpoint_all(&app.ctx).await;
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if !errors.is_empty() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "checkpoint failed: {}",
                errors
                    .iter()
                    .map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
    }
    let reports: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
    axum::Json(json!({ "checkpoints": reports })).into_response()
}

#[derive(Deserialize)]
struct SegmentQuery {
    kind: Option<String>,
    name: Option<String>,
    shard: Option<u32>,
}

async fn segments(State(app): State<App>, Query(q): Query<SegmentQuery>) -> Response {
    let all = match all_shards(&app.ctx, |reply| ShardMsg::Segments { reply }).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let list: Vec<_> = all
        .into_iter()
        .flatten()
        .filter(|s| q.kind.as_ref().is_none_or(|k| &s.kind == k))
        .filter(|s| q.name.as_ref().is_none_or(|n| &s.name == n))
        .filter(|s| q.shard.is_none_or(|n| s.shard == n))
        .collect();
    axum::Json(json!({ "segments": list })).into_response()
}

#[derive(Deserialize)]
struct CompactQuery {
    target_bytes: Option<u64>,
}

async fn compact(State(app): State<App>, Query(q): Query<CompactQuery>) -> Response {
    let target = q.target_bytes.unwrap_or(64 << 20);
    match all_shards(&app.ctx, |reply| ShardMsg::Compact {
        target_bytes: target,
        reply,
    })
    .await
    {
        Ok(r) => axum::Json(json!({ "compactions": r })).into_response(),
        Err(r) => r,
    }
}

async fn object(State(app): State<App>, Path(path): Path<String>) -> Response {
    let p = match object_store::path::Path::parse(&path) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad object path: {e}")),
    };
    let got = object_store::ObjectStoreExt::get(app.ctx.objects.as_ref(), &p).await;
    match got {
        Ok(g) => match g.bytes().await {
            Ok(b) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                )],
                b,
            )
                .into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Err(object_store::Error::NotFound { .. }) => {
            error(StatusCode::NOT_FOUND, format!("no object `{path}`"))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn fail_shard(State(app): State<App>, Path(shard): Path<u32>) -> Response {
    match app.ctx.shard(shard) {
        Some(a) => {
            let _ = a.send_message(ShardMsg::Fail);
            axum::Json(json!({"failed": shard})).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no shard {shard}")),
    }
}
