//! Fail-stop on local storage failure. When a write to the node's disk
//! fails (the disk is full or broken), sled keeps the error for good: every
//! later operation of that store fails too, and Raft stops. A node in that
//! state would answer pings and hold its shards while it can do nothing
//! with them. So it exits instead, with [`EXIT_STORAGE`], after logging
//! why; the service manager restarts it (systemd's `Restart=on-failure`,
//! Kubernetes), and on a disk with room again it recovers from its
//! checkpoints like any restarted node. Meanwhile the cluster moves its
//! shards away.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The exit status of a node that stopped because its local storage
/// failed (a write, flush or fsync the disk refused): restart it once the
/// disk has room. The same status as a failed fsync of the single-node
/// log.
pub const EXIT_STORAGE: i32 = 70;

static STOPPING: AtomicBool = AtomicBool::new(false);

/// Set once the node has started: what to do before exiting (flush the
/// embedded log, best effort). Before that, a storage error is a start-up
/// error, reported as such.
static BEFORE_EXIT: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

/// From now on a failed write to the local storage stops the node;
/// `before_exit` runs first.
pub fn arm(before_exit: impl Fn() + Send + Sync + 'static) {
    let _ = BEFORE_EXIT.set(Box::new(before_exit));
}

/// Whether the node has started (a write error now stops it).
pub fn armed() -> bool {
    BEFORE_EXIT.get().is_some()
}

/// How long the exit may take: whatever hangs on the way out (a flush of
/// a store on the failed disk, an exit handler), the process ends by then.
const EXIT_DEADLINE: Duration = Duration::from_secs(5);

/// Logs `why` and ends the process with [`EXIT_STORAGE`], within
/// [`EXIT_DEADLINE`]. Nothing on the way can keep the process up: the
/// deadline is set first, logging cannot panic it (stderr on the full
/// disk), the flush is bounded, and the end is `_exit` (no exit handlers
/// run while other threads still work). A second caller waits for the
/// first to end the process.
pub fn storage_failed(why: &str) -> ! {
    if STOPPING.swap(true, Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    let _ = std::thread::Builder::new()
        .name("exit-deadline".into())
        .spawn(|| {
            std::thread::sleep(EXIT_DEADLINE);
            end()
        });
    let _ = std::panic::catch_unwind(|| {
        tracing::error!(
            "local storage failed: {why}; exiting with status {EXIT_STORAGE} so the service manager restarts this node once its disk has room (its shards move to the others meanwhile)"
        );
    });
    let _ = writeln!(
        std::io::stderr(),
        "lockstepd: local storage failed: {why}; exiting ({EXIT_STORAGE})"
    );
    if let Some(f) = BEFORE_EXIT.get() {
        // on a thread of its own: a flush that hangs on the failed disk
        // does not hold the exit up
        let (done, wait) = std::sync::mpsc::channel();
        let started = std::thread::Builder::new()
            .name("before-exit".into())
            .spawn(move || {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                let _ = done.send(());
            });
        if started.is_ok()
            && matches!(
                wait.recv_timeout(EXIT_DEADLINE / 2),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            )
        {
            let _ = std::panic::catch_unwind(|| {
                tracing::error!(
                    "the flush before exiting did not finish within {} ms; exiting without it",
                    (EXIT_DEADLINE / 2).as_millis()
                );
            });
        }
    }
    end()
}

/// Ends the process with [`EXIT_STORAGE`] at once.
fn end() -> ! {
    // SAFETY: _exit(2) ends the process without running exit handlers or
    // touching memory of ours
    unsafe { libc::_exit(EXIT_STORAGE) }
}

/// A write or flush of the node's sled state store, once the node has
/// started: an I/O error (sled keeps it for every later write) stops the
/// node. Reads are not passed through this: their errors do not stick,
/// and a cluster node restores an unreadable cache from the snapshot
/// objects.
pub fn written<T>(what: &str, r: Result<T, sled::Error>) -> Result<T, sled::Error> {
    if let Err(e @ sled::Error::Io(_)) = &r {
        if armed() {
            storage_failed(&format!("{what}: {e}"));
        }
    }
    r
}
