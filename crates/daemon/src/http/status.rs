//! Node status and checkpoints on request.
#![allow(clippy::result_large_err)]

use super::reply::*;
use super::routing::*;
use super::App;
use crate::clock::now_ms;
use crate::node::Node;
use crate::shard::{ShardMsg, ShardStatus};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use lockstep_api::{CheckpointReply, CheckpointReport, NodeStatus};

pub(crate) async fn status(State(app): State<App>) -> Response {
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
    ok(NodeStatus {
        node_id: ctx.config.node_id.clone(),
        table: ctx.table.name.clone(),
        views: ctx.pipeline().view_names.clone(),
        shard_count: ctx.table.shards,
        object_store: ctx.config.object_store.to_string(),
        data_dir: ctx.config.data_dir.display().to_string(),
        uptime_seconds: (now_ms() - ctx.started_ms) / 1000,
        events: shards.iter().map(|s| s.events).sum::<u64>(),
        late: shards.iter().map(|s| s.late).sum::<u64>(),
        lag: shards.iter().map(|s| s.lag).sum::<u64>(),
        dead_letters: ctx.metrics.dead_letters.get(),
        last_checkpoint: last_ckpt.map(lockstep_core::time::format_rfc3339_ms),
        shards,
    })
}

pub(crate) async fn checkpoint(State(app): State<App>) -> Response {
    if let Some(cl) = &app.ctx.cluster {
        return cluster_checkpoint(cl).await;
    }
    let results = Node::checkpoint_all(&app.ctx).await;
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    if !errors.is_empty() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("checkpoint failed: {}", errors.join("; ")),
        );
    }
    let checkpoints = results
        .into_iter()
        .filter_map(Result::ok)
        .map(|r| CheckpointReport {
            shard: r.shard,
            seq: r.seq,
            log_offset: r.log_offset,
            epoch: None,
            owner: None,
            wrote: Some(r.wrote),
            slots_written: Some(r.slots_written),
            bytes_written: Some(r.bytes_written),
            training_rows: Some(r.training_rows),
            segments: Some(r.segments),
            millis: Some(r.millis),
        })
        .collect();
    ok(CheckpointReply {
        epoch: None,
        checkpoints,
    })
}

pub(crate) async fn cluster_checkpoint(cl: &crate::cluster::ClusterCtx) -> Response {
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
                .map(|c| CheckpointReport {
                    shard: c.shard,
                    seq: c.seq,
                    log_offset: c.offset,
                    epoch: Some(c.epoch),
                    owner: Some(c.owner),
                    ..CheckpointReport::default()
                })
                .collect::<Vec<_>>()
        })
    })
    .await;
    match complete {
        Ok(checkpoints) => ok(CheckpointReply {
            epoch: Some(epoch),
            checkpoints,
        }),
        Err(st) => unavailable(format!(
            "epoch {epoch} is not complete after 60 s (completed: {}); some shard is moving or down",
            st.completed_epoch()
        )),
    }
}
