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

impl In {
    /// A borrowed, copyable view of this input.
    pub fn as_ref(&self) -> InRef<'_> {
        match self {
            In::Skip => InRef::Skip,
            In::Null => InRef::Null,
            In::Bool(b) => InRef::Bool(*b),
            In::Int(i) => InRef::Int(*i),
            In::Float(f) => InRef::Float(*f),
            In::Ts(t) => InRef::Ts(*t),
            In::Other(v) => InRef::Other(v),
        }
    }
}

/// One input as read from a partition's buffer (or from an [`In`]): no
/// allocation, text borrowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InRef<'a> {
    Skip,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Ts(i64),
    Other(&'a Value),
}

impl InRef<'_> {
    /// The SQL value, or `None` when skipped by FILTER.
    pub fn value(self) -> Option<Value> {
        Some(match self {
            InRef::Skip => return None,
            InRef::Null => Value::Null,
            InRef::Bool(b) => Value::Boolean(b),
            InRef::Int(i) => Value::BigInt(i),
            InRef::Float(f) => Value::Double(f),
            InRef::Ts(t) => Value::Timestamp(t),
            InRef::Other(v) => v.clone(),
        })
    }

    /// Numeric inputs as f64 (BIGINT widens).
    pub fn as_f64(self) -> Option<f64> {
        match self {
            InRef::Int(i) => Some(i as f64),
            InRef::Float(f) => Some(f),
            _ => None,
        }
    }

    /// True when an aggregate counts it: not skipped and not NULL.
    pub fn counts(self) -> bool {
        !matches!(self, InRef::Skip | InRef::Null)
    }

    pub fn to_owned(self) -> In {
        match self {
            InRef::Skip => In::Skip,
            InRef::Null => In::Null,
            InRef::Bool(b) => In::Bool(b),
            InRef::Int(i) => In::Int(i),
            InRef::Float(f) => In::Float(f),
            InRef::Ts(t) => In::Ts(t),
            InRef::Other(v) => In::Other(Box::new(v.clone())),
        }
    }
}
