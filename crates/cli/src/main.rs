//! `lockstep`: run a feature view over a file, generate data, quickstart, bench.

use clap::{Parser, Subcommand};
use lockstep_cli::{bench, gen, quickstart, run};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: the engine allocates many small, short-lived values; glibc's
/// allocator spent a fifth of the batch path's time in malloc and free.
/// Wrapped to count live bytes when `bench memory` asks.
#[global_allocator]
static GLOBAL: lockstep_cli::alloc::Counting = lockstep_cli::alloc::Counting;

#[derive(Parser)]
#[command(
    name = "lockstep",
    version,
    about = "SQL feature views, the same online and offline"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a view over an event file (.jsonl, .csv, .parquet) and write its rows (.parquet, .jsonl).
    Run {
        #[arg(long)]
        sql: PathBuf,
        #[arg(long)]
        view: String,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Stop at the first malformed event instead of writing it to the dead-letter file.
        #[arg(long)]
        strict: bool,
        /// For tables with `event_id`: how long (in event time) an id is
        /// remembered to skip its repeats, like the daemon's `idempotency_ttl`
        /// (e.g. `24h`, `15m`).
        #[arg(long, default_value = "24h", value_parser = ttl)]
        idempotency_ttl: i64,
        /// The time the file's events count as having arrived (RFC 3339 or
        /// epoch ms): an event more than the table's max_event_time_ahead
        /// past it is refused to the dead-letter file. Default: now.
        #[arg(long, value_parser = instant)]
        now: Option<i64>,
        /// Threads running the shards (0: one per core). Shards are
        /// independent; the rows and their order are the same for every value.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Generate realistic ad events (the canonical `ad_events` table) to .parquet, .jsonl or .csv.
    Gen {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Fraction of events delivered out of order (within lateness).
        #[arg(long, default_value_t = 0.02)]
        out_of_order: f64,
        /// Fraction of events delivered minutes late (beyond a 30 s lateness).
        #[arg(long, default_value_t = 0.001)]
        late: f64,
        /// Fraction of users that are bots.
        #[arg(long, default_value_t = 0.01)]
        bots: f64,
    },
    /// Start lockstepd, stream generated events into it over HTTP while serving features, backfill, and check served == training == backfill == `lockstep run`.
    Quickstart {
        #[arg(long, default_value = "lockstep-quickstart")]
        dir: PathBuf,
        #[arg(long, default_value_t = 300_000)]
        events: u64,
        #[arg(long, default_value_t = 20_000)]
        users: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Send every Nth event through serve-and-ingest and check its features against its training row.
        #[arg(long, default_value_t = 1000)]
        serve_every: u64,
    },
    /// Benchmarks. `batch`: `lockstep run` end to end on generated data;
    /// `memory`: bytes of state per in-window event and per key;
    /// `ingest`: events/s into a node over HTTP; `serve`: serving latency
    /// at a fixed request rate. `ingest` and `serve` use the node at
    /// --addr, or start a local one. `cluster`: three local nodes on the
    /// broker at --kafka-brokers: ingest through the broker next to a bare
    /// consumer, failover after SIGKILL, unavailability during a drain.
    /// `soak`: three local nodes on the broker at --kafka-brokers
    /// checkpointing every --checkpoint-interval (100 ms) under --rate
    /// events/s for --seconds (1800: a day of 5 s checkpoints), sampling the
    /// replicated state's size, apply latency, snapshot size and memory.
    Bench {
        #[arg(value_parser = ["batch", "memory", "ingest", "serve", "cluster", "soak"])]
        what: String,
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        #[arg(long, default_value = "lockstep-bench")]
        dir: PathBuf,
        #[arg(long, default_value = "parquet")]
        format: String,
        /// Reuse the generated input from an earlier run.
        #[arg(long)]
        reuse: bool,
        /// ingest/serve: the node's API address (default: start a local node).
        #[arg(long, env = "LOCKSTEP_ADDR")]
        addr: Option<String>,
        /// ingest/serve: the node's API token.
        #[arg(long, env = "LOCKSTEP_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// ingest/serve: events per request.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        /// ingest/serve: concurrent connections (default 4); batch: threads
        /// running the shards (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// serve: requests per second (default 5000); soak: events per
        /// second (default 2000).
        #[arg(long)]
        rate: Option<u64>,
        /// serve: how long to run (default 10); soak: (default 1800).
        #[arg(long)]
        seconds: Option<u64>,
        /// soak: the nodes' checkpoint interval.
        #[arg(long, default_value = "100 milliseconds")]
        checkpoint_interval: String,
        /// soak: seconds between samples (default: 30 samples in all).
        #[arg(long)]
        sample_every: Option<u64>,
        /// cluster: the Kafka bootstrap servers.
        #[arg(long, env = "LOCKSTEP_KAFKA_BROKERS")]
        kafka_brokers: Option<String>,
    },
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // The engine's state grows and churns; by default mimalloc hands freed
    // pages back to the OS after 10 ms and faults them in again moments later
    // (a fifth of the batch path's time went to zeroing fresh pages). A batch
    // run keeps its memory until it exits.
    // SAFETY: sets one integer option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let result = match Cli::parse().cmd {
        Cmd::Run {
            sql,
            view,
            input,
            output,
            strict,
            idempotency_ttl,
            now,
            threads,
        } => run::run(&run::RunArgs {
            sql,
            view,
            input,
            output: output.clone(),
            strict,
            idempotency_ttl_ms: idempotency_ttl,
            now_ms: now.unwrap_or_else(run::wall_clock_ms),
            threads,
        })
        .map(|s| s.print(&output)),
        Cmd::Gen {
            events,
            users,
            seed,
            out,
            out_of_order,
            late,
            bots,
        } => {
            let config = lockstep_gen::GenConfig {
                events,
                users,
                seed,
                out_of_order_fraction: out_of_order,
                late_fraction: late,
                bot_fraction: bots,
                ..Default::default()
            };
            gen::generate(&gen::GenArgs {
                config,
                out: out.clone(),
            })
            .map(|n| println!("wrote {n} events to {}", out.display()))
        }
        Cmd::Quickstart {
            dir,
            events,
            users,
            seed,
            serve_every,
        } => quickstart::quickstart(&quickstart::QuickstartArgs {
            dir,
            events,
            users,
            seed,
            serve_every,
        })
        .map(|_| ()),
        Cmd::Bench {
            what,
            events,
            users,
            dir,
            format,
            reuse,
            addr,
            token,
            batch,
            threads,
            rate,
            seconds,
            checkpoint_interval,
            sample_every,
            kafka_brokers,
        } => match what.as_str() {
            "memory" => bench::bench_memory(events),
            "cluster" => match kafka_brokers {
                Some(brokers) => lockstep_cli::bench_cluster::bench_cluster(
                    &lockstep_cli::bench_cluster::ClusterBenchArgs {
                        brokers,
                        events,
                        users,
                        dir,
                        checkpoint_interval: "5 seconds".into(),
                    },
                ),
                None => Err(anyhow::anyhow!(
                    "bench cluster needs --kafka-brokers host:port (a Kafka-protocol broker)"
                )),
            },
            "soak" => match kafka_brokers {
                Some(brokers) => {
                    let seconds = seconds.unwrap_or(1800);
                    lockstep_cli::bench_soak::bench_soak(&lockstep_cli::bench_soak::SoakArgs {
                        brokers,
                        seconds,
                        rate: rate.unwrap_or(2000),
                        users,
                        checkpoint_interval,
                        sample_every: sample_every.unwrap_or((seconds / 30).max(5)),
                        dir,
                    })
                }
                None => Err(anyhow::anyhow!(
                    "bench soak needs --kafka-brokers host:port (a Kafka-protocol broker)"
                )),
            },
            "ingest" | "serve" => {
                let a = bench::NodeBenchArgs {
                    addr,
                    token,
                    events,
                    users,
                    batch,
                    threads: threads.unwrap_or(4),
                    rate: rate.unwrap_or(5000),
                    seconds: seconds.unwrap_or(10),
                    dir,
                };
                if what == "ingest" {
                    bench::bench_ingest(&a)
                } else {
                    bench::bench_serve(&a)
                }
            }
            _ => bench::bench_batch(&bench::BenchArgs {
                events,
                users,
                dir,
                format,
                reuse,
                threads: threads.unwrap_or(0),
            }),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A duration flag (`24h`, `15m`, `500ms`) in milliseconds.
fn ttl(s: &str) -> Result<i64, String> {
    lockstep_core::sql::parse_duration_ms(s)
        .filter(|ms| *ms > 0)
        .ok_or_else(|| format!("`{s}` is not a positive duration such as 24h, 15m or 500ms"))
}

/// An instant flag: RFC 3339 or epoch milliseconds.
fn instant(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .ok()
        .or_else(|| lockstep_core::time::parse_timestamp(s))
        .ok_or_else(|| {
            format!(
                "`{s}` is not a time: write RFC 3339 (2024-01-01T00:00:00Z) or epoch milliseconds"
            )
        })
}
