//! Committed segments, compaction and object downloads.
#![allow(clippy::result_large_err)]

use super::reply::*;
use super::routing::*;
use super::{App, MAX_BODY_BYTES};
use crate::shard::ShardMsg;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lockstep_api::{CompactReply, SegmentList};
use serde::Deserialize;

#[derive(Deserialize)]
pub(crate) struct SegmentQuery {
    kind: Option<String>,
    name: Option<String>,
    shard: Option<u32>,
}

pub(crate) async fn segments(State(app): State<App>, Query(q): Query<SegmentQuery>) -> Response {
    let all = match app.mode.segments(&app.ctx).await {
        Ok(all) => all,
        Err(r) => return r,
    };
    let list: Vec<_> = all
        .into_iter()
        .filter(|s| q.kind.as_ref().is_none_or(|k| &s.kind == k))
        .filter(|s| q.name.as_ref().is_none_or(|n| &s.name == n))
        .filter(|s| q.shard.is_none_or(|n| s.shard == n))
        .collect();
    ok(SegmentList { segments: list })
}

#[derive(Deserialize)]
pub(crate) struct CompactQuery {
    target_bytes: Option<i64>,
    /// Only the shards this node holds (what a node asks the others for).
    local: Option<bool>,
}

/// Each node compacts the shards it holds (through its manifest); the node
/// asked also asks the other live nodes (with `local=true`).
///
/// A merged segment is at most `MAX_COMPACT_TARGET` bytes (it is uploaded
/// in parts as it is merged; S3 takes 10,000 parts).
pub(crate) async fn compact(
    State(app): State<App>,
    Query(q): Query<CompactQuery>,
    headers: HeaderMap,
) -> Response {
    let target = match q.target_bytes {
        None => 64 << 20,
        Some(t) if (1..=MAX_COMPACT_TARGET).contains(&t) => t as u64,
        Some(t) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("target_bytes {t}: give a size from 1 byte to {MAX_COMPACT_TARGET} (64 GiB): a merged segment is uploaded in at most 10,000 parts of 8 MiB"),
            )
        }
    };
    let ctx = &app.ctx;
    let mut out = match all_shards(ctx, |reply| ShardMsg::Compact {
        target_bytes: target,
        reply,
    })
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    if q.local != Some(true) {
        let uri: axum::http::Uri = format!("/v1/segments/compact?target_bytes={target}&local=true")
            .parse()
            .expect("a valid URI");
        for addr in app.mode.peers() {
            let r = app
                .mode
                .forward(ctx, addr.clone(), Some(Bytes::new()), &uri, &headers)
                .await;
            if r.status() != StatusCode::OK {
                return r;
            }
            let body = match axum::body::to_bytes(r.into_body(), MAX_BODY_BYTES).await {
                Ok(b) => b,
                Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
            };
            match serde_json::from_slice::<CompactReply>(&body) {
                Ok(v) => out.extend(v.compactions),
                Err(e) => {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        format!("the node at {addr} answered compaction with {e}"),
                    )
                }
            }
        }
    }
    ok(CompactReply { compactions: out })
}

pub(crate) async fn object(State(app): State<App>, Path(path): Path<String>) -> Response {
    let p = match object_store::path::Path::parse(&path) {
        Ok(p) => p,
        // no object has a name that is not a valid path
        Err(_) => return error(StatusCode::NOT_FOUND, format!("no object `{path}`")),
    };
    let got = object_store::ObjectStoreExt::get(app.ctx.objects.as_ref(), &p).await;
    match got {
        // streamed as the store gives it: memory stays bounded whatever
        // the object's size
        Ok(g) => {
            let size = g.meta.size;
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                    (header::CONTENT_LENGTH, HeaderValue::from(size)),
                ],
                axum::body::Body::from_stream(g.into_stream()),
            )
                .into_response()
        }
        Err(object_store::Error::NotFound { .. }) => {
            error(StatusCode::NOT_FOUND, format!("no object `{path}`"))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The largest `target_bytes` a compaction takes: 64 GiB (a merged
/// segment is uploaded in parts of `STREAM_PART_BYTES`, 10,000 at most).
const MAX_COMPACT_TARGET: i64 = 64 << 30;
