//! `GET /v1/segments` and `POST /v1/segments/compact`.

use serde::{Deserialize, Serialize};

/// One object of a shard's archive or output, as its manifest records it
/// (the control plane replicates the same type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SegmentInfo {
    /// `raw`, `training` or `late`.
    pub kind: String,
    /// The table (raw, late) or view (training) it belongs to.
    pub name: String,
    pub shard: u32,
    /// Object path, relative to the store's root.
    pub path: String,
    /// Log offsets covered: `from_offset..to_offset`.
    pub from_offset: u64,
    pub to_offset: u64,
    /// Smallest and largest event time in it (ms; `i64::MIN`/`MAX` if empty).
    pub min_time: i64,
    pub max_time: i64,
    pub rows: u64,
    pub bytes: u64,
    /// CRC-32 (IEEE) of the object's bytes.
    pub crc32: u32,
}

/// `GET /v1/segments?kind=&name=&shard=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SegmentList {
    pub segments: Vec<SegmentInfo>,
}

/// One shard's compaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompactReport {
    pub shard: u32,
    pub merged_groups: usize,
    pub segments_before: usize,
    pub segments_after: usize,
}

/// `POST /v1/segments/compact?target_bytes=N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompactReply {
    pub compactions: Vec<CompactReport>,
}
