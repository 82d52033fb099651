//! The control plane's internal HTTP routes (Raft RPCs, join, propose,
//! ping, remove), each guarded by the cluster secret.

use crate::network::{decode, encode, PeerError, SECRET_HEADER};
use crate::state::{Command, NodeId};
use crate::{ControlPlane, JoinRequest};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

impl ControlPlane {
    /// The internal routes (Raft RPCs, join, propose), guarded by the
    /// cluster secret. Merge them into the node's API router.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/internal/raft/append", post(raft_append))
            .route("/internal/raft/vote", post(raft_vote))
            .route("/internal/raft/snapshot", post(raft_snapshot))
            .route("/internal/cluster/join", post(cluster_join))
            .route("/internal/cluster/rejoin", post(cluster_rejoin))
            .route("/internal/cluster/hello", post(cluster_hello))
            .route("/internal/cluster/propose", post(cluster_propose))
            .route("/internal/cluster/ping", post(cluster_ping))
            .route("/internal/cluster/lease", post(cluster_lease))
            .route("/internal/cluster/remove", post(cluster_remove))
            .layer(axum::extract::DefaultBodyLimit::max(
                crate::INTERNAL_BODY_LIMIT,
            ))
            .layer(axum::middleware::from_fn_with_state(
                Guard {
                    cp: self.clone(),
                    slots: Arc::new(tokio::sync::Semaphore::new(INTERNAL_CONCURRENCY)),
                },
                guard,
            ))
            .with_state(self.clone())
    }
}

/// Internal calls handled at once; more get 503 (the peer retries).
pub const INTERNAL_CONCURRENCY: usize = 64;
/// How long one internal call may take, its body's upload included.
pub const INTERNAL_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Guard {
    cp: Arc<ControlPlane>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// Every internal call: the cluster secret is checked before its body is
/// read (a caller without it cannot make the node receive megabytes), at
/// most [`INTERNAL_CONCURRENCY`] run at once, and each has
/// [`INTERNAL_DEADLINE`], its upload included (a slow body cannot hold a
/// connection and a slot for ever).
async fn guard(
    State(g): State<Guard>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> HttpResponse {
    if let Some(r) = refuse(&g.cp, req.headers()) {
        return r;
    }
    if g.cp.mutual_tls
        && req
            .extensions()
            .get::<crate::network::ClientCertVerified>()
            .is_none()
    {
        return (
            StatusCode::FORBIDDEN,
            "internal calls need this cluster's client certificate (mutual TLS): the caller presented none",
        )
            .into_response();
    }
    if g.cp.settling() && req.uri().path().starts_with("/internal/raft/") {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this node has not joined its cluster yet: it takes no Raft call",
        )
            .into_response();
    }
    let Ok(_slot) = g.slots.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            "too many internal calls at once; retry",
        )
            .into_response();
    };
    match tokio::time::timeout(INTERNAL_DEADLINE, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            "the internal call took longer than 30 s",
        )
            .into_response(),
    }
}

/// Compares secrets in time independent of where they differ (the node's
/// API token check uses it too).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type Cp = State<Arc<ControlPlane>>;

/// The refusal of a call without the right cluster secret.
fn refuse(cp: &ControlPlane, headers: &HeaderMap) -> Option<HttpResponse> {
    match headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok()) {
        Some(s) if same_secret(s.as_bytes(), cp.secret.as_bytes()) => None,
        Some(_) => Some(
            (
                StatusCode::FORBIDDEN,
                "wrong cluster secret: this node belongs to another cluster or its secret differs",
            )
                .into_response(),
        ),
        None => Some(
            (
                StatusCode::UNAUTHORIZED,
                "internal routes need the cluster secret",
            )
                .into_response(),
        ),
    }
}

fn bin<T: Serialize>(v: &T) -> HttpResponse {
    (
        [("content-type", "application/octet-stream")],
        Bytes::from(encode(v)),
    )
        .into_response()
}

fn bad(e: PeerError) -> HttpResponse {
    (StatusCode::BAD_REQUEST, e.0).into_response()
}

async fn raft_append(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    match decode(&body) {
        Ok(req) => bin(&cp.raft.append_entries(req).await),
        Err(e) => bad(e),
    }
}

async fn raft_vote(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    match decode(&body) {
        Ok(req) => bin(&cp.raft.vote(req).await),
        Err(e) => bad(e),
    }
}

async fn raft_snapshot(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    match decode(&body) {
        Ok(req) => bin(&cp.raft.install_snapshot(req).await),
        Err(e) => bad(e),
    }
}

async fn cluster_join(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    join_or_rejoin(cp, headers, body, false).await
}

/// A member that lost its data directory asks to be forgotten, then joins
/// again under its id.
async fn cluster_rejoin(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    join_or_rejoin(cp, headers, body, true).await
}

/// Who this node is and whether it is in a cluster (a fresh node's first
/// question to its seeds).
async fn cluster_hello(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    match decode::<crate::membership::Hello>(&body) {
        Ok(_) => bin(&cp.hello_reply()),
        Err(e) => bad(e),
    }
}

async fn join_or_rejoin(
    cp: Arc<ControlPlane>,
    headers: HeaderMap,
    body: Bytes,
    rejoin: bool,
) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    let req: JoinRequest = match decode(&body) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let route = if rejoin {
        "/internal/cluster/rejoin"
    } else {
        "/internal/cluster/join"
    };
    let result = match cp.leader_addr() {
        Ok(None) if rejoin => cp.forget_member(req).await.map_err(PeerError::of),
        Ok(None) => cp.add_member(req).await.map_err(PeerError::of),
        Ok(Some(leader)) => match cp.peer.post(&leader, route, body.to_vec()).await {
            Ok(b) => decode::<Result<(), PeerError>>(&b).and_then(|r| r),
            Err(e) => Err(PeerError::of(e)),
        },
        Err(e) => Err(PeerError::of(e)),
    };
    bin(&result)
}

async fn cluster_remove(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    match decode::<NodeId>(&body) {
        Ok(node) => bin(&cp.remove(node).await.map_err(PeerError::of)),
        Err(e) => bad(e),
    }
}

/// The coordinator's liveness probe.
async fn cluster_ping(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    // (age of the coordinator's word, the index it has applied); a
    // coordinator of the previous release sends the age alone
    let ping = decode::<(u64, u64)>(&body).or_else(|_| decode::<u64>(&body).map(|age| (age, 0)));
    // a ping no longer renews the serving lease: read after the member
    // was paused, it looks fresh however old it is (see
    // `ControlPlane::renew_lease`)
    if let Err(e) = ping {
        return bad(e);
    }
    bin(&cp.id)
}

/// A member renewing its serving lease asks the leader: `Some((age of the
/// leader's word from a majority in ms, the index it has applied))`, or
/// `None` from a member that does not lead.
async fn cluster_lease(State(cp): Cp, headers: HeaderMap) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    bin(&cp.lease_grant())
}

async fn cluster_propose(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    match decode::<Command>(&body) {
        // `propose` forwards if leadership moved meanwhile
        Ok(cmd) => bin(&cp.propose_at(cmd).await.map_err(PeerError::of)),
        Err(e) => bad(e),
    }
}
