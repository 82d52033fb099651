//! The log's record format and the raw archive segments built from it.
//!
//! A log record is one validated event, in table column order, encoded with
//! bincode (standard configuration). A raw segment is a slice of a shard's
//! log in that format, so archiving copies bytes instead of decoding and
//! re-encoding: this magic, the first offset and the record count (u64 LE
//! each), then per record a u32 LE length and the record.

use lockstep_core::value::{Row, Value};

pub const RAW_MAGIC: &[u8; 8] = b"LSRAW01\n";
/// File extension of raw segments.
pub const RAW_EXT: &str = "lsr";
const RAW_HEADER: usize = 24;

/// A record or segment that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawError {
    #[error("undecodable log record: {0}")]
    Record(String),
    #[error("segment {path}: {message}")]
    Segment { path: String, message: String },
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// A log record: the validated event, in table column order.
pub fn encode_event(row: &[Value]) -> Vec<u8> {
    bincode::serde::encode_to_vec(row, config()).expect("events encode")
}

/// Like [`encode_event`], appending to `buf`.
pub fn encode_event_into(row: &[Value], buf: &mut Vec<u8>) -> Result<(), RawError> {
    bincode::serde::encode_into_std_write(row, buf, config())
        .map(|_| ())
        .map_err(|e| RawError::Record(e.to_string()))
}

pub fn decode_event(bytes: &[u8]) -> Result<Row, RawError> {
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(r, _)| r)
        .map_err(|e| RawError::Record(e.to_string()))
}

/// A raw segment of `count` framed records starting at offset `from`.
pub fn raw_segment(from: u64, count: u64, framed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RAW_HEADER + framed.len());
    out.extend_from_slice(RAW_MAGIC);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(framed);
    out
}

/// The first offset, count and framed records of a raw segment.
fn raw_parts<'a>(path: &str, bytes: &'a [u8]) -> Result<(u64, u64, &'a [u8]), RawError> {
    if bytes.len() < RAW_HEADER || &bytes[..8] != RAW_MAGIC {
        return Err(RawError::Segment {
            path: path.to_string(),
            message: "not a lockstep raw log segment".into(),
        });
    }
    let u = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    Ok((u(8), u(16), &bytes[RAW_HEADER..]))
}

/// Decodes a raw segment into (offset, event) pairs in log order.
pub fn decode_raw(path: &str, bytes: &[u8]) -> Result<Vec<(u64, Row)>, RawError> {
    let (from, count, mut rest) = raw_parts(path, bytes)?;
    let truncated = |i: u64| RawError::Segment {
        path: path.to_string(),
        message: format!("truncated at record {i} of {count}"),
    };
    let mut out = Vec::with_capacity(count.min(1 << 20) as usize);
    for i in 0..count {
        if rest.len() < 4 {
            return Err(truncated(i));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let rec = rest.get(4..4 + len).ok_or_else(|| truncated(i))?;
        let row = decode_event(rec).map_err(|e| RawError::Segment {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        out.push((from + i, row));
        rest = &rest[4 + len..];
    }
    Ok(out)
}

/// Concatenates consecutive raw segments (compaction): no record is decoded.
pub fn merge_raw(parts: &[(String, bytes::Bytes)]) -> Result<(Vec<u8>, u64), RawError> {
    let mut framed = Vec::new();
    let mut first = None;
    let mut total = 0;
    for (path, b) in parts {
        let (from, count, recs) = raw_parts(path, b)?;
        first.get_or_insert(from);
        total += count;
        framed.extend_from_slice(recs);
    }
    Ok((raw_segment(first.unwrap_or(0), total, &framed), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_segments_round_trip_and_merge_without_decoding() {
        let frame = |rows: &[Row]| {
            let mut f = Vec::new();
            for r in rows {
                let b = encode_event(r);
                f.extend_from_slice(&(b.len() as u32).to_le_bytes());
                f.extend_from_slice(&b);
            }
            f
        };
        let a = vec![
            vec![Value::BigInt(1), Value::text("x")],
            vec![Value::Null, Value::Timestamp(5)],
        ];
        let b = vec![vec![Value::Double(0.5), Value::Boolean(true)]];
        let sa = bytes::Bytes::from(raw_segment(10, 2, &frame(&a)));
        let sb = bytes::Bytes::from(raw_segment(12, 1, &frame(&b)));
        let got = decode_raw("a", &sa).unwrap();
        assert_eq!(got, vec![(10, a[0].clone()), (11, a[1].clone())]);
        let (merged, n) = merge_raw(&[("a".into(), sa), ("b".into(), sb)]).unwrap();
        assert_eq!(n, 3);
        let got = decode_raw("m", &merged).unwrap();
        assert_eq!(
            got.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            vec![10, 11, 12]
        );
        assert_eq!(got[2].1, b[0]);
        // damage is reported, not misread
        assert!(decode_raw("x", b"not a segment at all, sorry").is_err());
        let mut cut = raw_segment(0, 2, &frame(&a));
        cut.truncate(cut.len() - 3);
        assert!(decode_raw("cut", &cut).is_err());
    }
}
