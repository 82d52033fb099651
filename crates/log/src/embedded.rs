//! The embedded log: one sled tree per shard. Each append is stored as one
//! *record batch* (as Kafka does) under the big-endian offset of its first
//! record, so key order is offset order and a large append costs one sled
//! insert, not one per record. Two metadata keys hold the next offset and
//! the start offset (after truncation); the next offset is written in the
//! same atomic batch as the records.

use crate::{FsyncPolicy, Log, LogError, Record};
use std::path::Path;
use std::sync::Mutex;

/// Sorts after every 8-byte batch key.
const NEXT_KEY: [u8; 9] = [0xff; 9];
const START_KEY: [u8; 9] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe];

/// A batch value: record count, then each record's length and bytes
/// (little-endian u32s); see [`RecordBatch`].
/// The key of the batch that holds offset `from` (the last key at or
/// before it), or `from` itself when none does.
fn batch_holding(tree: &sled::Tree, from: u64) -> Result<u64, LogError> {
    Ok(match tree.range(..=from.to_be_bytes()).next_back() {
        Some(item) => {
            let (k, _) = item?;
            if k.len() == 8 {
                decode_u64(&k)
            } else {
                from
            }
        }
        None => from,
    })
}

fn batch_count(v: &[u8]) -> u64 {
    u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as u64
}

/// The records of a batch value.
fn decode_batch(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let n = batch_count(v);
    let mut at = 4usize;
    (0..n).map(move |_| {
        let len = u32::from_le_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]]) as usize;
        let r = &v[at + 4..at + 4 + len];
        at += 4 + len;
        r
    })
}
const SHARDS_KEY: &[u8] = b"shards";

pub struct EmbeddedLog {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// Sidecar records written atomically with appends (see
    /// [`EmbeddedLog::append_atomic`]).
    side: sled::Tree,
    /// Next offset per shard; the lock also serializes appends to a shard.
    next: Vec<Mutex<u64>>,
    policy: FsyncPolicy,
}

fn decode_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir` with `shards` shards. Reopening
    /// with a different shard count is refused.
    pub fn open(dir: &Path, shards: u32, policy: FsyncPolicy) -> Result<EmbeddedLog, LogError> {
        // records are read back once, soon after they are written (by the
        // checkpoint that archives them): a small cache is enough
        let mut config = sled::Config::new().path(dir).cache_capacity(64 << 20);
        config = match policy {
            FsyncPolicy::Always => config.flush_every_ms(None),
            // the owner flushes (`EmbeddedLog::flush`) and decides what a
            // failed flush means: sled's background flusher stops at its
            // first error without telling anyone
            FsyncPolicy::EveryMillis(_) => config.flush_every_ms(None),
        };
        let db = config.open()?;
        match db.get(SHARDS_KEY)? {
            Some(v) => {
                let found = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
                if found != shards {
                    return Err(LogError::ShardCount {
                        path: dir.display().to_string(),
                        found,
                        expected: shards,
                    });
                }
            }
            None => {
                db.insert(SHARDS_KEY, &shards.to_be_bytes())?;
                db.flush()?;
            }
        }
        let mut trees = Vec::new();
        let mut next = Vec::new();
        for s in 0..shards {
            let tree = db.open_tree(format!("shard-{s:05}"))?;
            let n = tree.get(NEXT_KEY)?.map_or(0, |v| decode_u64(&v));
            trees.push(tree);
            next.push(Mutex::new(n));
        }
        let side = db.open_tree("side")?;
        Ok(EmbeddedLog {
            db,
            trees,
            side,
            next,
            policy,
        })
    }

    fn tree(&self, shard: u32) -> Result<&sled::Tree, LogError> {
        self.trees.get(shard as usize).ok_or(LogError::NoShard {
            shard,
            shards: self.trees.len() as u32,
        })
    }
}

/// The records of one append, encoded into the stored batch format as they
/// are added (no per-record buffer).
#[derive(Debug, Clone)]
pub struct RecordBatch {
    buf: Vec<u8>,
    count: u32,
}

impl Default for RecordBatch {
    fn default() -> Self {
        RecordBatch::new()
    }
}

impl RecordBatch {
    pub fn new() -> RecordBatch {
        RecordBatch {
            buf: vec![0; 4],
            count: 0,
        }
    }

    pub fn push(&mut self, record: &[u8]) {
        self.buf
            .extend_from_slice(&(record.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(record);
        self.count += 1;
    }

    /// Adds one record written by `write` straight into the batch.
    pub fn push_with<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        if let Err(e) = write(&mut self.buf) {
            self.buf.truncate(at);
            return Err(e);
        }
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn into_value(mut self) -> Vec<u8> {
        self.buf[..4].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// A sidecar change: insert (Some) or remove (None) a key.
pub type SideWrite = (Vec<u8>, Option<Vec<u8>>);
/// A sidecar key and its value.
pub type SideEntry = (Vec<u8>, Vec<u8>);

impl EmbeddedLog {
    /// Appends to several shards and writes sidecar keys in one atomic step:
    /// after a crash either all of it is there or none. The daemon stores a
    /// request's idempotency record and its dead letters as sidecar keys, so
    /// a retried request is recognised exactly when its events are in the
    /// log. Returns the first offset of each append, in input order.
    pub fn append_atomic(
        &self,
        appends: &[(u32, Vec<Vec<u8>>)],
        side: &[SideWrite],
    ) -> Result<Vec<u64>, LogError> {
        let batches = appends
            .iter()
            .map(|(s, records)| {
                let mut b = RecordBatch::new();
                records.iter().for_each(|r| b.push(r));
                (*s, b)
            })
            .collect();
        self.append_batches(batches, side)
    }

    /// [`EmbeddedLog::append_atomic`] for records already encoded into
    /// batches (the daemon's writer encodes events straight into them).
    pub fn append_batches(
        &self,
        appends: Vec<(u32, RecordBatch)>,
        side: &[SideWrite],
    ) -> Result<Vec<u64>, LogError> {
        let mut shards: Vec<u32> = appends.iter().map(|(s, _)| *s).collect();
        shards.sort_unstable();
        shards.dedup();
        for &s in &shards {
            self.tree(s)?;
        }
        // lock in shard order: no two appenders can deadlock
        let mut guards: Vec<_> = shards
            .iter()
            .map(|&s| {
                self.next[s as usize]
                    .lock()
                    .expect("an append panicked while holding the shard lock")
            })
            .collect();
        let mut next: Vec<u64> = guards.iter().map(|g| **g).collect();
        let mut batches: Vec<sled::Batch> = shards.iter().map(|_| sled::Batch::default()).collect();
        let mut firsts = Vec::with_capacity(appends.len());
        for (shard, records) in appends {
            let i = shards.binary_search(&shard).expect("listed above");
            firsts.push(next[i]);
            if records.is_empty() {
                continue;
            }
            let n = records.len() as u64;
            batches[i].insert(&next[i].to_be_bytes(), records.into_value());
            next[i] += n;
        }
        for (b, n) in batches.iter_mut().zip(&next) {
            b.insert(&NEXT_KEY, &n.to_be_bytes());
        }
        let mut side_batch = sled::Batch::default();
        for (k, v) in side {
            match v {
                Some(v) => side_batch.insert(k.as_slice(), v.as_slice()),
                None => side_batch.remove(k.as_slice()),
            }
        }
        let mut trees: Vec<&sled::Tree> = shards.iter().map(|&s| &self.trees[s as usize]).collect();
        trees.push(&self.side);
        use sled::Transactional;
        trees
            .as_slice()
            .transaction(|t| {
                for (tree, b) in t.iter().zip(&batches) {
                    tree.apply_batch(b)?;
                }
                t[t.len() - 1].apply_batch(&side_batch)?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => LogError::Storage(e),
                sled::transaction::TransactionError::Abort(()) => unreachable!("never aborts"),
            })?;
        // committed: these offsets are taken whatever the flush does
        for (g, n) in guards.iter_mut().zip(next) {
            **g = n;
        }
        if self.policy == FsyncPolicy::Always {
            self.db.flush().map_err(LogError::Flush)?;
        }
        Ok(firsts)
    }

    /// Makes the next offset of `shard` at least `offset`. A checkpoint that
    /// reached `offset` proves the log once did; if the log lost its tail
    /// (fsync every N ms and a power loss), its offsets must not be given
    /// to new records, which the shard would take for processed ones.
    pub fn raise_end(&self, shard: u32, offset: u64) -> Result<(), LogError> {
        let tree = self.tree(shard)?;
        let mut next = self.next[shard as usize]
            .lock()
            .expect("an append panicked while holding the shard lock");
        if *next < offset {
            tree.insert(NEXT_KEY, &offset.to_be_bytes())?;
            tree.insert(START_KEY, &offset.to_be_bytes())?;
            self.db.flush()?;
            *next = offset;
        }
        Ok(())
    }

    /// Appends the records `from..to` of `shard` to `out`, each as a
    /// little-endian u32 length and its bytes (the archive's framing), with
    /// no per-record allocation. Returns how many were written.
    pub fn read_framed(
        &self,
        shard: u32,
        from: u64,
        to: u64,
        out: &mut Vec<u8>,
    ) -> Result<u64, LogError> {
        let mut n = 0;
        self.visit(shard, from, to, usize::MAX, |_, r| {
            out.extend_from_slice(&(r.len() as u32).to_le_bytes());
            out.extend_from_slice(r);
            n += 1;
        })?;
        Ok(n)
    }

    /// Calls `f` with each record of `shard` in `from..to`, in offset order,
    /// at most `max` of them, straight from the stored batches.
    fn visit(
        &self,
        shard: u32,
        from: u64,
        to: u64,
        max: usize,
        mut f: impl FnMut(u64, &[u8]),
    ) -> Result<(), LogError> {
        let tree = self.tree(shard)?;
        let start = self.start_offset(shard)?;
        if from < start {
            return Err(LogError::Truncated {
                shard,
                offset: from,
                start,
            });
        }
        // the batch holding `from` starts at or before it
        let first_key = batch_holding(tree, from)?;
        let mut seen = 0;
        for item in tree.range(first_key.to_be_bytes()..) {
            let (k, v) = item?;
            if k.len() != 8 {
                break; // the metadata keys sort last
            }
            let first = decode_u64(&k);
            if first >= to {
                break;
            }
            for (i, r) in decode_batch(&v).enumerate() {
                let offset = first + i as u64;
                if offset < from {
                    continue;
                }
                if offset >= to || seen >= max {
                    return Ok(());
                }
                f(offset, r);
                seen += 1;
            }
        }
        Ok(())
    }

    /// A sidecar value.
    pub fn side_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self.side.get(key)?.map(|v| v.to_vec()))
    }

    /// Sidecar keys and values under `prefix`, in key order.
    pub fn side_scan(&self, prefix: &[u8]) -> Result<Vec<SideEntry>, LogError> {
        self.side
            .scan_prefix(prefix)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(LogError::from)
            })
            .collect()
    }

    /// The last `limit` sidecar entries under `prefix`, in key order.
    pub fn side_scan_last(&self, prefix: &[u8], limit: usize) -> Result<Vec<SideEntry>, LogError> {
        let mut v: Vec<SideEntry> = self
            .side
            .scan_prefix(prefix)
            .rev()
            .take(limit)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(LogError::from)
            })
            .collect::<Result<_, _>>()?;
        v.reverse();
        Ok(v)
    }

    /// Sidecar entries under `prefix`, newest key first, handed to `take`
    /// until it returns false (reads no more than it is given).
    pub fn side_scan_back(
        &self,
        prefix: &[u8],
        mut take: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), LogError> {
        for r in self.side.scan_prefix(prefix).rev() {
            let (k, v) = r?;
            if !take(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// Sidecar entries under `prefix`, oldest key first, handed to `take`
    /// until it returns false.
    pub fn side_scan_front(
        &self,
        prefix: &[u8],
        mut take: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), LogError> {
        for r in self.side.scan_prefix(prefix) {
            let (k, v) = r?;
            if !take(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// Sidecar keys under `prefix`, counted.
    pub fn side_count(&self, prefix: &[u8]) -> usize {
        self.side.scan_prefix(prefix).count()
    }

    /// Removes sidecar keys (not atomic with appends: for expiry).
    pub fn side_remove(&self, keys: &[Vec<u8>]) -> Result<(), LogError> {
        let mut b = sled::Batch::default();
        for k in keys {
            b.remove(k.as_slice());
        }
        self.side.apply_batch(b)?;
        Ok(())
    }

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<(), LogError> {
        self.db.flush()?;
        Ok(())
    }
}

impl Log for EmbeddedLog {
    fn shards(&self) -> u32 {
        self.trees.len() as u32
    }

    fn append(&self, shard: u32, records: &[&[u8]]) -> Result<u64, LogError> {
        self.tree(shard)?;
        let records: Vec<Vec<u8>> = records.iter().map(|r| r.to_vec()).collect();
        Ok(self.append_atomic(&[(shard, records)], &[])?[0])
    }

    fn read(&self, shard: u32, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::new();
        self.visit(shard, from, u64::MAX, max, |offset, r| {
            out.push(Record {
                offset,
                bytes: r.to_vec(),
            })
        })?;
        Ok(out)
    }

    fn start_offset(&self, shard: u32) -> Result<u64, LogError> {
        let tree = self.tree(shard)?;
        Ok(tree.get(START_KEY)?.map_or(0, |v| decode_u64(&v)))
    }

    fn end_offset(&self, shard: u32) -> Result<u64, LogError> {
        self.tree(shard)?;
        Ok(*self.next[shard as usize]
            .lock()
            .expect("an append panicked while holding the shard lock"))
    }

    fn truncate_below(&self, shard: u32, offset: u64) -> Result<(), LogError> {
        let tree = self.tree(shard)?;
        let end = self.end_offset(shard)?;
        let offset = offset.min(end);
        if offset <= self.start_offset(shard)? {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for item in tree.range(..offset.to_be_bytes()) {
            let (k, v) = item?;
            if k.len() == 8 && decode_u64(&k) + batch_count(&v) <= offset {
                batch.remove(k);
            }
        }
        batch.insert(&START_KEY, &offset.to_be_bytes());
        tree.apply_batch(batch)?;
        if self.policy == FsyncPolicy::Always {
            self.db.flush()?;
        }
        Ok(())
    }
}
