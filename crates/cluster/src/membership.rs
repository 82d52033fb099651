//! Membership: joining through seeds, announcing, adding a node as a
//! learner then a voter, removing one.

use crate::network::{decode, encode, CallError, PeerError};
use crate::state::{Command, NodeId, Response};
use crate::{now_ms, state, ClusterError, ControlPlane, JoinRequest, VOTERS};
use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

impl ControlPlane {
    /// Asks the seeds (any member: it forwards to the leader) to add this
    /// node; retried for a while, as the cluster may be electing.
    pub(crate) async fn join(&self, seeds: &[String]) -> Result<(), ClusterError> {
        let req = encode(&JoinRequest {
            node: self.id,
            addr: self.addr.clone(),
        });
        let mut last = String::new();
        for _ in 0..60 {
            for seed in seeds {
                match self
                    .peer
                    .post(seed, "/internal/cluster/join", req.clone())
                    .await
                {
                    Ok(b) => match decode::<Result<(), PeerError>>(&b) {
                        Ok(Ok(())) => {
                            tracing::info!(node = self.id, via = %seed, "joined the cluster");
                            return Ok(());
                        }
                        Ok(Err(e)) | Err(e) => last = e.to_string(),
                    },
                    // a wrong secret will not get better by retrying
                    Err(CallError::Status {
                        status: 401 | 403,
                        message,
                        ..
                    }) => {
                        return Err(ClusterError::Join {
                            seeds: seeds.join(","),
                            message,
                        })
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(ClusterError::Join {
            seeds: seeds.join(","),
            message: last,
        })
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
    /// voter while there are fewer than [`VOTERS`]; then records it in the
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
        let raft_err = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ClusterError::NoLeader,
            e => ClusterError::Raft(e.to_string()),
        };
        if !is_member {
            self.raft
                .add_learner(req.node, node, true)
                .await
                .map_err(raft_err)?;
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
                .map_err(raft_err)?;
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if !voters.contains(&req.node) && voters.len() < VOTERS {
            let mut next = voters.clone();
            next.insert(req.node);
            self.raft
                .change_membership(next, true)
                .await
                .map_err(raft_err)?;
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
