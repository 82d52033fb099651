//! The compact form of one event's input to one window call.
//!
//! A partition keeps, for every buffered event, one input per distinct
//! (argument, FILTER) of its calls. Most inputs are flags and numbers, so they
//! are stored in 16 bytes without a heap allocation, inline in the event.

use crate::value::Value;
use smallvec::SmallVec;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum In {
    /// FILTER rejected the event: no aggregate sees it.
    Skip,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Ts(i64),
    /// Text and anything else, boxed to keep the common case small.
    Other(Box<Value>),
}

/// One event's inputs; up to three inline.
pub type Inputs = SmallVec<[In; 3]>;

impl In {
    pub fn from_value(v: Value) -> In {
        match v {
            Value::Null => In::Null,
            Value::Boolean(b) => In::Bool(b),
            Value::BigInt(i) => In::Int(i),
            Value::Double(d) => In::Float(d),
            Value::Timestamp(t) => In::Ts(t),
            other => In::Other(Box::new(other)),
        }
    }

    /// The SQL value, or `None` when skipped by FILTER.
    pub fn value(&self) -> Option<Value> {
        Some(match self {
            In::Skip => return None,
            In::Null => Value::Null,
            In::Bool(b) => Value::Boolean(*b),
            In::Int(i) => Value::BigInt(*i),
            In::Float(f) => Value::Double(*f),
            In::Ts(t) => Value::Timestamp(*t),
            In::Other(v) => (**v).clone(),
        })
    }

    /// Numeric inputs as f64 (BIGINT widens).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            In::Int(i) => Some(*i as f64),
            In::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// True when an aggregate counts it: not skipped and not NULL.
    pub fn counts(&self) -> bool {
        !matches!(self, In::Skip | In::Null)
    }
}
