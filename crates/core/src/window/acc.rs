//! Invertible aggregate accumulators for sliding frames.
//!
//! Every accumulator supports `add` and `remove` of one input exactly, so a
//! frame can slide both ways (late events move a frame backwards) and the
//! result never depends on the order events were added in.

use super::exact_sum::ExactSum;
use super::input::In;
use crate::plan::WinFunc;
use crate::value::{DataType, Value};
use std::cmp::Ordering;
use std::collections::BTreeMap;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// A value ordered by [`Value::total_cmp`], for MIN/MAX multisets.
#[derive(Clone, Debug)]
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

#[derive(Clone, Debug)]
pub enum Acc {
    Count(i64),
    SumInt { sum: i128, n: i64 },
    SumFloat { sum: ExactSum, n: i64 },
    MinMax(BTreeMap<Ordered, u32>),
    Distinct(HashMap<Value, u32>),
}

impl Acc {
    /// A fresh accumulator for `func` whose input has type `arg_type`.
    pub fn new(func: &WinFunc, arg_type: DataType) -> Acc {
        match func {
            WinFunc::CountStar | WinFunc::Count => Acc::Count(0),
            WinFunc::Sum | WinFunc::Avg if arg_type == DataType::BigInt => {
                Acc::SumInt { sum: 0, n: 0 }
            }
            WinFunc::Sum | WinFunc::Avg => Acc::SumFloat {
                sum: ExactSum::default(),
                n: 0,
            },
            WinFunc::Min | WinFunc::Max => Acc::MinMax(BTreeMap::new()),
            WinFunc::CountDistinct => Acc::Distinct(HashMap::default()),
            WinFunc::ExpDecaySum { .. } | WinFunc::Shift { .. } => {
                unreachable!("decay and shift calls are evaluated over rows, not accumulated")
            }
        }
    }

    /// Adds one input ([`In::Skip`]: the FILTER rejected the event).
    pub fn add(&mut self, input: &In) {
        self.apply(input, 1)
    }

    pub fn remove(&mut self, input: &In) {
        self.apply(input, -1)
    }

    fn apply(&mut self, input: &In, d: i64) {
        if !input.counts() {
            return;
        }
        match self {
            Acc::Count(c) => *c += d,
            Acc::SumInt { sum, n } => {
                if let In::Int(i) = input {
                    *sum += (*i as i128) * d as i128;
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
            Acc::MinMax(map) => {
                let k = Ordered(input.value().expect("counted inputs have a value"));
                if d > 0 {
                    *map.entry(k).or_insert(0) += 1;
                } else if let Some(c) = map.get_mut(&k) {
                    *c -= 1;
                    if *c == 0 {
                        map.remove(&k);
                    }
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

    /// The aggregate's SQL result.
    pub fn result(&self, func: &WinFunc) -> Value {
        match (self, func) {
            (Acc::Count(c), _) => Value::BigInt(*c),
            (Acc::SumInt { n: 0, .. }, _) | (Acc::SumFloat { n: 0, .. }, _) => Value::Null,
            (Acc::SumInt { sum, .. }, WinFunc::Sum) => {
                i64::try_from(*sum).map_or(Value::Null, Value::BigInt)
            }
            (Acc::SumInt { sum, n }, _) => Value::Double(*sum as f64 / *n as f64),
            (Acc::SumFloat { sum, .. }, WinFunc::Sum) => Value::Double(sum.value()),
            (Acc::SumFloat { sum, n }, _) => Value::Double(sum.value() / *n as f64),
            (Acc::MinMax(map), WinFunc::Min) => map
                .first_key_value()
                .map_or(Value::Null, |(k, _)| k.0.clone()),
            (Acc::MinMax(map), _) => map
                .last_key_value()
                .map_or(Value::Null, |(k, _)| k.0.clone()),
            (Acc::Distinct(map), _) => Value::BigInt(map.len() as i64),
        }
    }
}
