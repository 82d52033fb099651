//! `GET /v1/views`, `POST /v1/views` (views apply), `GET /v1/pipeline`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ColumnInfo {
    pub name: String,
    /// The SQL type: BIGINT, DOUBLE, TEXT, BOOLEAN, TIMESTAMP, INTERVAL.
    #[serde(rename = "type")]
    pub data_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ViewInfo {
    pub name: String,
    pub table: String,
    pub columns: Vec<ColumnInfo>,
    /// Columns computed from FOLLOWING frames (served as `null`).
    pub labels: Vec<String>,
}

/// `GET /v1/views`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ViewList {
    pub views: Vec<ViewInfo>,
}

/// `POST /v1/views` (body: the pipeline's SQL): what changed. A pipeline
/// with the same views answers `unchanged: true` and changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApplyReply {
    pub applied: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// In a cluster: the pipeline's version in the view registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default)]
    pub added: Vec<String>,
    #[serde(default)]
    pub removed: Vec<String>,
    #[serde(default)]
    pub changed: Vec<String>,
    pub views: Vec<String>,
    #[serde(default)]
    pub millis: u64,
}

/// `GET /v1/pipeline`: the SQL the node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PipelineInfo {
    pub sql: String,
    pub table: String,
    pub shards: u32,
    pub views: Vec<String>,
}
