//! lockstepd as a library: the node daemon's parts, so tests drive exactly
//! what the binary runs.
//!
//! - [`config`]: the TOML configuration and its flag overrides.
//! - [`node`]: start-up and what the parts share.
//! - [`writer`]: the ingest writer (group commit, idempotency, dead letters).
//! - [`shard`]: the shard actors (ractor) and their supervisor.
//! - [`store`]: incremental checkpoints in sled.
//! - [`segments`]: archive and training segments in the object store.
//! - [`local_store`]: the local-directory object store, fsynced.
//! - [`http`]: the HTTP API (axum).
//! - [`metrics`]: Prometheus metrics.
//! - [`cluster`]: cluster mode (Kafka log, control plane, coordinator).
//! - [`tls`]: HTTPS for the API, mutual TLS between nodes.

pub mod backfill;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod fatal;
pub mod http;
pub mod local_store;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod plant;
pub mod segments;
pub mod shard;
pub mod store;
pub mod tls;
pub mod writer;

/// Turns off transparent huge pages for this process. With THP `always`
/// (common on Linux hosts), the kernel zeroes a whole 2 MiB page at the first
/// touch of each region the allocator maps; for lockstep's steady churn of
/// small allocations that was a fifth of a node's CPU under ingest (`perf`:
/// `clear_page_erms`). The flag covers every later page fault, so call it
/// first thing in `main`. Not for the batch path: `lockstep run` keeps a
/// large, long-lived state and is faster with huge pages (3M events:
/// 324–338k events/s with them, 258k without).
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory
    // map; no memory is touched.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Raises this process's open-file limit to its hard limit and returns the
/// soft limit now in force: each connection, segment being written and
/// sled file takes a descriptor, and the usual soft limit (1024) equals
/// the default `max_connections` alone.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}
