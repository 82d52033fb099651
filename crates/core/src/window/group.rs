//! The partitions of one PARTITION BY list on one shard: a slab of partitions
//! with a hash index over their keys.
//!
//! Keys are hashed and compared straight from the event's columns, so finding
//! a partition clones nothing; and a held row remembers its partition's slab
//! index, so emitting it needs no second lookup. A partition is only removed
//! when nothing pins it (no held rows), so those indexes stay valid. A few
//! removed partitions keep their allocations in a spare pool for the next new
//! keys (label partitions, user × campaign, come and go with almost every
//! event); the rest are freed, so a key that went idle costs only its empty
//! slab slot.

use super::partition::Partition;
use crate::value::Value;
use hashbrown::HashTable;
use std::hash::{BuildHasher, Hash, Hasher};

/// One slab slot: a partition with its key, or a free slot (`live` false).
/// Checkpoints persist slots one by one, so only changed ones are written.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    key: Box<[Value]>,
    /// Boxed, and absent in a free slot: a key gone idle costs the slot's
    /// 32 bytes, not a whole partition's. A free slot is written to
    /// checkpoints as earlier versions wrote it (a key of NULLs, an empty
    /// partition with the group's frames), see [`Group::dead_entry`], so a
    /// node rolled back to an earlier version can reuse it.
    #[serde(with = "slot_part")]
    part: Option<Box<Partition>>,
    live: bool,
}

/// A slot's partition as checkpoints have always held it: a free slot
/// writes an empty partition.
mod slot_part {
    use super::Partition;
    use serde::{Deserialize, Serialize};

    pub fn serialize<S: serde::Serializer>(
        p: &Option<Box<Partition>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => p.serialize(s),
            None => Partition::default().serialize(s),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Box<Partition>>, D::Error> {
        Partition::deserialize(d).map(|p| Some(Box::new(p)))
    }
}

/// A group's snapshot form: the slab; the hash index is rebuilt on restore.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct GroupData {
    slab: Vec<Entry>,
    free: Vec<usize>,
}

impl From<Group> for GroupData {
    fn from(g: Group) -> GroupData {
        let dead = g.dead_entry();
        GroupData {
            slab: g
                .slab
                .into_iter()
                .map(|e| if e.live { e } else { dead.clone() })
                .collect(),
            free: g.free,
        }
    }
}

impl From<GroupData> for Group {
    fn from(d: GroupData) -> Group {
        // a slot's partition, emptied, is the group's template: one with
        // the most frames (a free slot's, among those), so a frameless free
        // slot can't become it; the first new key replaces a frameless one
        // with a made partition anyway
        let model = d
            .slab
            .iter()
            .filter(|e| e.part.is_some())
            .max_by_key(|e| (e.part.as_ref().map_or(0, |p| p.slides.len()), !e.live));
        let template = model.and_then(|e| e.part.as_deref()).map(|p| {
            let mut t = p.clone();
            t.reset();
            Box::new(t)
        });
        let key_len = d.slab.iter().map(|e| e.key.len()).max().unwrap_or(0);
        let mut g = Group {
            slab: d.slab,
            free: d.free,
            template,
            key_len,
            ..Group::default()
        };
        for i in 0..g.slab.len() {
            if !g.slab[i].live {
                g.slab[i].part = None;
                g.slab[i].key = Box::default();
            } else {
                let hash = g.hash(g.slab[i].key.iter());
                let (slab, hasher) = (&g.slab, &g.hasher);
                g.index.insert_unique(hash, i, |&j| {
                    let mut h = hasher.build_hasher();
                    for v in slab[j].key.iter() {
                        v.hash(&mut h);
                    }
                    h.finish()
                });
            }
        }
        g
    }
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(from = "GroupData", into = "GroupData")]
pub struct Group {
    index: HashTable<usize>,
    slab: Vec<Entry>,
    free: Vec<usize>,
    hasher: foldhash::fast::FixedState,
    /// Slots changed since the last [`Group::take_dirty`], for incremental
    /// checkpoints; `marked[i]` says whether `i` is already listed.
    dirty: Vec<usize>,
    marked: Vec<bool>,
    /// Emptied partitions whose allocations the next new keys reuse (boxed
    /// as the slots hold them, so reuse moves a pointer).
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Partition>>,
    /// An empty partition with the group's frames (new partitions are its
    /// copies) and the key's width, set by the first partition.
    template: Option<Box<Partition>>,
    key_len: usize,
}

/// How many emptied partitions a group keeps for reuse.
const SPARE: usize = 64;

impl Group {
    fn mark(&mut self, i: usize) {
        if self.marked.len() < self.slab.len() {
            self.marked.resize(self.slab.len(), false);
        }
        if !self.marked[i] {
            self.marked[i] = true;
            self.dirty.push(i);
        }
    }

    /// The slots changed since the last call (sorted), with their current
    /// contents, and forgets them: the incremental part of a checkpoint.
    pub fn take_dirty(&mut self) -> Vec<(usize, Entry)> {
        let mut out = Vec::new();
        self.take_dirty_with(|i, e| out.push((i, e.clone())));
        out
    }

    /// Like [`Group::take_dirty`], handing each changed slot to `visit` by
    /// reference (a checkpoint serializes it without copying it first).
    pub fn take_dirty_with(&mut self, mut visit: impl FnMut(usize, &Entry)) {
        let mut d = std::mem::take(&mut self.dirty);
        d.sort_unstable();
        let dead = d
            .iter()
            .any(|&i| !self.slab[i].live)
            .then(|| self.dead_entry());
        for &i in &d {
            self.marked[i] = false;
            match &dead {
                Some(dead) if !self.slab[i].live => visit(i, dead),
                _ => visit(i, &self.slab[i]),
            }
        }
        d.clear();
        // keep the list's allocation for the next interval
        self.dirty = d;
    }

    /// Every slot, as a checkpoint taken from scratch would write them.
    pub fn all_slots(&self) -> impl Iterator<Item = (usize, &Entry)> {
        self.slab.iter().enumerate()
    }

    /// Marks every slot changed (the next checkpoint writes them all).
    pub fn mark_all(&mut self) {
        for i in 0..self.slab.len() {
            self.mark(i);
        }
    }

    /// A free slot as checkpoints hold it.
    fn dead_entry(&self) -> Entry {
        Entry {
            key: vec![Value::Null; self.key_len].into_boxed_slice(),
            part: self.template.clone(),
            live: false,
        }
    }

    /// The free-slot list, which a checkpoint stores whole.
    pub fn free_list(&self) -> &[usize] {
        &self.free
    }

    /// Rebuilds a group from checkpointed slots and its free list.
    pub fn from_slots(slab: Vec<Entry>, free: Vec<usize>) -> Group {
        Group::from(GroupData { slab, free })
    }

    fn hash<'a>(&self, key: impl Iterator<Item = &'a Value>) -> u64 {
        let mut h = self.hasher.build_hasher();
        for v in key {
            v.hash(&mut h);
        }
        h.finish()
    }

    /// The slab index of the partition whose key is `event[cols]`.
    pub fn find(&self, event: &[Value], cols: &[usize]) -> Option<usize> {
        let hash = self.hash(cols.iter().map(|&c| &event[c]));
        self.index
            .find(hash, |&i| key_eq(&self.slab[i], event, cols))
            .copied()
    }

    /// Finds the partition for `event[cols]`, creating it with `make` if new.
    pub fn find_or_insert(
        &mut self,
        event: &[Value],
        cols: &[usize],
        make: impl FnOnce() -> Partition,
    ) -> usize {
        let hash = self.hash(cols.iter().map(|&c| &event[c]));
        if let Some(&i) = self
            .index
            .find(hash, |&i| key_eq(&self.slab[i], event, cols))
        {
            self.mark(i);
            return i;
        }
        if self.template.as_ref().is_none_or(|t| t.slides.is_empty()) {
            self.template = Some(Box::new(make()));
        }
        self.key_len = cols.len();
        let part = match self.spare.pop() {
            Some(p) => p,
            None => self.template.clone().expect("set above"),
        };
        let key = cols.iter().map(|&c| event[c].clone()).collect();
        let i = match self.free.pop() {
            Some(i) => {
                let e = &mut self.slab[i];
                e.key = key;
                e.part = Some(part);
                e.live = true;
                i
            }
            None => {
                self.slab.push(Entry {
                    key,
                    part: Some(part),
                    live: true,
                });
                self.slab.len() - 1
            }
        };
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index.insert_unique(hash, i, |&j| {
            let mut h = hasher.build_hasher();
            for v in slab[j].key.iter() {
                v.hash(&mut h);
            }
            h.finish()
        });
        self.mark(i);
        i
    }

    pub fn get(&self, i: usize) -> &Partition {
        debug_assert!(self.slab[i].live);
        self.slab[i]
            .part
            .as_deref()
            .expect("a live slot has a partition")
    }

    /// The partition in slot `i`, to change it (the slot is marked changed).
    pub fn get_mut(&mut self, i: usize) -> &mut Partition {
        debug_assert!(self.slab[i].live);
        self.mark(i);
        self.slab[i]
            .part
            .as_deref_mut()
            .expect("a live slot has a partition")
    }

    /// Like [`Group::get_mut`] for a read that only moves a slide's cursor
    /// (serving): results do not depend on cursors, so no checkpoint needs it.
    pub fn get_mut_untracked(&mut self, i: usize) -> &mut Partition {
        debug_assert!(self.slab[i].live);
        self.slab[i]
            .part
            .as_deref_mut()
            .expect("a live slot has a partition")
    }

    /// Forgets partition `i` (its slot and allocations are reused).
    pub fn remove(&mut self, i: usize) {
        let hash = self.hash(self.slab[i].key.iter());
        if let Ok(e) = self.index.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        let e = &mut self.slab[i];
        e.live = false;
        if let Some(mut part) = e.part.take() {
            if self.spare.len() < SPARE {
                part.reset();
                self.spare.push(part);
            }
        }
        // release the key now rather than at reuse
        e.key = Box::default();
        self.free.push(i);
        self.mark(i);
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Visits every partition; removes those for which `keep` returns false.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut Partition) -> bool) {
        for i in 0..self.slab.len() {
            if !self.slab[i].live {
                continue;
            }
            let part = self.slab[i].part.as_deref_mut().expect("live");
            let before = part.events.len();
            let kept = keep(part);
            let after = part.events.len();
            if !kept {
                self.remove(i);
            } else if after != before {
                self.mark(i);
            }
        }
    }

    pub fn partitions(&self) -> impl Iterator<Item = &Partition> {
        self.slab
            .iter()
            .filter_map(|e| e.part.as_deref().filter(|_| e.live))
    }
}

fn key_eq(entry: &Entry, event: &[Value], cols: &[usize]) -> bool {
    entry.live && entry.key.iter().zip(cols).all(|(k, &c)| k == &event[c])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_pipeline, Engine};
    use std::sync::Arc;

    /// A free slot written without frames (by an intermediate build) does
    /// not become the template new keys are made from.
    #[test]
    fn a_frameless_free_slot_is_not_a_template() {
        use crate::window::acc::Acc;
        use crate::window::partition::Slide;
        let dead = Entry {
            key: Box::default(),
            part: Some(Box::default()),
            live: false,
        };
        let mut g = Group::from_slots(vec![dead], vec![0]);
        let make = || Partition::new(vec![Slide::new(vec![(0, Acc::Count(0))], false)]);
        let event = [Value::text("a"), Value::BigInt(1)];
        let i = g.find_or_insert(&event, &[0, 1], make);
        assert_eq!(g.get(i).slides.len(), 1);
        g.remove(i);
        let written = g.dead_entry();
        assert_eq!(&written.key[..], &[Value::Null, Value::Null]);
        assert_eq!(written.part.map(|p| p.slides.len()), Some(1));
    }

    /// A slot freed when a label partition dies is checkpointed as earlier
    /// versions wrote one (a key of NULLs as wide as the key, an empty
    /// partition with the group's frames), whole or incremental, so a node
    /// rolled back to an earlier version reuses it safely.
    #[test]
    fn a_free_slot_is_checkpointed_in_the_earlier_form() {
        let sql = "CREATE TABLE ev (id BIGINT, k TEXT, c BIGINT, ts TIMESTAMP) WITH (key = 'k', event_time = 'ts', lateness = '0 seconds', shards = 1);
CREATE VIEW v AS SELECT id,
  MAX(c) OVER (PARTITION BY k, c ORDER BY ts RANGE BETWEEN CURRENT ROW AND INTERVAL '1' SECOND FOLLOWING) AS m,
  COUNT(*) OVER (PARTITION BY k ORDER BY ts RANGE BETWEEN INTERVAL '1' HOUR PRECEDING AND CURRENT ROW) AS n
FROM ev;";
        let mut e = Engine::new(Arc::new(parse_pipeline(sql).unwrap()), &[]).unwrap();
        let ev = |id: i64, c: i64, ts: i64| {
            vec![
                Value::BigInt(id),
                Value::text("a"),
                Value::BigInt(c),
                Value::Timestamp(ts),
            ]
        };
        let mut out = Vec::new();
        e.push(&ev(1, 1, 0), &mut out).unwrap();
        e.push(&ev(2, 2, 5_000), &mut out).unwrap();
        assert_eq!(out.len(), 1, "the first row's label is final");
        // the free slots a checkpoint of the engine's shard writes
        let freed = |e: &mut Engine| -> Vec<Entry> {
            let delta = e.checkpoint_delta(0).unwrap();
            delta
                .slots
                .into_iter()
                .map(|(_, e)| e)
                .filter(|e| !e.live)
                .collect()
        };
        let dead = freed(&mut e);
        assert_eq!(dead.len(), 1, "the label partition (a, 1) was freed");
        let check = |d: &Entry| {
            assert_eq!(&d.key[..], &[Value::Null, Value::Null]);
            let p = d.part.as_deref().expect("written with a partition");
            assert_eq!(p.slides.len(), 1, "with the group's frame");
            assert_eq!(p.slides[0].accs.len(), 1);
            assert!(p.events.is_empty());
        };
        check(&dead[0]);
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&dead[0], cfg).unwrap();
        let back: Entry = bincode::serde::decode_from_slice(&bytes, cfg).unwrap().0;
        check(&back);
        // the whole-state form (snapshots) writes it the same way
        let snap = e.snapshot(0).unwrap();
        let bytes = bincode::serde::encode_to_vec(&snap, cfg).unwrap();
        let back: crate::ShardSnapshot = bincode::serde::decode_from_slice(&bytes, cfg).unwrap().0;
        let mut restored = Engine::new(Arc::new(parse_pipeline(sql).unwrap()), &[]).unwrap();
        restored.restore(0, back).unwrap();
        restored.mark_all_changed(0);
        let dead = freed(&mut restored);
        assert_eq!(dead.len(), 1);
        check(&dead[0]);
        // and the restored engine goes on like the original
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (i, c) in [(3, 3), (4, 1), (5, 2)] {
            e.push(&ev(i, c, 9_000 + i * 1_000), &mut a).unwrap();
            restored.push(&ev(i, c, 9_000 + i * 1_000), &mut b).unwrap();
        }
        e.finish(&mut a);
        restored.finish(&mut b);
        let rows = |v: &[crate::Emitted]| v.iter().map(|r| r.row.clone()).collect::<Vec<_>>();
        assert_eq!(rows(&a), rows(&b));
    }
}
