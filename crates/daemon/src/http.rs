//! The HTTP API (axum). Every endpoint but `/healthz` and `/metrics` needs
//! `Authorization: Bearer <token>`. Errors are JSON: `{"error": "..."}`.
//! See docs/api.md.
// Helpers return the error response itself (`Result<_, Response>`), as axum
// handlers do; a Response is 128 bytes, built once per failed request.
#![allow(clippy::result_large_err)]

use crate::clock::now_ms;
use crate::node::{Node, NodeCtx};
use crate::pipeline::{table_fingerprint, Pipeline};
use crate::shard::{Reply, ShardMsg, ShardStatus, UNAVAILABLE};
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

/// The routers behind a node's listener, set as the node comes up: a
/// cluster member must answer the leader's internal calls while it joins,
/// before the rest of the node is up. Until a router is set its routes
/// answer 503.
#[derive(Clone, Default)]
pub struct Routes {
    /// The control plane's internal routes (`/internal/…`; cluster only).
    pub internal: Arc<std::sync::OnceLock<Router>>,
    /// The public API.
    pub api: Arc<std::sync::OnceLock<Router>>,
}

impl Routes {
    /// One router for the listener that hands each request to the right one.
    pub fn dispatcher(&self) -> Router {
        let routes = self.clone();
        Router::new().fallback(move |req: Request| {
            let routes = routes.clone();
            async move {
                use tower::ServiceExt;
                let router = if req.uri().path().starts_with("/internal/") {
                    routes.internal.get().cloned()
                } else {
                    routes.api.get().cloned()
                };
                match router {
                    Some(r) => r.oneshot(req).await.into_response(),
                    None => unavailable("the node is starting"),
                }
            }
        })
    }
}

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 32 << 20;

#[derive(Clone)]
pub struct App {
    pub ctx: Arc<NodeCtx>,
    pub writer: mpsc::Sender<WriteReq>,
    parser: Arc<JsonEventParser>,
}

/// 503 with `Retry-After: 1`: the shard is moving or restarting.
pub fn unavailable(msg: impl Into<String>) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Set on a request one node forwards to another (which never forwards
/// it again).
const FORWARDED: &str = "x-lockstep-forwarded";

/// Where a request for a shard is answered (cluster mode).
enum Route {
    Local,
    Forward(String),
    Unavailable(String),
}

fn route(ctx: &NodeCtx, shard: u32, headers: &HeaderMap) -> Route {
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
async fn forward(
    ctx: &NodeCtx,
    addr: String,
    post_body: Option<Bytes>,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Response {
    let Some(cl) = &ctx.cluster else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "not in a cluster");
    };
    let client = crate::client::Client::with_agent(cl.agent.clone(), &addr, &ctx.config.token);
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
        .route("/v1/objects/{*path}", get(object))
        .route("/v1/cluster", get(cluster_status))
        .route("/v1/cluster/nodes/{node}/drain", post(cluster_drain))
        .route("/v1/cluster/nodes/{node}/remove", post(cluster_remove))
        .route("/v1/cluster/rebalance", post(cluster_rebalance))
        .route("/v1/backfill", post(backfill).get(backfill_jobs))
        .route("/v1/backfill/{job}", get(backfill_job));
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
    let (mut events, mut key) = (events, key);
    if let Some(cl) = &ctx.cluster {
        // the events go to the Kafka log; retries are deduplicated by the
        // shards (the key travels with each record); dead letters stay here
        if !events.is_empty() {
            if let Err(e) = crate::cluster::produce(ctx, cl, key.as_deref(), &events).await {
                return unavailable(format!(
                    "the log did not acknowledge the events ({e}); retry with the same Idempotency-Key"
                ));
            }
        }
        events = Vec::new();
        key = None;
    }
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
    let unavailable = || self::unavailable(format!("shard {shard} is restarting; retry"));
    let actor = ctx.shard(shard).ok_or_else(unavailable)?;
    let (tx, rx) = oneshot::channel();
    actor.send_message(make(tx)).map_err(|_| unavailable())?;
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => match e.strip_prefix(UNAVAILABLE) {
            Some(why) => Err(self::unavailable(why)),
            None => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        },
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

/// Serve-and-ingest on the shard's owner: the actor is told to answer
/// when the record carrying this request's key arrives, then the event is
/// produced; the features are computed just before it enters the state.
async fn serve_and_ingest_cluster(
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
        Ok(Err(e)) if e.contains("already ingested") => error(StatusCode::CONFLICT, e),
        // the event is durably in: a retry would ingest it twice
        Ok(Err(e)) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "ingested": true,
                "features": null,
                "error": format!("the event was ingested, but {}; its features will be in its training row (do not retry)", e.trim_start_matches(UNAVAILABLE)),
            })),
        )
            .into_response(),
        Err(_) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "ingested": true,
                "features": null,
                "error": "the event was ingested, but its shard restarted; its features will be in its training row (do not retry)",
            })),
        )
            .into_response(),
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

async fn features_for_key(
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
    let shards: Vec<ShardStatus> = if ctx.cluster.is_some() {
        // a cluster node reports the shards it runs
        let mut out = Vec::new();
        for s in 0..ctx.table.shards {
            if ctx.shard(s).is_some() {
                if let Ok(st) = ask(ctx, s, |reply| ShardMsg::Status { reply }).await {
                    out.push(st);
                }
            }
        }
        out
    } else {
        match all_shards(ctx, |reply| ShardMsg::Status { reply }).await {
            Ok(s) => s,
            Err(r) => return r,
        }
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
        "object_store": ctx.config.object_store.to_string(),
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
///
/// In a cluster, any node takes it: the pipeline goes into the replicated
/// view registry (refused if another apply came first), every node
/// switches to it, and each owner rebuilds its shards from the archive in
/// the object store ([`cluster_apply`]). Ingest goes on into the log.
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
    if table_fingerprint(&catalog.tables[0]) != table_fingerprint(&ctx.table) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "the pipeline's table differs from `{}` as this node runs it (columns, key, event time, lateness and shards are fixed for its data directory)",
                ctx.table.name
            ),
        );
    }
    let _one = ctx.apply_lock.lock().await;
    let mut new = Pipeline::new(sql.to_string(), catalog);
    let old = match &ctx.cluster {
        Some(cl) => {
            // the cluster's view registry, as committed so far
            let st = match cl.cp.barrier(std::time::Duration::from_secs(10)).await {
                Ok(st) => st,
                Err(e) => return unavailable(format!("the control plane: {e}")),
            };
            match crate::pipeline::cluster_pipeline(&st.pipeline, &ctx.table) {
                Ok(Some(p)) => Arc::new(p),
                Ok(None) => return unavailable("the cluster is not initialized yet"),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        None => ctx.pipeline(),
    };
    new.version = old.version + u64::from(ctx.cluster.is_some());
    let new = Arc::new(new);
    let (old_fps, new_fps) = (old.view_fingerprints(), new.view_fingerprints());
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
    if let Some(cl) = &ctx.cluster {
        if let Err(r) = cluster_apply(cl, &old, &new).await {
            return r;
        }
        return axum::Json(json!({
            "applied": true,
            "version": new.version,
            "added": added,
            "removed": removed,
            "changed": changed,
            "views": new.view_names,
            "millis": started.elapsed().as_millis() as u64,
        }))
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

/// `views apply` in a cluster: the new pipeline goes into the replicated
/// view registry; every node switches to it, each owner rebuilds its shards
/// from the archive in the object store and commits the rebuild. Returns
/// once every shard's committed checkpoint is built for the new views.
async fn cluster_apply(
    cl: &crate::cluster::ClusterCtx,
    old: &Pipeline,
    new: &Pipeline,
) -> Result<(), Response> {
    let cmd = lockstep_cluster::state::Command::SetPipeline {
        sql: new.sql.clone(),
        expect_version: old.version,
        at_ms: crate::clock::now_ms(),
    };
    match cl.cp.propose(cmd).await {
        Ok(lockstep_cluster::state::Response::Done) => {}
        Ok(lockstep_cluster::state::Response::Rejected(why)) => {
            return Err(error(StatusCode::CONFLICT, why))
        }
        Err(e) => {
            return Err(unavailable(format!(
                "the control plane did not take the new pipeline ({e}); it may or may not be applied: see `lockstepctl cluster status`"
            )))
        }
    }
    let fp = new.fingerprint();
    let waiting = |st: &lockstep_cluster::state::ClusterState| {
        st.checkpoints
            .iter()
            .filter(|c| c.as_ref().is_some_and(|c| c.pipeline != fp))
            .count()
    };
    // (this member may apply the change after the leader answered)
    let outcome = wait_for(cl, std::time::Duration::from_secs(600), |st| {
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

async fn checkpoint(State(app): State<App>) -> Response {
    if let Some(cl) = &app.ctx.cluster {
        return cluster_checkpoint(cl).await;
    }
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

/// Opens a cluster checkpoint epoch and waits until every shard's owner
/// has committed a checkpoint for it.
/// Waits, as this member applies the replicated state, until `done` gives
/// an answer; after `within`, `Err` with the last state seen.
async fn wait_for<T>(
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

async fn cluster_checkpoint(cl: &crate::cluster::ClusterCtx) -> Response {
    use lockstep_cluster::state::{Command, Response as R};
    let epoch = cl.state().epoch + 1;
    match cl
        .cp
        .propose(Command::OpenEpoch {
            epoch,
            at_ms: now_ms(),
        })
        .await
    {
        // another node opened it first: wait for that one
        Ok(R::Done) | Ok(R::Rejected(_)) => {}
        Err(e) => return unavailable(e.to_string()),
    }
    let complete = wait_for(cl, std::time::Duration::from_secs(60), |st| {
        (st.completed_epoch() >= epoch).then(|| {
            st.checkpoints
                .iter()
                .flatten()
                .map(|c| json!({"shard": c.shard, "seq": c.seq, "offset": c.offset, "epoch": c.epoch, "owner": c.owner}))
                .collect::<Vec<_>>()
        })
    })
    .await;
    match complete {
        Ok(shards) => axum::Json(json!({ "epoch": epoch, "checkpoints": shards })).into_response(),
        Err(st) => unavailable(format!(
            "epoch {epoch} is not complete after 60 s (completed: {}); some shard is moving or down",
            st.completed_epoch()
        )),
    }
}

#[derive(Deserialize)]
struct SegmentQuery {
    kind: Option<String>,
    name: Option<String>,
    shard: Option<u32>,
}

async fn segments(State(app): State<App>, Query(q): Query<SegmentQuery>) -> Response {
    let all = match &app.ctx.cluster {
        // the replicated manifest: every shard's, wherever it runs, with
        // everything committed so far (a read barrier: not this member's
        // possibly lagging copy)
        Some(cl) => match cl.cp.barrier(std::time::Duration::from_secs(10)).await {
            Ok(st) => st.segments.clone(),
            Err(e) => return unavailable(format!("the control plane: {e}")),
        },
        None => match all_shards(&app.ctx, |reply| ShardMsg::Segments { reply }).await {
            Ok(s) => s,
            Err(r) => return r,
        },
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
    /// Cluster: only the shards this node runs (what a node asks the
    /// others for).
    local: Option<bool>,
}

async fn compact(
    State(app): State<App>,
    Query(q): Query<CompactQuery>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let target = q.target_bytes.unwrap_or(64 << 20);
    if let Some(cl) = &app.ctx.cluster {
        // each owner compacts its shards, through the replicated manifest
        let ctx = &app.ctx;
        let mut out = Vec::new();
        for s in 0..ctx.table.shards {
            if ctx.shard(s).is_some() {
                match ask(ctx, s, |reply| ShardMsg::Compact {
                    target_bytes: target,
                    reply,
                })
                .await
                {
                    Ok(r) => out.push(serde_json::to_value(r).expect("reports encode")),
                    Err(r) => return r,
                }
            }
        }
        if q.local != Some(true) {
            let st = cl.state();
            for (&n, info) in &st.nodes {
                if n == cl.id || info.state == lockstep_cluster::state::NodeState::Down {
                    continue;
                }
                let path = format!("/v1/segments/compact?target_bytes={target}&local=true");
                let uri: axum::http::Uri = path.parse().unwrap_or(uri.clone());
                let r = forward(ctx, info.addr.clone(), Some(Bytes::new()), &uri, &headers).await;
                if r.status() != StatusCode::OK {
                    return r;
                }
                let body = match axum::body::to_bytes(r.into_body(), MAX_BODY_BYTES).await {
                    Ok(b) => b,
                    Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
                };
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                out.extend(v["compactions"].as_array().cloned().unwrap_or_default());
            }
        }
        return axum::Json(json!({ "compactions": out })).into_response();
    }
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

fn cluster_of(ctx: &NodeCtx) -> Result<&Arc<crate::cluster::ClusterCtx>, Response> {
    ctx.cluster.as_ref().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "this node runs alone (no [cluster] in its config)",
        )
    })
}

/// The cluster as the control plane holds it: nodes, the shard map with
/// owner epochs, each shard's last committed checkpoint.
async fn cluster_status(State(app): State<App>) -> Response {
    let ctx = &app.ctx;
    let cl = match cluster_of(ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let st = cl.state();
    let metrics = cl.cp.raft.metrics().borrow().clone();
    let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    let nodes: Vec<_> = st
        .nodes
        .iter()
        .map(|(id, n)| {
            json!({
                "id": id,
                "addr": n.addr,
                "state": format!("{:?}", n.state).to_lowercase(),
                "voter": voters.contains(id),
                "shards": st.owned_by(*id).len(),
            })
        })
        .collect();
    let shards: Vec<_> = (0..st.shards as usize)
        .map(|s| {
            let o = &st.owners[s];
            let local = ctx.shard(s as u32).is_some();
            json!({
                "shard": s,
                "owner": o.node,
                "owner_epoch": o.epoch,
                "moving_to": o.moving_to,
                "checkpoint": st.checkpoints[s].as_ref().map(|c| json!({
                    "seq": c.seq,
                    "offset": c.offset,
                    "epoch": c.epoch,
                    "owner": c.owner,
                    "owner_epoch": c.owner_epoch,
                    "digest": c.digest,
                    "snapshot_objects": c.snapshot.len(),
                    "at": lockstep_core::time::format_rfc3339_ms(c.at_ms),
                })),
                "segments": st.segments[s].len(),
                "processed": local.then(|| ctx.processed[s].load(std::sync::atomic::Ordering::Relaxed)),
                "end": local.then(|| cl.ends[s].load(std::sync::atomic::Ordering::Relaxed)),
            })
        })
        .collect();
    axum::Json(json!({
        "node": cl.id,
        "leader": metrics.current_leader,
        "term": metrics.current_term,
        "table": st.table,
        "shard_count": st.shards,
        "epoch": st.epoch,
        "completed_epoch": st.completed_epoch(),
        "pipeline_version": st.pipeline.version,
        "nodes": nodes,
        "shards": shards,
    }))
    .into_response()
}

/// A member's id from `node-3` or `3`.
fn member_id(cl: &crate::cluster::ClusterCtx, node: &str) -> Result<u64, Response> {
    node.rsplit('-')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|id| cl.state().nodes.contains_key(id))
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("no node `{node}` in the cluster; see GET /v1/cluster"),
            )
        })
}

/// Removes a node that is down for good: from the member list (its shards
/// are reassigned) and from the Raft group (a learner takes its vote).
async fn cluster_remove(State(app): State<App>, Path(node): Path<String>) -> Response {
    let cl = match cluster_of(&app.ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    // (a node already gone from the member list but still in the Raft
    // group: a retry after the membership change failed)
    let raft_only = node
        .rsplit('-')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|id| cl.cp.raft_member(*id));
    let id = match (member_id(cl, &node), raft_only) {
        (Ok(id), _) | (Err(_), Some(id)) => id,
        (Err(r), None) => return r,
    };
    match cl.cp.remove(id).await {
        Ok(lockstep_cluster::state::Response::Done) => {
            axum::Json(json!({ "node": id, "removed": true })).into_response()
        }
        Ok(lockstep_cluster::state::Response::Rejected(w)) => error(StatusCode::CONFLICT, w),
        Err(e) => unavailable(e.to_string()),
    }
}

async fn cluster_drain(State(app): State<App>, Path(node): Path<String>) -> Response {
    let cl = match cluster_of(&app.ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let id = match member_id(cl, &node) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match cl
        .cp
        .propose(lockstep_cluster::state::Command::Drain { node: id })
        .await
    {
        Ok(lockstep_cluster::state::Response::Done) => axum::Json(json!({
            "node": id,
            "state": "draining",
            "shards_to_move": cl.state().owned_by(id).len(),
        }))
        .into_response(),
        Ok(lockstep_cluster::state::Response::Rejected(w)) => error(StatusCode::CONFLICT, w),
        Err(e) => unavailable(e.to_string()),
    }
}

/// The moves the coordinator makes now to balance the shards (it makes
/// them anyway, every few hundred milliseconds; this shows them).
async fn cluster_rebalance(State(app): State<App>) -> Response {
    let cl = match cluster_of(&app.ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let plan = crate::cluster::plan(&cl.state(), 2);
    let moves: Vec<String> = plan.iter().map(|c| format!("{c:?}")).collect();
    axum::Json(json!({ "planned": moves })).into_response()
}

#[derive(Deserialize)]
struct BackfillQuery {
    /// `false`: answer at once with the job's id (`202`).
    wait: Option<bool>,
}

fn backfill_json(j: &lockstep_cluster::state::BackfillJob, shards: u32) -> serde_json::Value {
    let req: serde_json::Value = serde_json::from_str(&j.request).unwrap_or_default();
    json!({
        "job": j.id,
        "view": req["view"],
        "from": req["from"],
        "to": req["to"],
        "started_ms": j.started_ms,
        "finished_ms": j.finished_ms,
        "state": match (&j.error, j.finished_ms) {
            (Some(_), _) => "failed",
            (None, Some(_)) => "done",
            (None, None) => "running",
        },
        "error": j.error,
        "done": j.parts.len(),
        "total": shards,
        "shards": j.parts.values().collect::<Vec<_>>(),
    })
}

/// A cluster backfill job: kept in the control plane's state; every shard's
/// owner replays it from the archive and records its part, and the shards
/// of a node that dies are replayed by their next owners. Answers when
/// every shard is done (or at once with `?wait=false`); the reply lists,
/// by shard, the Parquet objects (`lockstepctl backfill` collects them).
async fn backfill(
    State(app): State<App>,
    Query(q): Query<BackfillQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ctx = &app.ctx;
    let cl = match cluster_of(ctx) {
        Ok(c) => c,
        Err(_) => {
            return error(
                StatusCode::NOT_FOUND,
                "POST /v1/backfill runs on a cluster; on one node `lockstepctl backfill` replays the archive itself",
            )
        }
    };
    let body = match body_bytes(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut req: crate::offline::BackfillRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body: {e}; send {{\"view\": NAME, \"from\": MS?, \"to\": MS?, \"sql\": PIPELINE?}}"),
            )
        }
    };
    // every node replays the same definition: the pipeline now running,
    // unless the job brings its own
    let pipe = ctx.pipeline();
    if let Err(e) =
        crate::offline::backfill_catalog((*pipe.catalog).clone(), req.sql.as_deref(), &req.view)
    {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    req.sql.get_or_insert_with(|| pipe.sql.clone());
    let id = format!("{}-n{}", now_ms(), cl.id);
    let request = match serde_json::to_string(&req) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let cmd = lockstep_cluster::state::Command::BackfillStart {
        id: id.clone(),
        request,
        at_ms: now_ms(),
    };
    match cl.cp.propose(cmd).await {
        Ok(lockstep_cluster::state::Response::Done) => {}
        Ok(lockstep_cluster::state::Response::Rejected(w)) => return unavailable(w),
        Err(e) => return unavailable(format!("the control plane: {e}")),
    }
    // this member applies the job a moment after the leader: answer once
    // it has, so a `GET /v1/backfill/{job}` here right after finds it
    let _ = wait_for(cl, std::time::Duration::from_secs(10), |st| {
        st.backfill(&id).map(|_| ())
    })
    .await;
    if q.wait == Some(false) {
        return (StatusCode::ACCEPTED, axum::Json(json!({ "job": id }))).into_response();
    }
    let finished = wait_for(cl, std::time::Duration::from_secs(600), |st| {
        st.backfill(&id)
            .filter(|j| j.finished_ms.is_some())
            .map(|j| (j.error.is_some(), backfill_json(j, st.shards)))
    })
    .await;
    match finished {
        Ok((false, body)) => axum::Json(body).into_response(),
        Ok((true, body)) => (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response(),
        Err(_) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "job": id, "state": "running", "error": "still running after 10 minutes: follow it with GET /v1/backfill/{job}" })),
        )
            .into_response(),
    }
}

/// `GET /v1/backfill`: the running and recently finished backfill jobs.
async fn backfill_jobs(State(app): State<App>) -> Response {
    let cl = match cluster_of(&app.ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let st = cl.state();
    let jobs: Vec<_> = st
        .backfills
        .iter()
        .map(|j| {
            let mut v = backfill_json(j, st.shards);
            v.as_object_mut().map(|o| o.remove("shards"));
            v
        })
        .collect();
    axum::Json(json!({ "jobs": jobs })).into_response()
}

/// `GET /v1/backfill/{job}`: one job with its done shards.
async fn backfill_job(State(app): State<App>, Path(job): Path<String>) -> Response {
    let cl = match cluster_of(&app.ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let st = cl.state();
    match st.backfill(&job) {
        Some(j) => axum::Json(backfill_json(j, st.shards)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no backfill job {job} (finished jobs are kept a while)"),
        ),
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
