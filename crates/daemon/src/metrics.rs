//! Prometheus metrics (prometheus-client), served as text on `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

pub struct Metrics {
    registry: Mutex<Registry>,
    pub ingested: Counter,
    pub rejected: Counter,
    pub dead_letters: Counter,
    pub dead_letters_dropped: Counter,
    /// Records skipped as repeats of an event id already applied.
    pub duplicates: Counter,
    pub late: Counter,
    pub idempotent_replays: Counter,
    pub checkpoints: Counter,
    pub checkpoint_failures: Counter,
    pub restarts: Counter,
    /// Requests answered 503 because a bound was reached.
    pub refused: Counter,
    pub serve_seconds: Histogram,
    pub checkpoint_seconds: Histogram,
    pub state_bytes: Gauge,
    /// Shards that cannot go on reading their log.
    pub shards_failed: Gauge,
    /// Records skipped over offset gaps (`cluster.on_log_gap = "skip"`).
    pub log_records_skipped: Counter,
    pub log_lag: Gauge,
    /// Idempotency-Keys and event ids the shards remember.
    pub dedup_entries: Gauge,
    /// Of those, forgotten before their TTL (`max_dedup_entries`).
    pub dedup_evicted: Counter,
    /// Records with an Idempotency-Key used before for another body.
    pub key_reused: Counter,
    /// Cluster: the Raft term this member has seen.
    pub raft_term: Gauge,
    /// Cluster: 1 while this member leads (coordinates), else 0.
    pub raft_leader: Gauge,
    /// Cluster: the last control-plane log index this member applied.
    pub raft_applied_index: Gauge,
    /// Cluster: the replicated state's size, encoded.
    pub control_plane_state_bytes: Gauge,
    /// Cluster: members in the cluster state, by state.
    pub members_down: Gauge,
    /// Cluster: bytes of the last control-plane snapshot.
    pub raft_snapshot_bytes: Gauge,
    /// Cluster: control-plane log entries not yet purged.
    pub raft_log_entries: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("lockstep")),
            ingested: Counter::default(),
            rejected: Counter::default(),
            dead_letters: Counter::default(),
            dead_letters_dropped: Counter::default(),
            duplicates: Counter::default(),
            late: Counter::default(),
            idempotent_replays: Counter::default(),
            checkpoints: Counter::default(),
            checkpoint_failures: Counter::default(),
            restarts: Counter::default(),
            refused: Counter::default(),
            // 10 µs .. ~5 s
            serve_seconds: Histogram::new(exponential_buckets(1e-5, 2.0, 20)),
            checkpoint_seconds: Histogram::new(exponential_buckets(1e-3, 2.0, 16)),
            state_bytes: Gauge::default(),
            shards_failed: Gauge::default(),
            log_records_skipped: Counter::default(),
            log_lag: Gauge::default(),
            dedup_entries: Gauge::default(),
            dedup_evicted: Counter::default(),
            key_reused: Counter::default(),
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_applied_index: Gauge::default(),
            control_plane_state_bytes: Gauge::default(),
            members_down: Gauge::default(),
            raft_snapshot_bytes: Gauge::default(),
            raft_log_entries: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().expect("metrics registry");
            r.register(
                "ingested_events",
                "Events appended to the log (durable)",
                m.ingested.clone(),
            );
            r.register(
                "rejected_events",
                "Events refused at ingest (sent to the dead-letter store)",
                m.rejected.clone(),
            );
            r.register(
                "dead_letters",
                "Records in the dead-letter store",
                m.dead_letters.clone(),
            );
            r.register(
                "dead_letters_dropped",
                "Dead letters removed by retention (max_dead_letters, dead_letter_retention)",
                m.dead_letters_dropped.clone(),
            );
            r.register(
                "duplicate_events",
                "Records skipped as repeats of an event id already applied (tables with event_id)",
                m.duplicates.clone(),
            );
            r.register(
                "late_events",
                "Events below their shard's watermark (late output)",
                m.late.clone(),
            );
            r.register(
                "idempotent_replays",
                "Ingest requests answered from an earlier request with the same Idempotency-Key",
                m.idempotent_replays.clone(),
            );
            r.register(
                "checkpoints",
                "Shard checkpoints committed",
                m.checkpoints.clone(),
            );
            r.register(
                "checkpoint_failures",
                "Shard checkpoints that failed (retried at the next interval)",
                m.checkpoint_failures.clone(),
            );
            r.register(
                "shard_restarts",
                "Shard actors restarted by the supervisor",
                m.restarts.clone(),
            );
            r.register(
                "refused_requests",
                "Requests answered 503 because a bound was reached (max_concurrent_requests, request_timeout, max_shard_backlog) or a views apply was under way",
                m.refused.clone(),
            );
            r.register(
                "serving_latency_seconds",
                "Feature serving latency inside the node",
                m.serve_seconds.clone(),
            );
            r.register(
                "checkpoint_duration_seconds",
                "Time to write one shard checkpoint",
                m.checkpoint_seconds.clone(),
            );
            r.register(
                "state_bytes",
                "Checkpointed state on disk",
                m.state_bytes.clone(),
            );
            r.register(
                "shards_failed",
                "Shards that cannot go on reading their log: records they need are gone from the topic (see /v1/status)",
                m.shards_failed.clone(),
            );
            r.register(
                "log_records_skipped",
                "Records skipped over offset gaps in the topic (cluster.on_log_gap = \"skip\")",
                m.log_records_skipped.clone(),
            );
            r.register(
                "log_lag_events",
                "Events in the log not yet processed by their shard",
                m.log_lag.clone(),
            );
            r.register(
                "dedup_entries",
                "Idempotency-Keys and event ids this node's shards remember (cluster)",
                m.dedup_entries.clone(),
            );
            r.register(
                "dedup_evicted",
                "Idempotency-Keys and event ids forgotten before idempotency_ttl because a shard held max_dedup_entries",
                m.dedup_evicted.clone(),
            );
            r.register(
                "idempotency_key_reused",
                "Requests or records refused because their Idempotency-Key was used before for another body",
                m.key_reused.clone(),
            );
            r.register(
                "raft_term",
                "Cluster: the control plane's Raft term as this member sees it (a term that keeps growing is leader churn)",
                m.raft_term.clone(),
            );
            r.register(
                "raft_leader",
                "Cluster: 1 while this member leads the control plane (and coordinates), else 0",
                m.raft_leader.clone(),
            );
            r.register(
                "raft_applied_index",
                "Cluster: the last control-plane log index this member applied",
                m.raft_applied_index.clone(),
            );
            r.register(
                "control_plane_state_bytes",
                "Cluster: the replicated state's size (membership, owners, checkpoint and segment manifests, backfill jobs), encoded",
                m.control_plane_state_bytes.clone(),
            );
            r.register(
                "members_down",
                "Cluster: members the coordinator has marked down",
                m.members_down.clone(),
            );
            r.register(
                "raft_snapshot_bytes",
                "Cluster: bytes of the last control-plane snapshot this member built or installed",
                m.raft_snapshot_bytes.clone(),
            );
            r.register(
                "raft_log_entries",
                "Cluster: control-plane log entries this member keeps (a snapshot lets it purge older ones)",
                m.raft_log_entries.clone(),
            );
        }
        m
    }

    /// Registers what only a cluster member measures: the time its state
    /// machine takes to apply committed entries.
    pub fn register_control_plane(&self, stats: &lockstep_cluster::store::SmStats) {
        let mut r = self.registry.lock().expect("metrics registry");
        r.register(
            "raft_apply_seconds",
            "Cluster: seconds to apply one batch of committed control-plane entries and publish the state",
            stats.apply_seconds.clone(),
        );
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let r = self.registry.lock().expect("metrics registry");
        encode(&mut s, &r).expect("writing to a String");
        s
    }
}
