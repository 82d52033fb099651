//! Ownership reconciliation: what this node does with its shard actors so
//! that they follow the replicated shard map.

use crate::state::{ClusterState, NodeId};

/// One local step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalAction {
    /// The shard is this node's under `epoch` (new, or again under a newer
    /// epoch): (re)start its actor under it.
    Start { shard: u32, epoch: u64 },
    /// The shard is another node's now: stop its actor here.
    Release { shard: u32 },
    /// The shard is this node's and moving away: its actor takes a last
    /// checkpoint and hands off. Repeated every round, so an actor
    /// restarted mid-move hands off too (a handing-off actor ignores it).
    Handoff { shard: u32 },
}

/// The steps that bring this node (`me`, holding shard `s` under owner
/// epoch `held[s]`, 0 for not held) in line with the shard map.
pub fn reconcile(st: &ClusterState, me: NodeId, held: &[u64]) -> Vec<LocalAction> {
    let mut out = Vec::new();
    for (s, o) in st.owners.iter().enumerate() {
        let shard = s as u32;
        let mine = o.node == Some(me);
        let h = held.get(s).copied().unwrap_or(0);
        if mine && h != o.epoch {
            out.push(LocalAction::Start {
                shard,
                epoch: o.epoch,
            });
        } else if !mine && h != 0 {
            out.push(LocalAction::Release { shard });
        } else if mine && o.moving_to.is_some() {
            out.push(LocalAction::Handoff { shard });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::test_state::state;
    use crate::state::NodeState::Active;

    #[test]
    fn a_node_starts_what_is_its_own_and_releases_what_is_not() {
        let mut st = state(&[(1, Active), (2, Active)], &[Some(1), Some(2), Some(1)]);
        st.owners[0].epoch = 3;
        st.owners[1].epoch = 1;
        st.owners[2].epoch = 2;
        // node 1 holds shard 0 under an old epoch, shard 1 (now node 2's),
        // and shard 2 as the map says
        let got = reconcile(&st, 1, &[2, 1, 2]);
        assert_eq!(
            got,
            vec![
                LocalAction::Start { shard: 0, epoch: 3 },
                LocalAction::Release { shard: 1 },
            ]
        );
        // in line: nothing to do
        assert!(reconcile(&st, 1, &[3, 0, 2]).is_empty());
    }

    #[test]
    fn a_moving_shard_is_handed_off_every_round_until_it_moved() {
        let mut st = state(&[(1, Active), (2, Active)], &[Some(1)]);
        st.owners[0].epoch = 1;
        st.owners[0].moving_to = Some(2);
        for _ in 0..2 {
            assert_eq!(
                reconcile(&st, 1, &[1]),
                vec![LocalAction::Handoff { shard: 0 }]
            );
        }
        // the target does not start it before the hand-off commits
        assert!(reconcile(&st, 2, &[0]).is_empty());
        st.owners[0] = crate::state::ShardOwner {
            node: Some(2),
            epoch: 2,
            moving_to: None,
        };
        assert_eq!(
            reconcile(&st, 2, &[0]),
            vec![LocalAction::Start { shard: 0, epoch: 2 }]
        );
        assert_eq!(
            reconcile(&st, 1, &[1]),
            vec![LocalAction::Release { shard: 0 }]
        );
    }
}
