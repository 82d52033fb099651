//! Turning file values into typed [`Value`]s: JSON values and CSV fields.
//!
//! JSON is deserialized straight into a row with a serde seed instead of
//! building a `serde_json::Map` first: keys are matched against the schema
//! while parsing (no key `String`s are allocated), unknown fields are skipped
//! without building them, and only TEXT values allocate (their `Arc<str>`).
//! That keeps JSON ingest fast without a hand-written parser.

use std::fmt;
use std::sync::Arc;

use lockstep_core::time::parse_timestamp;
use lockstep_core::value::{DataType, Row, Schema, Value};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Longest excerpt of an offending string quoted in an error message.
const QUOTE_LIMIT: usize = 60;

/// Column names and types of a table schema, as the readers need them.
#[derive(Debug, Clone)]
pub(crate) struct Columns {
    pub names: Vec<String>,
    pub types: Vec<DataType>,
}

impl Columns {
    pub fn new(schema: &Schema) -> Columns {
        Columns {
            names: schema.columns.iter().map(|c| c.name.clone()).collect(),
            types: schema.columns.iter().map(|c| c.data_type).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Case-insensitive lookup, like `Schema::index_of`: SQL identifiers are
    /// case-insensitive, and producers disagree about `userId` vs `userid`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        // Exact match first: the common case, and cheaper than folding case.
        self.names
            .iter()
            .position(|n| n == name)
            .or_else(|| self.names.iter().position(|n| n.eq_ignore_ascii_case(name)))
    }
}

/// Quotes a string for an error message, shortened if long.
pub(crate) fn quote(s: &str) -> String {
    if s.chars().count() <= QUOTE_LIMIT {
        format!("{s:?}")
    } else {
        let short: String = s.chars().take(QUOTE_LIMIT).collect();
        format!("{short:?}…")
    }
}

/// Parses a timestamp written as text: RFC 3339 and the other forms of
/// `parse_timestamp`, plus `<n>ms`, which is how `format_rfc3339_ms` spells
/// instants outside the calendar range, so that everything the writers
/// produce reads back.
pub(crate) fn parse_timestamp_text(s: &str) -> Option<i64> {
    parse_timestamp(s).or_else(|| s.trim().strip_suffix("ms")?.parse().ok())
}

fn bad_timestamp(s: &str) -> String {
    format!(
        "cannot parse TIMESTAMP from {}; use RFC 3339 such as 2024-01-01T00:00:00Z, \
         or epoch milliseconds",
        quote(s)
    )
}

/// An f64 that is a whole number inside the i64 range, as an i64.
fn integral_f64(f: f64) -> Option<i64> {
    // 2^63 is exactly representable; i64::MAX is not.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f)).then_some(f as i64)
}

/// Converts one CSV field (already known to be non-empty) to `ty`.
/// Numbers, booleans and timestamps tolerate surrounding spaces; TEXT keeps
/// the field exactly as written.
pub(crate) fn coerce_text(field: &str, ty: DataType) -> Result<Value, String> {
    let t = field.trim();
    let value = match ty {
        DataType::Text => return Ok(Value::Text(Arc::from(field))),
        DataType::BigInt => t.parse::<i64>().ok().map(Value::BigInt),
        DataType::Double => t.parse::<f64>().ok().map(Value::Double),
        DataType::Boolean => parse_bool(t).map(Value::Boolean),
        DataType::Timestamp => {
            let digits = t.strip_prefix('-').unwrap_or(t);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                match t.parse::<i64>() {
                    Ok(ms) => Some(Value::Timestamp(ms)),
                    Err(_) => return Err(format!("epoch milliseconds {t} out of range")),
                }
            } else {
                match parse_timestamp_text(t) {
                    Some(ms) => Some(Value::Timestamp(ms)),
                    None => return Err(bad_timestamp(field)),
                }
            }
        }
        DataType::Interval | DataType::Null => None,
    };
    value.ok_or_else(|| format!("expected {ty}, got {}", quote(field)))
}

fn parse_bool(s: &str) -> Option<bool> {
    const TRUE: [&str; 3] = ["true", "t", "1"];
    const FALSE: [&str; 3] = ["false", "f", "0"];
    if TRUE.iter().any(|w| w.eq_ignore_ascii_case(s)) {
        Some(true)
    } else if FALSE.iter().any(|w| w.eq_ignore_ascii_case(s)) {
        Some(false)
    } else {
        None
    }
}

/// Parses one JSON line into `row` (pre-filled with NULLs, one per column).
///
/// Returns `Err(reason)` when the line is not a JSON object or a value does
/// not fit its column. On a type mismatch parsing goes on to the end of the
/// object (so syntax errors later in the line still win: they are the more
/// fundamental problem) and the first mismatch is reported.
pub(crate) fn parse_json_row(line: &str, columns: &Columns, row: &mut Row) -> Result<(), String> {
    let mut problem = None;
    let mut de = serde_json::Deserializer::from_str(line);
    let seed = RowSeed {
        columns,
        row,
        problem: &mut problem,
    };
    let parsed = seed.deserialize(&mut de).and_then(|()| de.end());
    if let Err(e) = parsed {
        return Err(format!("not a JSON object: {e}"));
    }
    match problem {
        Some(reason) => Err(reason),
        None => Ok(()),
    }
}

struct RowSeed<'a> {
    columns: &'a Columns,
    row: &'a mut Row,
    problem: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(self.columns))? {
            let Some(i) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let ty = self.columns.types[i];
            match map.next_value_seed(ValueSeed(ty))? {
                Ok(v) => self.row[i] = v,
                Err(got) => {
                    if self.problem.is_none() {
                        let name = &self.columns.names[i];
                        *self.problem = Some(format!("column `{name}`: {got}"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Resolves an object key to a schema column index without allocating.
struct KeySeed<'a>(&'a Columns);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.index_of(key))
    }
}

/// Converts one JSON value to the column type. The inner `Err` is the
/// mismatch description (a bad record, not a parse failure).
struct ValueSeed(DataType);

type Coerced = Result<Value, String>;

impl ValueSeed {
    fn mismatch(&self, got: fmt::Arguments) -> Coerced {
        Err(format!("expected {}, got {got}", self.0))
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Coerced;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Coerced, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Coerced;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Coerced, E> {
        Ok(Ok(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Coerced, E> {
        Ok(Ok(Value::Null))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Coerced, E> {
        Ok(match self.0 {
            DataType::Boolean => Ok(Value::Boolean(b)),
            _ => self.mismatch(format_args!("boolean {b}")),
        })
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Coerced, E> {
        Ok(match self.0 {
            DataType::BigInt => Ok(Value::BigInt(i)),
            DataType::Double => Ok(Value::Double(i as f64)),
            DataType::Timestamp => Ok(Value::Timestamp(i)),
            _ => self.mismatch(format_args!("number {i}")),
        })
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Coerced, E> {
        match i64::try_from(u) {
            Ok(i) => self.visit_i64(i),
            Err(_) if self.0 == DataType::Double => Ok(Ok(Value::Double(u as f64))),
            Err(_) => Ok(self.mismatch(format_args!("number {u} (too large)"))),
        }
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Coerced, E> {
        Ok(match self.0 {
            DataType::Double => Ok(Value::Double(f)),
            DataType::BigInt => match integral_f64(f) {
                Some(i) => Ok(Value::BigInt(i)),
                None => self.mismatch(format_args!("number {f} (not a whole number)")),
            },
            DataType::Timestamp => match integral_f64(f) {
                Some(i) => Ok(Value::Timestamp(i)),
                None => self.mismatch(format_args!("number {f} (not whole milliseconds)")),
            },
            _ => self.mismatch(format_args!("number {f}")),
        })
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Coerced, E> {
        Ok(match self.0 {
            DataType::Text => Ok(Value::Text(Arc::from(s))),
            DataType::Timestamp => match parse_timestamp_text(s) {
                Some(ms) => Ok(Value::Timestamp(ms)),
                None => Err(bad_timestamp(s)),
            },
            // The JSON lines writer spells non-finite DOUBLEs as strings
            // (JSON has no NaN); accept them back.
            DataType::Double => match s {
                "NaN" => Ok(Value::Double(f64::NAN)),
                "Infinity" => Ok(Value::Double(f64::INFINITY)),
                "-Infinity" => Ok(Value::Double(f64::NEG_INFINITY)),
                _ => self.mismatch(format_args!("string {}", quote(s))),
            },
            _ => self.mismatch(format_args!("string {}", quote(s))),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Coerced, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.mismatch(format_args!("an array")))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Coerced, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.mismatch(format_args!("an object")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_text_coercions() {
        assert_eq!(coerce_text(" 42 ", DataType::BigInt), Ok(Value::BigInt(42)));
        assert!(coerce_text("4.2", DataType::BigInt).is_err());
        assert_eq!(
            coerce_text("T", DataType::Boolean),
            Ok(Value::Boolean(true))
        );
        assert_eq!(
            coerce_text("0", DataType::Boolean),
            Ok(Value::Boolean(false))
        );
        assert!(coerce_text("yes", DataType::Boolean).is_err());
        assert_eq!(
            coerce_text("-1500", DataType::Timestamp),
            Ok(Value::Timestamp(-1500))
        );
        assert_eq!(
            coerce_text("1970-01-01T00:00:01Z", DataType::Timestamp),
            Ok(Value::Timestamp(1000))
        );
        assert!(coerce_text("99999999999999999999", DataType::Timestamp).is_err());
        assert_eq!(
            coerce_text(" padded ", DataType::Text),
            Ok(Value::text(" padded "))
        );
    }

    #[test]
    fn integral_floats_only_in_range() {
        assert_eq!(integral_f64(3.0), Some(3));
        assert_eq!(integral_f64(-9_223_372_036_854_775_808.0), Some(i64::MIN));
        assert_eq!(integral_f64(9_223_372_036_854_775_808.0), None);
        assert_eq!(integral_f64(0.5), None);
        assert_eq!(integral_f64(f64::NAN), None);
    }

    #[test]
    fn long_strings_are_shortened_in_messages() {
        let long = "x".repeat(500);
        let q = quote(&long);
        assert!(q.len() < 80, "{q}");
        assert!(q.ends_with('…'));
    }
}
