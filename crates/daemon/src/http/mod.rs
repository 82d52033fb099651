//! The HTTP API (axum). Every endpoint but `/healthz`, `/metrics` and
//! `/v1/openapi.json` needs
//! `Authorization: Bearer <token>`. Errors are JSON: `{"error": "..."}`.
//! See docs/api.md.
// Helpers return the error response itself (`Result<_, Response>`), as axum
// handlers do; a Response is 128 bytes, built once per failed request.
#![allow(clippy::result_large_err)]

mod backfill;
mod cluster;
mod features;
mod ingest;
mod mode;
mod reply;
mod routing;
mod segments;
mod serve;
mod status;
mod views;

use reply::json_response;
pub use reply::{error, unavailable};
pub use serve::{serve, serve_tls};

use crate::node::{Node, NodeCtx};
use crate::shard::ShardMsg;
use crate::writer::WriteReq;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lockstep_io::JsonEventParser;
use std::sync::Arc;
use tokio::sync::mpsc;

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
    /// The Idempotency-Keys this node accepted (a retry is answered first).
    keys: crate::writer::Keys,
    parser: Arc<JsonEventParser>,
    /// What the API does on one node or in a cluster.
    mode: Arc<dyn mode::NodeMode>,
}

pub fn router(node: &Node) -> Router {
    let app = App {
        parser: Arc::new(JsonEventParser::new(&node.ctx.table.schema)),
        ctx: node.ctx.clone(),
        writer: node.writer.clone(),
        keys: node.keys.clone(),
        mode: mode::for_node(&node.ctx),
    };
    let mut r = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/tables/{table}/events", post(ingest::ingest))
        .route("/v1/tables/{table}/deadletters", get(ingest::deadletters))
        .route("/v1/views", get(views::views_list).post(views::views_apply))
        .route("/v1/views/{view}/features", post(features::features))
        .route(
            "/v1/views/{view}/keys/{key}",
            get(features::features_for_key),
        )
        .route("/v1/status", get(status::status))
        .route("/v1/pipeline", get(views::pipeline))
        .route("/v1/checkpoint", post(status::checkpoint))
        .route("/v1/segments", get(segments::segments))
        .route("/v1/segments/compact", post(segments::compact))
        .route("/v1/objects/{*path}", get(segments::object))
        .route("/v1/cluster", get(cluster::cluster_status))
        .route(
            "/v1/cluster/nodes/{node}/drain",
            post(cluster::cluster_drain),
        )
        .route(
            "/v1/cluster/nodes/{node}/activate",
            post(cluster::cluster_activate),
        )
        .route(
            "/v1/cluster/nodes/{node}/remove",
            post(cluster::cluster_remove),
        )
        .route("/v1/cluster/rebalance", post(cluster::cluster_rebalance))
        .route(
            "/v1/backfill",
            post(backfill::backfill).get(backfill::backfill_jobs),
        )
        .route("/v1/backfill/{job}", get(backfill::backfill_job));
    if std::env::var("LOCKSTEP_DEBUG_HOOKS").as_deref() == Ok("1") {
        r = r
            .route("/v1/debug/shards/{shard}/fail", post(fail_shard))
            .route("/v1/debug/shards/{shard}/stall/{ms}", post(stall_shard))
            .route("/v1/debug/hold-ingest/{ms}", post(hold_ingest))
            .route("/v1/debug/faults/objects/{state}", post(fault_objects))
            .route("/v1/debug/faults/log-flush", post(fault_log_flush))
            .route("/v1/debug/faults/merge-stall/{ms}", post(fault_merge_stall));
    }
    r.fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint; see docs/api.md") })
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            (
                Arc::new(tokio::sync::Semaphore::new(
                    node.ctx.config.limits.max_concurrent_requests,
                )),
                app.clone(),
            ),
            admit,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), deadline))
        .with_state(app)
}

/// When a request arrived (before its body was read), as the deadline
/// counts it: for a request another node passed on, when it arrived there.
#[derive(Clone, Copy)]
pub(crate) struct Arrived(pub std::time::Instant);

/// What is left of a request's budget (ms) when one node passes it to
/// another (trusted only with the forwarded mark).
pub(crate) const BUDGET_HEADER: &str = "x-lockstep-budget-ms";
/// The request's deadline on this node (wall-clock ms; set by the node,
/// never taken from the client).
pub(crate) const DEADLINE_HEADER: &str = "x-lockstep-deadline-ms";

/// Every request but `views apply` is answered within `request_timeout`,
/// its body's upload included: past it, `503` + `Retry-After: 1`. What the
/// request started may still finish (an ingest may yet be appended: retry
/// it with the same Idempotency-Key). `views apply` rebuilds every shard
/// and has its own bound (10 minutes).
///
/// A request another node passed on carries what is left of its budget
/// there ([`BUDGET_HEADER`]): its deadline here is the earlier of the two,
/// so a forwarded request is not given a fresh `request_timeout`. Handlers
/// find when the request arrived (its upload included) in [`Arrived`], and
/// [`DEADLINE_HEADER`] holds the deadline for requests passed on.
async fn deadline(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let arrived = std::time::Instant::now();
    req.headers_mut().remove(DEADLINE_HEADER);
    if req.method() == axum::http::Method::POST && req.uri().path() == "/v1/views" {
        return next.run(req).await;
    }
    let mut limit = app.ctx.config.limits.request_timeout;
    if req.headers().contains_key(mode::FORWARDED) {
        if let Some(ms) = req
            .headers()
            .get(BUDGET_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            limit = limit.min(std::time::Duration::from_millis(ms));
        }
    }
    let full = app.ctx.config.limits.request_timeout;
    // as if it had arrived here when it arrived at the first node
    let arrived = arrived.checked_sub(full - limit).unwrap_or(arrived);
    req.extensions_mut().insert(Arrived(arrived));
    let at = crate::clock::now_ms() + limit.as_millis() as i64;
    if let Ok(v) = axum::http::HeaderValue::from_str(&at.to_string()) {
        req.headers_mut().insert(DEADLINE_HEADER, v);
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            app.ctx.metrics.refused.inc();
            unavailable(format!(
                "the request did not finish within {} (request_timeout); what it started may still complete: retry (an ingest with the same Idempotency-Key is applied once)",
                lockstep_core::time::format_duration_ms(limit.as_millis() as i64)
            ))
        }
    }
}

/// At most `max_concurrent_requests` requests are handled at once (their
/// bodies included); one more is answered `503` + `Retry-After: 1` at
/// once instead of queueing. `/healthz`, `/metrics` and the OpenAPI
/// document always answer.
async fn admit(
    State((slots, app)): State<(Arc<tokio::sync::Semaphore>, App)>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if is_open(path) {
        return next.run(req).await;
    }
    match slots.try_acquire_owned() {
        Ok(_slot) => next.run(req).await,
        Err(_) => {
            app.ctx.metrics.refused.inc();
            unavailable(
            "the node is handling as many requests as it takes (max_concurrent_requests); retry",
        )
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `token`: every endpoint.
    Admin,
    /// `ingest_token`: ingest only (events, features with `?ingest=true`).
    Ingest,
    /// `serve_token`: read features only.
    Serve,
}

/// The role a presented token has (each compared in constant time).
fn role_of(config: &crate::config::Config, given: &str) -> Option<Role> {
    let given = given.trim().as_bytes();
    let is = |t: &str| lockstep_cluster::same_secret(given, t.as_bytes());
    if is(&config.token) {
        Some(Role::Admin)
    } else if config.ingest_token.as_deref().is_some_and(is) {
        Some(Role::Ingest)
    } else if config.serve_token.as_deref().is_some_and(is) {
        Some(Role::Serve)
    } else {
        None
    }
}

/// Whether `role` may make this request.
fn allowed(role: Role, method: &axum::http::Method, path: &str, query: Option<&str>) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ingests = query.is_some_and(|q| q.split('&').any(|kv| kv == "ingest=true"));
    let post = method == axum::http::Method::POST;
    let get = method == axum::http::Method::GET;
    match (role, parts.as_slice()) {
        (Role::Admin, _) => true,
        (Role::Ingest, ["v1", "tables", _, "events"]) => post,
        (Role::Ingest, ["v1", "views", _, "features"]) => post && ingests,
        (Role::Serve, ["v1", "views", _, "features"]) => post && !ingests,
        (Role::Serve, ["v1", "views", _, "keys", _]) => get,
        _ => false,
    }
}

async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if is_open(path) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing API token: send `Authorization: Bearer <token>`",
        );
    };
    match role_of(&app.ctx.config, given) {
        None => error(StatusCode::UNAUTHORIZED, "invalid API token"),
        Some(role) if allowed(role, req.method(), path, req.uri().query()) => next.run(req).await,
        Some(Role::Ingest) => error(
            StatusCode::FORBIDDEN,
            "this token may only ingest (ingest_token: POST /v1/tables/{table}/events, features with ?ingest=true); this call needs another role",
        ),
        Some(_) => error(
            StatusCode::FORBIDDEN,
            "this token may only read features (serve_token: POST /v1/views/{view}/features, GET /v1/views/{view}/keys/{key}); this call needs another role",
        ),
    }
}

/// The API's OpenAPI 3 document (from `lockstep-api`'s types).
async fn openapi() -> Response {
    json_response(StatusCode::OK, lockstep_api::openapi_json())
}

/// Paths that need no token and are never refused for load: health,
/// readiness, metrics and the API's description.
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/v1/openapi.json"
    )
}

/// Readiness (`/readyz`, no token): `200` when the node should get
/// traffic: a cluster member that has heard from the cluster within its
/// serving lease, whose shards are all running, none failed (records they
/// need are gone from the topic) and none more than `ready_max_lag`
/// events behind its log. Otherwise `503` with the reasons, so a load
/// balancer or Kubernetes takes the node out while it starts, catches up,
/// is cut off, or waits for an operator (docs/operations.md). `/healthz`
/// is liveness only.
async fn readyz(State(app): State<App>) -> Response {
    let ctx = &app.ctx;
    let mut reasons: Vec<serde_json::Value> = app
        .mode
        .not_ready(ctx)
        .into_iter()
        .map(|why| serde_json::json!({ "reason": why }))
        .collect();
    let failed = ctx.failed_shards();
    let max_lag = ctx.config.limits.ready_max_lag;
    for (s, end) in app.mode.held_shards(ctx) {
        if failed.iter().any(|(f, _)| *f == s) {
            continue;
        }
        let running = ctx.shard(s).is_some()
            && !ctx.rebuilding[s as usize].load(std::sync::atomic::Ordering::Relaxed);
        if !running {
            reasons.push(serde_json::json!({ "shard": s, "reason": "starting" }));
            continue;
        }
        let lag = end
            .saturating_sub(ctx.processed[s as usize].load(std::sync::atomic::Ordering::Relaxed));
        if lag > max_lag {
            reasons.push(serde_json::json!({
                "shard": s,
                "reason": format!("{lag} events behind its log (ready_max_lag = {max_lag})"),
            }));
        }
    }
    for (s, why) in failed {
        reasons.push(serde_json::json!({ "shard": s, "failed": why }));
    }
    if reasons.is_empty() {
        return json_response(StatusCode::OK, "{\"status\":\"ready\"}".into());
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "status": "not ready", "reasons": reasons })),
    )
        .into_response()
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
    if let Some(cl) = &ctx.cluster {
        let m = &ctx.metrics;
        let raft = cl.cp.raft.metrics().borrow().clone();
        m.raft_term.set(raft.current_term as i64);
        m.raft_leader
            .set(i64::from(raft.current_leader == Some(cl.id)));
        m.raft_applied_index
            .set(raft.last_applied.map_or(0, |l| l.index) as i64);
        // entries kept: those after the last purged one
        let first = raft.purged.map_or(0, |l| l.index + 1);
        m.raft_log_entries.set(
            raft.last_log_index
                .map_or(0, |last| (last + 1).saturating_sub(first)) as i64,
        );
        m.raft_snapshot_bytes.set(
            cl.cp
                .sm_stats()
                .snapshot_bytes
                .load(std::sync::atomic::Ordering::Relaxed) as i64,
        );
        let st = cl.cp.state();
        let bytes = {
            let mut cached = cl.state_bytes.lock().expect("state bytes");
            match *cached {
                Some((at, b)) if at.elapsed() < std::time::Duration::from_secs(10) => b,
                _ => {
                    let b = lockstep_cluster::state_bytes(&st);
                    *cached = Some((std::time::Instant::now(), b));
                    b
                }
            }
        };
        m.control_plane_state_bytes.set(bytes as i64);
        m.members_down.set(
            st.nodes
                .values()
                .filter(|n| n.state == lockstep_cluster::state::NodeState::Down)
                .count() as i64,
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        ctx.metrics.render(),
    )
        .into_response()
}

/// Test hook: shard `shard`'s actor sleeps `ms` milliseconds.
async fn stall_shard(State(app): State<App>, Path((shard, ms)): Path<(u32, u64)>) -> Response {
    match app.ctx.shard(shard) {
        Some(a) => {
            let _ = a.send_message(ShardMsg::Stall(std::time::Duration::from_millis(ms)));
            axum::Json(serde_json::json!({"stalled": shard})).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no shard {shard}")),
    }
}

/// Test hook: holds the ingest gate as `views apply` does, for `ms`
/// milliseconds (answers at once).
async fn hold_ingest(State(app): State<App>, Path(ms): Path<u64>) -> Response {
    let ctx = app.ctx.clone();
    let (held, took) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _gate = ctx.ingest_gate.write().await;
        let _ = held.send(());
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    });
    let _ = took.await;
    axum::Json(serde_json::json!({"held_ms": ms})).into_response()
}

/// Test hook: object writes fail (`on`) or work again (`off`).
async fn fault_objects(Path(state): Path<String>) -> Response {
    let on = match state.as_str() {
        "on" => true,
        "off" => false,
        _ => return error(StatusCode::BAD_REQUEST, "`on` or `off`"),
    };
    crate::local_store::FAIL_WRITES.store(on, std::sync::atomic::Ordering::Relaxed);
    axum::Json(serde_json::json!({"object_writes_fail": on})).into_response()
}

/// Test hook: each compaction merge waits `ms` first.
async fn fault_merge_stall(Path(ms): Path<u64>) -> Response {
    crate::shard::MERGE_STALL_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
    axum::Json(serde_json::json!({"merge_stall_ms": ms})).into_response()
}

/// Test hook: the next flush of `fsync = "every N"` fails.
async fn fault_log_flush() -> Response {
    crate::node::FAIL_NEXT_FLUSH.store(true, std::sync::atomic::Ordering::Relaxed);
    axum::Json(serde_json::json!({"next_flush_fails": true})).into_response()
}

async fn fail_shard(State(app): State<App>, Path(shard): Path<u32>) -> Response {
    match app.ctx.shard(shard) {
        Some(a) => {
            let _ = a.send_message(ShardMsg::Fail);
            axum::Json(serde_json::json!({"failed": shard})).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no shard {shard}")),
    }
}
