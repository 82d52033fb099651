//! The control plane's decisions as pure functions of what a node observes
//! (the replicated state, ping answers, what it holds, the time), each
//! returning commands or local actions. Thin async drivers in the daemon
//! carry them out; the tests here drive them with a fake clock, with no
//! network, broker or object store.
//!
//! - [`Liveness`]: failure detection and the coordinator's serving lease.
//! - [`plan`]: rebalancing (orphans at once, drains and imbalance gracefully).
//! - [`reconcile`]: which shard actors this node starts, stops or hands off.
//! - [`epoch_due`]: when the coordinator opens the next checkpoint epoch.
//! - [`next_voters`]: which members vote (replacing long-down voters).
//! - [`Moves`]: graceful moves that take too long are given up.

mod liveness;
mod moves;
mod plan;
mod reconcile;
mod voters;

pub use liveness::{Liveness, Round};
pub use moves::Moves;
pub use plan::plan;
pub use reconcile::{reconcile, LocalAction};
pub use voters::next_voters;

use crate::state::{ClusterState, Command};

/// The next checkpoint epoch, once `interval_ms` has passed since the last
/// one opened: by the wall clock (`now_ms` against the epoch's recorded
/// time), or by this coordinator's monotonic clock (`seen_ms`: how long it
/// has seen the current epoch). The second keeps epochs coming when a wall
/// clock was stepped back, or when the epoch was opened by a leader whose
/// clock ran ahead: the recorded time is then in the future, and the wall
/// clock alone would open nothing until it caught up. An epoch's time
/// never goes back.
pub fn epoch_due(
    st: &ClusterState,
    now_ms: i64,
    interval_ms: i64,
    seen_ms: i64,
) -> Option<Command> {
    (now_ms - st.epoch_ms >= interval_ms || seen_ms >= interval_ms).then_some(Command::OpenEpoch {
        epoch: st.epoch + 1,
        at_ms: now_ms.max(st.epoch_ms),
    })
}

/// How long, by the monotonic clock, a coordinator has seen the current
/// epoch (from the first time it saw it).
#[derive(Debug, Default)]
pub struct EpochClock {
    seen: Option<(u64, std::time::Instant)>,
}

impl EpochClock {
    pub fn seen_ms(&mut self, epoch: u64, now: std::time::Instant) -> i64 {
        match self.seen {
            Some((e, at)) if e == epoch => now.saturating_duration_since(at).as_millis() as i64,
            _ => {
                self.seen = Some((epoch, now));
                0
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod test_state {
    use crate::state::{ClusterState, Command, NodeId, NodeState};

    /// A cluster of `nodes` (in those states) whose shards are owned as
    /// `owners` says.
    pub fn state(nodes: &[(NodeId, NodeState)], owners: &[Option<NodeId>]) -> ClusterState {
        let mut st = ClusterState::default();
        st.apply(Command::Init {
            table: "t".into(),
            shards: owners.len() as u32,
            sql: String::new(),
            at_ms: 0,
        });
        for &(n, s) in nodes {
            st.apply(Command::Join {
                node: n,
                addr: format!("n{n}"),
                at_ms: 0,
            });
            match s {
                NodeState::Draining => drop(st.apply(Command::Drain { node: n })),
                NodeState::Down => drop(st.apply(Command::MarkDown { node: n })),
                NodeState::Active => {}
            }
        }
        for (s, o) in owners.iter().enumerate() {
            st.owners[s].node = *o;
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_opens_once_the_interval_has_passed() {
        let mut st = test_state::state(&[], &[None]);
        st.epoch = 4;
        st.epoch_ms = 10_000;
        assert_eq!(epoch_due(&st, 10_999, 1_000, 999), None);
        assert_eq!(
            epoch_due(&st, 11_000, 1_000, 0),
            Some(Command::OpenEpoch {
                epoch: 5,
                at_ms: 11_000
            })
        );
    }

    #[test]
    fn epochs_keep_coming_when_the_wall_clock_was_ahead_and_never_go_back() {
        // the last epoch was opened by a leader whose clock ran 5 minutes
        // ahead; this coordinator's clock is right
        let mut st = test_state::state(&[], &[None]);
        st.epoch = 9;
        st.epoch_ms = 1_000_000 + 300_000;
        assert_eq!(epoch_due(&st, 1_000_000, 1_000, 500), None);
        assert_eq!(
            epoch_due(&st, 1_001_000, 1_000, 1_000),
            Some(Command::OpenEpoch {
                epoch: 10,
                at_ms: 1_300_000
            }),
            "due by the monotonic clock, stamped no earlier than the last"
        );
        let mut clock = EpochClock::default();
        let t0 = std::time::Instant::now();
        assert_eq!(clock.seen_ms(9, t0), 0);
        assert_eq!(
            clock.seen_ms(9, t0 + std::time::Duration::from_millis(700)),
            700
        );
        assert_eq!(
            clock.seen_ms(10, t0 + std::time::Duration::from_millis(900)),
            0
        );
    }
}
