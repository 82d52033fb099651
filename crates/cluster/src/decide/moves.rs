//! Moves that take too long: a graceful move whose owner never hands off
//! (it is stuck, or cannot commit its last checkpoint) is given up after
//! `timeout`, so it neither holds the shard nor blocks other moves; the
//! planner may start it again.

use crate::state::{ClusterState, Command, NodeId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The moves the coordinator has seen under way: shard → (target, owner
/// epoch, first seen).
#[derive(Debug, Default)]
pub struct Moves {
    seen: HashMap<u32, (NodeId, u64, Instant)>,
}

impl Moves {
    /// `CancelMove` for every move under way, unchanged, for `timeout`.
    pub fn stuck(&mut self, st: &ClusterState, now: Instant, timeout: Duration) -> Vec<Command> {
        let mut out = Vec::new();
        let mut still = HashMap::new();
        for (s, o) in st.owners.iter().enumerate() {
            let Some(to) = o.moving_to else { continue };
            let shard = s as u32;
            let since = match self.seen.get(&shard) {
                Some(&(t, e, since)) if t == to && e == o.epoch => since,
                _ => now,
            };
            if now.saturating_duration_since(since) >= timeout {
                out.push(Command::CancelMove {
                    shard,
                    expect_epoch: o.epoch,
                });
            } else {
                still.insert(shard, (to, o.epoch, since));
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
    fn a_move_unchanged_past_the_timeout_is_given_up_once() {
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
        // started again: a fresh clock
        st.apply(Command::StartMove {
            shard: 0,
            to: 2,
            expect_epoch: st.owners[0].epoch,
        });
        assert!(m.stuck(&st, t0 + timeout * 3, timeout).is_empty());
        assert!(m
            .stuck(&st, t0 + timeout * 3 + Duration::from_secs(59), timeout)
            .is_empty());
        assert_eq!(m.stuck(&st, t0 + timeout * 4, timeout).len(), 1);
    }
}
