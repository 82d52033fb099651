//! A cluster shard's input: its partition's records, deduplicated,
//! validated and framed for the archive as they arrive.
use super::seen::KeyCheck;
use crate::shard::ShardError;
use crate::shard::ShardWorker;
use lockstep_log::kafka::KafkaRecord;
use std::sync::atomic::Ordering;

use super::ClusterShard;

/// How far ahead of this node's clock a record's timestamp is believed.
pub(super) const MAX_RECORD_CLOCK_SKEW_MS: i64 = 5 * 60_000;

impl ClusterShard {
    /// Applies records of the partition: deduplicated by Idempotency-Key and
    /// event id, decoded (lockstep's bincode rows, or JSON from other
    /// producers) and checked; malformed ones become dead letters of this
    /// checkpoint.
    ///
    /// A record's timestamp is its arrival time: it expires the shard's
    /// deduplication (Idempotency-Keys, event ids) and bounds how far
    /// ahead an event's time may be. A topic lockstep creates has the
    /// broker stamp it (LogAppendTime); on a topic whose producers stamp
    /// their own (CreateTime), a stamp later than this node's clock plus
    /// [`MAX_RECORD_CLOCK_SKEW_MS`] counts as that, so one producer with a
    /// clock in the future cannot expire every key.
    pub(super) fn read_records(
        &mut self,
        w: &mut ShardWorker,
        recs: Vec<KafkaRecord>,
    ) -> Result<(), ShardError> {
        if self.handing_off {
            return Ok(()); // the next owner reads them from the last checkpoint
        }
        let table = w.ctx.table.clone();
        // no record time is trusted past this node's clock + the skew
        let latest = crate::clock::now_ms() + MAX_RECORD_CLOCK_SKEW_MS;
        for mut r in recs {
            if r.offset < w.next_offset {
                continue;
            }
            r.timestamp_ms = r.timestamp_ms.map(|t| t.min(latest));
            if let Some(t) = r.timestamp_ms {
                self.clock_ms = self.clock_ms.max(t);
            }
            if let Some((key, i)) = &r.idempotency {
                let at = r.timestamp_ms.unwrap_or(self.clock_ms);
                match self.seen.check_key(key, *i, r.body_hash, at) {
                    KeyCheck::New => {}
                    KeyCheck::Repeat => {
                        // a retry of a request already applied: skip it
                        if let Some((_, reply)) = self.waiters.remove(key) {
                            let _ = reply.send(Err(ShardError::AlreadyIngested));
                        }
                        w.next_offset = r.offset + 1;
                        continue;
                    }
                    KeyCheck::Reused => {
                        // another request under a key already applied: its
                        // events are kept, as dead letters, never applied
                        let reason = format!("Idempotency-Key `{key}` was already used for a request with a different body; use a new key for new events");
                        w.ctx.metrics.key_reused.inc();
                        w.ctx.metrics.dead_letters.inc();
                        if let Some((_, reply)) = self.waiters.remove(key) {
                            let _ = reply.send(Err(ShardError::KeyReused(reason.clone())));
                        }
                        let raw = match r.bincode {
                            true => lockstep_io::raw::decode_event(&r.value)
                                .map(|row| lockstep_io::render_json(&row, &table.schema))
                                .unwrap_or_else(|_| String::from_utf8_lossy(&r.value).into_owned()),
                            false => String::from_utf8_lossy(&r.value).into_owned(),
                        };
                        self.rows.dead.push((r.offset, reason, raw));
                        w.next_offset = r.offset + 1;
                        continue;
                    }
                }
            }
            let row = self.decode(w, &table, &r);
            // a producer-supplied event id seen before: a duplicate delivery
            let row = row.map(|row| {
                let id = table
                    .event_id
                    .and_then(|col| lockstep_core::dedup::event_id_of(&row[col]));
                let dup = id.is_some_and(|id| {
                    let at = r.timestamp_ms.unwrap_or(self.clock_ms);
                    !self.seen.first_time(id, at)
                });
                (row, dup)
            });
            match row {
                Ok((_, true)) => {
                    w.ctx.metrics.duplicates.inc();
                    // serve-and-ingest of an event applied before
                    if let Some((key, 0)) = &r.idempotency {
                        if let Some((_, reply)) = self.waiters.remove(key) {
                            let _ = reply.send(Err(ShardError::AlreadyIngested));
                        }
                    }
                    w.next_offset = r.offset + 1;
                }
                Ok((row, false)) => {
                    if r.bincode {
                        self.rows
                            .framed
                            .extend_from_slice(&(r.value.len() as u32).to_le_bytes());
                        self.rows.framed.extend_from_slice(&r.value);
                    } else {
                        let b = lockstep_io::raw::encode_event(&row);
                        self.rows
                            .framed
                            .extend_from_slice(&(b.len() as u32).to_le_bytes());
                        self.rows.framed.extend_from_slice(&b);
                    }
                    self.rows.count += 1;
                    if let Some((key, 0)) = &r.idempotency {
                        if let Some((view, reply)) = self.waiters.remove(key) {
                            let _ = reply.send(w.serve_ingested(&view, &row));
                        }
                    }
                    w.apply(r.offset, &row);
                }
                Err(reason) => {
                    w.ctx.metrics.dead_letters.inc();
                    if let Some((key, 0)) = &r.idempotency {
                        if let Some((_, reply)) = self.waiters.remove(key) {
                            let _ = reply.send(Err(ShardError::Refused(reason.to_string())));
                        }
                    }
                    self.rows.dead.push((
                        r.offset,
                        reason.to_string(),
                        String::from_utf8_lossy(&r.value).into_owned(),
                    ));
                    w.next_offset = r.offset + 1;
                }
            }
        }
        w.ctx.processed[w.shard as usize].store(w.next_offset, Ordering::Relaxed);
        Ok(())
    }

    /// A record's event: lockstep's bincode row, or a JSON event from
    /// another producer (parsed and validated); either must belong to this
    /// shard. `Err` is why it is a dead letter.
    fn decode(
        &self,
        w: &ShardWorker,
        table: &lockstep_core::Table,
        r: &KafkaRecord,
    ) -> Result<lockstep_core::value::Row, RecordError> {
        let row = if r.bincode {
            lockstep_io::raw::decode_event(&r.value)?
        } else {
            let text = std::str::from_utf8(&r.value)?;
            self.parser.parse(text.trim()).map_err(RecordError::Json)?
        };
        // lockstep's own encoding is checked too: any producer can write it
        table.validate(&row)?;
        // against the record's append time (the partition's clock): the
        // same decision whenever the partition is read again
        if let Some(now) = r.timestamp_ms {
            table.check_time(&row, now)?;
        }
        match table.shard_of(&row) {
            s if s == w.shard => Ok(row),
            s => Err(RecordError::Partition {
                shard: s,
                partition: w.shard,
            }),
        }
    }
}

/// Why a record of the partition is a dead letter (its text is the
/// reason stored with it).
#[derive(Debug, thiserror::Error)]
pub(super) enum RecordError {
    #[error("{0}")]
    Bincode(#[from] lockstep_io::raw::RawError),
    #[error("not UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    #[error("{0}")]
    Json(String),
    #[error("{0}")]
    Invalid(#[from] lockstep_core::EventError),
    #[error("its key belongs to shard {shard}, but it is in partition {partition}: produce with murmur2 of the key, or through lockstep")]
    Partition { shard: u32, partition: u32 },
}
