//! Snapshot objects (a checkpoint's state delta and dedup state), their
//! digest, and committing a checkpoint through the control plane.
use crate::store::{decode_slot, StoreError};
use lockstep_cluster::state::{Command, Rejection, Response, ShardCheckpoint, SnapshotPart};
use lockstep_core::window::Entry;
use lockstep_core::{ShardMeta, SlotKey};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{ClusterCtx, IdemEntry};

/// One snapshot object: a checkpoint's state delta (or the whole state,
/// `replace`), and the shard's seen Idempotency-Keys and event ids: those
/// first seen or changed since the previous part (all of them when
/// `replace`), and the horizon before which entries are forgotten.
#[derive(Serialize, Deserialize)]
pub struct SnapshotData {
    pub replace: bool,
    pub meta: ShardMeta,
    /// `((view, group, slot), encoded slot)`.
    pub slots: Vec<((u32, u32, u32), Vec<u8>)>,
    pub idem: Vec<(String, IdemEntry)>,
    /// Seen producer-supplied event ids (hashed) and when first seen.
    pub event_ids: Vec<(u128, i64)>,
    pub dedup_horizon_ms: i64,
}

/// A snapshot object as written before 2026-12 (every part carried every
/// key and id; keys had no body hash).
#[derive(Deserialize)]
struct SnapshotDataV1 {
    replace: bool,
    meta: ShardMeta,
    slots: Vec<((u32, u32, u32), Vec<u8>)>,
    idem: Vec<(String, IdemEntryV1)>,
    event_ids: Vec<(u128, i64)>,
}

/// An Idempotency-Key's entry before body hashes: `(at_ms, ranges)`.
type IdemEntryV1 = (i64, Vec<(u32, u32)>);

/// Snapshot objects written now begin with this (an older one begins with
/// its `replace` flag, 0 or 1, so the two never mix up).
const SNAPSHOT_V2: [u8; 4] = [0xFF, b'L', b'S', 2];

/// One part's dedup entries, as a restore folds them in order.
pub struct DedupPart {
    /// The part holds every entry: what came before is dropped.
    pub full: bool,
    pub idem: Vec<(String, IdemEntry)>,
    pub event_ids: Vec<(u128, i64)>,
    pub horizon_ms: i64,
}

/// A shard's state as restored from its snapshot objects.
pub struct Restored {
    pub meta: ShardMeta,
    pub slots: Vec<(SlotKey, Entry)>,
    /// The encoded slots, for the local cache.
    pub encoded: Vec<(SlotKey, Vec<u8>)>,
    /// Each part's dedup entries, in order.
    pub dedup: Vec<DedupPart>,
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
    let mut bytes = SNAPSHOT_V2.to_vec();
    bincode::serde::encode_into_std_write(data, &mut bytes, bincode_cfg()).map_err(|e| {
        SnapshotError::Write {
            path: path.clone(),
            message: e.to_string(),
        }
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
    let mut dedup = Vec::with_capacity(parts.len());
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
        let d = decode_part(&bytes).map_err(|e| read(&e))?;
        if d.replace {
            slots.clear();
        }
        slots.extend(d.slots);
        meta = Some(d.meta);
        dedup.push(DedupPart {
            // an old part carried every entry
            full: d.replace || !bytes.starts_with(&SNAPSHOT_V2),
            idem: d.idem,
            event_ids: d.event_ids,
            horizon_ms: d.dedup_horizon_ms,
        });
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
        dedup,
    }))
}

/// A snapshot object's contents, of either format.
fn decode_part(bytes: &[u8]) -> Result<SnapshotData, bincode::error::DecodeError> {
    if let Some(b) = bytes.strip_prefix(&SNAPSHOT_V2) {
        return Ok(bincode::serde::decode_from_slice(b, bincode_cfg())?.0);
    }
    let (d, _): (SnapshotDataV1, _) = bincode::serde::decode_from_slice(bytes, bincode_cfg())?;
    Ok(SnapshotData {
        replace: d.replace,
        meta: d.meta,
        slots: d.slots,
        idem: d
            .idem
            .into_iter()
            .map(|(k, (at_ms, ranges))| {
                let e = IdemEntry {
                    at_ms,
                    ranges,
                    body_hash: None,
                };
                (k, e)
            })
            .collect(),
        event_ids: d.event_ids,
        dedup_horizon_ms: i64::MIN,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ShardMeta {
        let empty: Vec<String> = Vec::new();
        let b = bincode::serde::encode_to_vec((&empty, 0i64, 0u64, 0u64, &empty), bincode_cfg())
            .unwrap();
        bincode::serde::decode_from_slice(&b, bincode_cfg())
            .unwrap()
            .0
    }

    #[test]
    fn parts_of_both_formats_decode() {
        // written before 2026-12: no marker, keys without a body hash
        let slots: Vec<((u32, u32, u32), Vec<u8>)> = vec![((1, 2, 3), vec![9])];
        let idem: Vec<(String, IdemEntryV1)> = vec![("k".into(), (5, vec![(0, 3)]))];
        let ids: Vec<(u128, i64)> = vec![(7, 5)];
        let old =
            bincode::serde::encode_to_vec((false, meta(), &slots, &idem, &ids), bincode_cfg())
                .unwrap();
        let d = decode_part(&old).unwrap();
        assert!(!d.replace);
        assert_eq!(d.slots, slots);
        assert_eq!(
            d.idem,
            vec![(
                "k".to_string(),
                IdemEntry {
                    at_ms: 5,
                    ranges: vec![(0, 3)],
                    body_hash: None
                }
            )]
        );
        assert_eq!(d.event_ids, ids);
        assert_eq!(d.dedup_horizon_ms, i64::MIN);
        // written now
        let new = SnapshotData {
            replace: true,
            meta: meta(),
            slots: slots.clone(),
            idem: vec![(
                "k".into(),
                IdemEntry {
                    at_ms: 6,
                    ranges: vec![(1, 2)],
                    body_hash: Some(42),
                },
            )],
            event_ids: vec![(8, 6)],
            dedup_horizon_ms: 3,
        };
        let mut b = SNAPSHOT_V2.to_vec();
        bincode::serde::encode_into_std_write(&new, &mut b, bincode_cfg()).unwrap();
        let d = decode_part(&b).unwrap();
        assert!(d.replace);
        assert_eq!(d.idem, new.idem);
        assert_eq!(d.event_ids, new.event_ids);
        assert_eq!(d.dedup_horizon_ms, 3);
    }
}
