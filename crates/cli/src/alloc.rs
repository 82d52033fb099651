//! The binary's allocator (mimalloc) with an optional count of live heap
//! bytes, so `lockstep bench memory` measures state exactly instead of
//! through the resident set (which also moves with pages the allocator
//! keeps, frees late or faults in). Counting is off unless a benchmark turns
//! it on; off, it costs one relaxed load per allocation.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicI64 = AtomicI64::new(0);

pub struct Counting;

// SAFETY: every call is forwarded unchanged to mimalloc, which upholds the
// GlobalAlloc contract; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64);
        // SAFETY: forwarded with the caller's layout.
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64);
        // SAFETY: forwarded with the caller's layout.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as i64));
        // SAFETY: `p` came from this allocator with layout `l`.
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        count(new_size as i64 - l.size() as i64);
        // SAFETY: `p` came from this allocator with layout `l`.
        unsafe { mimalloc::MiMalloc.realloc(p, l, new_size) }
    }
}

fn count(d: i64) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE.fetch_add(d, Ordering::Relaxed);
    }
}

/// Starts counting from zero. Frees of memory allocated before this count
/// negative, so measure growth between two reads.
pub fn start_counting() {
    LIVE.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
}

/// Bytes allocated minus bytes freed since [`start_counting`] (0 when the
/// binary does not use [`Counting`]: tests read through RSS instead).
pub fn live_bytes() -> i64 {
    LIVE.load(Ordering::Relaxed)
}
