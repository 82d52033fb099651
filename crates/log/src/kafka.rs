//! The Kafka log of a cluster: the table's topic, one partition per shard.
//!
//! Records are keyed by the table key and sent to the partition lockstep's
//! shard function picks (murmur2 of the key bytes, as the Java client and
//! librdkafka's `murmur2_random` do), so a Kafka producer keyed by the table
//! key writes straight to the right shard, and lockstep's own ingest is an
//! ordinary idempotent producer.
//!
//! Each shard is read by manual assignment of its partition, with no consumer
//! group and no committed offsets: where a shard is in its partition is part
//! of its checkpoint, kept by lockstep. Exactly once therefore needs neither
//! Kafka transactions nor `read_committed` isolation.
//!
//! Unlike the embedded log this is not a [`crate::Log`]: Kafka offsets are
//! assigned by the broker (an append is not one contiguous range when
//! several producers write), and records are removed by retention, not by
//! the reader.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::time::Duration;

mod reader;
pub use reader::ShardReader;

/// Header naming how a record's value is encoded: absent means a JSON
/// event (what external producers write); `bincode` means a validated row
/// in table column order (what lockstep's ingest writes).
pub const ENCODING_HEADER: &str = "lockstep-encoding";
/// Header carrying the ingest request's Idempotency-Key, and the record's
/// index in that request (as `key/index`).
pub const IDEMPOTENCY_HEADER: &str = "lockstep-idempotency";
/// Header carrying a hash of the ingest request's body (16 hex digits), so
/// a shard can tell a retry from another request reusing its key.
pub const BODY_HASH_HEADER: &str = "lockstep-body-hash";

#[derive(Debug, thiserror::Error)]
pub enum KafkaLogError {
    #[error("describing topic `{topic}`: {message}")]
    TopicId { topic: String, message: String },
    #[error("kafka ({brokers}): {source}")]
    Kafka { brokers: String, source: KafkaError },
    #[error("topic `{topic}` has {found} partitions but the table has {expected} shards; create the table with shards = {found} or use another topic")]
    Partitions {
        topic: String,
        found: u32,
        expected: u32,
    },
    #[error("kafka ({brokers}): {message}")]
    Other { brokers: String, message: String },
    /// The records a shard needs next are not in its partition any more
    /// (or not yet again): retention or a truncation overtook the shard's
    /// checkpoint, or the topic was deleted and created again.
    #[error("partition {shard} of `{topic}` cannot be read from offset {next}: {why}")]
    Lost {
        topic: String,
        shard: u32,
        next: u64,
        why: String,
    },
}

impl KafkaLogError {
    /// Records are missing from the partition: retrying cannot help.
    pub fn is_lost(&self) -> bool {
        matches!(self, KafkaLogError::Lost { .. })
    }
}

/// Where the log lives.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port,…`
    pub brokers: String,
    pub topic: String,
    /// Partitions = the table's shards.
    pub partitions: u32,
    /// Replication factor for a topic lockstep creates (capped to the
    /// brokers there are, with a warning).
    pub replication: i32,
    /// `min.insync.replicas` for a topic lockstep creates (capped to the
    /// replication factor): with `acks=all`, a write is acknowledged once
    /// this many replicas have it.
    pub min_insync_replicas: i32,
    /// Client id prefix (the node's id), visible in broker logs.
    pub client_id: String,
    /// librdkafka properties for every client (TLS, SASL, timeouts…),
    /// set after lockstep's defaults; those lockstep's guarantees rest on
    /// are refused ([`check_properties`]).
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// A topic of `partitions` partitions, created with replication 1 if
    /// missing (set `replication` and `min_insync_replicas` for more).
    pub fn new(brokers: &str, topic: &str, partitions: u32, client_id: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            partitions,
            replication: 1,
            min_insync_replicas: 1,
            client_id: client_id.to_string(),
            properties: Vec::new(),
        }
    }
}

/// librdkafka properties lockstep sets itself and its guarantees rest on
/// (exactly once through idempotent, fully acknowledged produce; offsets
/// kept in checkpoints, not in consumer groups).
pub const PROTECTED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "transactional.id",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
];

/// Checks librdkafka properties before a node starts: none of
/// [`PROTECTED_PROPERTIES`], and each a property librdkafka knows with a
/// value it takes (a client is created, not connected). `Err` says which
/// and why, in librdkafka's words.
pub fn check_properties(props: &[(String, String)]) -> Result<(), String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", "127.0.0.1:9");
    for (k, v) in props {
        if PROTECTED_PROPERTIES.contains(&k.as_str()) {
            return Err(format!(
                "`{k}` is set by lockstep (its exactly-once rests on it); leave it out"
            ));
        }
        c.set(k, v);
    }
    c.create::<rdkafka::producer::BaseProducer>()
        .map(|_| ())
        .map_err(|e| match e {
            // librdkafka's words and the key, never the value: it may be
            // a password (a misspelt key, a Java-only property)
            KafkaError::ClientConfig(_, desc, key, _) => {
                format!("`{key}`: {desc} (value not shown)")
            }
            e => e.to_string(),
        })
}

/// A record read from a shard's partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub offset: u64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// The value is a bincode row (lockstep's ingest), else JSON.
    pub bincode: bool,
    /// `(Idempotency-Key, index in its request)`.
    pub idempotency: Option<(String, u32)>,
    /// The hash of the request's body the record came in (records written
    /// before the header existed have none).
    pub body_hash: Option<u64>,
    /// The record's timestamp (ms since the epoch), if the broker has one.
    pub timestamp_ms: Option<i64>,
}

/// One record to produce.
pub struct OutRecord<'a> {
    pub shard: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub bincode: bool,
    pub idempotency: Option<(&'a str, u32)>,
    /// A hash of the request's body (sent with `idempotency`).
    pub body_hash: Option<u64>,
    /// The record's CreateTime (ms since the epoch); `None`: now. A topic
    /// lockstep creates uses LogAppendTime, so the broker overrides it.
    pub timestamp_ms: Option<i64>,
}

/// The producer side, shared by a node's ingest: cheap to clone.
#[derive(Clone)]
pub struct KafkaLog {
    cfg: std::sync::Arc<KafkaConfig>,
    /// The producer and how many times it was made: an idempotent
    /// producer that hit a fatal error (a broker restarted on its storage
    /// answered `ProducerFenced`) is unusable for good, and is made anew.
    producer: std::sync::Arc<std::sync::RwLock<(u64, FutureProducer<BrokerErrors>)>>,
    errors: BrokerErrors,
}

/// A client context that remembers the last specific error librdkafka
/// reported (a refused TLS handshake, a failed SASL exchange), so that a
/// start-up failure can say why instead of only "broker transport failure".
#[derive(Clone, Default)]
pub struct BrokerErrors {
    last: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl BrokerErrors {
    /// The last error that said more than "all brokers are down".
    pub fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ClientContext for BrokerErrors {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!("librdkafka: {error}: {reason}");
        let generic = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        );
        if !generic {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        }
    }
}

/// How long a `produce`'s records may wait for their acknowledgements:
/// past the producer's `message.timeout.ms` (30 s), by which every record
/// is acknowledged or failed.
const PRODUCE_BOUND: Duration = Duration::from_secs(40);

/// How long a `produce` may wait for room in the producer's queue: under
/// an HTTP request's 30 s deadline, so a producer stuck with a full queue
/// is seen (and made anew) by the request that waited on it.
const ENQUEUE_BOUND: Duration = Duration::from_secs(20);

/// Drops a producer on a blocking thread when there is a runtime (its
/// drop flushes and joins librdkafka's thread).
fn drop_off_runtime(producer: FutureProducer<BrokerErrors>) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || drop(producer));
        }
        Err(_) => drop(producer),
    }
}

/// The error code of a send the broker refused for the producer's id or
/// epoch: only a new producer gets past it.
fn fenced(e: &KafkaLogError) -> Option<RDKafkaErrorCode> {
    let KafkaLogError::Kafka { source, .. } = e else {
        return None;
    };
    source.rdkafka_error_code().filter(|c| {
        matches!(
            c,
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerIdMapping
        )
    })
}

/// An idempotent producer, acks from every in-sync replica.
fn new_producer(
    cfg: &KafkaConfig,
    errors: &BrokerErrors,
) -> Result<FutureProducer<BrokerErrors>, KafkaError> {
    base_config(cfg, "producer")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("batch.num.messages", "10000")
        .set("message.timeout.ms", "30000")
        .create_with_context(errors.clone())
}

fn base_config(cfg: &KafkaConfig, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", format!("{}-{role}", cfg.client_id))
        // fail fast on a wrong address instead of retrying forever silently
        .set("socket.connection.setup.timeout.ms", "10000")
        .set("topic.metadata.refresh.interval.ms", "10000");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

impl KafkaLog {
    /// Connects, creates the topic with one partition per shard if it does
    /// not exist, and checks its partition count if it does.
    pub async fn connect(cfg: KafkaConfig) -> Result<KafkaLog, KafkaLogError> {
        let kafka = |source| KafkaLogError::Kafka {
            brokers: cfg.brokers.clone(),
            source,
        };
        let errors = BrokerErrors::default();
        let producer = new_producer(&cfg, &errors).map_err(kafka)?;
        let log = KafkaLog {
            cfg: std::sync::Arc::new(cfg),
            producer: std::sync::Arc::new(std::sync::RwLock::new((0, producer))),
            errors,
        };
        log.ensure_topic().await?;
        Ok(log)
    }

    /// The topic's identity: the id the broker gave it when it was created
    /// (a topic deleted and created again under the same name gets a new
    /// one); `None` if the broker does not report topic ids. Blocks for at
    /// most `timeout`.
    pub fn topic_id(&self, timeout: Duration) -> Result<Option<String>, KafkaLogError> {
        use rdkafka::bindings as rd;
        use std::ffi::{CStr, CString};
        let failed = |what: String| KafkaLogError::TopicId {
            topic: self.cfg.topic.clone(),
            message: what,
        };
        let name = CString::new(self.cfg.topic.as_str()).map_err(|e| failed(e.to_string()))?;
        let producer = self.producer().1;
        let rk = producer.client().native_ptr();
        // one description at a time per process (librdkafka's main thread
        // crashed when a node's shards asked at once)
        static DESCRIBING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = DESCRIBING.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the collection, queue and event are created and
        // destroyed here, in order; every pointer read from the result is
        // owned by the event and copied before the event is destroyed; the
        // client handle outlives the call (`self` holds it).
        unsafe {
            let mut names = [name.as_ptr()];
            let topics = rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1);
            let queue = rd::rd_kafka_queue_new(rk);
            let options = rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            );
            rd::rd_kafka_DescribeTopics(rk, topics, options, queue);
            let ev = rd::rd_kafka_queue_poll(queue, timeout.as_millis() as i32);
            let out = if ev.is_null() {
                Err(failed(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                )))
            } else {
                let out = describe_result(ev).map_err(failed);
                rd::rd_kafka_event_destroy(ev);
                out
            };
            rd::rd_kafka_queue_destroy(queue);
            rd::rd_kafka_AdminOptions_destroy(options);
            rd::rd_kafka_TopicCollection_destroy(topics);
            return out;
        }

        /// The topic id in a DescribeTopics result event.
        unsafe fn describe_result(ev: *mut rd::rd_kafka_event_t) -> Result<Option<String>, String> {
            let err = rd::rd_kafka_event_error(ev);
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                let msg = rd::rd_kafka_event_error_string(ev);
                return Err(if msg.is_null() {
                    format!("{err:?}")
                } else {
                    CStr::from_ptr(msg).to_string_lossy().into_owned()
                });
            }
            let res = rd::rd_kafka_event_DescribeTopics_result(ev);
            if res.is_null() {
                return Err("not a DescribeTopics result".into());
            }
            let mut n = 0usize;
            let list = rd::rd_kafka_DescribeTopics_result_topics(res, &mut n);
            if n == 0 || list.is_null() {
                return Err("the broker described no topic".into());
            }
            let t = *list;
            let e = rd::rd_kafka_TopicDescription_error(t);
            if !e.is_null()
                && rd::rd_kafka_error_code(e) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                let name = rd::rd_kafka_error_name(e);
                return Err(CStr::from_ptr(name).to_string_lossy().into_owned());
            }
            let id = rd::rd_kafka_TopicDescription_topic_id(t);
            if id.is_null() {
                return Ok(None);
            }
            let zero = rd::rd_kafka_Uuid_most_significant_bits(id) == 0
                && rd::rd_kafka_Uuid_least_significant_bits(id) == 0;
            if zero {
                return Ok(None);
            }
            let text = rd::rd_kafka_Uuid_base64str(id);
            if text.is_null() {
                return Ok(None);
            }
            Ok(Some(CStr::from_ptr(text).to_string_lossy().into_owned()))
        }
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.cfg
    }

    fn partitions_now(&self) -> Result<Option<u32>, KafkaLogError> {
        let md = self
            .producer()
            .1
            .client()
            .fetch_metadata(Some(&self.cfg.topic), Duration::from_secs(10))
            .map_err(|source| KafkaLogError::Kafka {
                brokers: self.cfg.brokers.clone(),
                source,
            })?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == self.cfg.topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as u32))
    }

    /// Brokers in the cluster, as its metadata lists them.
    fn broker_count(&self) -> Result<i32, KafkaLogError> {
        let md = self
            .producer()
            .1
            .client()
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(|source| match self.errors.last() {
                // say why the brokers could not be reached (TLS, SASL)
                Some(why) => KafkaLogError::Other {
                    brokers: self.cfg.brokers.clone(),
                    message: format!(
                        "{source}; the last broker error was: {why} (TLS and SASL are set with kafka.properties or --kafka-property)"
                    ),
                },
                None => KafkaLogError::Kafka {
                    brokers: self.cfg.brokers.clone(),
                    source,
                },
            })?;
        Ok(md.brokers().len() as i32)
    }

    async fn ensure_topic(&self) -> Result<(), KafkaLogError> {
        let cfg = &self.cfg;
        let admin: AdminClient<DefaultClientContext> =
            base_config(cfg, "admin")
                .create()
                .map_err(|source| KafkaLogError::Kafka {
                    brokers: cfg.brokers.clone(),
                    source,
                })?;
        let brokers = self.broker_count()?;
        let replication = cfg.replication.min(brokers).max(1);
        if replication < cfg.replication {
            tracing::warn!(
                topic = %cfg.topic,
                "replication factor {} asked for, but the cluster has {brokers} broker(s): a new topic gets {replication}",
                cfg.replication
            );
        }
        let min_insync = cfg.min_insync_replicas.min(replication).max(1);
        if min_insync < cfg.min_insync_replicas {
            tracing::warn!(
                topic = %cfg.topic,
                "min.insync.replicas {} asked for, above the replication factor {replication}: a new topic gets {min_insync}",
                cfg.min_insync_replicas
            );
        }
        let min_insync_text = min_insync.to_string();
        let topic = NewTopic::new(
            &cfg.topic,
            cfg.partitions as i32,
            TopicReplication::Fixed(replication),
        )
        .set("min.insync.replicas", &min_insync_text)
        // the broker stamps each record when it appends it: shards expire
        // deduplication by that clock, which no producer can move
        .set("message.timestamp.type", "LogAppendTime");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &opts)
            .await
            .map_err(|source| KafkaLogError::Kafka {
                brokers: cfg.brokers.clone(),
                source,
            })?;
        for r in results {
            match r {
                Ok(_) => {
                    tracing::info!(topic = %cfg.topic, partitions = cfg.partitions, "created the topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(KafkaLogError::Other {
                        brokers: cfg.brokers.clone(),
                        message: format!("cannot create topic `{t}`: {code}"),
                    })
                }
            }
        }
        // metadata can lag the creation for a moment
        let mut found = None;
        for _ in 0..50 {
            found = self.partitions_now()?;
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match found {
            Some(n) if n == cfg.partitions => Ok(()),
            Some(n) => Err(KafkaLogError::Partitions {
                topic: cfg.topic.clone(),
                found: n,
                expected: cfg.partitions,
            }),
            None => Err(KafkaLogError::Other {
                brokers: cfg.brokers.clone(),
                message: format!("topic `{}` did not appear after creation", cfg.topic),
            }),
        }
    }

    /// Produces records and waits until the broker acknowledged all of them
    /// (acks=all); returns each record's offset, in input order. Records of
    /// one shard keep their order. On error some records may have been
    /// written: the caller retries with the same idempotency key.
    ///
    /// The acknowledgements are awaited by a task of their own, bounded by
    /// [`PRODUCE_BOUND`]: a caller that gives up first (an HTTP request at
    /// its deadline) does not stop the watch on a stuck producer.
    pub async fn produce(&self, records: &[OutRecord<'_>]) -> Result<Vec<u64>, KafkaLogError> {
        let (made, producer) = self.producer();
        let waits = match self.enqueue(made, &producer, records).await {
            Ok(w) => w,
            Err(e) => {
                self.renew_if_broken(made, &producer, &e);
                self.release(made, producer);
                return Err(e);
            }
        };
        let me = self.clone();
        let watch = tokio::spawn(async move {
            // every record is acknowledged or failed within
            // message.timeout.ms (30 s); a producer still holding them well
            // after is stuck (seen after the broker restarted): made anew
            let r = match tokio::time::timeout(PRODUCE_BOUND, me.delivered(waits)).await {
                Ok(r) => r,
                Err(_) => {
                    me.renew_producer(
                        made,
                        RDKafkaErrorCode::MessageTimedOut,
                        "records neither acknowledged nor failed within 40 s",
                    );
                    return Err(KafkaLogError::Other {
                        brokers: me.cfg.brokers.clone(),
                        message: format!(
                            "the broker did not acknowledge the records within {} s",
                            PRODUCE_BOUND.as_secs()
                        ),
                    });
                }
            };
            if let Err(e) = &r {
                me.renew_if_broken(made, &producer, e);
            }
            me.release(made, producer);
            r
        });
        watch.await.unwrap_or_else(|e| {
            Err(KafkaLogError::Other {
                brokers: self.cfg.brokers.clone(),
                message: format!("waiting for the broker's acknowledgements failed: {e}"),
            })
        })
    }

    /// After a failed send: a producer with a fatal error, or one the
    /// broker no longer knows (it restarted), is made anew.
    fn renew_if_broken(
        &self,
        made: u64,
        producer: &FutureProducer<BrokerErrors>,
        e: &KafkaLogError,
    ) {
        if let Some((code, why)) = producer.client().fatal_error() {
            self.renew_producer(made, code, &why);
        } else if let Some(code) = fenced(e) {
            // every later send fails the same way
            self.renew_producer(made, code, "the broker refused the producer's id or epoch");
        }
    }

    /// Lets go of generation `made` of the producer. The last clone of a
    /// replaced one is dropped on a blocking thread: dropping a producer
    /// flushes and joins its thread, which would hold up a runtime worker.
    fn release(&self, made: u64, producer: FutureProducer<BrokerErrors>) {
        if self.generation() != made {
            drop_off_runtime(producer);
        }
    }

    /// How many times the producer was made anew.
    fn generation(&self) -> u64 {
        self.producer.read().unwrap_or_else(|p| p.into_inner()).0
    }

    /// The current producer, and its generation.
    fn producer(&self) -> (u64, FutureProducer<BrokerErrors>) {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces generation `made` of the producer, which hit a fatal error
    /// (once: another request may have replaced it already). Records it
    /// may have written are deduplicated when the request is retried under
    /// its idempotency key.
    fn renew_producer(&self, made: u64, code: RDKafkaErrorCode, why: &str) {
        let mut p = self.producer.write().unwrap_or_else(|p| p.into_inner());
        if p.0 != made {
            return;
        }
        match new_producer(&self.cfg, &self.errors) {
            Ok(fresh) => {
                tracing::warn!(
                    "the Kafka producer hit a fatal error ({code:?}: {why}): made a new one"
                );
                let (_, old) = std::mem::replace(&mut *p, (made + 1, fresh));
                drop(p);
                drop_off_runtime(old);
            }
            Err(e) => tracing::error!(
                "the Kafka producer hit a fatal error ({code:?}: {why}) and a new one could not be made: {e}"
            ),
        }
    }

    /// Hands the records to the producer, in order; waits while its queue
    /// is full, at most [`ENQUEUE_BOUND`].
    async fn enqueue(
        &self,
        made: u64,
        producer: &FutureProducer<BrokerErrors>,
        records: &[OutRecord<'_>],
    ) -> Result<Vec<DeliveryFuture>, KafkaLogError> {
        let started = std::time::Instant::now();
        let mut waits = Vec::with_capacity(records.len());
        for r in records {
            let mut headers = OwnedHeaders::new_with_capacity(3);
            if r.bincode {
                headers = headers.insert(Header {
                    key: ENCODING_HEADER,
                    value: Some("bincode"),
                });
            }
            let idem;
            if let Some((k, i)) = r.idempotency {
                idem = format!("{k}/{i}");
                headers = headers.insert(Header {
                    key: IDEMPOTENCY_HEADER,
                    value: Some(idem.as_str()),
                });
            }
            let hash;
            if let Some(h) = r.body_hash {
                hash = format!("{h:016x}");
                headers = headers.insert(Header {
                    key: BODY_HASH_HEADER,
                    value: Some(hash.as_str()),
                });
            }
            let mut rec = FutureRecord::to(&self.cfg.topic)
                .partition(r.shard as i32)
                .key(r.key)
                .payload(r.value)
                .headers(headers);
            if let Some(t) = r.timestamp_ms {
                rec = rec.timestamp(t);
            }
            loop {
                match producer.send_result(rec) {
                    Ok(w) => {
                        waits.push(w);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        let replaced = self.generation() != made;
                        if replaced || started.elapsed() > ENQUEUE_BOUND {
                            if !replaced {
                                self.renew_producer(
                                    made,
                                    RDKafkaErrorCode::QueueFull,
                                    "its queue stayed full for 20 s",
                                );
                            }
                            return Err(KafkaLogError::Other {
                                brokers: self.cfg.brokers.clone(),
                                message: "the producer's queue stayed full (the broker is not acknowledging); made a new producer".into(),
                            });
                        }
                        rec = back;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((source, _)) => {
                        return Err(KafkaLogError::Kafka {
                            brokers: self.cfg.brokers.clone(),
                            source,
                        })
                    }
                }
            }
        }
        Ok(waits)
    }

    /// Each record's offset once all are acknowledged; the first failure.
    async fn delivered(&self, waits: Vec<DeliveryFuture>) -> Result<Vec<u64>, KafkaLogError> {
        let mut offsets = Vec::with_capacity(waits.len());
        for w in waits {
            match w.await {
                Ok(Ok(d)) => offsets.push(d.offset as u64),
                Ok(Err((source, _))) => {
                    return Err(KafkaLogError::Kafka {
                        brokers: self.cfg.brokers.clone(),
                        source,
                    })
                }
                Err(_) => {
                    return Err(KafkaLogError::Other {
                        brokers: self.cfg.brokers.clone(),
                        message: "the producer was dropped before delivery".into(),
                    })
                }
            }
        }
        Ok(offsets)
    }

    /// Deletes `topic` (operators' tools and tests: a topic deleted and
    /// created again is what a shard must notice).
    pub async fn delete_topic(brokers: &str, topic: &str) -> Result<(), KafkaLogError> {
        let cfg = KafkaConfig::new(brokers, topic, 1, "lockstep-admin");
        let admin: AdminClient<DefaultClientContext> = base_config(&cfg, "admin")
            .create()
            .map_err(|source| KafkaLogError::Kafka {
                brokers: brokers.to_string(),
                source,
            })?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .delete_topics(&[topic], &opts)
            .await
            .map_err(|source| KafkaLogError::Kafka {
                brokers: brokers.to_string(),
                source,
            })?;
        for r in results {
            if let Err((t, code)) = r {
                return Err(KafkaLogError::Other {
                    brokers: brokers.to_string(),
                    message: format!("cannot delete topic `{t}`: {code}"),
                });
            }
        }
        Ok(())
    }

    /// A reader of one shard's partition from `from` on.
    pub fn reader(&self, shard: u32, from: u64) -> Result<ShardReader, KafkaLogError> {
        ShardReader::open(&self.cfg, shard, from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The broker `.ci/run` starts; the test is skipped without one unless
    /// `LOCKSTEP_REQUIRE_KAFKA` is set.
    fn brokers() -> Option<String> {
        match std::env::var("LOCKSTEP_TEST_KAFKA") {
            Ok(b) if !b.is_empty() => Some(b),
            _ => {
                assert!(
                    std::env::var("LOCKSTEP_REQUIRE_KAFKA").is_err(),
                    "LOCKSTEP_REQUIRE_KAFKA is set but LOCKSTEP_TEST_KAFKA is not"
                );
                eprintln!("skipped: no LOCKSTEP_TEST_KAFKA broker");
                None
            }
        }
    }

    /// librdkafka is built with TLS and SASL: the properties of a
    /// SASL_SSL client with each mechanism lockstep documents are taken
    /// (a build without them refuses `security.protocol=SASL_SSL`), and a
    /// protected property or an unknown one is refused by name.
    #[test]
    fn tls_and_sasl_properties_are_built_in() {
        let props = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            check_properties(&props(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", mechanism),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
                ("ssl.endpoint.identification.algorithm", "https"),
            ]))
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        }
        check_properties(&props(&[("security.protocol", "SSL")])).unwrap();
        let e = check_properties(&props(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "NO-SUCH-MECH"),
        ]))
        .unwrap_err();
        assert!(
            e.contains("sasl.mechanism") || e.contains("NO-SUCH-MECH"),
            "{e}"
        );
        let e = check_properties(&props(&[("acks", "1")])).unwrap_err();
        assert!(e.contains("`acks`"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_created_again_has_another_id() {
        let Some(b) = brokers() else { return };
        let topic = unique("topic-id");
        let log = KafkaLog::connect(cfg(&b, &topic, 2)).await.unwrap();
        let first = log.topic_id(Duration::from_secs(10)).unwrap();
        assert!(first.is_some(), "the broker reports topic ids");
        assert_eq!(log.topic_id(Duration::from_secs(10)).unwrap(), first);
        KafkaLog::delete_topic(&b, &topic).await.unwrap();
        let again = KafkaLog::connect(cfg(&b, &topic, 2)).await.unwrap();
        let second = again.topic_id(Duration::from_secs(10)).unwrap();
        assert!(second.is_some());
        assert_ne!(first, second, "a topic created again is another topic");
    }

    fn unique(name: &str) -> String {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("{name}-{}-{t}", std::process::id())
    }

    fn cfg(brokers: &str, topic: &str, partitions: u32) -> KafkaConfig {
        KafkaConfig::new(brokers, topic, partitions, "test")
    }

    fn read_all(r: &mut ShardReader, n: usize) -> Vec<KafkaRecord> {
        let mut out = Vec::new();
        let mut idle = 0;
        while out.len() < n && idle < 200 {
            let got = r.poll(n - out.len(), Duration::from_millis(100)).unwrap();
            if got.is_empty() {
                idle += 1;
            }
            out.extend(got);
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn produce_then_read_each_shard_in_order_with_headers() {
        let Some(b) = brokers() else { return };
        let topic = unique("log-roundtrip");
        let log = KafkaLog::connect(cfg(&b, &topic, 3)).await.unwrap();
        let keys: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
        let values: Vec<String> = (0..60).map(|i| format!("{{\"n\":{i}}}")).collect();
        let recs: Vec<OutRecord> = (0..60)
            .map(|i| OutRecord {
                shard: lockstep_core::shard::shard_of_bytes(keys[i].as_bytes(), 3),
                key: keys[i].as_bytes(),
                value: values[i].as_bytes(),
                bincode: i % 2 == 0,
                idempotency: (i < 10).then_some(("req-1", i as u32)),
                body_hash: (i < 10).then_some(u64::MAX - i as u64),
                timestamp_ms: None,
            })
            .collect();
        let offsets = log.produce(&recs).await.unwrap();
        assert_eq!(offsets.len(), 60);
        for shard in 0..3 {
            let want: Vec<usize> = (0..60).filter(|&i| recs[i].shard == shard).collect();
            let mut r = log.reader(shard, 0).unwrap();
            let got = read_all(&mut r, want.len());
            assert_eq!(got.len(), want.len(), "shard {shard}");
            for (g, &i) in got.iter().zip(&want) {
                assert_eq!(g.value, values[i].as_bytes(), "shard {shard}: log order");
                assert_eq!(g.key.as_deref(), Some(keys[i].as_bytes()));
                assert_eq!(g.offset, offsets[i]);
                assert_eq!(g.bincode, i % 2 == 0);
                assert_eq!(
                    g.idempotency,
                    (i < 10).then(|| ("req-1".to_string(), i as u32))
                );
                assert_eq!(g.body_hash, (i < 10).then_some(u64::MAX - i as u64));
            }
            assert_eq!(r.cached_end(), got.last().map(|g| g.offset + 1));
            // a reader that starts in the middle sees the suffix exactly
            if got.len() > 2 {
                let mut r = log.reader(shard, got[2].offset).unwrap();
                let tail = read_all(&mut r, got.len() - 2);
                assert_eq!(tail, got[2..].to_vec());
                r.seek(got[1].offset).unwrap();
                let again = read_all(&mut r, 1);
                assert_eq!(again[0], got[1]);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_existing_topic_with_another_partition_count_is_refused() {
        let Some(b) = brokers() else { return };
        let topic = unique("log-partitions");
        KafkaLog::connect(cfg(&b, &topic, 2)).await.unwrap();
        KafkaLog::connect(cfg(&b, &topic, 2)).await.unwrap();
        match KafkaLog::connect(cfg(&b, &topic, 4)).await {
            Err(KafkaLogError::Partitions {
                found: 2,
                expected: 4,
                ..
            }) => {}
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a 2-partition topic was accepted for 4 shards"),
        }
    }
}
