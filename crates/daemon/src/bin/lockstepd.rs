//! lockstepd: the lockstep node daemon.

use clap::Parser;
use lockstep_daemon::config::{self, Overrides};
use lockstep_daemon::http;
use lockstep_daemon::node::Node;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The lockstep node daemon. Every config key can be given as a flag named
/// after it; flags win over the file.
#[derive(Parser, Debug)]
#[command(name = "lockstepd", version)]
struct Args {
    /// TOML config file (see config/single-node.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve the API over HTTPS with this certificate (PEM, its chain).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// The CA that signed every node's certificate: nodes call each other
    /// over mutual TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Checks the configuration (file, flags, environment) and the
    /// pipeline, says what it found and exits (0: good, 2: not) without
    /// starting the node.
    #[arg(long)]
    check_config: bool,
    #[arg(long)]
    node_id: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP listen address (default 127.0.0.1:7700).
    #[arg(long)]
    listen: Option<String>,
    /// API token (or LOCKSTEP_TOKEN): the admin's, every endpoint.
    #[arg(long)]
    token: Option<String>,
    /// A file holding the admin token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A token that may only ingest (or LOCKSTEP_INGEST_TOKEN).
    #[arg(long)]
    ingest_token: Option<String>,
    #[arg(long)]
    ingest_token_file: Option<PathBuf>,
    /// A token that may only read features (or LOCKSTEP_SERVE_TOKEN).
    #[arg(long)]
    serve_token: Option<String>,
    #[arg(long)]
    serve_token_file: Option<PathBuf>,
    /// Pipeline .sql file.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// file:///dir or s3://bucket/prefix (default: <data-dir>/objects).
    #[arg(long)]
    object_store: Option<String>,
    #[arg(long)]
    checkpoint_interval: Option<String>,
    /// "always" or "every <duration>".
    #[arg(long)]
    fsync: Option<String>,
    #[arg(long)]
    idempotency_ttl: Option<String>,
    /// Most events one ingest request may carry (default 100000).
    #[arg(long)]
    max_events_per_request: Option<u64>,
    /// Largest event in bytes (default 1048576).
    #[arg(long)]
    max_event_bytes: Option<u64>,
    /// Requests handled at once; more get 503 (default 512).
    #[arg(long)]
    max_concurrent_requests: Option<u64>,
    /// Dead letters kept at most (default 1000000).
    #[arg(long)]
    max_dead_letters: Option<u64>,
    /// How long dead letters are kept (default 7 days).
    #[arg(long)]
    dead_letter_retention: Option<String>,
    /// Connections open at once; more are closed at once (default 1024).
    #[arg(long)]
    max_connections: Option<u64>,
    /// How long a client may take to send its headers (default 10 s).
    #[arg(long)]
    header_read_timeout: Option<String>,
    /// How long a request may take, body included; 503 beyond (default 30 s).
    #[arg(long)]
    request_timeout: Option<String>,
    /// Events not yet through the shard actors above which ingest gets 503
    /// (default 500000).
    #[arg(long)]
    max_shard_backlog: Option<u64>,
    /// Idempotency-Keys and event ids a shard remembers at most; beyond,
    /// the oldest are forgotten before idempotency_ttl (default 1000000).
    #[arg(long)]
    max_dedup_entries: Option<u64>,
    /// A shard more events than this behind its log makes /readyz answer
    /// 503 (default 10000).
    #[arg(long)]
    ready_max_lag: Option<u64>,
    /// A shard whose manifest holds more segments than this after a
    /// checkpoint merges its small ones (default 64; 0: only when asked).
    #[arg(long)]
    auto_compact_segments: Option<u64>,
    /// Cluster: the nodes' API addresses, host:port,… (this node's own may
    /// be among them; none: start a new cluster).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<String>>,
    /// Cluster: nodes started together with the same --seeds found one
    /// cluster once this many of them answer (none: only join one).
    #[arg(long)]
    bootstrap_expect: Option<u64>,
    /// Cluster: how many members vote, 3 (default) or 5.
    #[arg(long)]
    voters: Option<u64>,
    /// Cluster: a voter held down this long gives its vote to a live
    /// learner (default 60 seconds).
    #[arg(long)]
    voter_replace_after: Option<String>,
    /// Cluster: a graceful shard move not done in this time is given up
    /// and may be planned again (default 60 seconds).
    #[arg(long)]
    move_timeout: Option<String>,
    /// Cluster: a librdkafka property for every Kafka client, `k=v`
    /// (repeat it); over the file's `[kafka] properties`.
    #[arg(long = "kafka-property", value_name = "K=V")]
    kafka_property: Vec<String>,
    /// Cluster: a Kafka client properties file (`key=value` lines), under
    /// `--kafka-property`; keeps a SASL password off the command line.
    #[arg(long = "kafka-properties-file", value_name = "FILE")]
    kafka_properties_file: Option<std::path::PathBuf>,
    /// Cluster: the secret every node presents (or LOCKSTEP_CLUSTER_SECRET).
    #[arg(long)]
    cluster_secret: Option<String>,
    /// Cluster: Kafka bootstrap servers, host:port,…
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Cluster: the table's topic (default: the table's name).
    #[arg(long)]
    kafka_topic: Option<String>,
    /// Cluster: the address other nodes reach this one at (default: listen).
    #[arg(long)]
    advertise: Option<String>,
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Keep freed pages instead of returning them to the OS after 10 ms: the
    // node's allocation rate is steady, and re-faulting (and zeroing) fresh
    // pages cost a seventh of its CPU under ingest.
    // SAFETY: sets one integer option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    lockstep_daemon::disable_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // colours only on a terminal, not in log files
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let a = Args::parse();
    let mut kafka_properties = std::collections::BTreeMap::new();
    for kv in &a.kafka_property {
        match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                kafka_properties.insert(k.trim().to_string(), v.to_string());
            }
            _ => {
                // the text may hold a secret: show only what precedes a
                // separator a user may have meant
                let shown: String = kv
                    .chars()
                    .take_while(|c| !matches!(c, ':' | ' '))
                    .take(64)
                    .collect();
                say(&format!(
                    "flag `--kafka-property {shown}…`: write KEY=VALUE, e.g. --kafka-property security.protocol=SSL"
                ));
                return ExitCode::from(2);
            }
        }
    }
    let flags = Overrides {
        kafka: (!kafka_properties.is_empty() || a.kafka_properties_file.is_some()).then_some(
            config::FileKafka {
                properties: Some(kafka_properties),
                properties_file: a.kafka_properties_file,
            },
        ),
        node_id: a.node_id,
        data_dir: a.data_dir,
        listen: a.listen,
        token: a.token,
        token_file: a.token_file,
        ingest_token: a.ingest_token,
        ingest_token_file: a.ingest_token_file,
        serve_token: a.serve_token,
        serve_token_file: a.serve_token_file,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        tls_ca: a.tls_ca,
        pipeline: a.pipeline,
        object_store: a.object_store,
        checkpoint_interval: a.checkpoint_interval,
        fsync: a.fsync,
        idempotency_ttl: a.idempotency_ttl,
        max_events_per_request: a.max_events_per_request,
        max_event_bytes: a.max_event_bytes,
        max_concurrent_requests: a.max_concurrent_requests,
        max_dead_letters: a.max_dead_letters,
        dead_letter_retention: a.dead_letter_retention,
        max_connections: a.max_connections,
        header_read_timeout: a.header_read_timeout,
        request_timeout: a.request_timeout,
        max_shard_backlog: a.max_shard_backlog,
        max_dedup_entries: a.max_dedup_entries,
        ready_max_lag: a.ready_max_lag,
        auto_compact_segments: a.auto_compact_segments,
        cluster: (a.seeds.is_some()
            || a.bootstrap_expect.is_some()
            || a.voters.is_some()
            || a.voter_replace_after.is_some()
            || a.move_timeout.is_some()
            || a.cluster_secret.is_some()
            || a.kafka_brokers.is_some()
            || a.kafka_topic.is_some()
            || a.advertise.is_some())
        .then_some(config::FileCluster {
            seeds: a.seeds,
            bootstrap_expect: a.bootstrap_expect,
            secret: a.cluster_secret,
            kafka_brokers: a.kafka_brokers,
            kafka_topic: a.kafka_topic,
            advertise: a.advertise,
            failure_timeout: None,
            kafka_replication_factor: None,
            kafka_min_insync_replicas: None,
            on_log_gap: None,
            voters: a.voters,
            voter_replace_after: a.voter_replace_after,
            move_timeout: a.move_timeout,
        }),
    };
    let cfg = match config::load_with_secret(
        a.config.as_deref(),
        &flags,
        std::env::var("LOCKSTEP_TOKEN").ok(),
        std::env::var("LOCKSTEP_CLUSTER_SECRET").ok(),
    ) {
        Ok(c) => c,
        Err(e) => {
            say(&e);
            return ExitCode::from(2);
        }
    };
    if a.check_config {
        return match lockstep_daemon::node::load_pipeline(&cfg.pipeline) {
            Ok((_, catalog)) => {
                let t = &catalog.tables[0];
                println!(
                    "lockstepd: config good: node `{}`, table `{}` ({} shards), {} views{}",
                    cfg.node_id,
                    t.name,
                    t.shards,
                    catalog.views.len(),
                    match &cfg.cluster {
                        Some(c) => format!(
                            ", cluster member (raft id {}, {} seeds{})",
                            c.raft_id,
                            c.seeds.len(),
                            c.bootstrap_expect
                                .map(|n| format!(", founds with {n}"))
                                .unwrap_or_default()
                        ),
                        None => String::new(),
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                say(&e);
                ExitCode::from(2)
            }
        };
    }
    // connections, segments in the making and sled's files all take
    // descriptors: a node needs more than max_connections of them
    let files = lockstep_daemon::raise_open_file_limit();
    if let Some(n) = files {
        let want = cfg.limits.max_connections as u64 + 256;
        if n < want {
            say(&format!(
                "warning: the open-file limit is {n}, below max_connections ({}) + 256; raise it (ulimit -n, LimitNOFILE=) or lower max_connections",
                cfg.limits.max_connections
            ));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&e);
            ExitCode::FAILURE
        }
    }
}

/// One line on stderr in one write: nodes started together on one
/// terminal (or one log collector) do not interleave their messages.
fn say(what: &dyn std::fmt::Display) {
    use std::io::Write;
    let line = format!("lockstepd: {what}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

async fn run(cfg: config::Config) -> anyhow::Result<()> {
    let listen = cfg.listen;
    let interval = cfg.checkpoint_interval;
    let clustered = cfg.cluster.is_some();
    // Listening comes first: a cluster member must answer the leader's
    // calls while it joins, before the rest of the node is up. Until then
    // the API answers 503.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("config key `listen`: cannot listen on {listen}: {e}"))?;
    let routes = http::Routes::default();
    let app = routes.dispatcher();
    let limits = cfg.limits;
    let tls = cfg.tls.as_ref().map(|t| t.server.clone());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = tokio::spawn(http::serve_tls(
        listener,
        app,
        limits,
        tls,
        shutdown_signal(),
    ));
    let internal = routes.internal.clone();
    let node = Node::start_with(cfg, move |cp| {
        let _ = internal.set(cp.router());
    })
    .await?;
    let _ = routes.api.set(http::router(&node));
    if !clustered {
        // in a cluster the coordinator opens checkpoint epochs instead
        let ctx = node.ctx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                if ctx.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                for r in Node::checkpoint_all(&ctx).await {
                    if let Err(e) = r {
                        tracing::warn!("checkpoint: {e}");
                    }
                }
            }
        });
    }
    tracing::info!(
        "lockstepd {} listening on {scheme}://{listen} (table `{}`, {} shards, views: {}{})",
        node.ctx.config.node_id,
        node.ctx.table.name,
        node.ctx.table.shards,
        node.ctx.pipeline().view_names.join(", "),
        if clustered { ", cluster member" } else { "" }
    );
    if let Some(p) = lockstep_daemon::plant::planted() {
        tracing::warn!("LOCKSTEP_DEBUG_PLANT is set: this node will {p:?} one record (a test switch: never set it on a real node)");
    } else if std::env::var_os("LOCKSTEP_DEBUG_PLANT").is_some() {
        tracing::warn!("LOCKSTEP_DEBUG_PLANT is set and ignored: only debug builds have it");
    }
    server.await??;
    // the API router holds the ingest writer's queue: dropping it lets the
    // writer finish what it has and exit
    drop(routes);
    tracing::info!("shutting down: final checkpoint");
    node.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
