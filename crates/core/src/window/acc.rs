//! Invertible aggregate accumulators for sliding frames.
//!
//! Every accumulator supports `add` and `remove` of one input exactly, so a
//! frame can slide both ways (late events move a frame backwards) and the
//! result never depends on the order events were added in.

use super::exact_sum::{ExactSum, I128};
use super::input::InRef;
use crate::plan::WinFunc;
use crate::value::{DataType, Value};
use smallvec::SmallVec;
use std::cmp::Ordering;
use std::collections::BTreeMap;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// A value ordered by [`Value::total_cmp`], for MIN/MAX multisets.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Ordered(pub Value);

impl PartialEq for Ordered {
    fn eq(&self, o: &Self) -> bool {
        self.0.total_cmp(&o.0) == Ordering::Equal
    }
}
impl Eq for Ordered {}
impl PartialOrd for Ordered {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ordered {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// A multiset of values for MIN/MAX: a short sorted vector while it holds
/// few distinct values (the usual case: flags, small windows), a B-tree once
/// it grows.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum MultiSet {
    Small(SmallVec<[(Value, u32); 2]>),
    Large(BTreeMap<Ordered, u32>),
}

const SMALL_DISTINCT: usize = 32;

impl Default for MultiSet {
    fn default() -> Self {
        MultiSet::Small(SmallVec::new())
    }
}

impl MultiSet {
    fn add(&mut self, v: Value) {
        match self {
            MultiSet::Small(items) => {
                match items.binary_search_by(|(x, _)| x.total_cmp(&v)) {
                    Ok(i) => items[i].1 += 1,
                    Err(i) => items.insert(i, (v, 1)),
                }
                if items.len() > SMALL_DISTINCT {
                    let map = items.drain(..).map(|(v, c)| (Ordered(v), c)).collect();
                    *self = MultiSet::Large(map);
                }
            }
            MultiSet::Large(map) => *map.entry(Ordered(v)).or_insert(0) += 1,
        }
    }

    fn remove(&mut self, v: Value) {
        match self {
            MultiSet::Small(items) => {
                if let Ok(i) = items.binary_search_by(|(x, _)| x.total_cmp(&v)) {
                    items[i].1 -= 1;
                    if items[i].1 == 0 {
                        items.remove(i);
                    }
                }
            }
            MultiSet::Large(map) => {
                let k = Ordered(v);
                if let Some(c) = map.get_mut(&k) {
                    *c -= 1;
                    if *c == 0 {
                        map.remove(&k);
                    }
                }
            }
        }
    }

    fn min(&self) -> Option<&Value> {
        match self {
            MultiSet::Small(items) => items.first().map(|(v, _)| v),
            MultiSet::Large(map) => map.first_key_value().map(|(k, _)| &k.0),
        }
    }

    fn max(&self) -> Option<&Value> {
        match self {
            MultiSet::Small(items) => items.last().map(|(v, _)| v),
            MultiSet::Large(map) => map.last_key_value().map(|(k, _)| &k.0),
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Acc {
    Count(i64),
    SumInt {
        sum: I128,
        n: i64,
    },
    SumFloat {
        sum: ExactSum,
        n: i64,
    },
    /// Boxed, as is the distinct map: inline they are 80 and 40 bytes; the
    /// other accumulators fit in 32.
    MinMax(Box<MultiSet>),
    Distinct(Box<HashMap<Value, u32>>),
}

impl Acc {
    /// A fresh accumulator for `func` whose input has type `arg_type`.
    pub fn new(func: &WinFunc, arg_type: DataType) -> Acc {
        match func {
            WinFunc::CountStar | WinFunc::Count => Acc::Count(0),
            WinFunc::Sum | WinFunc::Avg if arg_type == DataType::BigInt => Acc::SumInt {
                sum: I128::default(),
                n: 0,
            },
            WinFunc::Sum | WinFunc::Avg => Acc::SumFloat {
                sum: ExactSum::default(),
                n: 0,
            },
            WinFunc::Min | WinFunc::Max => Acc::MinMax(Box::default()),
            WinFunc::CountDistinct => Acc::Distinct(Box::default()),
            WinFunc::ExpDecaySum { .. } | WinFunc::Shift { .. } => {
                unreachable!("decay and shift calls are evaluated over rows, not accumulated")
            }
        }
    }

    /// Adds one input ([`InRef::Skip`]: the FILTER rejected the event).
    pub fn add(&mut self, input: InRef<'_>) {
        self.apply(input, 1)
    }

    pub fn remove(&mut self, input: InRef<'_>) {
        self.apply(input, -1)
    }

    fn apply(&mut self, input: InRef<'_>, d: i64) {
        if !input.counts() {
            return;
        }
        match self {
            Acc::Count(c) => *c += d,
            Acc::SumInt { sum, n } => {
                if let InRef::Int(i) = input {
                    *sum += (i as i128) * d as i128;
                    *n += d;
                }
            }
            Acc::SumFloat { sum, n } => {
                if let Some(x) = input.as_f64() {
                    if d > 0 {
                        sum.add(x)
                    } else {
                        sum.sub(x)
                    }
                    *n += d;
                }
            }
            Acc::MinMax(set) => {
                let v = input.value().expect("counted inputs have a value");
                if d > 0 {
                    set.add(v);
                } else {
                    set.remove(v);
                }
            }
            Acc::Distinct(map) => {
                let v = input.value().expect("counted inputs have a value");
                if d > 0 {
                    *map.entry(v).or_insert(0) += 1;
                } else if let Some(c) = map.get_mut(&v) {
                    *c -= 1;
                    if *c == 0 {
                        map.remove(&v);
                    }
                }
            }
        }
    }

    /// Back to the empty state, keeping small allocations.
    pub fn clear(&mut self) {
        match self {
            Acc::Count(c) => *c = 0,
            Acc::SumInt { sum, n } => (*sum, *n) = (I128::default(), 0),
            Acc::SumFloat { sum, n } => (*sum, *n) = (ExactSum::default(), 0),
            Acc::MinMax(set) => **set = MultiSet::default(),
            Acc::Distinct(map) if map.capacity() > 64 => **map = HashMap::default(),
            Acc::Distinct(map) => map.clear(),
        }
    }

    /// The aggregate's SQL result.
    pub fn result(&self, func: &WinFunc) -> Value {
        match (self, func) {
            (Acc::Count(c), _) => Value::BigInt(*c),
            (Acc::SumInt { n: 0, .. }, _) | (Acc::SumFloat { n: 0, .. }, _) => Value::Null,
            (Acc::SumInt { sum, .. }, WinFunc::Sum) => {
                i64::try_from(sum.get()).map_or(Value::Null, Value::BigInt)
            }
            (Acc::SumInt { sum, n }, _) => Value::Double(sum.get() as f64 / *n as f64),
            (Acc::SumFloat { sum, .. }, WinFunc::Sum) => Value::Double(sum.value()),
            (Acc::SumFloat { sum, n }, _) => Value::Double(sum.value() / *n as f64),
            (Acc::MinMax(set), WinFunc::Min) => set.min().cloned().unwrap_or(Value::Null),
            (Acc::MinMax(set), _) => set.max().cloned().unwrap_or(Value::Null),
            (Acc::Distinct(map), _) => Value::BigInt(map.len() as i64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The multiset answers MIN and MAX like a sorted list, across the
        /// switch from the small vector to the B-tree.
        #[test]
        fn multiset_matches_a_sorted_list(ops in proptest::collection::vec((any::<bool>(), 0i64..80), 0..300)) {
            let mut set = MultiSet::default();
            let mut model: Vec<i64> = Vec::new();
            for (add, v) in ops {
                if add || model.is_empty() {
                    set.add(Value::BigInt(v));
                    model.push(v);
                } else {
                    let v = model[(v as usize) % model.len()];
                    set.remove(Value::BigInt(v));
                    let i = model.iter().position(|x| *x == v).unwrap();
                    model.remove(i);
                }
                prop_assert_eq!(set.min().cloned(), model.iter().min().map(|x| Value::BigInt(*x)));
                prop_assert_eq!(set.max().cloned(), model.iter().max().map(|x| Value::BigInt(*x)));
            }
        }
    }
}
