//! Cluster backfill jobs.
#![allow(clippy::result_large_err)]

use super::cluster::cluster_of;
use super::reply::*;
use super::routing::*;
use super::App;
use crate::clock::now_ms;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lockstep_api::{BackfillJob, BackfillJobState, BackfillJobs, BackfillRequest, BackfillStarted};
use serde::Deserialize;

#[derive(Deserialize)]
pub(crate) struct BackfillQuery {
    /// `false`: answer at once with the job's id (`202`).
    wait: Option<bool>,
}

/// A job as the API shows it, with its done shards' parts.
pub(crate) fn job_info(j: &lockstep_cluster::state::BackfillJob, shards: u32) -> BackfillJob {
    let req: Option<BackfillRequest> = serde_json::from_str(&j.request).ok();
    BackfillJob {
        job: j.id.clone(),
        view: req.as_ref().map(|r| r.view.clone()),
        from: req.as_ref().and_then(|r| r.from),
        to: req.as_ref().and_then(|r| r.to),
        started_ms: j.started_ms,
        finished_ms: j.finished_ms,
        state: match (&j.error, j.finished_ms) {
            (Some(_), _) => BackfillJobState::Failed,
            (None, Some(_)) => BackfillJobState::Done,
            (None, None) => BackfillJobState::Running,
        },
        error: j.error.clone(),
        done: j.parts.len(),
        total: shards,
        shards: Some(j.parts.values().cloned().collect()),
    }
}

/// A cluster backfill job: kept in the control plane's state; every shard's
/// owner replays it from the archive and records its part, and the shards
/// of a node that dies are replayed by their next owners. Answers when
/// every shard is done (or at once with `?wait=false`); the reply lists,
/// by shard, the Parquet objects (`lockstepctl backfill` collects them).
pub(crate) async fn backfill(
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
    let mut req: BackfillRequest = match serde_json::from_slice(&body) {
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
        lockstep_offline::backfill_catalog((*pipe.catalog).clone(), req.sql.as_deref(), &req.view)
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
        Ok(lockstep_cluster::state::Response::Rejected(w)) => return unavailable(w.to_string()),
        Err(e) => return unavailable(format!("the control plane: {e}")),
    }
    // this member applies the job a moment after the leader: answer once
    // it has, so a `GET /v1/backfill/{job}` here right after finds it
    let _ = wait_for(cl, std::time::Duration::from_secs(10), |st| {
        st.backfill(&id).map(|_| ())
    })
    .await;
    if q.wait == Some(false) {
        return reply(
            StatusCode::ACCEPTED,
            BackfillStarted {
                job: id,
                state: None,
                error: None,
            },
        );
    }
    let finished = wait_for(cl, std::time::Duration::from_secs(600), |st| {
        st.backfill(&id)
            .filter(|j| j.finished_ms.is_some())
            .map(|j| (j.error.is_some(), job_info(j, st.shards)))
    })
    .await;
    match finished {
        Ok((false, body)) => ok(body),
        Ok((true, body)) => reply(StatusCode::INTERNAL_SERVER_ERROR, body),
        Err(_) => (
            StatusCode::ACCEPTED,
            axum::Json(BackfillStarted {
                job: id,
                state: Some(BackfillJobState::Running),
                error: Some(
                    "still running after 10 minutes: follow it with GET /v1/backfill/{job}".into(),
                ),
            }),
        )
            .into_response(),
    }
}

/// `GET /v1/backfill`: the running and recently finished backfill jobs.
pub(crate) async fn backfill_jobs(State(app): State<App>) -> Response {
    let cl = match cluster_of(&app.ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let st = cl.state();
    let jobs: Vec<_> = st
        .backfills
        .iter()
        .map(|j| BackfillJob {
            shards: None,
            ..job_info(j, st.shards)
        })
        .collect();
    ok(BackfillJobs { jobs })
}

/// `GET /v1/backfill/{job}`: one job with its done shards.
pub(crate) async fn backfill_job(State(app): State<App>, Path(job): Path<String>) -> Response {
    let cl = match cluster_of(&app.ctx) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let st = cl.state();
    match st.backfill(&job) {
        Some(j) => ok(job_info(j, st.shards)),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no backfill job {job} (finished jobs are kept a while)"),
        ),
    }
}
