//! Raft storage in sled: the log and vote ([`LogStore`]) and the state
//! machine with its snapshots ([`StateMachine`]).
//!
//! The state machine lives in memory; what is durable is the Raft log, the
//! committed log id and the last snapshot. At start-up the state is the
//! snapshot's, and openraft re-applies the committed entries after it.
//! Every apply publishes the new state on a watch channel, which is how the
//! node's own parts learn about ownership changes and epochs.

// openraft's StorageError (224 bytes) is the error type its traits require.
#![allow(clippy::result_large_err)]

use crate::state::{ClusterState, Response};
use crate::TypeConfig;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use tokio::sync::watch;

type NodeId = u64;
type Node = openraft::BasicNode;
type SErr = StorageError<NodeId>;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"last_purged";
const SNAPSHOT: &[u8] = b"snapshot";

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("raft data encodes")
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, AnyError> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| AnyError::error(format!("undecodable raft record: {e}")))
}

fn io(e: sled::Error) -> AnyError {
    AnyError::new(&e)
}

/// Opens (or creates) the Raft storage in `dir`.
pub fn open(dir: &std::path::Path) -> Result<(LogStore, StateMachine), SErr> {
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| StorageIOError::read(io(e)))?;
    let log = db
        .open_tree("log")
        .map_err(|e| StorageIOError::read_logs(io(e)))?;
    let meta = db
        .open_tree("meta")
        .map_err(|e| StorageIOError::read(io(e)))?;
    let sm = StateMachine::load(meta.clone())?;
    Ok((
        LogStore {
            db: db.clone(),
            log,
            meta,
        },
        sm,
    ))
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, SErr> {
        match self
            .meta
            .get(key)
            .map_err(|e| StorageIOError::read(io(e)))?
        {
            Some(b) => Ok(Some(dec(&b).map_err(StorageIOError::read)?)),
            None => Ok(None),
        }
    }

    async fn put_meta<T: Serialize>(&self, key: &[u8], v: &T) -> Result<(), SErr> {
        self.meta
            .insert(key, enc(v))
            .map_err(|e| StorageIOError::write(io(e)))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write(io(e)))?;
        Ok(())
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, SErr> {
        match self
            .log
            .last()
            .map_err(|e| StorageIOError::read_logs(io(e)))?
        {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = dec(&v).map_err(StorageIOError::read_logs)?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }
}

fn range_keys<RB: RangeBounds<u64>>(range: &RB) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let map = |b: Bound<&u64>| match b {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    };
    (map(range.start_bound()), map(range.end_bound()))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let mut out = Vec::new();
        for kv in self.log.range(range_keys(&range)) {
            let (_, v) = kv.map_err(|e| StorageIOError::read_logs(io(e)))?;
            out.push(dec(&v).map_err(StorageIOError::read_logs)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        self.put_meta(VOTE, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        self.put_meta(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&e.log_id.index.to_be_bytes(), enc(&e));
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(io(e)))?;
        let flushed = self.db.flush_async().await;
        callback.log_io_completed(flushed.map(|_| ()).map_err(std::io::Error::other));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut batch = sled::Batch::default();
        for k in self.log.range(log_id.index.to_be_bytes()..).keys() {
            batch.remove(k.map_err(|e| StorageIOError::write_logs(io(e)))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(io(e)))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_logs(io(e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        // the purge point is recorded first: a crash in between leaves
        // entries below it, which are never read again
        self.put_meta(PURGED, &log_id).await?;
        let mut batch = sled::Batch::default();
        for k in self.log.range(..=log_id.index.to_be_bytes()).keys() {
            batch.remove(k.map_err(|e| StorageIOError::write_logs(io(e)))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(io(e)))?;
        Ok(())
    }
}

/// What a snapshot holds.
#[derive(Serialize, Deserialize, Clone, Default)]
struct SmData {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    state: ClusterState,
}

/// [`SmData`] as stored before the topic's identity was kept.
#[derive(Deserialize)]
struct SmDataV1 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    state: crate::state::ClusterStateV1,
}

/// [`SmData`] as stored before the cluster's id was kept.
#[derive(Deserialize)]
struct SmDataV2 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    state: crate::state::ClusterStateV2,
}

/// A state machine snapshot's data, of any format so far.
fn dec_sm(b: &[u8]) -> Result<SmData, AnyError> {
    dec::<SmData>(b)
        .or_else(|e| {
            let old: SmDataV2 = dec(b).map_err(|_| e)?;
            Ok(SmData {
                last_applied: old.last_applied,
                membership: old.membership,
                state: old.state.into(),
            })
        })
        .or_else(|e: AnyError| {
            let old: SmDataV1 = dec(b).map_err(|_| e)?;
            Ok(SmData {
                last_applied: old.last_applied,
                membership: old.membership,
                state: old.state.into(),
            })
        })
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

/// What the state machine measures of itself, for `/metrics`: cheap to
/// clone (the clones share their values).
#[derive(Clone)]
pub struct SmStats {
    /// Seconds to apply one batch of committed entries and publish the
    /// resulting state.
    pub apply_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Bytes of the last snapshot this member built or installed.
    pub snapshot_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl SmStats {
    #[cfg(test)]
    fn apply_seconds_count(&self) -> u64 {
        let mut text = String::new();
        let mut r = prometheus_client::registry::Registry::default();
        r.register("a", "a", self.apply_seconds.clone());
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        text.lines()
            .find_map(|l| l.strip_prefix("a_count "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Default for SmStats {
    fn default() -> Self {
        SmStats {
            // 1 µs .. ~0.5 s
            apply_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e-6, 2.0, 20),
            ),
            snapshot_bytes: Default::default(),
        }
    }
}

/// The state machine: [`ClusterState`] plus Raft's bookkeeping.
#[derive(Clone)]
pub struct StateMachine {
    data: Arc<std::sync::Mutex<SmData>>,
    meta: sled::Tree,
    watch: Arc<watch::Sender<Arc<ClusterState>>>,
    pub(crate) stats: SmStats,
    snapshots_built: Arc<std::sync::atomic::AtomicU64>,
    /// Orders snapshot writes: openraft builds snapshots in a task that may
    /// race an install, and an older snapshot must never replace a newer one.
    snapshot_write: Arc<tokio::sync::Mutex<()>>,
}

impl StateMachine {
    fn load(meta: sled::Tree) -> Result<StateMachine, SErr> {
        let stats = SmStats::default();
        let data = match meta
            .get(SNAPSHOT)
            .map_err(|e| StorageIOError::read(io(e)))?
        {
            Some(b) => {
                let s: StoredSnapshot = dec(&b).map_err(StorageIOError::read)?;
                stats
                    .snapshot_bytes
                    .store(s.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                dec_sm(&s.data).map_err(StorageIOError::read)?
            }
            None => SmData::default(),
        };
        let (tx, _) = watch::channel(Arc::new(data.state.clone()));
        Ok(StateMachine {
            data: Arc::new(std::sync::Mutex::new(data)),
            meta,
            watch: Arc::new(tx),
            stats,
            snapshots_built: Arc::new(Default::default()),
            snapshot_write: Default::default(),
        })
    }

    /// The state as of the last applied entry, and its changes from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.watch.subscribe()
    }

    pub fn state(&self) -> Arc<ClusterState> {
        self.watch.borrow().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SmData> {
        self.data.lock().expect("state machine lock")
    }

    /// Publishes a copy of the state: cheap, as the manifests and the
    /// pipeline are shared with it (a command copies what it changes).
    fn publish(&self, state: Arc<ClusterState>) {
        self.watch.send_replace(state);
    }

    /// Stores `s` as the current snapshot unless the stored one is newer;
    /// returns whether it was stored.
    async fn store_snapshot(&self, s: &StoredSnapshot) -> Result<bool, SErr> {
        let _order = self.snapshot_write.lock().await;
        let sig = Some(s.meta.signature());
        if let Some(b) = self
            .meta
            .get(SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(sig.clone(), io(e)))?
        {
            let old: StoredSnapshot =
                dec(&b).map_err(|e| StorageIOError::read_snapshot(sig.clone(), e))?;
            if old.meta.last_log_id > s.meta.last_log_id {
                return Ok(false);
            }
        }
        self.meta
            .insert(SNAPSHOT, enc(s))
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), io(e)))?;
        self.meta
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_snapshot(sig, io(e)))?;
        self.stats
            .snapshot_bytes
            .store(s.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let (bytes, last_applied, membership) = {
            let d = self.lock();
            (enc(&*d), d.last_applied, d.membership.clone())
        };
        let n = self
            .snapshots_built
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
            None => format!("empty-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes.clone(),
        };
        self.store_snapshot(&stored).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), SErr> {
        let d = self.lock();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        let state = {
            let mut d = self.lock();
            for e in entries {
                d.last_applied = Some(e.log_id);
                match e.payload {
                    EntryPayload::Blank => out.push(Response::Done),
                    EntryPayload::Normal(cmd) => out.push(d.state.apply(cmd)),
                    EntryPayload::Membership(m) => {
                        d.membership = StoredMembership::new(Some(e.log_id), m);
                        out.push(Response::Done)
                    }
                }
            }
            Arc::new(d.state.clone())
        };
        self.publish(state);
        self.stats
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let bytes = snapshot.into_inner();
        let mut data =
            dec_sm(&bytes).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), e))?;
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: enc(&data),
        };
        self.store_snapshot(&stored).await?;
        let state = Arc::new(data.state.clone());
        *self.lock() = data;
        self.publish(state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        match self
            .meta
            .get(SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, io(e)))?
        {
            Some(b) => {
                let s: StoredSnapshot =
                    dec(&b).map_err(|e| StorageIOError::read_snapshot(None, e))?;
                Ok(Some(Snapshot {
                    meta: s.meta,
                    snapshot: Box::new(Cursor::new(s.data)),
                }))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};
    use std::sync::atomic::Ordering;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), SErr> {
            let dir = tempfile::tempdir().expect("temp dir");
            let (log, sm) = open(dir.path())?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's storage conformance suite, against the sled storage.
    #[test]
    fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    #[tokio::test]
    async fn state_survives_reopen_through_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut sm) = open(dir.path()).unwrap();
        let entry = |i: u64, cmd| Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), i),
            payload: EntryPayload::Normal(cmd),
        };
        let init = crate::state::Command::Init {
            table: "t".into(),
            shards: 3,
            sql: String::new(),
            at_ms: 0,
        };
        let mut rx = sm.subscribe();
        assert_eq!(sm.stats.apply_seconds_count(), 0);
        sm.apply([entry(1, init)]).await.unwrap();
        assert_eq!(sm.stats.apply_seconds_count(), 1, "an apply is timed");
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().shards, 3);
        assert_eq!(sm.stats.snapshot_bytes.load(Ordering::Relaxed), 0);
        let snap = sm.build_snapshot().await.unwrap();
        let built = snap.snapshot.into_inner().len() as u64;
        assert!(built > 0);
        assert_eq!(sm.stats.snapshot_bytes.load(Ordering::Relaxed), built);
        drop(sm);
        // sled's background threads let go of the directory's lock a
        // moment after the last handle is dropped
        let mut reopened = open(dir.path());
        for _ in 0..250 {
            if reopened.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            reopened = open(dir.path());
        }
        let (_, mut sm) = reopened.unwrap();
        assert_eq!(sm.state().shards, 3);
        // the stored snapshot's size is known again at start
        assert_eq!(sm.stats.snapshot_bytes.load(Ordering::Relaxed), built);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(1));
    }
}
