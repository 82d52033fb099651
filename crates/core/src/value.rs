//! Values and types of the lockstep SQL dialect.
//!
//! Five column types exist (BIGINT, DOUBLE, TEXT, BOOLEAN, TIMESTAMP in
//! milliseconds); INTERVAL exists only inside expressions. Text is reference
//! counted so that copying an event into several window buffers costs a pointer,
//! not a string.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The static type of a column or expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DataType {
    BigInt,
    Double,
    Text,
    Boolean,
    /// Milliseconds since the Unix epoch, UTC.
    Timestamp,
    /// A duration in milliseconds; only inside expressions, never a column.
    Interval,
    /// The type of a bare `NULL` literal before it meets another type.
    Null,
}

impl DataType {
    /// The SQL spelling used in error messages and docs.
    pub fn sql_name(self) -> &'static str {
        match self {
            DataType::BigInt => "BIGINT",
            DataType::Double => "DOUBLE",
            DataType::Text => "TEXT",
            DataType::Boolean => "BOOLEAN",
            DataType::Timestamp => "TIMESTAMP",
            DataType::Interval => "INTERVAL",
            DataType::Null => "NULL",
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, DataType::BigInt | DataType::Double | DataType::Null)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql_name())
    }
}

/// One SQL value. `Null` is typeless, as in SQL.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Value {
    Null,
    BigInt(i64),
    Double(f64),
    Text(Arc<str>),
    Boolean(bool),
    Timestamp(i64),
    Interval(i64),
}

impl Value {
    /// A BOOLEAN's truth value; `None` for NULL and every other type.
    pub fn as_truth(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    pub fn text(s: &str) -> Value {
        Value::Text(Arc::from(s))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as f64 for numeric arithmetic (BIGINT widens).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::BigInt(i) => Some(*i as f64),
            Value::Double(d) => Some(*d),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// Total order used by MIN/MAX and sorting: numbers compare numerically
    /// (NaN above every number, as in PostgreSQL), then by type.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        use Value::*;
        match (self, other) {
            (BigInt(a), BigInt(b)) => a.cmp(b),
            (Double(a), Double(b)) => a.total_cmp(b),
            (BigInt(a), Double(b)) => cmp_i64_f64(*a, *b),
            (Double(a), BigInt(b)) => cmp_i64_f64(*b, *a).reverse(),
            (Text(a), Text(b)) => a.cmp(b),
            (Boolean(a), Boolean(b)) => a.cmp(b),
            (Timestamp(a), Timestamp(b)) => a.cmp(b),
            (Interval(a), Interval(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::BigInt(_) | Value::Double(_) => 1,
            Value::Text(_) => 2,
            Value::Boolean(_) => 3,
            Value::Timestamp(_) => 4,
            Value::Interval(_) => 5,
        }
    }

    /// Bit-exact identity (floats by bit pattern), used to compare rows of the
    /// online and offline paths.
    pub fn bit_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Double(a), Value::Double(b)) => a.to_bits() == b.to_bits(),
            _ => self == other,
        }
    }
}

fn cmp_i64_f64(a: i64, b: f64) -> Ordering {
    if b.is_nan() {
        return Ordering::Less;
    }
    // Exact comparison without losing precision on large integers.
    let af = a as f64;
    match af.partial_cmp(&b).unwrap_or(Ordering::Equal) {
        Ordering::Equal => {
            // af == b; b is integral here and within i64 range unless a was rounded up.
            if b >= 9.223_372_036_854_776e18 {
                Ordering::Less
            } else {
                a.cmp(&(b as i64))
            }
        }
        o => o,
    }
}

/// SQL-agnostic equality used for DISTINCT and grouping: BIGINT 1 equals
/// DOUBLE 1.0, NaN equals NaN, -0.0 equals 0.0.
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Text(a), Value::Text(b)) => Arc::ptr_eq(a, b) || a == b,
            (Value::BigInt(a), Value::BigInt(b)) => a == b,
            (Value::Timestamp(a), Value::Timestamp(b)) => a == b,
            (Value::Null, Value::Null) => true,
            (Value::Double(a), Value::Double(b)) => (a.is_nan() && b.is_nan()) || a == b,
            _ => self.rank() == other.rank() && self.total_cmp(other) == Ordering::Equal,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Value::Null => 0u8.hash(state),
            Value::BigInt(i) => {
                1u8.hash(state);
                (*i as f64).to_bits().hash(state)
            }
            Value::Double(d) => {
                1u8.hash(state);
                let d = if *d == 0.0 { 0.0 } else { *d };
                if d.is_nan() {
                    f64::NAN.to_bits().hash(state)
                } else {
                    d.to_bits().hash(state)
                }
            }
            Value::Text(s) => {
                2u8.hash(state);
                s.hash(state)
            }
            Value::Boolean(b) => {
                3u8.hash(state);
                b.hash(state)
            }
            Value::Timestamp(t) => {
                4u8.hash(state);
                t.hash(state)
            }
            Value::Interval(t) => {
                5u8.hash(state);
                t.hash(state)
            }
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::BigInt(i) => write!(f, "{i}"),
            Value::Double(d) => write!(f, "{d:?}"),
            Value::Text(s) => write!(f, "{s}"),
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Timestamp(t) => f.write_str(&crate::time::format_rfc3339_ms(*t)),
            Value::Interval(ms) => write!(f, "INTERVAL {ms} ms"),
        }
    }
}

/// A named, typed column.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    pub name: String,
    pub data_type: DataType,
}

/// An ordered list of columns: a table's input schema or a view's output.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Schema {
    pub columns: Vec<Column>,
}

impl Schema {
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

/// One output row of a view: values in SELECT order.
pub type Row = Vec<Value>;

/// Compares two rows value by value, floats by bit pattern.
pub fn rows_bit_eq(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.bit_eq(y))
}
