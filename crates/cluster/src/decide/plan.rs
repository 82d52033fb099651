//! Rebalancing: the next shard-map changes, from the replicated state alone.

use crate::state::{ClusterState, Command, NodeId, NodeState};
use std::collections::BTreeMap;

/// The next shard-map changes: orphaned shards (no owner, or a down one) go
/// to the least-loaded active node at once; draining nodes' shards and then
/// imbalance move gracefully, at most `max_moves` at a time. Sticky: a
/// balanced map yields nothing.
pub fn plan(st: &ClusterState, max_moves: usize) -> Vec<Command> {
    let active: Vec<NodeId> = st
        .nodes
        .iter()
        .filter(|(_, i)| i.state == NodeState::Active)
        .map(|(n, _)| *n)
        .collect();
    if active.is_empty() {
        return Vec::new();
    }
    // load = shards owned, plus shards moving in
    let mut load: BTreeMap<NodeId, usize> = active.iter().map(|&n| (n, 0)).collect();
    for o in &st.owners {
        if let Some(n) = o.moving_to.or(o.node) {
            if let Some(l) = load.get_mut(&n) {
                *l += 1;
            }
        }
    }
    let least = |load: &BTreeMap<NodeId, usize>| {
        load.iter()
            .min_by_key(|(n, l)| (**l, **n))
            .map(|(n, _)| *n)
            .expect("active nodes")
    };
    let mut out = Vec::new();
    let alive = |n: Option<NodeId>| {
        n.and_then(|n| st.nodes.get(&n))
            .is_some_and(|i| i.state != NodeState::Down)
    };
    for (s, o) in st.owners.iter().enumerate() {
        if !alive(o.node) {
            let to = least(&load);
            *load.get_mut(&to).expect("active") += 1;
            out.push(Command::Assign {
                shard: s as u32,
                node: to,
                expect_epoch: o.epoch,
            });
        }
    }
    let mut moving = st.owners.iter().filter(|o| o.moving_to.is_some()).count();
    for (s, o) in st.owners.iter().enumerate() {
        if moving >= max_moves {
            break;
        }
        let draining = o
            .node
            .and_then(|n| st.nodes.get(&n))
            .is_some_and(|i| i.state == NodeState::Draining);
        if draining && o.moving_to.is_none() {
            let to = least(&load);
            *load.get_mut(&to).expect("active") += 1;
            out.push(Command::StartMove {
                shard: s as u32,
                to,
                expect_epoch: o.epoch,
            });
            moving += 1;
        }
    }
    if moving == 0 && out.is_empty() {
        let (max_n, max_l) = load
            .iter()
            .max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n)))
            .map(|(n, l)| (*n, *l))
            .expect("active nodes");
        let min_n = least(&load);
        if max_l >= load[&min_n] + 2 {
            if let Some((s, o)) = st
                .owners
                .iter()
                .enumerate()
                .rev()
                .find(|(_, o)| o.node == Some(max_n))
            {
                out.push(Command::StartMove {
                    shard: s as u32,
                    to: min_n,
                    expect_epoch: o.epoch,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::test_state::state;
    use crate::state::Response;

    fn apply_all(st: &mut ClusterState, cmds: Vec<Command>) {
        for c in cmds {
            assert_eq!(st.apply(c), Response::Done);
        }
    }

    #[test]
    fn a_down_nodes_shards_are_spread_over_the_rest_at_once() {
        use NodeState::*;
        let mut st = state(
            &[(1, Active), (2, Active), (3, Down)],
            &[Some(1), Some(2), Some(3), Some(3), Some(1), Some(2)],
        );
        let cmds = plan(&st, 2);
        assert_eq!(cmds.len(), 2);
        assert!(cmds.iter().all(|c| matches!(c, Command::Assign { .. })));
        apply_all(&mut st, cmds);
        assert_eq!(st.owned_by(1).len(), 3);
        assert_eq!(st.owned_by(2).len(), 3);
        assert!(plan(&st, 2).is_empty(), "balanced: no more moves");
    }

    #[test]
    fn a_new_node_gets_shards_a_few_at_a_time_and_then_it_stops() {
        use NodeState::*;
        let mut st = state(
            &[(1, Active), (2, Active), (3, Active)],
            &[Some(1); 4]
                .iter()
                .chain(&[Some(2); 4])
                .copied()
                .collect::<Vec<_>>(),
        );
        let mut rounds = 0;
        loop {
            let cmds = plan(&st, 2);
            if cmds.is_empty() {
                break;
            }
            rounds += 1;
            assert!(rounds < 20, "does not converge");
            for c in cmds {
                let Command::StartMove { shard, .. } = c else {
                    panic!("graceful moves only, got {c:?}")
                };
                assert_eq!(st.apply(c), Response::Done);
                // the owner hands off
                let o = st.owners[shard as usize].clone();
                apply_all(
                    &mut st,
                    vec![Command::Handoff {
                        shard,
                        from: o.node.unwrap(),
                        owner_epoch: o.epoch,
                    }],
                );
            }
        }
        let counts: Vec<usize> = (1..=3).map(|n| st.owned_by(n).len()).collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
        assert_eq!(counts.iter().sum::<usize>(), 8);
    }

    #[test]
    fn a_draining_node_gives_everything_away() {
        use NodeState::*;
        let mut st = state(&[(1, Draining), (2, Active)], &[Some(1), Some(1), Some(1)]);
        for _ in 0..10 {
            for c in plan(&st, 2) {
                let shard = match &c {
                    Command::StartMove { shard, .. } => *shard,
                    other => panic!("unexpected {other:?}"),
                };
                apply_all(&mut st, vec![c]);
                let o = st.owners[shard as usize].clone();
                apply_all(
                    &mut st,
                    vec![Command::Handoff {
                        shard,
                        from: 1,
                        owner_epoch: o.epoch,
                    }],
                );
            }
        }
        assert!(st.owned_by(1).is_empty());
        assert_eq!(st.owned_by(2).len(), 3);
    }
}
