//! Delivery (log) order: when each event reaches the consumer.
//!
//! Every event gets a delivery time `event_time + delay`. Most delays are
//! zero; a configurable fraction is a little late (within a typical 30 s
//! watermark lateness) and a smaller fraction very late (beyond it). The
//! [`ReorderBuffer`] releases events in `(delivery_time, event_id)` order.
//!
//! Memory stays bounded: an event can be released as soon as its delivery
//! time is not after the event time of the next event still to be generated,
//! because event times (and so delivery times) of later events can only be
//! larger. The buffer therefore only ever holds the delayed events that are
//! "in flight" plus at most one on-time event.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rand::rngs::Xoshiro256PlusPlus;
use rand::RngExt;

use crate::source::RawEvent;

/// Delay range of "out of order" deliveries: late enough to be overtaken by
/// later events, early enough to fit within a 30 s allowed lateness.
pub(crate) const OUT_OF_ORDER_DELAY_MS: (i64, i64) = (1_000, 20_000);
/// Delay range of "late" deliveries: well beyond a 30 s allowed lateness.
pub(crate) const LATE_DELAY_MS: (i64, i64) = (120_000, 600_000);

/// Draw the delivery delay of one event. Always consumes exactly one or two
/// random numbers, so the stream stays reproducible.
#[inline]
pub(crate) fn sample_delay(
    rng: &mut Xoshiro256PlusPlus,
    out_of_order_fraction: f64,
    late_fraction: f64,
) -> i64 {
    let u: f64 = rng.random();
    if u < late_fraction {
        rng.random_range(LATE_DELAY_MS.0..=LATE_DELAY_MS.1)
    } else if u < late_fraction + out_of_order_fraction {
        rng.random_range(OUT_OF_ORDER_DELAY_MS.0..=OUT_OF_ORDER_DELAY_MS.1)
    } else {
        0
    }
}

/// An event together with its delivery time.
#[derive(Debug, Clone, Copy)]
struct Slot {
    deliver_ms: i64,
    event: RawEvent,
}

impl Slot {
    #[inline]
    fn key(&self) -> (i64, u64) {
        (self.deliver_ms, self.event.id)
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Slot {}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// Min-heap of generated-but-undelivered events, keyed by delivery time.
#[derive(Debug, Default)]
pub(crate) struct ReorderBuffer {
    heap: BinaryHeap<Reverse<Slot>>,
}

impl ReorderBuffer {
    pub(crate) fn push(&mut self, event: RawEvent, delay_ms: i64) {
        let deliver_ms = event.time_ms.saturating_add(delay_ms);
        self.heap.push(Reverse(Slot { deliver_ms, event }));
    }

    /// Pop the next event to deliver, if it is safe to do so.
    ///
    /// `horizon` is the event time of the next event still to be generated
    /// (`None` once generation is finished). Later events are delivered no
    /// earlier than `horizon`, and have larger ids, so anything due at or
    /// before it can go now.
    #[inline]
    pub(crate) fn pop_ready(&mut self, horizon: Option<i64>) -> Option<RawEvent> {
        let Reverse(top) = self.heap.peek()?;
        match horizon {
            Some(h) if top.deliver_ms > h => None,
            _ => self.heap.pop().map(|Reverse(s)| s.event),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}
