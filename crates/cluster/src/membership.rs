//! Membership: joining through seeds, announcing, adding a node as a
//! learner then a voter, removing one.

use crate::network::{decode, encode, CallError, PeerError};
use crate::state::{Command, NodeId, Response};
use crate::{now_ms, state, ClusterError, ControlPlane, JoinRequest};
use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// How long a node with seeds tries to join before it gives up (without
/// `bootstrap_expect`, or when a seed's cluster does not take it).
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

/// A fresh node's question to a seed (`/internal/cluster/hello`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub node: NodeId,
    pub addr: String,
}

/// A seed's answer: who it is and whether it is in a cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HelloReply {
    pub node: NodeId,
    pub in_cluster: bool,
    /// The answering process's random number: a node that gets its own
    /// id back with another one has found a second process with its id.
    pub incarnation: u64,
}

/// A membership change's error: a leader that moved meanwhile is
/// [`ClusterError::NoLeader`] (the caller retries).
fn write_err(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ClusterError::NoLeader,
        e => ClusterError::Raft(e.to_string()),
    }
}

impl ControlPlane {
    /// How a fresh member with seeds finds its cluster. Every round it
    /// asks each seed who it is ([`Hello`]):
    /// - a seed in a cluster: this node asks the leader through it to
    ///   forget its old Raft membership, if the cluster counts it already
    ///   (its data directory was wiped: [`ControlPlane::forget_member`]),
    ///   then to add it;
    /// - with `expect`: once every seed answers, none in a cluster, and at
    ///   least `expect` nodes answer (this one included), the
    ///   lowest-numbered of them founds the cluster alone and the others
    ///   join it the next round (Consul's `bootstrap_expect`); a node with
    ///   seeds never founds otherwise;
    /// - without `expect`: gives up after 30 s.
    ///
    /// A seed that answers with this node's own id and process is this
    /// node; with another process, a duplicate id, and this node stops.
    ///
    /// Until it has been forgotten, the member takes no Raft call: a node
    /// that lost its disk lost the votes it cast (it must not vote again
    /// in a term it voted in) and the log it acknowledged (the leader must
    /// not match its log against what it had).
    pub(crate) async fn bootstrap(
        &self,
        seeds: &[String],
        expect: Option<usize>,
    ) -> Result<(), ClusterError> {
        let started = std::time::Instant::now();
        let mut said = started;
        let hello = encode(&Hello {
            node: self.id,
            addr: self.addr.clone(),
        });
        loop {
            let mut waiting: BTreeMap<NodeId, &str> = [(self.id, self.addr.as_str())].into();
            // seeds in a cluster, and whether they run this release
            let mut in_cluster: Vec<(&String, bool)> = Vec::new();
            let mut unreachable = Vec::new();
            for seed in seeds {
                match self
                    .peer
                    .post(seed, "/internal/cluster/hello", hello.clone())
                    .await
                    .map(|b| decode::<HelloReply>(&b))
                {
                    Ok(Ok(r)) if r.node == self.id && r.incarnation == self.incarnation => {}
                    Ok(Ok(r)) if r.node == self.id => {
                        return Err(ClusterError::Join {
                            seeds: seed.clone(),
                            message: format!(
                                "another process answers there as node {} (this node's id): node ids must be unique",
                                self.id
                            ),
                        })
                    }
                    Ok(Ok(r)) if r.in_cluster => in_cluster.push((seed, true)),
                    Ok(Ok(r)) => {
                        waiting.insert(r.node, seed);
                    }
                    // a node of an earlier release: it has no hello, and
                    // is asked to add this node as before
                    Err(CallError::Status { status: 404, .. }) => in_cluster.push((seed, false)),
                    // a wrong secret will not get better by retrying
                    Err(CallError::Status {
                        status: 401 | 403,
                        message,
                        ..
                    }) => {
                        return Err(ClusterError::Join {
                            seeds: seed.clone(),
                            message,
                        })
                    }
                    Ok(Err(e)) => unreachable.push(format!("{seed}: {e}")),
                    Err(e) => unreachable.push(e.to_string()),
                }
            }
            if !in_cluster.is_empty() {
                // the leader decides whether the cluster counts this node
                // already (its disk was wiped): it forgets it first, or
                // does nothing
                if in_cluster.iter().any(|(_, new)| *new) {
                    let via: Vec<&String> = in_cluster
                        .iter()
                        .filter(|(_, new)| *new)
                        .map(|(s, _)| *s)
                        .collect();
                    self.call_with_patience(&via, "/internal/cluster/rejoin")
                        .await?;
                }
                self.settled();
                let via: Vec<&String> = in_cluster.iter().map(|(s, _)| *s).collect();
                return self
                    .call_with_patience(&via, "/internal/cluster/join")
                    .await;
            }
            let lowest = waiting.keys().next() == Some(&self.id);
            if let Some(n) = expect {
                // every seed answered, none in a cluster: a seed that did
                // not answer may be in one
                if waiting.len() >= n && lowest && unreachable.is_empty() {
                    self.settled();
                    let members: BTreeMap<NodeId, BasicNode> = [(
                        self.id,
                        BasicNode {
                            addr: self.addr.clone(),
                        },
                    )]
                    .into();
                    self.raft
                        .initialize(members)
                        .await
                        .map_err(|e| ClusterError::Raft(e.to_string()))?;
                    tracing::info!(
                        node = self.id,
                        with = ?waiting.keys().collect::<Vec<_>>(),
                        "{} nodes answered: founded the cluster, the others join it",
                        waiting.len()
                    );
                    return Ok(());
                }
            } else if started.elapsed() > JOIN_PATIENCE {
                return Err(ClusterError::Join {
                    seeds: seeds.join(","),
                    message: format!(
                        "no seed is in a cluster{}; nodes started together found one with --bootstrap-expect N (cluster.bootstrap_expect), a first node founds one alone when started without seeds",
                        if unreachable.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", unreachable.join("; "))
                        }
                    ),
                });
            }
            if said.elapsed() >= Duration::from_secs(10) {
                said = std::time::Instant::now();
                tracing::info!(
                    "no cluster yet: waiting for {} nodes, {} answer ({:?}){}",
                    expect.unwrap_or(0),
                    waiting.len(),
                    waiting.keys().collect::<Vec<_>>(),
                    if unreachable.is_empty() {
                        String::new()
                    } else {
                        format!("; unreachable: {}", unreachable.join("; "))
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Asks the seeds in turn (any member: it forwards to the leader) to
    /// add this node (`/internal/cluster/join`), or to forget it if the
    /// cluster counts it already (`/internal/cluster/rejoin`); retried for
    /// a while, as the cluster may be electing.
    async fn call_with_patience(&self, seeds: &[&String], route: &str) -> Result<(), ClusterError> {
        let req = encode(&JoinRequest {
            node: self.id,
            addr: self.addr.clone(),
        });
        let mut last = String::new();
        let started = std::time::Instant::now();
        while started.elapsed() < JOIN_PATIENCE {
            for seed in seeds {
                match self.peer.post(seed, route, req.clone()).await {
                    Ok(b) => match decode::<Result<(), PeerError>>(&b) {
                        Ok(Ok(())) => {
                            tracing::info!(node = self.id, via = %seed, "{route}: done");
                            return Ok(());
                        }
                        Ok(Err(e)) | Err(e) => last = format!("{seed}: {e}"),
                    },
                    Err(CallError::Status {
                        status: 401 | 403,
                        message,
                        ..
                    }) => {
                        return Err(ClusterError::Join {
                            seeds: seed.to_string(),
                            message,
                        })
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(ClusterError::Join {
            seeds: seeds
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
            message: last,
        })
    }

    /// Whether this member is settling (see [`ControlPlane::bootstrap`]):
    /// it takes no Raft call then.
    pub(crate) fn settling(&self) -> bool {
        self.settling.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn settled(&self) {
        self.settling
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// The answer to a fresh node's hello.
    pub(crate) fn hello_reply(&self) -> HelloReply {
        let m = self.raft.metrics().borrow().clone();
        HelloReply {
            node: self.id,
            in_cluster: m
                .membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some(),
            incarnation: self.incarnation,
        }
    }

    /// Forgets the Raft membership of a member whose data directory was
    /// wiped (on the leader), with a quorum of the others: a lost disk lost
    /// the votes it cast and the log it acknowledged. It then joins as a
    /// new member would (its replication starts over from nothing).
    pub(crate) async fn forget_member(&self, req: JoinRequest) -> Result<(), ClusterError> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let Some(known) = membership.get_node(&req.node).map(|n| n.addr.clone()) else {
            // a new node: nothing to forget
            return Ok(());
        };
        // a member that answers at its address, in the cluster, is alive:
        // the caller is a second process with its id, not the member
        // after it lost its disk (which answers there as not in one)
        let book = self
            .book
            .read()
            .expect("address book")
            .get(&req.node)
            .cloned();
        for addr in [Some(known), book].into_iter().flatten() {
            let hello = encode(&Hello {
                node: self.id,
                addr: self.addr.clone(),
            });
            if let Ok(Ok(r)) = self
                .peer
                .post(&addr, "/internal/cluster/hello", hello)
                .await
                .map(|b| decode::<HelloReply>(&b))
            {
                if r.node == req.node && r.in_cluster {
                    return Err(ClusterError::Join {
                        seeds: self.addr.clone(),
                        message: format!(
                            "node {} is alive at {addr} and in the cluster; a second process with its id ({}) cannot take its place",
                            req.node, req.addr
                        ),
                    });
                }
            }
        }
        tracing::warn!(
            node = req.node,
            "a member lost its data directory: forgetting its Raft membership"
        );
        let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.remove(&req.node) {
            if voters.is_empty() {
                return Err(ClusterError::Join {
                    seeds: self.addr.clone(),
                    message: format!(
                        "node {} was the cluster's only voter; its state is lost with its disk",
                        req.node
                    ),
                });
            }
            self.raft
                .change_membership(openraft::ChangeMembers::ReplaceAllVoters(voters), false)
                .await
                .map_err(write_err)?;
        }
        if self.raft_member(req.node) {
            let gone = [req.node].into_iter().collect();
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveNodes(gone), false)
                .await
                .map_err(write_err)?;
        }
        Ok(())
    }

    /// Records this node in the cluster state as an active member (again,
    /// after a restart, perhaps at a new address), in the background until
    /// the leader has done it.
    pub(crate) fn announce(self: Arc<Self>, seeds: Vec<String>) {
        tokio::spawn(async move {
            let req = JoinRequest {
                node: self.id,
                addr: self.addr.clone(),
            };
            // until applied, or until nothing else holds the member
            while Arc::strong_count(&self) > 1 {
                let done = match self.leader_addr() {
                    // a member restarted from a stored vote for itself may
                    // believe it leads while another leads: a quorum must
                    // confirm it, and nothing may wait forever
                    Ok(None) => match tokio::time::timeout(Duration::from_secs(5), async {
                        self.raft
                            .ensure_linearizable()
                            .await
                            .map_err(PeerError::of)?;
                        self.add_member(req.clone()).await.map_err(PeerError::of)
                    })
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(PeerError::of("adding itself timed out")),
                    },
                    Ok(Some(leader)) => self.ask_join(&leader, &req).await,
                    Err(e) => Err(PeerError::of(e)),
                };
                let done = match done {
                    Ok(()) => Ok(()),
                    // the leader may not know this node's new address yet
                    Err(_) => {
                        let mut r = Err(PeerError::of("no seed answered"));
                        for s in &seeds {
                            r = self.ask_join(s, &req).await;
                            if r.is_ok() {
                                break;
                            }
                        }
                        r
                    }
                };
                match done {
                    Ok(()) => return,
                    Err(e) => tracing::debug!("announcing this node: {e}; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }

    async fn ask_join(&self, addr: &str, req: &JoinRequest) -> Result<(), PeerError> {
        let b = self
            .peer
            .post(addr, "/internal/cluster/join", encode(req))
            .await
            .map_err(PeerError::of)?;
        decode::<Result<(), PeerError>>(&b).and_then(|r| r)
    }

    /// Adds a node (on the leader): as a learner that catches up, then as a
    /// voter while there are fewer than `cluster.voters`; then records it in the
    /// cluster state.
    pub(crate) async fn add_member(&self, req: JoinRequest) -> Result<(), ClusterError> {
        let node = BasicNode {
            addr: req.addr.clone(),
        };
        // replication to it goes to the new address from now on
        self.book
            .write()
            .expect("address book")
            .insert(req.node, req.addr.clone());
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let is_member = membership.get_node(&req.node).is_some();
        if !is_member {
            self.raft
                .add_learner(req.node, node, true)
                .await
                .map_err(write_err)?;
        } else if membership.get_node(&req.node) != Some(&node) {
            // a member back at a new address (its id is its identity): the
            // member list first, so every member's address book points
            // there (the membership change needs its acknowledgement)
            self.propose(Command::Join {
                node: req.node,
                addr: req.addr.clone(),
                at_ms: now_ms(),
            })
            .await?
            .into_result()?;
            let nodes = [(req.node, node)].into_iter().collect();
            self.raft
                .change_membership(openraft::ChangeMembers::SetNodes(nodes), true)
                .await
                .map_err(write_err)?;
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if !voters.contains(&req.node) && voters.len() < self.voters {
            let mut next = voters.clone();
            next.insert(req.node);
            self.raft
                .change_membership(next, true)
                .await
                .map_err(write_err)?;
        }
        self.propose(Command::Join {
            node: req.node,
            addr: req.addr,
            at_ms: now_ms(),
        })
        .await?
        .into_result()
        .map_err(ClusterError::Rejected)
    }

    /// Removes a node that is down for good (`nodes remove`), on the
    /// leader: first from the cluster state (refused unless the cluster has
    /// marked it down), then from the Raft membership. A voter's place goes
    /// to the lowest-numbered learner, so the cluster keeps three voters and
    /// its tolerance of one more failure.
    pub async fn remove(&self, node: NodeId) -> Result<Response, ClusterError> {
        match self.leader_addr()? {
            None => self.remove_member(node).await,
            Some(leader) => {
                let b = self
                    .peer
                    .post(&leader, "/internal/cluster/remove", encode(&node))
                    .await?;
                decode::<Result<Response, PeerError>>(&b)
                    .map_err(ClusterError::Remote)?
                    .map_err(ClusterError::Remote)
            }
        }
    }

    pub(crate) async fn remove_member(&self, node: NodeId) -> Result<Response, ClusterError> {
        if node == self.id {
            return Ok(Response::Rejected(state::Rejection::LeaderRemovesItself));
        }
        let r = self.propose(Command::Remove { node }).await?;
        // gone from the state already (a retry after the membership change
        // failed): finish the membership change
        let retry = !self.state().nodes.contains_key(&node) && self.raft_member(node);
        if r != Response::Done && !retry {
            return Ok(r);
        }
        let raft_err = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| {
            ClusterError::Raft(e.to_string())
        };
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.remove(&node) {
            let st = self.state();
            if let Some(l) = membership
                .learner_ids()
                .filter(|l| {
                    st.nodes
                        .get(l)
                        .is_some_and(|i| i.state != state::NodeState::Down)
                })
                .min()
            {
                voters.insert(l);
            }
            self.raft
                .change_membership(openraft::ChangeMembers::ReplaceAllVoters(voters), false)
                .await
                .map_err(raft_err)?;
        }
        let m = self.raft.metrics().borrow().clone();
        if m.membership_config.membership().get_node(&node).is_some() {
            let gone = [node].into_iter().collect();
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveNodes(gone), false)
                .await
                .map_err(raft_err)?;
        }
        self.book.write().expect("address book").remove(&node);
        tracing::info!(node, "removed from the cluster");
        Ok(Response::Done)
    }

    /// How many members should vote.
    pub fn voter_target(&self) -> usize {
        self.voters
    }

    /// The Raft voters and all members (voters and learners).
    pub fn raft_voters(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().collect(),
            membership.nodes().map(|(id, _)| *id).collect(),
        )
    }

    /// Makes `voters` the voters (on the leader); members that lose their
    /// vote stay learners.
    pub async fn set_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), ClusterError> {
        self.raft
            .change_membership(openraft::ChangeMembers::ReplaceAllVoters(voters), true)
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::Raft(e.to_string()))
    }

    /// Whether `node` is in the Raft membership (voter or learner).
    pub fn raft_member(&self, node: NodeId) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&node)
            .is_some()
    }
}
