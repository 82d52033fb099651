//! Snapshot objects (a checkpoint's state delta and dedup state), their
//! digest, and committing a checkpoint through the control plane.
use crate::store::{decode_slot, StoreError};
use lockstep_cluster::state::{Command, Rejection, Response, ShardCheckpoint, SnapshotPart};
use lockstep_core::window::Entry;
use lockstep_core::{ShardMeta, SlotKey};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

use super::{ClusterCtx, IdemEntry};

/// One snapshot object: a checkpoint's state delta (or the whole state,
/// `replace`), and the shard's seen idempotency keys.
#[derive(Serialize, Deserialize)]
pub struct SnapshotData {
    pub replace: bool,
    pub meta: ShardMeta,
    /// `((view, group, slot), encoded slot)`.
    pub slots: Vec<((u32, u32, u32), Vec<u8>)>,
    pub idem: Vec<(String, IdemEntry)>,
    /// Seen producer-supplied event ids (hashed) and when first seen.
    pub event_ids: Vec<(u128, i64)>,
}

/// A shard's state as restored from its snapshot objects.
pub struct Restored {
    pub meta: ShardMeta,
    pub slots: Vec<(SlotKey, Entry)>,
    /// The encoded slots, for the local cache.
    pub encoded: Vec<(SlotKey, Vec<u8>)>,
    pub idem: HashMap<String, IdemEntry>,
    pub event_ids: lockstep_core::dedup::EventIds,
}

fn bincode_cfg() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// `ext` carries the data directory's id, the owner epoch and a nonce.
pub fn snapshot_path(table: &str, shard: u32, seq: u64, ext: &str) -> String {
    format!("snapshots/{table}/shard={shard:03}/{seq:020}.{ext}")
}

/// A snapshot object that cannot be written or read back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    #[error("writing snapshot {path}: {message}")]
    Write { path: String, message: String },
    #[error("reading snapshot {path}: {message}")]
    Read { path: String, message: String },
    #[error("snapshot {path} is damaged: CRC-32 {found:08x}, the manifest says {expected:08x}")]
    Damaged {
        path: String,
        found: u32,
        expected: u32,
    },
}

impl From<SnapshotError> for crate::shard::ShardError {
    fn from(e: SnapshotError) -> Self {
        crate::shard::ShardError::internal(e)
    }
}

/// Writes one snapshot object.
pub async fn put_snapshot(
    store: &dyn ObjectStore,
    path: String,
    data: &SnapshotData,
) -> Result<SnapshotPart, SnapshotError> {
    let bytes =
        bincode::serde::encode_to_vec(data, bincode_cfg()).map_err(|e| SnapshotError::Write {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let part = SnapshotPart {
        crc32: crc32fast::hash(&bytes),
        bytes: bytes.len() as u64,
        path,
    };
    crate::segments::put_object(
        store,
        &ObjPath::from(part.path.as_str()),
        bytes::Bytes::from(bytes),
    )
    .await
    .map_err(|e| SnapshotError::Write {
        path: part.path.clone(),
        message: e.to_string(),
    })?;
    Ok(part)
}

/// Reads a checkpoint's snapshot objects in order and folds them into the
/// state they describe.
pub async fn restore_snapshot(
    store: &dyn ObjectStore,
    parts: &[SnapshotPart],
) -> Result<Option<Restored>, SnapshotError> {
    let mut slots: BTreeMap<(u32, u32, u32), Vec<u8>> = BTreeMap::new();
    let mut meta = None;
    let mut idem = HashMap::new();
    let mut event_ids = lockstep_core::dedup::EventIds::new();
    for p in parts {
        let read = |e: &dyn std::fmt::Display| SnapshotError::Read {
            path: p.path.clone(),
            message: e.to_string(),
        };
        let bytes = store
            .get(&ObjPath::from(p.path.as_str()))
            .await
            .map_err(|e| read(&e))?
            .bytes()
            .await
            .map_err(|e| read(&e))?;
        let found = crc32fast::hash(&bytes);
        if found != p.crc32 {
            return Err(SnapshotError::Damaged {
                path: p.path.clone(),
                found,
                expected: p.crc32,
            });
        }
        let (d, _): (SnapshotData, _) =
            bincode::serde::decode_from_slice(&bytes, bincode_cfg()).map_err(|e| read(&e))?;
        if d.replace {
            slots.clear();
        }
        slots.extend(d.slots);
        meta = Some(d.meta);
        idem = d.idem.into_iter().collect();
        event_ids = d.event_ids.into_iter().collect();
    }
    let Some(meta) = meta else {
        return Ok(None);
    };
    let mut decoded = Vec::with_capacity(slots.len());
    let mut encoded = Vec::with_capacity(slots.len());
    for ((view, group, slot), b) in slots {
        let key = SlotKey { view, group, slot };
        let slot = decode_slot(&b).map_err(|e: StoreError| SnapshotError::Read {
            path: format!("slot {view}/{group}/{slot}"),
            message: e.to_string(),
        })?;
        decoded.push((key, slot));
        encoded.push((key, b));
    }
    Ok(Some(Restored {
        meta,
        slots: decoded,
        encoded,
        idem,
        event_ids,
    }))
}

/// A digest of a checkpoint's state: CRC-32 over its snapshot parts' CRCs
/// and the offset.
pub fn digest(parts: &[SnapshotPart], offset: u64) -> String {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(&p.crc32.to_le_bytes());
    }
    h.update(&offset.to_le_bytes());
    format!("{:08x}", h.finalize())
}

/// Commits a checkpoint through the control plane. `Err(Fenced)` means the
/// shard is no longer this node's.
pub async fn commit_checkpoint(
    cl: &ClusterCtx,
    checkpoint: ShardCheckpoint,
    add_segments: Vec<crate::segments::SegmentInfo>,
    remove_segments: Vec<crate::segments::SegmentInfo>,
) -> Result<(), CommitError> {
    match cl
        .cp
        .propose(Command::Commit {
            checkpoint,
            add_segments,
            remove_segments,
        })
        .await
    {
        Ok(Response::Done) => Ok(()),
        Ok(Response::Rejected(r @ Rejection::Fenced { .. })) => Err(CommitError::Fenced(r)),
        Ok(Response::Rejected(r)) => Err(CommitError::Refused(r)),
        Err(e) => Err(CommitError::Unanswered(e.to_string())),
    }
}

/// Why a checkpoint did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another node owns the shard now (or under a newer owner epoch).
    #[error("{0}")]
    Fenced(Rejection),
    /// The state machine refused it for another reason (a sequence gap, a
    /// segment not in the manifest).
    #[error("{0}")]
    Refused(Rejection),
    /// The proposal's answer was lost: it may or may not have committed.
    #[error("the control plane did not answer: {0}")]
    Unanswered(String),
}
