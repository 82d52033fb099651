//! JSON lines: the event reader, the row writer, and the shared encoding.
//!
//! One encoding is used everywhere a row becomes JSON (output files, late
//! events, dead-letter `raw` of Parquet rows), so that what lockstep writes it
//! can also read back, bit for bit:
//! BIGINT → integer, DOUBLE → shortest round-trip number (non-finite values as
//! the strings `"NaN"`, `"Infinity"`, `"-Infinity"`, since JSON has no such
//! numbers), TEXT → string, BOOLEAN → true/false, TIMESTAMP → RFC 3339 string
//! with milliseconds, NULL → null. Keys are written in schema order.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use lockstep_core::time::format_rfc3339_ms;
use lockstep_core::value::{Schema, Value};
use serde_json::ser::Formatter;

use crate::coerce::{parse_json_row, Columns};
use crate::error::{BadRecord, IoError, Location};
use crate::RowSink;

/// Read buffer for input files; large enough that syscalls are rare.
const READ_BUFFER: usize = 1 << 16;

/// Appends `s` as a JSON string literal (quotes and escapes included).
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends one value in the shared encoding.
pub(crate) fn push_json_value(out: &mut Vec<u8>, value: &Value) {
    // Writing into a Vec<u8> cannot fail, so the io::Results below are moot.
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::BigInt(i) | Value::Interval(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Double(d) if d.is_nan() => out.extend_from_slice(b"\"NaN\""),
        Value::Double(d) if d.is_infinite() => {
            let s: &[u8] = if *d > 0.0 {
                b"\"Infinity\""
            } else {
                b"\"-Infinity\""
            };
            out.extend_from_slice(s);
        }
        // serde_json's formatter uses ryu: shortest text that parses back to
        // the same bits, including "-0.0".
        Value::Double(d) => {
            let _ = serde_json::ser::CompactFormatter.write_f64(out, *d);
        }
        Value::Text(s) => push_json_str(out, s),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Timestamp(ms) => {
            out.push(b'"');
            out.extend_from_slice(format_rfc3339_ms(*ms).as_bytes());
            out.push(b'"');
        }
    }
}

/// Appends `row` as one JSON object, keys from `keys` (pre-encoded `"name":`).
fn push_json_row(out: &mut Vec<u8>, row: &[Value], keys: &[Vec<u8>]) {
    out.push(b'{');
    for (i, (key, value)) in keys.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key);
        push_json_value(out, value);
    }
    out.push(b'}');
}

/// Encodes every column name once as `"name":`, so writing a row is copies.
fn encode_keys(schema: &Schema) -> Vec<Vec<u8>> {
    schema
        .columns
        .iter()
        .map(|c| {
            let mut k = Vec::with_capacity(c.name.len() + 3);
            push_json_str(&mut k, &c.name);
            k.push(b':');
            k
        })
        .collect()
}

/// Renders a row as a JSON object in the JSON lines output encoding.
///
/// Each value is encoded by what it is, not by the schema's type, so a row
/// that failed conversion (carrying the offending text) still renders
/// faithfully. If the row is shorter than the schema the missing columns are
/// left out; extra values are ignored.
pub fn render_json(row: &[Value], schema: &Schema) -> String {
    let mut out = Vec::with_capacity(16 * schema.len() + 2);
    push_json_row(&mut out, row, &encode_keys(schema));
    // Only valid UTF-8 was pushed: escapes are ASCII, the rest came from &str.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Writes rows as JSON lines. Memory use is one line buffer.
pub(crate) struct JsonlWriter {
    path: PathBuf,
    out: BufWriter<File>,
    keys: Vec<Vec<u8>>,
    line: Vec<u8>,
    rows: u64,
}

impl JsonlWriter {
    pub fn create(path: &Path, schema: &Schema) -> Result<JsonlWriter, IoError> {
        let file = File::create(path).map_err(|source| IoError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(JsonlWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(READ_BUFFER, file),
            keys: encode_keys(schema),
            line: Vec::with_capacity(256),
            rows: 0,
        })
    }

    fn write_error(&self, source: std::io::Error) -> IoError {
        IoError::Write {
            path: self.path.clone(),
            source,
        }
    }
}

impl RowSink for JsonlWriter {
    fn write(&mut self, row: &[Value]) -> Result<(), IoError> {
        if row.len() != self.keys.len() {
            return Err(IoError::RowShape {
                path: self.path.clone(),
                expected: self.keys.len(),
                got: row.len(),
            });
        }
        self.line.clear();
        push_json_row(&mut self.line, row, &self.keys);
        self.line.push(b'\n');
        if let Err(e) = self.out.write_all(&self.line) {
            return Err(self.write_error(e));
        }
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64, IoError> {
        if let Err(e) = self.out.flush() {
            return Err(self.write_error(e));
        }
        Ok(self.rows)
    }
}

/// Streams events from a JSON lines file, one line at a time.
pub(crate) struct JsonlEvents {
    path: PathBuf,
    reader: BufReader<File>,
    columns: Columns,
    buf: Vec<u8>,
    line: u64,
}

impl JsonlEvents {
    pub fn location(&self) -> Location {
        Location::Line(self.line)
    }
}

impl JsonlEvents {
    pub fn open(path: &Path, schema: &Schema) -> Result<JsonlEvents, IoError> {
        let file = File::open(path).map_err(|source| IoError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(JsonlEvents {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(READ_BUFFER, file),
            columns: Columns::new(schema),
            buf: Vec::with_capacity(1024),
            line: 0,
        })
    }

    /// The next record; `Ok(None)` at end of file. Blank lines are skipped
    /// (they still count for line numbers).
    pub fn next_record(&mut self) -> Result<Option<Result<Vec<Value>, BadRecord>>, IoError> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| IoError::Read {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            let mut bytes = &self.buf[..];
            if let Some(b) = bytes.strip_suffix(b"\n") {
                bytes = b;
            }
            if let Some(b) = bytes.strip_suffix(b"\r") {
                bytes = b;
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let location = Location::Line(self.line);
            let text = match std::str::from_utf8(bytes) {
                Ok(text) => text,
                Err(e) => {
                    return Ok(Some(Err(BadRecord {
                        location,
                        reason: format!("not valid UTF-8: {e}"),
                        raw: String::from_utf8_lossy(bytes).into_owned(),
                    })));
                }
            };
            let mut row = vec![Value::Null; self.columns.len()];
            return Ok(Some(match parse_json_row(text, &self.columns, &mut row) {
                Ok(()) => Ok(row),
                Err(reason) => Err(BadRecord {
                    location,
                    reason,
                    raw: text.to_owned(),
                }),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_core::value::{Column, DataType};

    fn schema() -> Schema {
        let col = |name: &str, data_type| Column {
            name: name.into(),
            data_type,
        };
        Schema {
            columns: vec![
                col("id", DataType::BigInt),
                col("x", DataType::Double),
                col("name", DataType::Text),
                col("ok", DataType::Boolean),
                col("ts", DataType::Timestamp),
            ],
        }
    }

    #[test]
    fn renders_every_type_in_schema_order() {
        let row = vec![
            Value::BigInt(-7),
            Value::Double(-0.0),
            Value::text("a\"b\\c\n\u{1}é"),
            Value::Boolean(false),
            Value::Timestamp(-1),
        ];
        assert_eq!(
            render_json(&row, &schema()),
            r#"{"id":-7,"x":-0.0,"name":"a\"b\\c\n\u0001é","ok":false,"ts":"1969-12-31T23:59:59.999Z"}"#
        );
    }

    #[test]
    fn renders_non_finite_and_nulls() {
        let row = vec![
            Value::Null,
            Value::Double(f64::NEG_INFINITY),
            Value::Null,
            Value::Null,
            Value::Null,
        ];
        assert_eq!(
            render_json(&row, &schema()),
            r#"{"id":null,"x":"-Infinity","name":null,"ok":null,"ts":null}"#
        );
        let mut out = Vec::new();
        push_json_value(&mut out, &Value::Double(f64::NAN));
        push_json_value(&mut out, &Value::Double(f64::INFINITY));
        push_json_value(&mut out, &Value::Double(1e300));
        assert_eq!(out, b"\"NaN\"\"Infinity\"1e+300");
    }

    #[test]
    fn escaped_text_parses_back_with_serde() {
        let s = "tab\t, quote\", nul\u{0}, bell\u{7}, emoji 🦀";
        let mut out = Vec::new();
        push_json_str(&mut out, s);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, s);
    }
}
