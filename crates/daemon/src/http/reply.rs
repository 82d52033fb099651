//! Building answers: JSON bodies, errors, 503 with Retry-After.
#![allow(clippy::result_large_err)]

use super::MAX_BODY_BYTES;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lockstep_api::ErrorBody;
use serde::Serialize;

/// 503 with `Retry-After: 1`: the shard is moving or restarting.
pub fn unavailable(msg: impl Into<String>) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

pub fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    let mut r = (code, axum::Json(ErrorBody::new(msg))).into_response();
    if code == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// The answer to a shard's error: retry later (503 with Retry-After) when
/// the shard is moving, restarting or waiting for the control plane.
pub(crate) fn shard_error(e: crate::shard::ShardError) -> Response {
    use crate::shard::ShardError as E;
    match e {
        E::Unavailable(_) | E::Fenced(_) | E::Uncertain(_) => unavailable(e.to_string()),
        E::AlreadyIngested => error(StatusCode::CONFLICT, e.to_string()),
        E::Refused(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        E::KeyReused(_) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        E::UnknownView(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        E::Internal(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `200` with a typed body.
pub(crate) fn ok<T: Serialize>(body: T) -> Response {
    axum::Json(body).into_response()
}

/// Another status with a typed body.
pub(crate) fn reply<T: Serialize>(code: StatusCode, body: T) -> Response {
    (code, axum::Json(body)).into_response()
}

pub(crate) fn json_response(code: StatusCode, body: String) -> Response {
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

pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Response> {
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

/// `200` with a shard's features, counted in the serving latency metric.
pub(crate) fn served(
    ctx: &crate::node::NodeCtx,
    started: std::time::Instant,
    body: String,
) -> Response {
    ctx.metrics
        .serve_seconds
        .observe(started.elapsed().as_secs_f64());
    json_response(StatusCode::OK, body)
}

/// How long serve-and-ingest may still wait for its features, the event
/// being durably in: until a second before the request's deadline, so the
/// answer is the truthful `202` (do not retry), not the deadline's `503`.
pub(crate) fn features_wait(
    limits: &crate::config::Limits,
    started: std::time::Instant,
) -> std::time::Duration {
    limits
        .request_timeout
        .saturating_sub(std::time::Duration::from_secs(1))
        .saturating_sub(started.elapsed())
        .max(std::time::Duration::from_millis(50))
}

/// `202`: the event is durably in, but its features were not computed; a
/// retry would ingest it twice.
pub(crate) fn ingested_without_features(why: &str) -> Response {
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

/// The query string as `T`; a malformed one is answered `400` with a JSON
/// error body, as every other error (axum's own rejection is plain text).
pub(crate) struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(t)) => Ok(Query(t)),
            Err(e) => Err(error(StatusCode::BAD_REQUEST, e.body_text())),
        }
    }
}
