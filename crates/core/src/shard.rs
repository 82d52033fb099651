//! Shard assignment: murmur2 of the key bytes, made positive, modulo S.
//!
//! This is the partitioner of the Java Kafka client and librdkafka's
//! `murmur2_random`, so an external producer keyed by the table key writes
//! straight to the partition lockstep reads as that shard.

use crate::value::Value;

/// Kafka's murmur2 (seed 0x9747b28c) over `data`, as a signed 32-bit value.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The shard of a key: `(murmur2(bytes) & 0x7fffffff) % shards`.
pub fn shard_of_bytes(bytes: &[u8], shards: u32) -> u32 {
    ((murmur2(bytes) as u32) & 0x7fff_ffff) % shards
}

/// The shard of a key value. TEXT keys hash their UTF-8 bytes; other types
/// hash their canonical text form (BIGINT `42` hashes the bytes `"42"`), which
/// is what a Kafka producer using a string serializer would send.
pub fn shard_of(key: &Value, shards: u32) -> u32 {
    match key {
        Value::Text(s) => shard_of_bytes(s.as_bytes(), shards),
        other => shard_of_bytes(other.to_string().as_bytes(), shards),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values of the Java client's `Utils.murmur2`.
    #[test]
    fn matches_kafka_reference_values() {
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn shard_is_in_range_and_stable() {
        for i in 0..1000 {
            let k = Value::text(&format!("u{i}"));
            let s = shard_of(&k, 16);
            assert!(s < 16);
            assert_eq!(s, shard_of(&k, 16));
        }
    }
}
