//! The checkpoint store: per shard, one sled tree holding the shard's meta,
//! its partition slots, the log offset the state corresponds to, and the
//! manifest of the segments committed with it. A checkpoint is one atomic
//! sled batch on that tree, so state, offset and segment manifest always
//! agree; only the slots changed since the previous checkpoint are written.

use crate::segments::SegmentInfo;
use lockstep_core::window::Entry;
use lockstep_core::{ShardMeta, SlotKey};
use serde::Serialize;
use std::path::Path;

const META: &[u8] = b"m";
const INFO: &[u8] = b"i";
const EXTRA: &[u8] = b"x";
const SLOT: u8 = b's';
const SEGMENT: u8 = b'g';
/// Prefix of the entries of a shard's extra data (cluster mode: its seen
/// Idempotency-Keys and event ids, one sled key each).
const EXTRA_ENTRY: u8 = b'd';

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    #[error("state store holds an undecodable record ({what}): {message}")]
    Decode { what: &'static str, message: String },
}

pub use lockstep_api::CheckpointInfo;

/// A shard's checkpoint as loaded for recovery.
pub struct Loaded {
    pub meta: ShardMeta,
    pub slots: Vec<(SlotKey, Entry)>,
    pub info: CheckpointInfo,
    pub segments: Vec<SegmentInfo>,
    /// The extra data as one value (as stores before 2026-12 kept it).
    pub extra: Option<Vec<u8>>,
    /// The extra data's entries, `(key, value)` as committed.
    pub extra_entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Extra shard data to commit: entries keyed by the caller (cluster mode:
/// seen Idempotency-Keys and event ids), written incrementally.
#[derive(Default)]
pub struct ExtraWrite {
    /// Drop every stored entry first (a full snapshot).
    pub replace: bool,
    /// Entries to add or overwrite.
    pub put: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One checkpoint to commit.
pub struct Commit<'a> {
    pub meta: &'a ShardMeta,
    /// Changed partition slots, already encoded ([`encode_slot`]).
    pub slots: &'a [(SlotKey, Vec<u8>)],
    /// This checkpoint's sequence number, log offset and pipeline
    /// fingerprint; the store fills in the rest of its [`CheckpointInfo`].
    pub seq: u64,
    pub log_offset: u64,
    pub pipeline: String,
    pub add_segments: &'a [SegmentInfo],
    pub remove_segments: &'a [SegmentInfo],
    /// Drop every stored slot first (a rebuilt state, laid out anew).
    pub replace_slots: bool,
    /// Extra shard data kept with the state (cluster mode: the seen
    /// Idempotency-Keys and event ids); `None` leaves what is stored.
    pub extra: Option<ExtraWrite>,
}

pub struct StateStore {
    db: sled::Db,
}

/// A write of the state store (crate::fatal: a started node stops on an
/// I/O error, which sled keeps).
fn written<T>(r: Result<T, sled::Error>) -> Result<T, sled::Error> {
    crate::fatal::written("the state store", r)
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, config()).expect("state values encode")
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, b: &[u8]) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(b, config())
        .map(|(v, _)| v)
        .map_err(|e| StoreError::Decode {
            what,
            message: e.to_string(),
        })
}

/// A partition slot as the store keeps it.
pub fn encode_slot(e: &Entry) -> Vec<u8> {
    encode(e)
}

/// The inverse of [`encode_slot`].
pub fn decode_slot(b: &[u8]) -> Result<Entry, StoreError> {
    decode("partition slot", b)
}

/// A shard's checkpoint delta with its slots encoded.
pub struct EncodedDelta {
    pub meta: ShardMeta,
    pub slots: Vec<(SlotKey, Vec<u8>)>,
}

impl EncodedDelta {
    pub fn take(
        engine: &mut lockstep_core::Engine,
        shard: u32,
    ) -> Result<EncodedDelta, lockstep_core::EngineError> {
        let (meta, slots) = engine.checkpoint_delta_encoded(shard, encode_slot)?;
        Ok(EncodedDelta { meta, slots })
    }
}

fn slot_key(k: &SlotKey) -> [u8; 13] {
    let mut b = [0u8; 13];
    b[0] = SLOT;
    b[1..5].copy_from_slice(&k.view.to_be_bytes());
    b[5..9].copy_from_slice(&k.group.to_be_bytes());
    b[9..13].copy_from_slice(&k.slot.to_be_bytes());
    b
}

fn segment_key(s: &SegmentInfo) -> Vec<u8> {
    let mut k = vec![SEGMENT];
    k.extend_from_slice(s.kind.as_bytes());
    k.push(0);
    k.extend_from_slice(s.name.as_bytes());
    k.push(0);
    k.extend_from_slice(&s.from_offset.to_be_bytes());
    k
}

impl StateStore {
    pub fn open(dir: &Path) -> Result<StateStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(128 << 20)
            .flush_every_ms(None)
            .open()?;
        Ok(StateStore { db })
    }

    fn tree(&self, shard: u32) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(format!("shard-{shard:05}"))?)
    }

    /// The last committed checkpoint of `shard`, if any.
    pub fn load(&self, shard: u32) -> Result<Option<Loaded>, StoreError> {
        let tree = self.tree(shard)?;
        let Some(meta) = tree.get(META)? else {
            return Ok(None);
        };
        let meta: ShardMeta = decode("shard meta", &meta)?;
        let info: CheckpointInfo = match tree.get(INFO)? {
            Some(b) => decode("checkpoint info", &b)?,
            None => CheckpointInfo::default(),
        };
        let mut slots = Vec::new();
        for item in tree.scan_prefix([SLOT]) {
            let (k, v) = item?;
            let n = |i: usize| u32::from_be_bytes([k[i], k[i + 1], k[i + 2], k[i + 3]]);
            let key = SlotKey {
                view: n(1),
                group: n(5),
                slot: n(9),
            };
            slots.push((key, decode("partition slot", &v)?));
        }
        let mut segments = Vec::new();
        for item in tree.scan_prefix([SEGMENT]) {
            let (_, v) = item?;
            segments.push(decode("segment manifest entry", &v)?);
        }
        let extra = tree.get(EXTRA)?.map(|v| v.to_vec());
        let mut extra_entries = Vec::new();
        for item in tree.scan_prefix([EXTRA_ENTRY]) {
            let (k, v) = item?;
            extra_entries.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(Some(Loaded {
            meta,
            slots,
            info,
            segments,
            extra,
            extra_entries,
        }))
    }

    /// This data directory's id, made at its first start: object names
    /// carry it, so several nodes can share an object store.
    pub fn store_id(&self) -> Result<String, StoreError> {
        if let Some(v) = self.db.get(b"store_id")? {
            return Ok(String::from_utf8_lossy(&v).into_owned());
        }
        // RandomState is seeded from the OS's randomness
        use std::hash::BuildHasher;
        let r = std::collections::hash_map::RandomState::new()
            .hash_one((std::time::SystemTime::now(), std::process::id()));
        let id = format!("{:08x}", r as u32);
        self.db.insert(b"store_id", id.as_bytes())?;
        self.db.flush()?;
        Ok(id)
    }

    /// A node-wide setting kept with the state (the table's definition, the
    /// fingerprints of the views all shards were last built for).
    pub fn get_node_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .get(format!("node/{key}"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_node_key(&self, key: &str, value: &str) -> Result<(), StoreError> {
        written(self.db.insert(format!("node/{key}"), value.as_bytes()))?;
        written(self.db.flush())?;
        Ok(())
    }

    /// Just the last checkpoint's info (no state decoded).
    pub fn info(&self, shard: u32) -> Result<Option<CheckpointInfo>, StoreError> {
        let tree = self.tree(shard)?;
        match tree.get(INFO)? {
            Some(b) => Ok(Some(decode("checkpoint info", &b)?)),
            None => Ok(None),
        }
    }

    /// Commits a checkpoint atomically and durably; returns what it says of
    /// itself.
    pub fn commit(&self, shard: u32, c: Commit<'_>) -> Result<CheckpointInfo, StoreError> {
        let tree = self.tree(shard)?;
        let mut batch = sled::Batch::default();
        let mut bytes = 0u64;
        if c.replace_slots {
            for k in tree.scan_prefix([SLOT]).keys() {
                batch.remove(k?);
            }
        }
        let meta = encode(c.meta);
        bytes += meta.len() as u64;
        batch.insert(META, meta);
        for (k, v) in c.slots {
            bytes += v.len() as u64;
            batch.insert(&slot_key(k), v.as_slice());
        }
        let info = CheckpointInfo {
            seq: c.seq,
            log_offset: c.log_offset,
            at_ms: crate::clock::now_ms(),
            slots_written: c.slots.len() as u64,
            bytes_written: bytes,
            pipeline: c.pipeline,
        };
        batch.insert(INFO, encode(&info));
        if let Some(x) = c.extra {
            if x.replace {
                batch.remove(EXTRA);
                for k in tree.scan_prefix([EXTRA_ENTRY]).keys() {
                    batch.remove(k?);
                }
            }
            for (k, v) in x.put {
                let mut key = Vec::with_capacity(k.len() + 1);
                key.push(EXTRA_ENTRY);
                key.extend_from_slice(&k);
                batch.insert(key, v);
            }
        }
        for s in c.remove_segments {
            batch.remove(segment_key(s));
        }
        for s in c.add_segments {
            batch.insert(segment_key(s), encode(s));
        }
        written(tree.apply_batch(batch))?;
        written(self.db.flush())?;
        Ok(info)
    }

    /// Forgets the shard's checkpoint info, so the cache is not restored
    /// (cluster mode: the snapshot objects are the truth).
    pub fn invalidate(&self, shard: u32) -> Result<(), StoreError> {
        written(self.tree(shard)?.remove(INFO))?;
        written(self.db.flush())?;
        Ok(())
    }

    /// Replaces segment manifest entries (compaction), atomically.
    pub fn swap_segments(
        &self,
        shard: u32,
        remove: &[SegmentInfo],
        add: &[SegmentInfo],
    ) -> Result<(), StoreError> {
        let tree = self.tree(shard)?;
        let mut batch = sled::Batch::default();
        for s in remove {
            batch.remove(segment_key(s));
        }
        for s in add {
            batch.insert(segment_key(s), encode(s));
        }
        written(tree.apply_batch(batch))?;
        written(self.db.flush())?;
        Ok(())
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
