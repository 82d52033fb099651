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
/// Bytes before a raw segment's first record: magic, first offset, count.
pub const RAW_HEADER: usize = 24;

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

/// The header of a raw segment of `count` records from offset `from`
/// (its framed records follow).
pub fn raw_header(from: u64, count: u64) -> [u8; RAW_HEADER] {
    let mut h = [0u8; RAW_HEADER];
    h[..8].copy_from_slice(RAW_MAGIC);
    h[8..16].copy_from_slice(&from.to_le_bytes());
    h[16..].copy_from_slice(&count.to_le_bytes());
    h
}

/// The first offset and record count in a raw segment's header (its first
/// [`RAW_HEADER`] bytes).
pub fn parse_raw_header(path: &str, header: &[u8]) -> Result<(u64, u64), RawError> {
    raw_parts(path, header).map(|(from, count, _)| (from, count))
}

/// Decodes a raw segment as its bytes arrive, chunk by chunk: memory holds
/// one chunk and one record, whatever the segment's size.
pub struct RawDecoder {
    path: String,
    /// The segment's size: a record said to reach past it is damage (its
    /// length is not trusted to size a buffer).
    size: u64,
    /// Bytes of the header and the records completed.
    done: u64,
    /// Bytes of a header or record not complete yet.
    pending: Vec<u8>,
    /// (first offset, count) once the header is read.
    header: Option<(u64, u64)>,
    decoded: u64,
}

impl RawDecoder {
    /// A decoder of the segment `path` of `size` bytes.
    pub fn new(path: &str, size: u64) -> RawDecoder {
        RawDecoder {
            path: path.to_string(),
            size,
            done: 0,
            pending: Vec::new(),
            header: None,
            decoded: 0,
        }
    }

    fn damaged(&self, message: String) -> RawError {
        RawError::Segment {
            path: self.path.clone(),
            message,
        }
    }

    /// Takes the next chunk of the segment; `each` gets every record it
    /// completes, with its offset, in order.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        each: &mut dyn FnMut(u64, Row) -> Result<(), RawError>,
    ) -> Result<(), RawError> {
        loop {
            let need = match self.header {
                None => RAW_HEADER,
                Some((_, count)) if self.decoded == count => {
                    return match chunk.is_empty() {
                        true => Ok(()),
                        false => Err(self.damaged(format!("bytes after its {count} records"))),
                    };
                }
                Some(_) if self.pending.len() < 4 => 4,
                Some(_) => {
                    let len = u32::from_le_bytes(self.pending[..4].try_into().expect("4 bytes"));
                    if self.done + 4 + len as u64 > self.size {
                        return Err(self.damaged(format!(
                            "record {} of {len} bytes reaches past the segment's end",
                            self.decoded
                        )));
                    }
                    4 + len as usize
                }
            };
            if self.pending.len() < need {
                if chunk.is_empty() {
                    return Ok(());
                }
                let take = (need - self.pending.len()).min(chunk.len());
                self.pending.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                continue;
            }
            match self.header {
                None => {
                    self.header = Some(parse_raw_header(&self.path, &self.pending)?);
                    self.done += RAW_HEADER as u64;
                    self.pending.clear();
                }
                Some((from, _)) if need > 4 => {
                    let row = decode_event(&self.pending[4..])
                        .map_err(|e| self.damaged(e.to_string()))?;
                    each(from + self.decoded, row)?;
                    self.decoded += 1;
                    self.done += need as u64;
                    self.pending.clear();
                }
                // a length of 0: an empty record is not an event
                Some(_) => return Err(self.damaged("a record of 0 bytes".into())),
            }
        }
    }

    /// The end of the segment: every record its header counts was read.
    /// Returns the first offset and the count.
    pub fn finish(self) -> Result<(u64, u64), RawError> {
        match self.header {
            Some((from, count)) if self.decoded == count => Ok((from, count)),
            Some((_, count)) => {
                Err(self.damaged(format!("truncated at record {} of {count}", self.decoded)))
            }
            None => Err(self.damaged("not a lockstep raw log segment".into())),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(rows: &[Row]) -> Vec<u8> {
        let mut f = Vec::new();
        for r in rows {
            let b = encode_event(r);
            f.extend_from_slice(&(b.len() as u32).to_le_bytes());
            f.extend_from_slice(&b);
        }
        f
    }

    #[test]
    fn raw_segments_round_trip() {
        let a = vec![
            vec![Value::BigInt(1), Value::text("x")],
            vec![Value::Null, Value::Timestamp(5)],
        ];
        let sa = raw_segment(10, 2, &frame(&a));
        let got = decode_raw("a", &sa).unwrap();
        assert_eq!(got, vec![(10, a[0].clone()), (11, a[1].clone())]);
        assert_eq!(&raw_header(10, 2)[..], &sa[..RAW_HEADER]);
        assert_eq!(parse_raw_header("a", &sa[..RAW_HEADER]).unwrap(), (10, 2));
        // damage is reported, not misread
        assert!(decode_raw("x", b"not a segment at all, sorry").is_err());
        let mut cut = raw_segment(0, 2, &frame(&a));
        cut.truncate(cut.len() - 3);
        assert!(decode_raw("cut", &cut).is_err());
    }

    #[test]
    fn a_segment_decodes_the_same_fed_in_chunks_of_any_size() {
        let rows: Vec<Row> = (0..50)
            .map(|i| vec![Value::BigInt(i), Value::text(&"y".repeat(i as usize * 7))])
            .collect();
        let seg = raw_segment(7, 50, &frame(&rows));
        let whole = decode_raw("s", &seg).unwrap();
        for size in [1, 3, 4, 24, 25, 1000, seg.len()] {
            let mut d = RawDecoder::new("s", seg.len() as u64);
            let mut got = Vec::new();
            for c in seg.chunks(size) {
                d.feed(c, &mut |o, r| {
                    got.push((o, r));
                    Ok(())
                })
                .unwrap();
            }
            assert_eq!(d.finish().unwrap(), (7, 50), "chunks of {size}");
            assert_eq!(got, whole, "chunks of {size}");
        }
        let none = &mut |_, _| Ok(());
        let size = seg.len() as u64;
        // cut short
        let mut d = RawDecoder::new("s", size);
        d.feed(&seg[..seg.len() - 2], none).unwrap();
        assert!(d
            .finish()
            .unwrap_err()
            .to_string()
            .contains("truncated at record 49 of 50"));
        // bytes past the records its header counts
        let mut longer = seg.clone();
        longer.extend_from_slice(&frame(&rows[..1]));
        let mut d = RawDecoder::new("s", longer.len() as u64);
        let e = d.feed(&longer, none).unwrap_err().to_string();
        assert!(e.contains("bytes after its 50 records"), "{e}");
        // a damaged length is refused before anything is buffered for it
        let mut bad = seg.clone();
        bad[RAW_HEADER..RAW_HEADER + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut d = RawDecoder::new("s", size);
        let e = d
            .feed(&bad[..RAW_HEADER + 8], none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reaches past the segment's end"), "{e}");
        // not a segment
        let mut d = RawDecoder::new("s", 100);
        assert!(d.feed(b"not a segment at all, sorry", none).is_err());
        let mut d = RawDecoder::new("s", 100);
        d.feed(b"LSRA", none).unwrap();
        assert!(d.finish().is_err());
    }
}
