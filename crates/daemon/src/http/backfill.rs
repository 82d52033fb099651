//! Backfill jobs, on one node or a cluster.
#![allow(clippy::result_large_err)]

use super::reply::*;
use super::App;
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

/// `POST /v1/backfill`: a backfill job. In a cluster it is kept in the
/// control plane's state, every shard's owner replays it from the archive
/// and records its part, and the shards of a node that dies are replayed
/// by their next owners; on one node the node runs it. Answers when every
/// shard is done (or at once with `?wait=false`); the reply lists, by
/// shard, the Parquet objects (`lockstepctl backfill` collects them).
pub(crate) async fn backfill(
    State(app): State<App>,
    Query(q): Query<BackfillQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ctx = &app.ctx;
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
    // every shard replays the same definition: the pipeline now running,
    // unless the job brings its own
    let pipe = ctx.pipeline();
    if let Err(e) =
        lockstep_offline::backfill_catalog((*pipe.catalog).clone(), req.sql.as_deref(), &req.view)
    {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    req.sql.get_or_insert_with(|| pipe.sql.clone());
    let id = match app.mode.start_backfill(ctx, req).await {
        Ok(id) => id,
        Err(r) => return r,
    };
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
    match app
        .mode
        .backfill_finished(&id, waited(&ctx.config.limits))
        .await
    {
        Some(j) if j.error.is_none() => ok(job_info(&j, ctx.table.shards)),
        Some(j) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            job_info(&j, ctx.table.shards),
        ),
        None => (
            StatusCode::ACCEPTED,
            axum::Json(BackfillStarted {
                job: id,
                state: Some(BackfillJobState::Running),
                error: Some("still running: follow it with GET /v1/backfill/{job}".into()),
            }),
        )
            .into_response(),
    }
}

/// `GET /v1/backfill`: the running and recently finished backfill jobs.
pub(crate) async fn backfill_jobs(State(app): State<App>) -> Response {
    let jobs: Vec<_> = app
        .mode
        .backfill_jobs()
        .iter()
        .map(|j| BackfillJob {
            shards: None,
            ..job_info(j, app.ctx.table.shards)
        })
        .collect();
    ok(BackfillJobs { jobs })
}

/// `GET /v1/backfill/{job}`: one job with its done shards.
pub(crate) async fn backfill_job(State(app): State<App>, Path(job): Path<String>) -> Response {
    match app.mode.backfill_jobs().iter().find(|j| j.id == job) {
        Some(j) => ok(job_info(j, app.ctx.table.shards)),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no backfill job {job} (finished jobs are kept a while)"),
        ),
    }
}

/// How long `POST /v1/backfill` waits for its job: a second less than the
/// request's deadline, so a long job is answered `202` with its id rather
/// than `503`.
fn waited(limits: &crate::config::Limits) -> std::time::Duration {
    limits
        .request_timeout
        .saturating_sub(std::time::Duration::from_secs(1))
        .max(std::time::Duration::from_millis(100))
}
