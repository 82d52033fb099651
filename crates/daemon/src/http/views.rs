//! The pipeline and `views apply`.
#![allow(clippy::result_large_err)]

use super::reply::*;
use super::routing::*;
use super::App;
use crate::node::Node;
use crate::pipeline::{table_fingerprint, Pipeline};
use crate::shard::ShardMsg;
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
    if let Some(cl) = &ctx.cluster {
        if let Err(r) = cluster_apply(cl, &old, &new).await {
            return r;
        }
        return ok(ApplyReply {
            applied: true,
            unchanged: false,
            version: Some(new.version),
            added,
            removed,
            changed,
            views: new.view_names.clone(),
            millis: started.elapsed().as_millis() as u64,
        });
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
    ok(ApplyReply {
        applied: true,
        unchanged: false,
        version: None,
        added,
        removed,
        changed,
        views: new.view_names.clone(),
        millis: started.elapsed().as_millis() as u64,
    })
}

/// `views apply` in a cluster: the new pipeline goes into the replicated
/// view registry; every node switches to it, each owner rebuilds its shards
/// from the archive in the object store and commits the rebuild. Returns
/// once every shard's committed checkpoint is built for the new views.
pub(crate) async fn cluster_apply(
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
            return Err(error(StatusCode::CONFLICT, why.to_string()))
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
