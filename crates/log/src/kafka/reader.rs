//! One shard's reader of its partition: by manual assignment (no consumer
//! group, no committed offsets), in offset order, with gaps and lost
//! records reported instead of skipped over silently.

use super::{
    base_config, KafkaConfig, KafkaLogError, KafkaRecord, BODY_HASH_HEADER, ENCODING_HEADER,
    IDEMPOTENCY_HEADER,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// How long a gap in a partition's offsets must last before a reader that
/// does not skip gaps fails on it: a broker may publish a batch's offsets
/// before its records are readable (tansu 0.6's S3 engine does), and such
/// a gap fills. A reader that skips gaps (compacted topics, transactional
/// producers: gaps by design) skips at once.
const GAP_GRACE: Duration = Duration::from_secs(10);

/// Reads one shard's partition in order, by manual assignment.
pub struct ShardReader {
    consumer: BaseConsumer,
    topic: String,
    brokers: String,
    shard: u32,
    /// The next offset to return.
    next: u64,
    /// Offset gaps are skipped (counted) instead of failing the read.
    skip_gaps: bool,
    /// A record read past a gap, returned once the gap is accepted.
    held: Option<KafkaRecord>,
    /// When the gap before `held` was first seen: it is accepted (skipped
    /// or reported lost) only once it outlasted [`GAP_GRACE`].
    gap_since: Option<Instant>,
    /// Records skipped over by gaps so far (with `skip_gaps`).
    pub skipped: u64,
}

impl ShardReader {
    pub(super) fn open(
        cfg: &KafkaConfig,
        shard: u32,
        from: u64,
    ) -> Result<ShardReader, KafkaLogError> {
        let kafka = |source| KafkaLogError::Kafka {
            brokers: cfg.brokers.clone(),
            source,
        };
        let consumer: BaseConsumer = base_config(cfg, &format!("shard{shard}"))
            // required by librdkafka even though no group is joined and no
            // offset is committed: positions live in lockstep's checkpoints
            .set("group.id", format!("lockstep-{}", cfg.topic))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("fetch.wait.max.ms", "20")
            .set("fetch.min.bytes", "1")
            .create()
            .map_err(kafka)?;
        let mut reader = ShardReader {
            consumer,
            topic: cfg.topic.clone(),
            brokers: cfg.brokers.clone(),
            shard,
            next: from,
            skip_gaps: false,
            held: None,
            gap_since: None,
            skipped: 0,
        };
        reader.seek(from)?;
        Ok(reader)
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Offset gaps (records deleted by compaction, or a transactional
    /// producer's markers) are skipped and counted in `skipped` instead of
    /// failing [`ShardReader::poll`].
    pub fn skip_gaps(&mut self, skip: bool) {
        self.skip_gaps = skip;
    }

    fn lost(&self, why: String) -> KafkaLogError {
        KafkaLogError::Lost {
            topic: self.topic.clone(),
            shard: self.shard,
            next: self.next,
            why,
        }
    }

    /// The next offset [`ShardReader::poll`] returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Restarts reading at `offset`.
    pub fn seek(&mut self, offset: u64) -> Result<(), KafkaLogError> {
        self.held = None;
        self.gap_since = None;
        self.assign(offset)
    }

    /// Fetches from `offset` on.
    fn assign(&mut self, offset: u64) -> Result<(), KafkaLogError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &self.topic,
            self.shard as i32,
            Offset::Offset(offset as i64),
        )
        .map_err(|source| KafkaLogError::Kafka {
            brokers: self.brokers.clone(),
            source,
        })?;
        self.consumer
            .assign(&tpl)
            .map_err(|source| KafkaLogError::Kafka {
                brokers: self.brokers.clone(),
                source,
            })?;
        self.next = offset;
        Ok(())
    }

    /// The partition's high watermark as of the last fetch (the offset the
    /// next record will get), without a request to the broker. (Asking the
    /// broker with ListOffsets is not used: the test broker, tansu, answers
    /// it with the last batch's base offset + 1.)
    pub fn cached_end(&self) -> Option<u64> {
        let topic = std::ffi::CString::new(self.topic.as_str()).ok()?;
        let (mut lo, mut hi) = (-1i64, -1i64);
        // SAFETY: the client pointer is valid while `self.consumer` lives,
        // the topic is a NUL-terminated string that outlives the call, and
        // librdkafka only writes the two out-parameters (it reads its own
        // cache: rdkafka has no safe wrapper for this call).
        let rc = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                self.shard as i32,
                &mut lo,
                &mut hi,
            )
        };
        (rc == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && hi >= 0)
            .then_some(hi as u64)
    }

    /// Up to `max` records, waiting at most `timeout` for the first; an
    /// empty batch means nothing arrived in time.
    ///
    /// Fails with [`KafkaLogError::Lost`] when records the shard needs are
    /// gone: the broker has no offset to go on from (retention deleted it),
    /// the partition now ends below the next offset (the topic was created
    /// again, or truncated), or a record arrives past a gap (unless gaps
    /// are skipped).
    pub fn poll(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<KafkaRecord>, KafkaLogError> {
        let mut out = Vec::new();
        if let Some(r) = self.held.take() {
            if !self.skip_gaps {
                if self.gap_since.is_none() {
                    tracing::warn!(
                        shard = self.shard,
                        "the partition has no record at offset {} but one at {}: reading the gap again for {} s before the shard fails on it",
                        self.next,
                        r.offset,
                        GAP_GRACE.as_secs()
                    );
                    self.gap_since = Some(Instant::now());
                }
                let since = self.gap_since.unwrap_or_else(Instant::now);
                if since.elapsed() < GAP_GRACE {
                    // a broker may publish a batch's offsets before its
                    // records land: read again from the missing offset
                    std::thread::sleep(timeout.min(Duration::from_millis(50)));
                    self.assign(self.next)?;
                    return Ok(Vec::new());
                }
                let found = r.offset;
                self.held = Some(r);
                return Err(self.lost(format!(
                    "the next record in the partition is at offset {found}: {} records are missing (deleted by retention or compaction, or never there); set cluster.on_log_gap = \"skip\" to go on without them",
                    found - self.next
                )));
            }
            self.skipped += r.offset - self.next;
            self.next = r.offset + 1;
            self.gap_since = None;
            out.push(r);
        }
        let mut wait = timeout;
        while out.len() < max {
            let Some(m) = self.consumer.poll(wait) else {
                break;
            };
            let m = match m {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(_)) => break,
                Err(
                    KafkaError::MessageConsumption(
                        code @ (RDKafkaErrorCode::AutoOffsetReset
                        | RDKafkaErrorCode::OffsetOutOfRange),
                    )
                    | KafkaError::MessageConsumptionFatal(
                        code @ (RDKafkaErrorCode::AutoOffsetReset
                        | RDKafkaErrorCode::OffsetOutOfRange),
                    ),
                ) => {
                    return Err(self.lost(format!(
                        "the broker has no such offset ({code}): retention or a truncation deleted records before this shard read them"
                    )))
                }
                Err(source) => {
                    return Err(KafkaLogError::Kafka {
                        brokers: self.brokers.clone(),
                        source,
                    })
                }
            };
            wait = Duration::ZERO;
            let offset = m.offset() as u64;
            if offset < self.next {
                continue; // a duplicate delivery after a seek
            }
            let mut bincode = false;
            let mut idempotency = None;
            let mut body_hash = None;
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    match (h.key, h.value) {
                        (ENCODING_HEADER, Some(b"bincode")) => bincode = true,
                        (IDEMPOTENCY_HEADER, Some(v)) => {
                            idempotency = std::str::from_utf8(v)
                                .ok()
                                .and_then(|s| s.rsplit_once('/'))
                                .and_then(|(k, i)| Some((k.to_string(), i.parse().ok()?)));
                        }
                        (BODY_HASH_HEADER, Some(v)) => {
                            body_hash = std::str::from_utf8(v)
                                .ok()
                                .and_then(|s| u64::from_str_radix(s, 16).ok());
                        }
                        _ => {}
                    }
                }
            }
            let rec = KafkaRecord {
                offset,
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                bincode,
                idempotency,
                body_hash,
                timestamp_ms: m.timestamp().to_millis(),
            };
            if offset > self.next {
                // a gap: decided at the next poll, after what came before
                self.held = Some(rec);
                break;
            }
            out.push(rec);
            self.next = offset + 1;
            self.gap_since = None;
        }
        if out.is_empty() && self.held.is_none() {
            if let Some(end) = self.cached_end() {
                if end < self.next {
                    return Err(self.lost(format!(
                        "the partition ends at offset {end}, below what this shard already read: the topic was deleted and created again, or truncated"
                    )));
                }
            }
        }
        Ok(out)
    }
}
