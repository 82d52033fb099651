//! The OpenAPI 3 document of lockstepd's API, generated from the types of
//! this crate (`GET /v1/openapi.json` serves it). Each operation below is
//! a declaration only: the daemon's handlers implement them, and CI checks
//! the running node against this document (schemathesis).
#![allow(dead_code)]

use crate::*;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "lockstepd",
        description = "The lockstep node API: ingest, serving, views, checkpoints, segments, the cluster and backfill jobs. Every endpoint but /healthz, /metrics and /v1/openapi.json needs `Authorization: Bearer <token>`. Errors are `{\"error\": ...}`; 503 answers carry `Retry-After`."
    ),
    paths(
        healthz, ingest, dead_letters, features, features_for_key, status, pipeline, views,
        apply_views, checkpoint, segments, compact, object, cluster, drain, activate, remove, rebalance,
        start_backfill, backfill_jobs, backfill_job
    ),
    components(schemas(
        ErrorBody, IngestReply, EventError, DeadLetter, DeadLetters, Features, TrainingRow,
        IngestedWithoutFeatures, NodeStatus, ShardStatus, CheckpointInfo, CheckpointReply,
        CheckpointReport, PipelineInfo, ViewList, ViewInfo, ColumnInfo, ApplyReply, SegmentList,
        SegmentInfo, CompactReply, CompactReport, ClusterStatus, MemberInfo, MemberState,
        ShardEntry, ShardCheckpointInfo, DrainReply, ActivateReply, RemoveReply, RebalanceReply,
        BackfillRequest, BackfillPart, BackfillJob, BackfillJobState, BackfillJobs,
        BackfillStarted
    )),
    modifiers(&BearerToken),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document encodes")
}

/// Liveness: answers while the process serves HTTP.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "alive")))]
fn healthz() {}

/// Ingests events: JSON lines (one object per line) or a JSON array of
/// objects. Events that fail validation go to the dead-letter store with
/// their reason; the others are durable in the log when this answers.
#[utoipa::path(
    post,
    path = "/v1/tables/{table}/events",
    params(
        ("table" = String, Path, description = "the node's table"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 256 visible ASCII characters; a retry with the same key changes nothing twice")
    ),
    request_body(content = String, content_type = "text/plain", description = "JSON lines (one event object per line) or a JSON array of events"),
    responses(
        (status = 200, description = "accepted (some events may be refused: `errors`)", body = IngestReply,
         headers(("idempotent-replayed" = String, description = "`true` when this is the stored answer of an earlier request with the same key"))),
        (status = 400, description = "no event accepted, or a malformed request", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, description = "unknown table", body = ErrorBody),
        (status = 413, description = "body, an event or the event count over a limit (max_event_bytes, max_events_per_request)", body = ErrorBody),
        (status = 422, description = "the Idempotency-Key was used before with a different body", body = ErrorBody),
        (status = 500, body = ErrorBody), (status = 503, description = "retry", body = ErrorBody)
    )
)]
fn ingest() {}

/// The newest refused events, with their reasons.
#[utoipa::path(
    get,
    path = "/v1/tables/{table}/deadletters",
    params(("table" = String, Path), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = DeadLetters), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "overloaded (max_concurrent_requests) or restarting: retry", body = ErrorBody))
)]
fn dead_letters() {}

/// Features of one event (a JSON object; event time defaults to now):
/// exactly what its training row will hold. With `ingest=true` the event
/// is also ingested, and its features are computed just before it enters
/// its shard's state.
#[utoipa::path(
    post,
    path = "/v1/views/{view}/features",
    params(
        ("view" = String, Path), ("ingest" = Option<bool>, Query),
        ("Idempotency-Key" = Option<String>, Header)
    ),
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 200, body = Features),
        (status = 202, description = "ingested, features not computed: do not retry", body = IngestedWithoutFeatures),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the Idempotency-Key was ingested before", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "the Idempotency-Key was used before with a different body", body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)
    )
)]
fn features() {}

/// Features of a hypothetical event for `key`, now.
#[utoipa::path(
    get,
    path = "/v1/views/{view}/keys/{key}",
    params(("view" = String, Path), ("key" = String, Path)),
    responses(
        (status = 200, body = Features), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)
    )
)]
fn features_for_key() {}

/// The node and the shards it holds.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = NodeStatus), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
fn status() {}

/// The pipeline's SQL.
#[utoipa::path(get, path = "/v1/pipeline", responses((status = 200, body = PipelineInfo), (status = 401, body = ErrorBody), (status = 503, description = "overloaded (max_concurrent_requests) or restarting: retry", body = ErrorBody)))]
fn pipeline() {}

/// The views and their columns.
#[utoipa::path(get, path = "/v1/views", responses((status = 200, body = ViewList), (status = 401, body = ErrorBody), (status = 503, description = "overloaded (max_concurrent_requests) or restarting: retry", body = ErrorBody)))]
fn views() {}

/// `views apply`: a new pipeline for the same table (its SQL); shards
/// rebuild from their archives.
#[utoipa::path(
    post,
    path = "/v1/views",
    request_body(content = String, content_type = "text/plain"),
    responses(
        (status = 200, body = ApplyReply),
        (status = 400, description = "the SQL does not compile (with line and column)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 409, description = "another table, or another apply came first", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)
    )
)]
fn apply_views() {}

/// Checkpoints every shard now (in a cluster: a checkpoint epoch).
#[utoipa::path(post, path = "/v1/checkpoint", responses((status = 200, body = CheckpointReply), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
fn checkpoint() {}

/// Committed segments.
#[utoipa::path(
    get,
    path = "/v1/segments",
    params(("kind" = Option<String>, Query), ("name" = Option<String>, Query), ("shard" = Option<u64>, Query, maximum = 4294967295.0)),
    responses((status = 200, body = SegmentList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody))
)]
fn segments() {}

/// Merges runs of small segments.
#[utoipa::path(
    post,
    path = "/v1/segments/compact",
    params(("target_bytes" = Option<i64>, Query, minimum = 1), ("local" = Option<bool>, Query)),
    responses((status = 200, body = CompactReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 500, body = ErrorBody), (status = 502, body = ErrorBody), (status = 503, body = ErrorBody))
)]
fn compact() {}

/// An object of the node's store (a segment), by its path.
#[utoipa::path(
    get,
    path = "/v1/objects/{path}",
    params(("path" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, description = "overloaded (max_concurrent_requests) or restarting: retry", body = ErrorBody))
)]
fn object() {}

/// The cluster: members, shard map, checkpoints (404 on a node alone).
#[utoipa::path(get, path = "/v1/cluster", responses((status = 200, body = ClusterStatus), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "overloaded (max_concurrent_requests) or restarting: retry", body = ErrorBody)))]
fn cluster() {}

/// Drains a node: its shards move away, one last checkpoint each.
#[utoipa::path(
    post,
    path = "/v1/cluster/nodes/{node}/drain",
    params(("node" = String, Path)),
    responses((status = 200, body = DrainReply), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody))
)]
fn drain() {}

/// Ends a node's drain: it gets shards again (a drained node that
/// restarts stays draining until then).
#[utoipa::path(
    post,
    path = "/v1/cluster/nodes/{node}/activate",
    params(("node" = String, Path)),
    responses((status = 200, body = ActivateReply), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody))
)]
fn activate() {}

/// Removes a node that is down for good.
#[utoipa::path(
    post,
    path = "/v1/cluster/nodes/{node}/remove",
    params(("node" = String, Path)),
    responses((status = 200, body = RemoveReply), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody))
)]
fn remove() {}

/// The moves the coordinator makes now.
#[utoipa::path(post, path = "/v1/cluster/rebalance", responses((status = 200, body = RebalanceReply), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "overloaded (max_concurrent_requests) or restarting: retry", body = ErrorBody)))]
fn rebalance() {}

/// Starts a backfill job (cluster): every shard's owner replays it.
#[utoipa::path(
    post,
    path = "/v1/backfill",
    params(("wait" = Option<bool>, Query, description = "false: answer at once with the job's id")),
    request_body(content = BackfillRequest, content_type = "application/json"),
    responses(
        (status = 200, body = BackfillJob), (status = 202, body = BackfillStarted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 500, body = BackfillJob), (status = 503, body = ErrorBody)
    )
)]
fn start_backfill() {}

/// Running and recently finished backfill jobs.
#[utoipa::path(get, path = "/v1/backfill", responses((status = 200, body = BackfillJobs), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "overloaded (max_concurrent_requests) or restarting: retry", body = ErrorBody)))]
fn backfill_jobs() {}

/// One backfill job with its done shards.
#[utoipa::path(
    get,
    path = "/v1/backfill/{job}",
    params(("job" = String, Path)),
    responses((status = 200, body = BackfillJob), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "overloaded (max_concurrent_requests) or restarting: retry", body = ErrorBody))
)]
fn backfill_job() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_endpoint_with_its_schemas() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/tables/{table}/events",
            "/v1/views/{view}/features",
            "/v1/views",
            "/v1/cluster",
            "/v1/backfill/{job}",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        let ok = &paths["/v1/status"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"]["$ref"];
        assert_eq!(ok, "#/components/schemas/NodeStatus");
        let status = &doc["components"]["schemas"]["NodeStatus"]["properties"];
        assert!(status["shards"].is_object() && status["last_checkpoint"].is_object());
    }
}
