//! A planted bug, for the chaos harness's self-test only: with
//! `LOCKSTEP_DEBUG_PLANT=drop` (or `duplicate`) in its environment, a node
//! of a debug build drops (or applies twice) the 300th record it applies
//! in this process. The
//! harness's checker must then fail the run; if it passes, the checker is
//! blind. Never set it on a real node: it loses or doubles an event. The
//! node logs a warning at start and when the bug strikes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    Drop,
    Duplicate,
}

/// The record the bug strikes, counted from 1 over the process's life.
const STRIKE_AT: u64 = 300;

/// The planted bug of this process, read once from the environment; only
/// debug builds (`cargo build`, as `.ci/run` makes them) have the switch:
/// a release build ignores it.
pub fn planted() -> Option<Plant> {
    static PLANT: OnceLock<Option<Plant>> = OnceLock::new();
    *PLANT.get_or_init(|| {
        if !cfg!(debug_assertions) {
            return None;
        }
        match std::env::var("LOCKSTEP_DEBUG_PLANT").as_deref() {
            Ok("drop") => Some(Plant::Drop),
            Ok("duplicate") => Some(Plant::Duplicate),
            _ => None,
        }
    })
}

/// Called for each record applied: the bug, when this is the one it
/// strikes.
pub fn strike() -> Option<Plant> {
    static APPLIED: AtomicU64 = AtomicU64::new(0);
    let p = planted()?;
    (APPLIED.fetch_add(1, Ordering::Relaxed) + 1 == STRIKE_AT).then_some(p)
}
