//! Moves that take too long. A graceful move whose owner never hands off
//! (it is stuck, or cannot commit its last checkpoint) is given up after
//! `timeout`, so it neither holds the shard nor blocks other moves; the
//! planner may start it again. When the same owner lets the same shard's
//! move time out a second time in a row, the shard is assigned to the
//! move's target without a hand-off, as a failover does: the owner epoch
//! goes up, so the old owner can commit nothing more, and the new owner
//! starts from the last committed checkpoint. (An owner that answers pings
//! and hears the Raft log but cannot reach the leader, a one-way
//! partition, would otherwise hold its shards for good.)

use crate::state::{ClusterState, Command, NodeId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The moves the coordinator has seen under way: shard → (target, owner
/// epoch, first seen); and the moves given up: shard → (owner, owner
/// epoch).
#[derive(Debug, Default)]
pub struct Moves {
    seen: HashMap<u32, (NodeId, u64, Instant)>,
    given_up: HashMap<u32, (NodeId, u64)>,
}

impl Moves {
    /// For every move under way, unchanged, for `timeout`: `CancelMove`,
    /// or `Assign` to its target when its owner let it time out before
    /// (under the same owner epoch).
    pub fn stuck(&mut self, st: &ClusterState, now: Instant, timeout: Duration) -> Vec<Command> {
        let mut out = Vec::new();
        let mut still = HashMap::new();
        // a shard whose owner changed since its move was given up starts
        // afresh
        self.given_up.retain(|s, (node, epoch)| {
            st.owners
                .get(*s as usize)
                .is_some_and(|o| o.node == Some(*node) && o.epoch == *epoch)
        });
        for (s, o) in st.owners.iter().enumerate() {
            let Some(to) = o.moving_to else { continue };
            let Some(owner) = o.node else { continue };
            let shard = s as u32;
            let since = match self.seen.get(&shard) {
                Some(&(t, e, since)) if t == to && e == o.epoch => since,
                _ => now,
            };
            if now.saturating_duration_since(since) < timeout {
                still.insert(shard, (to, o.epoch, since));
                continue;
            }
            if self.given_up.get(&shard) == Some(&(owner, o.epoch)) {
                self.given_up.remove(&shard);
                out.push(Command::Assign {
                    shard,
                    node: to,
                    expect_epoch: o.epoch,
                });
            } else {
                self.given_up.insert(shard, (owner, o.epoch));
                out.push(Command::CancelMove {
                    shard,
                    expect_epoch: o.epoch,
                });
            }
        }
        self.seen = still;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::test_state::state;
    use crate::state::NodeState::Active;

    #[test]
    fn a_move_unchanged_past_the_timeout_is_given_up_then_forced() {
        let mut st = state(&[(1, Active), (2, Active)], &[Some(1), Some(1)]);
        st.apply(Command::StartMove {
            shard: 0,
            to: 2,
            expect_epoch: st.owners[0].epoch,
        });
        let t0 = Instant::now();
        let timeout = Duration::from_secs(60);
        let mut m = Moves::default();
        assert!(m.stuck(&st, t0, timeout).is_empty());
        assert!(m
            .stuck(&st, t0 + Duration::from_secs(59), timeout)
            .is_empty());
        let cmds = m.stuck(&st, t0 + timeout, timeout);
        assert_eq!(
            cmds,
            vec![Command::CancelMove {
                shard: 0,
                expect_epoch: st.owners[0].epoch
            }]
        );
        for c in cmds {
            st.apply(c).into_result().unwrap();
        }
        assert!(m.stuck(&st, t0 + timeout * 2, timeout).is_empty());
        assert_eq!(
            st.owners[0].node,
            Some(1),
            "a move given up keeps its owner"
        );
        // started again: a fresh clock
        let epoch = st.owners[0].epoch;
        st.apply(Command::StartMove {
            shard: 0,
            to: 2,
            expect_epoch: epoch,
        });
        assert!(m.stuck(&st, t0 + timeout * 3, timeout).is_empty());
        assert!(m
            .stuck(&st, t0 + timeout * 3 + Duration::from_secs(59), timeout)
            .is_empty());
        // the same owner let it time out again: the target gets the shard
        // without a hand-off, under a new owner epoch
        let cmds = m.stuck(&st, t0 + timeout * 4, timeout);
        assert_eq!(
            cmds,
            vec![Command::Assign {
                shard: 0,
                node: 2,
                expect_epoch: epoch
            }]
        );
        for c in cmds {
            st.apply(c).into_result().unwrap();
        }
        assert_eq!(st.owners[0].node, Some(2));
        assert_eq!(st.owners[0].moving_to, None);
        assert!(st.owners[0].epoch > epoch);
    }

    #[test]
    fn a_move_given_up_once_is_forgotten_when_the_shard_changes_hands() {
        let mut st = state(&[(1, Active), (2, Active), (3, Active)], &[Some(1)]);
        let (t0, timeout) = (Instant::now(), Duration::from_secs(60));
        let mut m = Moves::default();
        let start = |st: &mut ClusterState, to| {
            let e = st.owners[0].epoch;
            st.apply(Command::StartMove {
                shard: 0,
                to,
                expect_epoch: e,
            })
            .into_result()
            .unwrap();
        };
        start(&mut st, 2);
        m.stuck(&st, t0, timeout);
        let first = m.stuck(&st, t0 + timeout, timeout);
        assert!(matches!(first[..], [Command::CancelMove { .. }]));
        for c in first {
            st.apply(c).into_result().unwrap();
        }
        // the shard moved some other way (a failover): its next stuck
        // move is given up first, not forced
        let e = st.owners[0].epoch;
        st.apply(Command::Assign {
            shard: 0,
            node: 3,
            expect_epoch: e,
        })
        .into_result()
        .unwrap();
        start(&mut st, 2);
        m.stuck(&st, t0 + timeout * 2, timeout);
        let next = m.stuck(&st, t0 + timeout * 3, timeout);
        assert!(matches!(next[..], [Command::CancelMove { .. }]), "{next:?}");
    }
}
