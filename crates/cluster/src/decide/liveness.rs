//! Failure detection and the coordinator's serving lease, as a pure state
//! machine fed with the time: the driver reports ping answers and, every
//! coordinator tick, asks for the round's commands.

use crate::state::{ClusterState, Command, NodeId, NodeState};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the coordinator knows of the members' liveness.
#[derive(Debug)]
pub struct Liveness {
    failure_timeout: Duration,
    /// When each node was last heard from (ping answers, or credits).
    seen: HashMap<NodeId, Instant>,
    /// When each node last answered a ping, as the time the ping was sent:
    /// the evidence for the coordinator's serving lease (credits never
    /// count there).
    acked: HashMap<NodeId, Instant>,
    /// The join time last seen of each node.
    joins: HashMap<NodeId, i64>,
    /// When nodes were marked down.
    down_at: HashMap<NodeId, Instant>,
    leading: bool,
    /// The leader this node last followed.
    prev_leader: Option<NodeId>,
    last_tick: Option<Instant>,
}

/// What one coordinator tick decided.
#[derive(Debug, Default, PartialEq)]
pub struct Round {
    /// `MarkDown` for silent nodes, `Join` for down nodes that answer again.
    pub commands: Vec<Command>,
    /// The coordinator's lease: the send time of the pings a majority of
    /// the members not down (itself included) answered.
    pub lease: Option<Instant>,
}

impl Liveness {
    pub fn new(failure_timeout: Duration) -> Liveness {
        Liveness {
            failure_timeout,
            seen: HashMap::new(),
            acked: HashMap::new(),
            joins: HashMap::new(),
            down_at: HashMap::new(),
            leading: false,
            prev_leader: None,
            last_tick: None,
        }
    }

    /// A ping sent at `sent` was answered at `at`.
    pub fn ping_answered(&mut self, node: NodeId, sent: Instant, at: Instant) {
        self.seen.insert(node, at);
        self.acked.insert(node, sent);
    }

    /// This node does not lead; `leader` is who does (if another node).
    pub fn follow(&mut self, leader: Option<NodeId>) {
        self.leading = false;
        if leader.is_some() {
            self.prev_leader = leader;
        }
    }

    /// A `MarkDown` of `node` decided at `at` was committed.
    pub fn marked_down(&mut self, node: NodeId, at: Instant) {
        self.down_at.insert(node, at);
    }

    /// How long `node`, which the state holds down, has been down as this
    /// coordinator knows it (a new coordinator counts from when it first
    /// asks).
    pub fn down_for(&mut self, node: NodeId, now: Instant) -> Duration {
        now.saturating_duration_since(*self.down_at.entry(node).or_insert(now))
    }

    /// One tick of the coordinator `me`, leading at `now`.
    pub fn lead(&mut self, st: &ClusterState, me: NodeId, now: Instant, now_ms: i64) -> Round {
        let timeout = self.failure_timeout;
        // a coordinator that was itself stalled (paused process, VM hiccup)
        // has not been listening: it gives everyone a fresh timeout
        let stalled = self
            .last_tick
            .is_none_or(|t| now.saturating_duration_since(t) > timeout / 2);
        self.last_tick = Some(now);
        if stalled {
            for (n, info) in &st.nodes {
                if info.state != NodeState::Down {
                    self.seen.insert(*n, now);
                }
            }
        }
        let new_leader = !self.leading;
        if new_leader {
            self.seen.clear();
            self.acked.clear();
            self.joins.clear();
            self.leading = true;
        }
        for (&n, info) in &st.nodes {
            // a node that (re)joined since counts as just heard from; a new
            // leader gives each node half a timeout to answer its pings
            // (live ones answer within milliseconds), and the old leader,
            // silent for an election timeout already, a fifth: it is
            // declared down about when a follower would have been
            if self.joins.insert(n, info.joined_ms) != Some(info.joined_ms)
                && info.state != NodeState::Down
            {
                let credit = match new_leader {
                    true if Some(n) == self.prev_leader => timeout.mul_f64(0.8),
                    true => timeout / 2,
                    false => Duration::ZERO,
                };
                self.seen.insert(n, now.checked_sub(credit).unwrap_or(now));
            }
        }
        self.seen.insert(me, now);
        let lease = self.lease(st, me, now);
        let mut commands = Vec::new();
        for (&n, info) in &st.nodes {
            let last = self.seen.get(&n).copied();
            let silent = last.is_none_or(|t| now.saturating_duration_since(t) > timeout);
            if info.state != NodeState::Down && silent {
                commands.push(Command::MarkDown { node: n });
            } else if info.state == NodeState::Down
                && last.is_some_and(|t| self.down_at.get(&n).is_none_or(|d| t > *d))
            {
                // it answers again: active again (it gets shards back by
                // rebalancing)
                commands.push(Command::Join {
                    node: n,
                    addr: info.addr.clone(),
                    at_ms: now_ms,
                });
            }
        }
        Round { commands, lease }
    }

    fn lease(&self, st: &ClusterState, me: NodeId, now: Instant) -> Option<Instant> {
        let live: Vec<NodeId> = st
            .nodes
            .iter()
            .filter(|(_, i)| i.state != NodeState::Down)
            .map(|(n, _)| *n)
            .collect();
        let mut answered: Vec<Instant> = live
            .iter()
            .filter_map(|n| {
                if *n == me {
                    Some(now)
                } else {
                    self.acked.get(n).copied()
                }
            })
            .collect();
        answered.sort_unstable_by(|a, b| b.cmp(a));
        answered.get(live.len() / 2).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::test_state::state;
    use crate::state::NodeState::{Active, Down};

    const TIMEOUT: Duration = Duration::from_millis(2500);
    const TICK: Duration = Duration::from_millis(250);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs ticks every 250 ms from `t` until `until`, with the nodes in
    /// `answering` answering a ping sent each tick; returns the first
    /// `MarkDown`s and when they came.
    fn run(
        live: &mut Liveness,
        st: &ClusterState,
        t0: Instant,
        until: Duration,
        answering: &[NodeId],
    ) -> Vec<(Duration, Command)> {
        let mut out = Vec::new();
        let mut t = Duration::ZERO;
        while t <= until {
            let now = t0 + t;
            for &n in answering {
                live.ping_answered(n, now, now + ms(2));
            }
            for c in live.lead(st, 1, now, 0).commands {
                out.push((t, c));
            }
            t += TICK;
        }
        out
    }

    #[test]
    fn a_silent_node_is_marked_down_within_the_timeout_and_a_live_one_never() {
        let st = state(&[(1, Active), (2, Active), (3, Active)], &[Some(1)]);
        let mut live = Liveness::new(TIMEOUT);
        let t0 = Instant::now();
        let got = run(&mut live, &st, t0, ms(6000), &[2]);
        let downs: Vec<_> = got
            .iter()
            .filter(|(_, c)| matches!(c, Command::MarkDown { .. }))
            .collect();
        assert!(!downs.is_empty());
        assert!(downs
            .iter()
            .all(|(_, c)| *c == Command::MarkDown { node: 3 }));
        // a new leader gives a node half a timeout to answer its pings,
        // then the full timeout applies: down within 1.25 s + 2.5 s
        let first = downs[0].0;
        assert!(
            first > ms(1250) && first <= ms(1250) + TIMEOUT + TICK,
            "{first:?}"
        );
    }

    #[test]
    fn the_old_leader_gets_a_fifth_of_a_timeout_after_an_election() {
        let st = state(&[(1, Active), (2, Active), (3, Active)], &[Some(1)]);
        let mut live = Liveness::new(TIMEOUT);
        live.follow(Some(3));
        let t0 = Instant::now();
        let got = run(&mut live, &st, t0, ms(2000), &[2]);
        let (at, cmd) = &got[0];
        assert_eq!(*cmd, Command::MarkDown { node: 3 });
        assert!(*at > ms(500) && *at <= ms(500) + TICK, "{at:?}");
    }

    #[test]
    fn a_stalled_coordinator_gives_everyone_a_fresh_timeout() {
        let st = state(&[(1, Active), (2, Active)], &[Some(1)]);
        let mut live = Liveness::new(TIMEOUT);
        let t0 = Instant::now();
        assert!(run(&mut live, &st, t0, ms(1000), &[2]).is_empty());
        // the coordinator itself was paused for 10 s: node 2's last answer
        // is old, but nobody is declared down for the coordinator's pause
        let later = t0 + ms(11_000);
        assert!(live.lead(&st, 1, later, 0).commands.is_empty());
        // silence after that counts again, from the pause's end
        let mut t = later;
        let first = loop {
            t += TICK;
            if !live.lead(&st, 1, t, 0).commands.is_empty() {
                break t - later;
            }
        };
        assert!(first > TIMEOUT && first <= TIMEOUT + TICK, "{first:?}");
    }

    #[test]
    fn a_down_node_that_answers_again_rejoins_and_only_after_it_was_marked() {
        let st = state(&[(1, Active), (2, Down)], &[Some(1)]);
        let mut live = Liveness::new(TIMEOUT);
        let t0 = Instant::now();
        assert!(live.lead(&st, 1, t0, 0).commands.is_empty());
        live.marked_down(2, t0 + ms(100));
        // an answer that came before it was marked down proves nothing
        live.ping_answered(2, t0, t0 + ms(50));
        assert!(live.lead(&st, 1, t0 + TICK, 0).commands.is_empty());
        live.ping_answered(2, t0 + ms(400), t0 + ms(402));
        let got = live.lead(&st, 1, t0 + ms(500), 77).commands;
        assert_eq!(
            got,
            vec![Command::Join {
                node: 2,
                addr: "n2".into(),
                at_ms: 77
            }]
        );
    }

    #[test]
    fn the_lease_is_the_send_time_of_a_majoritys_answers_never_a_credit() {
        let st = state(&[(1, Active), (2, Active), (3, Active)], &[Some(1)]);
        let mut live = Liveness::new(TIMEOUT);
        let t0 = Instant::now();
        // a new leader credits nodes for failure detection, not the lease
        let r = live.lead(&st, 1, t0, 0);
        assert_eq!(r.lease, None, "only itself answered: no majority");
        live.ping_answered(3, t0 + ms(100), t0 + ms(101));
        let r = live.lead(&st, 1, t0 + ms(250), 0);
        assert_eq!(r.lease, Some(t0 + ms(100)), "itself and node 3");
        live.ping_answered(2, t0 + ms(200), t0 + ms(201));
        let r = live.lead(&st, 1, t0 + ms(500), 0);
        assert_eq!(r.lease, Some(t0 + ms(200)), "the second-newest of three");
    }
}
