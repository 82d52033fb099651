//! Event-id deduplication: a table that declares `WITH (event_id = 'col')`
//! applies each id once per shard. Every path that takes events in uses
//! this one type (the node's ingest writer, a cluster shard reading its
//! partition, `lockstep run` reading a file), so a duplicate is dropped the
//! same way wherever it arrives.
//!
//! What is remembered is a 128-bit FNV-1a hash of the id's text and the
//! time it was first seen; ids older than a horizon are forgotten, which
//! bounds memory (`idempotency_ttl` in the daemon, `--idempotency-ttl` in
//! `lockstep run`). The caller supplies the clock: arrival time on a node,
//! event time in a file, which carries no other.

use crate::value::Value;
use std::collections::HashMap;

/// A stable 128-bit hash (FNV-1a) of an event id's text: what a shard
/// remembers of each producer-supplied id. Stable across versions, unlike
/// the standard library's hasher, because it is stored with checkpoints.
pub fn event_id_hash(id: &Value) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    for b in id.to_string().bytes() {
        h ^= b as u128;
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// The id an event is deduplicated by: the hash of its id column, or none
/// for a NULL id (such an event is never a repeat: NULL is no id, and must
/// not collide with the text `'NULL'`).
pub fn event_id_of(id: &Value) -> Option<u128> {
    (!id.is_null()).then(|| event_id_hash(id))
}

/// The event ids one shard has applied, with when each was first seen.
///
/// Besides the map, a queue in the order ids were first seen lets
/// [`EventIds::forget_before`] drop the old ones without scanning them all
/// (clocks here are near-monotone: arrival time, record time, event time;
/// an id queued behind a later one is forgotten with it, a little late).
#[derive(Debug, Clone, Default)]
pub struct EventIds {
    seen: HashMap<u128, i64>,
    order: std::collections::VecDeque<(i64, u128)>,
}

impl PartialEq for EventIds {
    fn eq(&self, other: &EventIds) -> bool {
        self.seen == other.seen
    }
}

impl EventIds {
    pub fn new() -> EventIds {
        EventIds::default()
    }

    /// Records the id hashed as `id`, seen at `at_ms`; false when it was
    /// seen before (the event is a duplicate and must be skipped).
    pub fn first_time(&mut self, id: u128, at_ms: i64) -> bool {
        match self.seen.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(at_ms);
                self.order.push_back((at_ms, id));
                true
            }
        }
    }

    /// Forgets one id (a write that recorded it did not happen).
    pub fn forget(&mut self, id: u128) {
        self.seen.remove(&id);
    }

    /// Forgets the ids first seen before `horizon_ms` (in the order they
    /// were seen: work proportional to what is forgotten); returns them.
    pub fn forget_before(&mut self, horizon_ms: i64) -> Vec<u128> {
        let mut old = Vec::new();
        while let Some(&(at, id)) = self.order.front() {
            if at >= horizon_ms {
                break;
            }
            self.order.pop_front();
            // (an id forgotten and seen again is queued again, later)
            if self.seen.get(&id) == Some(&at) {
                self.seen.remove(&id);
                old.push(id);
            }
        }
        old
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// `(id hash, first seen)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u128, i64)> + '_ {
        self.seen.iter().map(|(k, v)| (*k, *v))
    }
}

impl FromIterator<(u128, i64)> for EventIds {
    fn from_iter<I: IntoIterator<Item = (u128, i64)>>(it: I) -> EventIds {
        let seen: HashMap<u128, i64> = it.into_iter().collect();
        let mut order: Vec<(i64, u128)> = seen.iter().map(|(id, at)| (*at, *id)).collect();
        order.sort_unstable();
        EventIds {
            seen,
            order: order.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_applied_once_until_it_is_forgotten() {
        let mut ids = EventIds::new();
        let a = event_id_hash(&Value::BigInt(17));
        let b = event_id_hash(&Value::text("17x"));
        assert!(ids.first_time(a, 1_000));
        assert!(!ids.first_time(a, 2_000), "a repeat is a duplicate");
        assert!(ids.first_time(b, 2_500));
        assert_eq!(ids.forget_before(2_000), vec![a]);
        assert!(ids.first_time(a, 3_000), "forgotten ids are new again");
        assert!(!ids.first_time(b, 3_000));
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn forgetting_follows_the_order_ids_were_seen() {
        let mut ids = EventIds::new();
        for i in 0..1000u128 {
            assert!(ids.first_time(i, i as i64));
        }
        // an id forgotten early, seen again late, stays until its new time
        assert_eq!(ids.forget_before(10).len(), 10);
        assert!(ids.first_time(3, 5_000));
        assert_eq!(ids.forget_before(1000).len(), 990);
        assert_eq!(ids.len(), 1);
        assert!(!ids.first_time(3, 5_001));
        assert_eq!(ids.forget_before(5_001), vec![3]);
        assert!(ids.is_empty());
        // rebuilt from stored pairs, the order is by time
        let mut back: EventIds = [(7u128, 70i64), (8, 10)].into_iter().collect();
        assert_eq!(back.forget_before(50), vec![8]);
    }

    #[test]
    fn a_null_id_is_no_id() {
        assert_eq!(event_id_of(&Value::Null), None);
        assert_eq!(
            event_id_of(&Value::text("NULL")),
            Some(event_id_hash(&Value::text("NULL")))
        );
    }

    #[test]
    fn the_hash_is_of_the_text_and_stable() {
        // BIGINT 5 and TEXT '5' are the same id, as their text is
        assert_eq!(
            event_id_hash(&Value::BigInt(5)),
            event_id_hash(&Value::text("5"))
        );
        assert_ne!(
            event_id_hash(&Value::text("a")),
            event_id_hash(&Value::text("b"))
        );
        // checkpoints store these: the value must never change
        assert_eq!(
            event_id_hash(&Value::text("a")),
            0xd228cb696f1a8caf78912b704e4a8964
        );
    }
}
