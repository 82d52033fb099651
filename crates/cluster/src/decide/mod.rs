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
/// one opened.
pub fn epoch_due(st: &ClusterState, now_ms: i64, interval_ms: i64) -> Option<Command> {
    (now_ms - st.epoch_ms >= interval_ms).then_some(Command::OpenEpoch {
        epoch: st.epoch + 1,
        at_ms: now_ms,
    })
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
        assert_eq!(epoch_due(&st, 10_999, 1_000), None);
        assert_eq!(
            epoch_due(&st, 11_000, 1_000),
            Some(Command::OpenEpoch {
                epoch: 5,
                at_ms: 11_000
            })
        );
    }
}
