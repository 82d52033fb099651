//! Which members vote: the configured number (3 or 5) of live ones. A voter
//! the coordinator has held down longer than `replace_after` gives its vote
//! to a live learner (it stays a learner, and may vote again later); while
//! there are fewer voters than configured, live learners are promoted.

use crate::state::{ClusterState, NodeId, NodeState};
use std::collections::BTreeSet;
use std::time::Duration;

/// The voter set the cluster should have now, if it differs from
/// `voters`. `members`: every Raft member (voters and learners);
/// `down_for(n)`: how long node `n` has been held down (`None`: it is not).
pub fn next_voters(
    st: &ClusterState,
    voters: &BTreeSet<NodeId>,
    members: &BTreeSet<NodeId>,
    target: usize,
    replace_after: Duration,
    mut down_for: impl FnMut(NodeId) -> Option<Duration>,
) -> Option<BTreeSet<NodeId>> {
    let live = |n: &NodeId| st.nodes.get(n).is_some_and(|i| i.state != NodeState::Down);
    // learners that could vote: live, active ones first, lowest id first
    let mut candidates: Vec<NodeId> = members
        .iter()
        .filter(|n| !voters.contains(n) && live(n))
        .copied()
        .collect();
    candidates.sort_by_key(|n| (st.nodes[n].state != NodeState::Active, *n));
    let mut candidates = candidates.into_iter();
    let mut next = voters.clone();
    for v in voters {
        if down_for(*v).is_some_and(|d| d >= replace_after) {
            if let Some(l) = candidates.next() {
                next.remove(v);
                next.insert(l);
            }
        }
    }
    while next.len() < target {
        match candidates.next() {
            Some(l) => {
                next.insert(l);
            }
            None => break,
        }
    }
    (next != *voters).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::test_state::state;
    use crate::state::NodeState::{Active, Down, Draining};

    fn set(v: &[NodeId]) -> BTreeSet<NodeId> {
        v.iter().copied().collect()
    }

    const AFTER: Duration = Duration::from_secs(60);

    #[test]
    fn a_voter_down_long_enough_gives_its_vote_to_a_live_learner() {
        let st = state(&[(1, Active), (2, Active), (3, Down), (4, Active)], &[]);
        let (voters, members) = (set(&[1, 2, 3]), set(&[1, 2, 3, 4]));
        let down = |secs: u64| move |n: NodeId| (n == 3).then_some(Duration::from_secs(secs));
        // not yet
        assert_eq!(
            next_voters(&st, &voters, &members, 3, AFTER, down(59)),
            None
        );
        assert_eq!(
            next_voters(&st, &voters, &members, 3, AFTER, down(60)),
            Some(set(&[1, 2, 4]))
        );
        // no live learner: the down voter keeps its vote
        let st = state(&[(1, Active), (2, Active), (3, Down), (4, Down)], &[]);
        assert_eq!(
            next_voters(&st, &voters, &members, 3, AFTER, down(600)),
            None
        );
    }

    #[test]
    fn learners_are_promoted_up_to_the_target_active_ones_first() {
        let st = state(
            &[
                (1, Active),
                (2, Active),
                (3, Draining),
                (4, Active),
                (5, Down),
                (6, Active),
            ],
            &[],
        );
        let members = set(&[1, 2, 3, 4, 5, 6]);
        let none = |_: NodeId| None;
        assert_eq!(
            next_voters(&st, &set(&[1, 2]), &members, 3, AFTER, none),
            Some(set(&[1, 2, 4]))
        );
        assert_eq!(
            next_voters(&st, &set(&[1, 2]), &members, 5, AFTER, none),
            Some(set(&[1, 2, 3, 4, 6]))
        );
        // at the target: nothing to do; more than it: none demoted
        assert_eq!(
            next_voters(&st, &set(&[1, 2, 4]), &members, 3, AFTER, none),
            None
        );
        assert_eq!(
            next_voters(&st, &set(&[1, 2, 4, 6, 3]), &members, 3, AFTER, none),
            None
        );
    }
}
