//! What a cluster shard remembers to apply each request and each event
//! once: the Idempotency-Keys it applied (with their bodies' hashes) and
//! the producer-supplied event ids, each with the record time it was first
//! seen.
//!
//! Both are checkpointed incrementally: a snapshot object of a delta
//! checkpoint carries only the entries first seen or changed since the
//! previous checkpoint, and the horizon before which entries are
//! forgotten; a full snapshot carries them all. The local state cache
//! keeps one sled entry per key and id, added the same way. Entries expire
//! by record time (`idempotency_ttl`), and a shard keeps at most
//! `max_dedup_entries`: beyond that the oldest are forgotten early
//! (counted in `lockstep_dedup_evicted_total`).
use crate::cluster::IdemEntry;
use crate::shard::ShardError;
use crate::store::ExtraWrite;
use lockstep_core::dedup::EventIds;
use std::collections::HashMap;

/// How a record carrying an Idempotency-Key relates to what was applied.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum KeyCheck {
    /// Its index of the request is new: apply it.
    New,
    /// A retry of a part already applied: skip it.
    Repeat,
    /// Another body under a key already used: a dead letter.
    Reused,
}

/// Entries changed since the last committed checkpoint, as a checkpoint
/// takes them (and forgets them once it committed).
#[derive(Debug, Default, Clone)]
pub(super) struct SeenDelta {
    pub(super) full: bool,
    pub(super) idem: Vec<(String, IdemEntry)>,
    pub(super) event_ids: Vec<(u128, i64)>,
    pub(super) horizon_ms: i64,
    /// `(key, generation)` of the keys it carries, and how many of the new
    /// ids: what a commit marks as saved.
    marks: (Vec<(String, u64)>, usize),
}

#[derive(Debug, Default)]
pub(super) struct Seen {
    idem: HashMap<String, IdemEntry>,
    event_ids: EventIds,
    /// Keys changed since the last committed checkpoint, with the
    /// generation of their last change.
    dirty: HashMap<String, u64>,
    generation: u64,
    /// Ids first seen since the last committed checkpoint, in order.
    new_ids: Vec<(u128, i64)>,
    /// Entries seen before this are forgotten.
    horizon_ms: i64,
}

/// Key prefixes of the local cache's entries.
const KEY: u8 = b'k';
const ID: u8 = b'i';
const HORIZON: &[u8] = b"h";

impl Seen {
    pub(super) fn len(&self) -> usize {
        self.idem.len() + self.event_ids.len()
    }

    /// Records index `i` of the request `key` whose body hashed to `hash`,
    /// first seen at `at_ms`.
    pub(super) fn check_key(
        &mut self,
        key: &str,
        i: u32,
        hash: Option<u64>,
        at_ms: i64,
    ) -> KeyCheck {
        let e = self
            .idem
            .entry(key.to_string())
            .or_insert_with(|| IdemEntry {
                at_ms,
                ranges: Vec::new(),
                body_hash: hash,
            });
        if e.reused_by(hash) {
            return KeyCheck::Reused;
        }
        if !e.insert(i) {
            return KeyCheck::Repeat;
        }
        e.body_hash = e.body_hash.or(hash);
        self.generation += 1;
        self.dirty.insert(key.to_string(), self.generation);
        KeyCheck::New
    }

    /// Records event id `id` seen at `at_ms`; false if it was seen before.
    pub(super) fn first_time(&mut self, id: u128, at_ms: i64) -> bool {
        let new = self.event_ids.first_time(id, at_ms);
        if new {
            self.new_ids.push((id, at_ms));
        }
        new
    }

    /// Forgets the entries first seen before `horizon_ms`, then, while
    /// more than `max` are left, the oldest; returns how many were
    /// forgotten early.
    pub(super) fn expire(&mut self, horizon_ms: i64, max: usize) -> u64 {
        let mut horizon = horizon_ms.max(self.horizon_ms);
        self.forget_before(horizon);
        let mut evicted = 0;
        if self.len() > max {
            // the time before which forgetting leaves at most `max`
            let mut times: Vec<i64> = self
                .idem
                .values()
                .map(|e| e.at_ms)
                .chain(self.event_ids.iter().map(|(_, at)| at))
                .collect();
            let cut = times.len() - max;
            let (older, nth, _) = times.select_nth_unstable(cut - 1);
            let nth = *nth;
            // entries first seen in the same millisecond as the cut (a
            // request's records share one) are kept, unless that would
            // forget none
            let oldest = older.iter().copied().min().unwrap_or(nth);
            horizon = if nth > oldest { nth } else { nth + 1 };
            let before = self.len();
            self.forget_before(horizon);
            evicted = (before - self.len()) as u64;
        }
        self.horizon_ms = horizon;
        evicted
    }

    fn forget_before(&mut self, horizon: i64) {
        self.idem.retain(|_, e| e.at_ms >= horizon);
        self.dirty.retain(|k, _| self.idem.contains_key(k));
        self.event_ids.forget_before(horizon);
        self.new_ids.retain(|&(_, at)| at >= horizon);
    }

    /// What the next checkpoint saves: every entry (`full`) or the changed
    /// ones.
    pub(super) fn delta(&self, full: bool) -> SeenDelta {
        let keys: Vec<(String, u64)> = if full {
            self.idem
                .keys()
                .map(|k| (k.clone(), self.dirty.get(k).copied().unwrap_or(0)))
                .collect()
        } else {
            self.dirty.iter().map(|(k, g)| (k.clone(), *g)).collect()
        };
        let idem = keys
            .iter()
            .filter_map(|(k, _)| Some((k.clone(), self.idem.get(k)?.clone())))
            .collect();
        let event_ids = if full {
            self.event_ids.iter().collect()
        } else {
            self.new_ids.clone()
        };
        SeenDelta {
            full,
            idem,
            event_ids,
            horizon_ms: self.horizon_ms,
            marks: (keys, self.new_ids.len()),
        }
    }

    /// A checkpoint carrying `d` committed: its entries are saved.
    pub(super) fn saved(&mut self, d: &SeenDelta) {
        for (k, g) in &d.marks.0 {
            if self.dirty.get(k) == Some(g) {
                self.dirty.remove(k);
            }
        }
        let n = d.marks.1.min(self.new_ids.len());
        self.new_ids.drain(..n);
    }

    /// Everything is saved (restored from, or rebuilt into, a committed
    /// checkpoint).
    pub(super) fn all_saved(&mut self) {
        self.dirty.clear();
        self.new_ids.clear();
    }

    /// Folds a snapshot part's entries into what a restore builds.
    pub(super) fn fold(&mut self, d: SeenDelta) {
        if d.full {
            self.idem.clear();
            self.event_ids = EventIds::new();
        }
        // what the shard had forgotten when it took this part goes first:
        // an entry it saw again since is in this part with its new time
        self.horizon_ms = self.horizon_ms.max(d.horizon_ms);
        let h = self.horizon_ms;
        self.forget_before(h);
        for (k, e) in d.idem {
            self.idem.insert(k, e);
        }
        // in time order: expiry walks the ids in the order they were added;
        // a later part's time for an id replaces an earlier one's
        let mut ids = d.event_ids;
        ids.sort_unstable_by_key(|&(id, at)| (at, id));
        for (id, at) in ids {
            self.event_ids.forget(id);
            self.event_ids.first_time(id, at);
        }
    }

    /// After the last fold: entries older than the horizon go.
    pub(super) fn settle(&mut self) {
        let h = self.horizon_ms;
        self.forget_before(h);
        self.all_saved();
    }

    /// The local cache's write for a checkpoint carrying `d`.
    pub(super) fn cache_write(d: &SeenDelta) -> ExtraWrite {
        let cfg = bincode::config::standard();
        let mut put = Vec::with_capacity(d.idem.len() + d.event_ids.len() + 1);
        for (k, e) in &d.idem {
            let mut key = vec![KEY];
            key.extend_from_slice(k.as_bytes());
            put.push((
                key,
                bincode::serde::encode_to_vec(e, cfg).expect("key entry encodes"),
            ));
        }
        for (id, at) in &d.event_ids {
            let mut key = vec![ID];
            key.extend_from_slice(&id.to_be_bytes());
            put.push((key, at.to_le_bytes().to_vec()));
        }
        put.push((HORIZON.to_vec(), d.horizon_ms.to_le_bytes().to_vec()));
        ExtraWrite {
            replace: d.full,
            put,
        }
    }

    /// What the local cache holds: its entries, or the one value stores
    /// before entries kept (`legacy`).
    pub(super) fn from_cache(
        entries: &[(Vec<u8>, Vec<u8>)],
        legacy: Option<&[u8]>,
    ) -> Result<Seen, ShardError> {
        let bad = |what: &str| ShardError::Internal(format!("local cache: a bad {what} entry"));
        let mut s = Seen::default();
        if let Some(b) = legacy {
            s.fold(decode_legacy(b)?);
        }
        let cfg = bincode::config::standard();
        let mut ids = Vec::new();
        for (k, v) in entries {
            match k.split_first() {
                Some((&KEY, key)) => {
                    let key = String::from_utf8(key.to_vec()).map_err(|_| bad("key"))?;
                    let (e, _): (IdemEntry, _) =
                        bincode::serde::decode_from_slice(v, cfg).map_err(|_| bad("key"))?;
                    s.idem.insert(key, e);
                }
                Some((&ID, id)) => {
                    let id = u128::from_be_bytes(id.try_into().map_err(|_| bad("id"))?);
                    let at = i64::from_le_bytes(v.as_slice().try_into().map_err(|_| bad("id"))?);
                    ids.push((id, at));
                }
                _ if k == HORIZON => {
                    let h =
                        i64::from_le_bytes(v.as_slice().try_into().map_err(|_| bad("horizon"))?);
                    s.horizon_ms = s.horizon_ms.max(h);
                }
                _ => return Err(bad("unknown")),
            }
        }
        s.fold(SeenDelta {
            event_ids: ids,
            horizon_ms: i64::MIN,
            ..SeenDelta::default()
        });
        s.settle();
        Ok(s)
    }
}

/// An Idempotency-Key's entry as stores before body hashes kept it.
#[derive(serde::Deserialize)]
struct LegacyIdemEntry {
    at_ms: i64,
    ranges: Vec<(u32, u32)>,
}

impl From<LegacyIdemEntry> for IdemEntry {
    fn from(e: LegacyIdemEntry) -> IdemEntry {
        IdemEntry {
            at_ms: e.at_ms,
            ranges: e.ranges,
            body_hash: None,
        }
    }
}

/// The dedup state as one value (local caches before 2026-12): every key
/// and id.
fn decode_legacy(b: &[u8]) -> Result<SeenDelta, ShardError> {
    type Legacy = (Vec<(String, LegacyIdemEntry)>, Vec<(u128, i64)>);
    let ((idem, ids), _): (Legacy, _) =
        bincode::serde::decode_from_slice(b, bincode::config::standard())
            .map_err(|e| ShardError::Internal(format!("stored idempotency keys: {e}")))?;
    Ok(SeenDelta {
        full: true,
        idem: idem.into_iter().map(|(k, e)| (k, e.into())).collect(),
        event_ids: ids,
        horizon_ms: i64::MIN,
        marks: Default::default(),
    })
}

impl Seen {
    #[cfg(test)]
    fn from_parts_deltas(parts: Vec<SeenDelta>) -> Seen {
        let mut s = Seen::default();
        for p in parts {
            s.fold(p);
        }
        s.settle();
        s
    }

    /// What a checkpoint's snapshot parts hold, folded in order.
    pub(super) fn from_parts(parts: Vec<crate::cluster::DedupPart>) -> Seen {
        let mut s = Seen::default();
        for p in parts {
            s.fold(SeenDelta {
                full: p.full,
                idem: p.idem,
                event_ids: p.event_ids,
                horizon_ms: p.horizon_ms,
                marks: Default::default(),
            });
        }
        s.settle();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reused_with_another_body_is_told_from_a_retry() {
        let mut s = Seen::default();
        assert_eq!(s.check_key("k", 0, Some(7), 10), KeyCheck::New);
        assert_eq!(s.check_key("k", 1, Some(7), 10), KeyCheck::New);
        assert_eq!(s.check_key("k", 0, Some(7), 11), KeyCheck::Repeat);
        assert_eq!(s.check_key("k", 2, Some(8), 11), KeyCheck::Reused);
        assert_eq!(s.check_key("k", 0, Some(8), 11), KeyCheck::Reused);
        // a record without a hash (an older producer) matches any body
        assert_eq!(s.check_key("k", 1, None, 11), KeyCheck::Repeat);
    }

    #[test]
    fn deltas_carry_what_changed_and_restore_to_the_same_entries() {
        let mut s = Seen::default();
        let mut parts = Vec::new();
        s.check_key("a", 0, Some(1), 100);
        s.first_time(5, 100);
        let d = s.delta(true);
        s.saved(&d);
        parts.push(d);
        s.check_key("b", 0, Some(2), 200);
        s.check_key("a", 1, Some(1), 200);
        s.first_time(6, 200);
        let d = s.delta(false);
        assert_eq!(d.idem.len(), 2, "a changed, b is new");
        assert_eq!(d.event_ids, vec![(6, 200)]);
        // changed while the checkpoint ran: saved by the next one
        s.check_key("b", 1, Some(2), 210);
        s.saved(&d);
        parts.push(d);
        s.expire(150, usize::MAX); // a, 5 expire
        let d = s.delta(false);
        assert_eq!(d.idem.len(), 1);
        assert_eq!(d.idem[0].0, "b");
        assert_eq!(d.horizon_ms, 150);
        parts.push(d);
        let mut r = Seen::default();
        for p in parts.iter().cloned() {
            r.fold(p);
        }
        r.settle();
        assert_eq!(r.idem, s.idem);
        assert_eq!(r.event_ids, s.event_ids);
        // the local cache, written the same way, restores the same
        let mut entries: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for p in &parts {
            let w = Seen::cache_write(p);
            if w.replace {
                entries.clear();
            }
            entries.extend(w.put);
        }
        let entries: Vec<_> = entries.into_iter().collect();
        let c = Seen::from_cache(&entries, None).unwrap();
        assert_eq!(c.idem, s.idem);
        assert_eq!(c.event_ids, s.event_ids);
    }

    #[test]
    fn an_id_seen_again_after_it_was_forgotten_survives_a_restore() {
        let mut s = Seen::default();
        let mut parts = Vec::new();
        s.first_time(7, 100);
        let d = s.delta(true);
        s.saved(&d);
        parts.push(d);
        // forgotten (TTL), then seen again
        s.expire(150, usize::MAX);
        assert!(s.first_time(7, 200));
        let d = s.delta(false);
        s.saved(&d);
        parts.push(d);
        let r = Seen::from_parts_deltas(parts.clone());
        assert_eq!(r.event_ids, s.event_ids, "the id is remembered at 200");
        // the local cache, with an old single-value blob beside the entries
        let legacy = bincode::serde::encode_to_vec(
            (
                Vec::<(String, (i64, Vec<(u32, u32)>))>::new(),
                vec![(7u128, 100i64)],
            ),
            bincode::config::standard(),
        )
        .unwrap();
        let w = Seen::cache_write(&parts[1]);
        let c = Seen::from_cache(&w.put, Some(&legacy)).unwrap();
        assert_eq!(c.event_ids, s.event_ids);
    }

    #[test]
    fn beyond_the_cap_the_oldest_are_forgotten_first() {
        let mut s = Seen::default();
        for i in 0..10 {
            s.first_time(i as u128, 1000 + i);
            s.check_key(&format!("k{i}"), 0, Some(1), 1000 + i);
        }
        // 12 over the cap: the cut falls in millisecond 1005, whose
        // entries are kept with the newer ones
        assert_eq!(s.expire(0, 8), 10);
        assert_eq!(s.len(), 10);
        // all first seen in one millisecond: forgetting by time must take
        // them all rather than none
        let mut t = Seen::default();
        for i in 0..5 {
            t.first_time(i, 7);
        }
        assert_eq!(t.expire(0, 3), 5);
        assert!(s.first_time(3, 2000), "an old id was forgotten");
        assert!(!s.first_time(9, 2000), "the newest are kept");
        assert_eq!(s.check_key("k9", 0, Some(1), 2000), KeyCheck::Repeat);
    }
}
