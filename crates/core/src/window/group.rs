//! The partitions of one PARTITION BY list on one shard: a slab of partitions
//! with a hash index over their keys.
//!
//! Keys are hashed and compared straight from the event's columns, so finding
//! a partition clones nothing; and a held row remembers its partition's slab
//! index, so emitting it needs no second lookup. A partition is only removed
//! when nothing pins it (no held rows), so those indexes stay valid.

use super::partition::Partition;
use crate::value::Value;
use hashbrown::HashTable;
use std::hash::{BuildHasher, Hash, Hasher};

#[derive(Clone, Debug, Default)]
pub struct Group {
    index: HashTable<usize>,
    slab: Vec<Option<(Box<[Value]>, Partition)>>,
    free: Vec<usize>,
    hasher: foldhash::fast::FixedState,
}

impl Group {
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
            return i;
        }
        let key: Box<[Value]> = cols.iter().map(|&c| event[c].clone()).collect();
        let entry = Some((key, make()));
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i] = entry;
                i
            }
            None => {
                self.slab.push(entry);
                self.slab.len() - 1
            }
        };
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index.insert_unique(hash, i, |&j| {
            let mut h = hasher.build_hasher();
            for v in slab[j].as_ref().expect("indexed entries are live").0.iter() {
                v.hash(&mut h);
            }
            h.finish()
        });
        i
    }

    pub fn get(&self, i: usize) -> &Partition {
        &self.slab[i].as_ref().expect("live partition").1
    }

    pub fn get_mut(&mut self, i: usize) -> &mut Partition {
        &mut self.slab[i].as_mut().expect("live partition").1
    }

    /// Forgets partition `i`.
    pub fn remove(&mut self, i: usize) {
        let hash = self.hash(self.slab[i].as_ref().expect("live partition").0.iter());
        if let Ok(e) = self.index.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        self.slab[i] = None;
        self.free.push(i);
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
            let drop = match &mut self.slab[i] {
                Some((_, p)) => !keep(p),
                None => false,
            };
            if drop {
                self.remove(i);
            }
        }
    }

    pub fn partitions(&self) -> impl Iterator<Item = &Partition> {
        self.slab.iter().flatten().map(|(_, p)| p)
    }
}

fn key_eq(entry: &Option<(Box<[Value]>, Partition)>, event: &[Value], cols: &[usize]) -> bool {
    let Some((key, _)) = entry else { return false };
    key.iter().zip(cols).all(|(k, &c)| k == &event[c])
}
