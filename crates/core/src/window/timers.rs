//! Held rows waiting for their FOLLOWING frames, in release order.

use super::view_state::Pending;
use std::collections::{BinaryHeap, VecDeque};

/// A held row and when it can go: (deadline, time, position). Ordered so
/// that the smallest key is the greatest (for the max-heap of strays).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Held {
    pub(super) key: (i64, i64, u64),
    pub(super) row: Pending,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.key.cmp(&self.key)
    }
}

/// Held rows, released smallest key first. Rows mostly arrive in deadline
/// order (a deadline is the event's time plus a fixed frame), so most are
/// appended to `run`, kept sorted, and released from its front: O(1) each,
/// where a binary heap of every row moved log(n) whole rows per release.
/// A row that would go before the back of `run` (its event came out of
/// order) goes to the heap `strays` instead, so no order of arrival costs
/// more than O(log n). Stored as one sequence (as the binary heap it
/// replaces was) and sorted back into `run` on load.
#[derive(Clone, Debug, Default)]
pub(super) struct Timers {
    run: VecDeque<Held>,
    strays: BinaryHeap<Held>,
}

impl Timers {
    pub(super) fn push(&mut self, h: Held) {
        if self.run.back().is_none_or(|b| b.key <= h.key) {
            self.run.push_back(h);
        } else {
            self.strays.push(h);
        }
    }

    pub(super) fn first_key(&self) -> Option<(i64, i64, u64)> {
        match (self.run.front(), self.strays.peek()) {
            (Some(a), Some(b)) => Some(a.key.min(b.key)),
            (a, b) => a.or(b).map(|h| h.key),
        }
    }

    pub(super) fn pop_first(&mut self) -> Option<Held> {
        let from_run = match (self.run.front(), self.strays.peek()) {
            (Some(a), Some(b)) => a.key < b.key,
            (a, _) => a.is_some(),
        };
        if from_run {
            self.run.pop_front()
        } else {
            self.strays.pop()
        }
    }

    pub(super) fn len(&self) -> usize {
        self.run.len() + self.strays.len()
    }

    pub(super) fn into_rows(self) -> impl Iterator<Item = Pending> {
        self.run.into_iter().chain(self.strays).map(|h| h.row)
    }
}

impl serde::Serialize for Timers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.run.iter().chain(self.strays.iter()))
    }
}

impl<'de> serde::Deserialize<'de> for Timers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut v = Vec::<Held>::deserialize(d)?;
        v.sort_unstable_by_key(|h| h.key);
        Ok(Timers {
            run: v.into(),
            strays: BinaryHeap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use smallvec::SmallVec;

    fn held(deadline: i64, pos: u64) -> Held {
        Held {
            key: (deadline, deadline - 5, pos),
            row: Pending {
                time: deadline - 5,
                pos,
                values: Vec::new(),
                width: 0,
                parts: SmallVec::new(),
            },
        }
    }

    proptest! {
        /// Whatever order rows arrive and releases interleave, rows come
        /// out smallest key first, as from one sorted list; a checkpoint
        /// taken midway (in any order) restores to the same sequence.
        #[test]
        fn timers_release_in_key_order(
            ops in prop::collection::vec((0i64..50, any::<bool>()), 1..200)
        ) {
            let mut t = Timers::default();
            let mut model: Vec<(i64, i64, u64)> = Vec::new();
            for (pos, (d, release)) in ops.into_iter().enumerate() {
                let h = held(d, pos as u64);
                model.push(h.key);
                t.push(h);
                if release {
                    model.sort();
                    let want = model.remove(0);
                    prop_assert_eq!(t.first_key(), Some(want));
                    prop_assert_eq!(t.pop_first().map(|h| h.key), Some(want));
                }
                prop_assert_eq!(t.len(), model.len());
            }
            let bytes = bincode::serde::encode_to_vec(&t, bincode::config::standard()).unwrap();
            let (mut back, _): (Timers, _) =
                bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
            model.sort();
            for want in model {
                prop_assert_eq!(back.pop_first().map(|h| h.key), Some(want));
            }
            prop_assert!(back.pop_first().is_none());
        }
    }

    /// Checkpoints written when held rows were a `BinaryHeap` (a sequence
    /// in heap order) load into key order.
    #[test]
    fn timers_load_a_binary_heaps_checkpoint() {
        let heap: BinaryHeap<Held> = [5, 1, 9, 3, 7, 2]
            .iter()
            .map(|&d| held(d, d as u64))
            .collect();
        let bytes = bincode::serde::encode_to_vec(&heap, bincode::config::standard()).unwrap();
        let (mut t, _): (Timers, _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        let mut got = Vec::new();
        while let Some(h) = t.pop_first() {
            got.push(h.key.0);
        }
        assert_eq!(got, vec![1, 2, 3, 5, 7, 9]);
    }
}
