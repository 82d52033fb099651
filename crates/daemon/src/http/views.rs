//! The pipeline and `views apply`.
#![allow(clippy::result_large_err)]

use super::reply::*;
use super::App;
use crate::pipeline::{table_fingerprint, Pipeline};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use lockstep_api::{ApplyReply, ColumnInfo, ErrorBody, PipelineInfo, ViewInfo, ViewList};
use std::sync::Arc;
use std::time::Instant;

pub(crate) async fn pipeline(State(app): State<App>) -> Response {
    let ctx = &app.ctx;
    let p = ctx.pipeline();
    ok(PipelineInfo {
        sql: p.sql.clone(),
        table: ctx.table.name.clone(),
        shards: ctx.table.shards,
        views: p.view_names.clone(),
    })
}

fn describe_views(catalog: &lockstep_core::Catalog) -> ViewList {
    let views = catalog
        .views
        .iter()
        .map(|v| ViewInfo {
            name: v.name.clone(),
            table: catalog.tables[v.table].name.clone(),
            columns: v
                .output
                .columns
                .iter()
                .map(|c| ColumnInfo {
                    name: c.name.clone(),
                    data_type: c.data_type.to_string(),
                })
                .collect(),
            labels: v
                .label_columns
                .iter()
                .map(|&i| v.output.columns[i].name.clone())
                .collect(),
        })
        .collect();
    ViewList { views }
}

pub(crate) async fn views_list(State(app): State<App>) -> Response {
    ok(describe_views(&app.ctx.pipeline().catalog))
}

/// `views apply`: replaces the pipeline with a new one for the same table.
/// Every shard rebuilds its state from its archive, and views that are new
/// or changed get their whole training history written; how the switch is
/// made is the node's mode's (`apply_views`): the node's pipeline file on
/// one node, the replicated view registry (refused if another apply came
/// first) in a cluster.
pub(crate) async fn views_apply(
    State(app): State<App>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let ctx = &app.ctx;
    let body = match body_bytes(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.len() > crate::pipeline::MAX_SQL_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the pipeline is {} bytes; the largest accepted is {} (it is replicated to every node)",
                body.len(),
                crate::pipeline::MAX_SQL_BYTES
            ),
        );
    }
    let Ok(sql) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not UTF-8");
    };
    let catalog = match lockstep_core::parse_pipeline(sql) {
        Ok(c) => c,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                ErrorBody {
                    error: e.message,
                    line: Some(e.line),
                    column: Some(e.column),
                },
            )
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
    let (old, version) = match app.mode.current_pipeline(ctx).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    new.version = version;
    let new = Arc::new(new);
    let (old_fps, new_fps) = (old.view_fingerprints(), new.view_fingerprints());
    let added: Vec<String> = new_fps
        .iter()
        .filter(|(n, _)| !old_fps.iter().any(|(o, _)| o == n))
        .map(|(n, _)| n.clone())
        .collect();
    let removed: Vec<String> = old_fps
        .iter()
        .filter(|(n, _)| !new_fps.iter().any(|(o, _)| o == n))
        .map(|(n, _)| n.clone())
        .collect();
    let changed: Vec<String> = new_fps
        .iter()
        .filter(|(n, f)| old_fps.iter().any(|(o, g)| o == n && g != f))
        .map(|(n, _)| n.clone())
        .collect();
    if new.fingerprint() == old.fingerprint() {
        return ok(ApplyReply {
            applied: true,
            unchanged: true,
            views: new.view_names.clone(),
            ..ApplyReply::default()
        });
    }
    if let Err(r) = app.mode.apply_views(ctx, old, new.clone()).await {
        return r;
    }
    ok(ApplyReply {
        applied: true,
        unchanged: false,
        version: (new.version > 0).then_some(new.version),
        added,
        removed,
        changed,
        views: new.view_names.clone(),
        millis: started.elapsed().as_millis() as u64,
    })
}
