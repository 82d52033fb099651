//! `POST /v1/tables/{table}/events`, `GET /v1/tables/{table}/deadletters`
//! and the feature endpoints.

use serde::{Deserialize, Serialize};

/// Request header: a client's name for one ingest request; a retry with the
/// same key changes nothing twice.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response header set (to `true`) when an ingest answer is the stored
/// answer of an earlier request with the same Idempotency-Key.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// One refused event of an ingest request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventError {
    /// Its position in the request (0-based, blank lines not counted).
    pub index: usize,
    pub reason: String,
}

/// The answer to an ingest request (`200`, or `400` when no event was
/// accepted, then with `error` set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngestReply {
    pub accepted: u64,
    pub rejected: u64,
    /// The first rejected events (at most 100), with reasons; every one is
    /// in the dead-letter store.
    pub errors: Vec<EventError>,
    /// Rejected events beyond those listed in `errors` (for a replayed
    /// Idempotency-Key, beyond the first 10).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub errors_omitted: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A refused event, kept in the dead-letter store with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub at_ms: i64,
    pub table: String,
    pub index: usize,
    pub reason: String,
    /// The event as it was sent.
    pub raw: String,
}

/// `GET /v1/tables/{table}/deadletters?limit=N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetters {
    /// Oldest first; in a cluster, every live node's, merged by time.
    pub dead_letters: Vec<DeadLetter>,
    /// Nodes whose dead letters are missing from the list (they did not
    /// answer), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// The features of one (hypothetical or ingested) event: the view's output
/// columns by name; label columns are `null` until their frames close.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Features {
    #[schema(value_type = Object)]
    pub features: serde_json::Map<String, serde_json::Value>,
    /// Serve-and-ingest (`?ingest=true`) only: whether the event will have
    /// a training row in this view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_row: Option<TrainingRow>,
}

/// Whether an ingested event will have a training row, as known when it
/// was applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrainingRow {
    /// `true`: it will (once its labels are final); `false`: it will not,
    /// see `reason`; `null`: the view's QUALIFY reads its labels, so it is
    /// decided when the row is final.
    pub will_exist: Option<bool>,
    /// Why not, or why not known yet: `filtered` (the view's WHERE),
    /// `not_qualified` (QUALIFY), `late` (below the shard's watermark),
    /// `qualify_reads_labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A sentence for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `202` from serve-and-ingest (`?ingest=true`): the event is durably in,
/// but its features could not be computed in time; they will be in its
/// training row. The client must not retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngestedWithoutFeatures {
    pub ingested: bool,
    /// Always `null`.
    #[schema(value_type = Option<Object>)]
    pub features: Option<()>,
    pub error: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
