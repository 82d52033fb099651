//! Fail-stop on local storage failure. When a write to the node's disk
//! fails (the disk is full or broken), sled keeps the error for good: every
//! later operation of that store fails too, and Raft stops. A node in that
//! state would answer pings and hold its shards while it can do nothing
//! with them. So it exits instead, with [`EXIT_STORAGE`], after logging
//! why; the service manager restarts it (systemd's `Restart=on-failure`,
//! Kubernetes), and on a disk with room again it recovers from its
//! checkpoints like any restarted node. Meanwhile the cluster moves its
//! shards away.

use std::sync::atomic::{AtomicBool, Ordering};

/// The exit status of a node that stopped because its local storage
/// failed (a write, flush or fsync the disk refused): restart it once the
/// disk has room. The same status as a failed fsync of the single-node
/// log.
pub const EXIT_STORAGE: i32 = 70;

static STOPPING: AtomicBool = AtomicBool::new(false);

/// Logs `why` and ends the process with [`EXIT_STORAGE`].
pub fn storage_failed(why: &str) -> ! {
    if !STOPPING.swap(true, Ordering::SeqCst) {
        tracing::error!(
            "local storage failed: {why}; exiting with status {EXIT_STORAGE} so the service manager restarts this node once its disk has room (its shards move to the others meanwhile)"
        );
        eprintln!("lockstepd: local storage failed: {why}; exiting ({EXIT_STORAGE})");
    }
    std::process::exit(EXIT_STORAGE)
}

/// An I/O error from sled (a write or flush that the disk refused).
pub fn is_io(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(_))
}
