//! The ingest writer: one thread that appends accepted events to the log
//! with group commit. Requests that arrive while an append is on disk are
//! appended together in the next one, so one fsync covers many requests.
//! A request's events, its dead letters and its idempotency record are one
//! atomic append; only then is the request answered and are the events
//! handed to their shard actors, in offset order.

mod sidecars;

pub use sidecars::dead_letters;
use sidecars::{event_id_key, letters_in, load_event_ids, seq_of};

use crate::clock::now_ms;
use crate::node::NodeCtx;
use crate::shard::ShardMsg;
use lockstep_core::dedup::{event_id_of, EventIds};
use lockstep_core::value::Row;
use lockstep_log::{RecordBatch, SideWrite};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The writer waits while the shards' backlog (events appended, not yet
/// through the shard actors) is this many times `max_shard_backlog`: ingest
/// is refused (503) from `max_shard_backlog` on, so this is the hard bound
/// on the actors' mailboxes that requests already past that check meet.
const HARD_BACKLOG_FACTOR: u64 = 2;
const MAX_GROUP_REQUESTS: usize = 1024;
const MAX_GROUP_EVENTS: usize = 200_000;
const IDEM_PREFIX: &[u8] = b"idem/";
const DEAD_PREFIX: &[u8] = b"dl/";
/// Event ids applied (tables with `event_id`): `eid/<shard><id hash>` →
/// first seen (ms), both big-endian.
const EID_PREFIX: &[u8] = b"eid/";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventErrorReport {
    pub index: usize,
    pub reason: String,
}

/// The answer to an ingest request, as the idempotency records keep it
/// (JSON in the log's side store: its fields are part of the data
/// directory's format; new ones need a default).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IngestReply {
    pub accepted: u64,
    pub rejected: u64,
    pub errors: Vec<EventErrorReport>,
    #[serde(default)]
    pub errors_omitted: u64,
}

/// Rejected events an idempotency record keeps with its reply.
const KEPT_ERRORS: usize = 10;

impl IngestReply {
    /// What an idempotency record keeps: the counts and the first few
    /// errors, not the whole list.
    fn summary(&self) -> IngestReply {
        let kept = self.errors.len().min(KEPT_ERRORS);
        IngestReply {
            accepted: self.accepted,
            rejected: self.rejected,
            errors: self.errors[..kept].to_vec(),
            errors_omitted: self.errors_omitted + (self.errors.len() - kept) as u64,
        }
    }
}

impl IngestReply {
    /// The reply as the API sends it.
    pub fn to_api(&self) -> lockstep_api::IngestReply {
        lockstep_api::IngestReply {
            accepted: self.accepted,
            rejected: self.rejected,
            errors: self
                .errors
                .iter()
                .map(|e| lockstep_api::EventError {
                    index: e.index,
                    reason: e.reason.clone(),
                })
                .collect(),
            errors_omitted: self.errors_omitted,
            error: None,
        }
    }
}

pub use lockstep_api::DeadLetter;

/// The Idempotency-Keys this node accepted, with their records: the
/// writer's, shared so a handler can answer a retry before doing anything
/// (in a cluster, before producing its events again).
#[derive(Clone, Default)]
pub struct Keys(Arc<std::sync::RwLock<HashMap<Vec<u8>, IdemRecord>>>);

impl Keys {
    /// A retry of an accepted request: its stored reply; the key with
    /// another body: refused; `None` if the key is new here.
    pub fn check(&self, key: &str, body_hash: u64) -> Option<Result<IngestReply, WriteError>> {
        let map = self.0.read().expect("idempotency keys");
        let rec = map.get(key.as_bytes())?;
        if rec.body_hash.is_some_and(|h| h != body_hash) {
            return Some(Err(WriteError::KeyReused(key.to_string())));
        }
        Some(Ok(rec.reply.clone()))
    }
}

#[derive(Serialize, Deserialize)]
struct IdemRecord {
    at_ms: i64,
    reply: IngestReply,
    /// A hash of the request's body (records written before hashes have
    /// none, and match any body).
    #[serde(default)]
    body_hash: Option<u64>,
}

/// Why the writer did not store a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("the log could not store the events: {0}")]
    Store(String),
    /// The Idempotency-Key was used before for another body.
    #[error("Idempotency-Key `{0}` was already used for a request with a different body; use a new key for new events")]
    KeyReused(String),
}

pub struct WriteReq {
    pub idempotency_key: Option<String>,
    /// A hash of the request's body, kept with its key.
    pub body_hash: u64,
    pub events: Vec<(u32, Row)>,
    pub dead: Vec<DeadLetter>,
    pub reply: IngestReply,
    /// Serve-and-ingest: the engine view whose features the (single) event
    /// gets back.
    pub serve: Option<String>,
    pub done: oneshot::Sender<Result<Written, WriteError>>,
}

pub struct Written {
    pub reply: IngestReply,
    /// True when the idempotency key was already accepted: nothing was
    /// appended this time.
    pub replayed: bool,
    /// Events skipped because their event id was applied before.
    pub duplicates: u64,
    pub features: Option<oneshot::Receiver<Result<String, crate::shard::ShardError>>>,
}

/// The writer's queue, its thread and the keys it accepted.
pub type Started = (mpsc::Sender<WriteReq>, std::thread::JoinHandle<()>, Keys);

pub fn start(ctx: Arc<NodeCtx>) -> std::io::Result<Started> {
    let (tx, rx) = mpsc::channel(4096);
    let mut idem = HashMap::new();
    if let Ok(entries) = ctx.log.side_scan(IDEM_PREFIX) {
        for (k, v) in entries {
            if let Ok(r) = serde_json::from_slice::<IdemRecord>(&v) {
                idem.insert(k[IDEM_PREFIX.len()..].to_vec(), r);
            }
        }
    }
    let dead_seq = ctx
        .log
        .side_scan_last(DEAD_PREFIX, 1)
        .ok()
        .and_then(|v| {
            v.last()
                .map(|(k, v)| seq_of(&k[DEAD_PREFIX.len()..]) + letters_in(v).len() as u64)
        })
        .unwrap_or(0);
    ctx.metrics.dead_letters.inc_by(dead_seq);
    let mut dead_first = dead_seq;
    let _ = ctx.log.side_scan_front(DEAD_PREFIX, |k, _| {
        dead_first = seq_of(&k[DEAD_PREFIX.len()..]);
        false
    });
    let event_ids = load_event_ids(&ctx);
    for s in 0..ctx.table.shards {
        ctx.appended[s as usize].store(ctx.log.end_offset_of(s), Ordering::Relaxed);
    }
    let keys = Keys(Arc::new(std::sync::RwLock::new(idem)));
    let mut w = Writer {
        ctx,
        idem: keys.clone(),
        event_ids,
        dead_seq,
        dead_first,
        last_prune_ms: now_ms(),
    };
    let handle = std::thread::Builder::new()
        .name("lockstep-writer".into())
        .spawn(move || w.run(rx))?;
    Ok((tx, handle, keys))
}

/// One group's log write, planned.
#[derive(Default)]
struct Batch {
    appends: Vec<(u32, RecordBatch)>,
    /// The shard of each append.
    shard_of: Vec<u32>,
    side: Vec<SideWrite>,
    /// Per request: (append index, its rows).
    per_request: Vec<Vec<(usize, Vec<Row>)>>,
    /// Per request: events skipped as repeated event ids.
    duplicates: Vec<u64>,
    /// Event ids this write records (forgotten if it fails).
    recorded: Vec<(u32, u128)>,
}

struct Writer {
    ctx: Arc<NodeCtx>,
    idem: Keys,
    /// Per shard, the event ids applied (empty without `event_id`).
    event_ids: Vec<EventIds>,
    /// The number the next dead letter gets, and the oldest one stored.
    dead_seq: u64,
    dead_first: u64,
    last_prune_ms: i64,
}

trait EndOffset {
    fn end_offset_of(&self, shard: u32) -> u64;
}

impl EndOffset for lockstep_log::EmbeddedLog {
    fn end_offset_of(&self, shard: u32) -> u64 {
        lockstep_log::Log::end_offset(self, shard).unwrap_or(0)
    }
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<WriteReq>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            let mut events = group[0].events.len();
            while group.len() < MAX_GROUP_REQUESTS && events < MAX_GROUP_EVENTS {
                match rx.try_recv() {
                    Ok(r) => {
                        events += r.events.len();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.wait_for_actors();
            self.commit(group);
            self.prune();
        }
    }

    /// Backpressure: wait while the shard actors are far behind the log.
    fn wait_for_actors(&self) {
        let hard = self.ctx.config.limits.max_shard_backlog * HARD_BACKLOG_FACTOR;
        while self.ctx.backlog() >= hard && !self.ctx.stopping.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Appends a group of requests as one atomic log write, then answers
    /// them and hands their events to the shard actors.
    fn commit(&mut self, group: Vec<WriteReq>) {
        let now = now_ms();
        let (mut fresh, dup_in_group) = self.answer_replays(group);
        let batch = self.plan(&mut fresh, now);
        let result = if batch.appends.is_empty() && batch.side.is_empty() {
            Ok(Vec::new())
        } else {
            self.ctx.log.append_batches(batch.appends, &batch.side)
        };
        let firsts = match result {
            Ok(f) => f,
            Err(lockstep_log::LogError::Flush(e)) => {
                // written but maybe not durable: neither "stored" nor "not
                // stored" would be true, so stop; a restart recovers the log
                tracing::error!("the log could not fsync: {e}; stopping");
                eprintln!("lockstepd: the log could not fsync ({e}); stopping so no reply claims what is not known");
                std::process::exit(crate::fatal::EXIT_STORAGE);
            }
            Err(e) => {
                for (s, id) in batch.recorded {
                    self.event_ids[s as usize].forget(id);
                }
                let err = WriteError::Store(e.to_string());
                tracing::error!("{err}");
                for r in fresh {
                    let _ = r.done.send(Err(err.clone()));
                }
                for (_, r) in dup_in_group {
                    let _ = r.done.send(Err(err.clone()));
                }
                return;
            }
        };
        let mut replies = Vec::with_capacity(fresh.len());
        let per_request = batch.per_request.into_iter().zip(batch.duplicates);
        for (r, (mine, dups)) in fresh.into_iter().zip(per_request) {
            replies.push(r.reply.clone());
            self.deliver(r, mine, dups, &batch.shard_of, &firsts, now);
        }
        for (i, r) in dup_in_group {
            self.ctx.metrics.idempotent_replays.inc();
            let _ = r.done.send(Ok(Written {
                reply: replies[i].clone(),
                replayed: true,
                duplicates: 0,
                features: None,
            }));
        }
    }

    /// Answers requests whose Idempotency-Key was accepted before; returns
    /// the rest, and the repeats of a key within the group (with the index
    /// of its first request there).
    #[allow(clippy::type_complexity)]
    fn answer_replays(&self, group: Vec<WriteReq>) -> (Vec<WriteReq>, Vec<(usize, WriteReq)>) {
        let mut fresh: Vec<WriteReq> = Vec::with_capacity(group.len());
        let mut dup_in_group: Vec<(usize, WriteReq)> = Vec::new();
        let mut keys_in_group: HashMap<Vec<u8>, usize> = HashMap::new();
        for r in group {
            if let Some(key) = &r.idempotency_key {
                let k = key.as_bytes().to_vec();
                if let Some(known) = self.idem.check(key, r.body_hash) {
                    if known.is_ok() {
                        self.ctx.metrics.idempotent_replays.inc();
                    }
                    let _ = r.done.send(known.map(|reply| Written {
                        reply,
                        replayed: true,
                        duplicates: 0,
                        features: None,
                    }));
                    continue;
                }
                if let Some(&i) = keys_in_group.get(&k) {
                    if fresh[i].body_hash != r.body_hash {
                        let _ = r.done.send(Err(WriteError::KeyReused(key.clone())));
                        continue;
                    }
                    dup_in_group.push((i, r));
                    continue;
                }
                keys_in_group.insert(k, fresh.len());
            }
            fresh.push(r);
        }
        (fresh, dup_in_group)
    }

    /// What the group's one log write holds: each request's events by
    /// shard (repeated event ids left out), and its sidecars (event ids,
    /// dead letters, the idempotency record).
    fn plan(&mut self, fresh: &mut [WriteReq], now: i64) -> Batch {
        let mut b = Batch::default();
        for r in fresh.iter_mut() {
            let mut by_shard: Vec<(u32, Vec<Row>)> = Vec::new();
            let mut dups = 0;
            for (s, row) in r.events.drain(..) {
                if let Some(id) = self.ctx.table.event_id.and_then(|c| event_id_of(&row[c])) {
                    if !self.event_ids[s as usize].first_time(id, now) {
                        dups += 1;
                        continue;
                    }
                    b.recorded.push((s, id));
                    b.side
                        .push((event_id_key(s, id), Some(now.to_be_bytes().to_vec())));
                }
                match by_shard.iter_mut().find(|(x, _)| *x == s) {
                    Some((_, v)) => v.push(row),
                    None => by_shard.push((s, vec![row])),
                }
            }
            let mut mine = Vec::new();
            for (s, rows) in by_shard {
                let mut batch = RecordBatch::new();
                for r in &rows {
                    batch
                        .push_with(|buf| lockstep_io::raw::encode_event_into(r, buf))
                        .expect("events encode");
                }
                b.appends.push((s, batch));
                b.shard_of.push(s);
                mine.push((b.appends.len() - 1, rows));
            }
            b.per_request.push(mine);
            b.duplicates.push(dups);
            if !r.dead.is_empty() {
                // one record per request (keyed by its first letter's
                // number): one side write, however many letters
                let mut k = DEAD_PREFIX.to_vec();
                k.extend_from_slice(&self.dead_seq.to_be_bytes());
                self.dead_seq += r.dead.len() as u64;
                b.side.push((
                    k,
                    Some(serde_json::to_vec(&r.dead).expect("dead letters encode")),
                ));
            }
            if let Some(key) = &r.idempotency_key {
                let mut k = IDEM_PREFIX.to_vec();
                k.extend_from_slice(key.as_bytes());
                let rec = IdemRecord {
                    at_ms: now,
                    reply: r.reply.summary(),
                    body_hash: Some(r.body_hash),
                };
                b.side
                    .push((k, Some(serde_json::to_vec(&rec).expect("records encode"))));
            }
        }
        b
    }

    /// After the write: the request's events go to their shard actors (the
    /// first with the serve-and-ingest reply), and the request is answered.
    fn deliver(
        &mut self,
        r: WriteReq,
        mine: Vec<(usize, Vec<Row>)>,
        dups: u64,
        shard_of: &[u32],
        firsts: &[u64],
        now: i64,
    ) {
        self.ctx.metrics.duplicates.inc_by(dups);
        let mut features = None;
        for (ai, rows) in mine {
            let (shard, n) = (shard_of[ai], rows.len() as u64);
            let first = firsts[ai];
            self.ctx.appended[shard as usize].store(first + n, Ordering::Relaxed);
            let serve = match &r.serve {
                Some(view) if features.is_none() => {
                    let (tx, rx) = oneshot::channel();
                    features = Some(rx);
                    Some((view.clone(), tx))
                }
                _ => None,
            };
            self.ctx.metrics.ingested.inc_by(n);
            if let Some(a) = self.ctx.shard(shard) {
                // a send to a dead actor is fine: its successor replays the log
                let _ = a.send_message(ShardMsg::Events { first, rows, serve });
            }
        }
        self.ctx.metrics.rejected.inc_by(r.dead.len() as u64);
        self.ctx.metrics.dead_letters.inc_by(r.dead.len() as u64);
        if let Some(k) = &r.idempotency_key {
            self.idem.0.write().expect("idempotency keys").insert(
                k.as_bytes().to_vec(),
                IdemRecord {
                    at_ms: now,
                    reply: r.reply.summary(),
                    body_hash: Some(r.body_hash),
                },
            );
        }
        let _ = r.done.send(Ok(Written {
            reply: r.reply,
            replayed: false,
            duplicates: dups,
            features,
        }));
    }

    /// Forgets idempotency keys older than the configured time (and event
    /// ids and dead letters past their limits).
    fn prune(&mut self) {
        let now = now_ms();
        if self.dead_seq - self.dead_first > self.ctx.config.limits.max_dead_letters {
            self.prune_dead_letters(now);
        }
        if now - self.last_prune_ms < 10_000 {
            return;
        }
        self.prune_dead_letters(now);
        self.last_prune_ms = now;
        let ttl = self.ctx.config.idempotency_ttl.as_millis() as i64;
        self.prune_event_ids(now - ttl);
        let old: Vec<Vec<u8>> = self
            .idem
            .0
            .read()
            .expect("idempotency keys")
            .iter()
            .filter(|(_, r)| now - r.at_ms > ttl)
            .map(|(k, _)| k.clone())
            .collect();
        if old.is_empty() {
            return;
        }
        let keys: Vec<Vec<u8>> = old
            .iter()
            .map(|k| [IDEM_PREFIX, k.as_slice()].concat())
            .collect();
        if self.ctx.log.side_remove(&keys).is_ok() {
            let mut map = self.idem.0.write().expect("idempotency keys");
            for k in old {
                map.remove(&k);
            }
        }
    }
}
