//! lockstep's control plane: one openraft group over the nodes of a
//! cluster. Its replicated state ([`state::ClusterState`]) holds membership,
//! the shard → node map with owner epochs, checkpoint and segment manifests
//! and the pipeline; the Raft leader acts as the coordinator.
//!
//! - [`state`]: the state machine's data and rules (pure).
//! - [`store`]: Raft log, vote and snapshots in sled.
//! - [`network`]: Raft RPCs over the nodes' HTTP API.
//! - [`ControlPlane`]: a node's handle: start, join, propose, watch.

pub mod decide;
pub mod network;
pub mod state;
pub mod store;

use crate::network::{decode, encode, CallError, Network, Peer, PeerError, SECRET_HEADER};
use crate::state::{ClusterState, Command, NodeId, Response};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::post;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

openraft::declare_raft_types!(
    /// The Raft types of the control plane.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// How many members vote; later ones are learners (they replicate the
/// state and serve, but elections and commits need only the voters).
pub const VOTERS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("control plane storage ({path}): {message}")]
    Storage { path: String, message: String },
    #[error("raft: {0}")]
    Raft(String),
    #[error("no leader is known yet (an election may be running); retry")]
    NoLeader,
    #[error("joining through {seeds}: {message}")]
    Join { seeds: String, message: String },
    #[error("{0}")]
    Call(#[from] CallError),
    #[error("{0}")]
    Remote(#[from] network::PeerError),
    #[error("{0}")]
    Rejected(#[from] state::Rejection),
}

/// Settings of a node's control-plane member.
#[derive(Debug, Clone)]
pub struct CpConfig {
    pub node: NodeId,
    /// This node's API address, where the others reach it.
    pub addr: String,
    /// Other nodes' API addresses; empty: this node starts a new cluster.
    pub seeds: Vec<String>,
    pub secret: String,
    pub dir: std::path::PathBuf,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JoinRequest {
    node: NodeId,
    addr: String,
}

/// A node's member of the control plane.
pub struct ControlPlane {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft<TypeConfig>,
    sm: store::StateMachine,
    peer: Peer,
    book: network::AddressBook,
    secret: String,
    /// When this member last had word that it is on the majority's side:
    /// a ping from the coordinator, or (as coordinator) answers from a
    /// majority. See [`ControlPlane::since_contact`].
    contact: std::sync::Mutex<std::time::Instant>,
}

impl ControlPlane {
    /// Opens the storage and starts the Raft member. A fresh member with
    /// no seeds starts a new cluster with itself as the only voter; with
    /// seeds it asks them to add it. A member with stored state rejoins
    /// as it was.
    pub async fn start(cfg: CpConfig) -> Result<Arc<ControlPlane>, ClusterError> {
        ControlPlane::start_with(cfg, |_| {}).await
    }

    /// Like [`ControlPlane::start`]; `serving` gets the member before it
    /// joins, to route the internal calls to it (the leader calls back).
    pub async fn start_with(
        cfg: CpConfig,
        serving: impl FnOnce(&Arc<ControlPlane>),
    ) -> Result<Arc<ControlPlane>, ClusterError> {
        let storage = |e: openraft::StorageError<NodeId>| ClusterError::Storage {
            path: cfg.dir.display().to_string(),
            message: e.to_string(),
        };
        let (mut log, sm) = store::open(&cfg.dir).map_err(storage)?;
        let fresh = {
            use openraft::storage::RaftLogStorage;
            let st = log.get_log_state().await.map_err(storage)?;
            st.last_log_id.is_none() && log.read_vote().await.map_err(storage)?.is_none()
        };
        let config = openraft::Config {
            cluster_name: "lockstep".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.election_timeout.0.as_millis() as u64,
            election_timeout_max: cfg.election_timeout.1.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2000),
            max_in_snapshot_log_to_keep: 500,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| ClusterError::Raft(e.to_string()))?,
        );
        let peer = Peer::new(&cfg.secret, Duration::from_secs(5));
        let book = network::AddressBook::default();
        let network = Network {
            peer: peer.clone(),
            book: book.clone(),
        };
        let raft = Raft::new(cfg.node, config, network, log, sm.clone())
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        // the address book: the Raft membership's addresses, overridden by
        // the members' own announcements (`Join`, applied through the real
        // leader): a member that restarted at a new address while it still
        // believed it led may have changed the membership only in its own,
        // soon discarded, log
        let mut metrics = raft.metrics();
        let mut states = sm.subscribe();
        let watched = book.clone();
        tokio::spawn(async move {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let st = states.borrow_and_update();
                    let mut b = watched.write().expect("address book");
                    for (id, n) in m.membership_config.membership().nodes() {
                        b.insert(*id, n.addr.clone());
                    }
                    for (id, n) in &st.nodes {
                        b.insert(*id, n.addr.clone());
                    }
                }
                tokio::select! {
                    r = metrics.changed() => if r.is_err() { return },
                    r = states.changed() => if r.is_err() { return },
                }
            }
        });
        let cp = Arc::new(ControlPlane {
            id: cfg.node,
            addr: cfg.addr.clone(),
            raft,
            sm,
            peer,
            book,
            secret: cfg.secret.clone(),
            contact: std::sync::Mutex::new(std::time::Instant::now()),
        });
        serving(&cp);
        if fresh && cfg.seeds.is_empty() {
            let members = [(
                cfg.node,
                BasicNode {
                    addr: cfg.addr.clone(),
                },
            )]
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>();
            cp.raft
                .initialize(members)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
            tracing::info!(node = cfg.node, "started a new cluster");
        } else if fresh {
            cp.join(&cfg.seeds).await?;
        }
        cp.clone().announce(cfg.seeds.clone());
        Ok(cp)
    }

    /// Asks the seeds (any member: it forwards to the leader) to add this
    /// node; retried for a while, as the cluster may be electing.
    async fn join(&self, seeds: &[String]) -> Result<(), ClusterError> {
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
    fn announce(self: Arc<Self>, seeds: Vec<String>) {
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

    /// The replicated state as this member has applied it.
    pub fn state(&self) -> Arc<ClusterState> {
        self.sm.state()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<ClusterState>> {
        self.sm.subscribe()
    }

    /// The leader's id and API address, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    pub fn is_leader(&self) -> bool {
        self.leader().is_some_and(|(id, _)| id == self.id)
    }

    /// Proposes a command: applied through the leader (forwarded to it if
    /// this member is not), returns what applying it did.
    pub async fn propose(&self, cmd: Command) -> Result<Response, ClusterError> {
        self.propose_at(cmd).await.map(|(r, _)| r)
    }

    /// [`ControlPlane::propose`], also returning the entry's log index.
    async fn propose_at(&self, cmd: Command) -> Result<(Response, u64), ClusterError> {
        match self.raft.client_write(cmd.clone()).await {
            Ok(r) => Ok((r.data, r.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let Some(node) = f.leader_node else {
                    return Err(ClusterError::NoLeader);
                };
                let b = self
                    .peer
                    .post(&node.addr, "/internal/cluster/propose", encode(&cmd))
                    .await?;
                decode::<Result<(Response, u64), PeerError>>(&b)
                    .map_err(ClusterError::Remote)?
                    .map_err(ClusterError::Remote)
            }
            Err(e) => Err(ClusterError::Raft(e.to_string())),
        }
    }

    /// A read barrier: returns once this member has applied everything the
    /// cluster committed before the call, so the state it then shows is not
    /// stale (a restarted member may not have re-applied its log's tail
    /// yet; a partitioned one may have missed entries).
    pub async fn barrier(&self, timeout: Duration) -> Result<Arc<ClusterState>, ClusterError> {
        let (_, index) = self.propose_at(Command::Barrier).await?;
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let applied = rx.borrow_and_update().last_applied.map_or(0, |l| l.index);
            if applied >= index {
                return Ok(self.state());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(ClusterError::Raft(format!(
                    "this member has applied up to {applied}, not {index}, after {timeout:?}"
                )));
            }
        }
    }

    /// Adds a node (on the leader): as a learner that catches up, then as a
    /// voter while there are fewer than [`VOTERS`]; then records it in the
    /// cluster state.
    async fn add_member(&self, req: JoinRequest) -> Result<(), ClusterError> {
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

    async fn remove_member(&self, node: NodeId) -> Result<Response, ClusterError> {
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

    /// Records word from the majority's side as of `at` (see
    /// [`Self::since_contact`]); never moves it back.
    pub fn touch_at(&self, at: std::time::Instant) {
        let mut c = self.contact.lock().expect("contact");
        *c = (*c).max(at);
    }

    /// How long since this member last had word that it is on the
    /// majority's side. A node cut off from the others finds out through
    /// this before the coordinator declares it down (the node's lease is
    /// shorter than the failure timeout), and stops serving its shards:
    /// their new owners may already be ahead of it.
    pub fn since_contact(&self) -> Duration {
        self.contact.lock().expect("contact").elapsed()
    }

    /// Asks a member whether it is alive (the coordinator's heartbeat).
    /// The ping carries how old the coordinator's own word from a majority
    /// is: a member's lease is never fresher than its coordinator's (a
    /// deposed leader cut off with a few members keeps none of them
    /// serving).
    pub async fn ping(&self, addr: &str) -> bool {
        let age = self.since_contact().as_millis() as u64;
        self.peer
            .post(addr, "/internal/cluster/ping", encode(&age))
            .await
            .is_ok()
    }

    /// Where a request for the leader goes: `None` if this member leads.
    fn leader_addr(&self) -> Result<Option<String>, ClusterError> {
        match self.leader() {
            Some((id, _)) if id == self.id => Ok(None),
            Some((_, addr)) => Ok(Some(addr)),
            None => Err(ClusterError::NoLeader),
        }
    }

    /// The internal routes (Raft RPCs, join, propose), guarded by the
    /// cluster secret. Merge them into the node's API router.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/internal/raft/append", post(raft_append))
            .route("/internal/raft/vote", post(raft_vote))
            .route("/internal/raft/snapshot", post(raft_snapshot))
            .route("/internal/cluster/join", post(cluster_join))
            .route("/internal/cluster/propose", post(cluster_propose))
            .route("/internal/cluster/ping", post(cluster_ping))
            .route("/internal/cluster/remove", post(cluster_remove))
            .with_state(self.clone())
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

type Cp = State<Arc<ControlPlane>>;

/// The refusal of a call without the right cluster secret.
fn refuse(cp: &ControlPlane, headers: &HeaderMap) -> Option<HttpResponse> {
    match headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok()) {
        Some(s) if s == cp.secret => None,
        Some(_) => Some(
            (
                StatusCode::FORBIDDEN,
                "wrong cluster secret: this node belongs to another cluster or its secret differs",
            )
                .into_response(),
        ),
        None => Some(
            (
                StatusCode::UNAUTHORIZED,
                "internal routes need the cluster secret",
            )
                .into_response(),
        ),
    }
}

fn bin<T: Serialize>(v: &T) -> HttpResponse {
    (
        [("content-type", "application/octet-stream")],
        Bytes::from(encode(v)),
    )
        .into_response()
}

fn bad(e: PeerError) -> HttpResponse {
    (StatusCode::BAD_REQUEST, e.0).into_response()
}

async fn raft_append(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    match decode(&body) {
        Ok(req) => bin(&cp.raft.append_entries(req).await),
        Err(e) => bad(e),
    }
}

async fn raft_vote(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    match decode(&body) {
        Ok(req) => bin(&cp.raft.vote(req).await),
        Err(e) => bad(e),
    }
}

async fn raft_snapshot(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    match decode(&body) {
        Ok(req) => bin(&cp.raft.install_snapshot(req).await),
        Err(e) => bad(e),
    }
}

async fn cluster_join(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    let req: JoinRequest = match decode(&body) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let result = match cp.leader_addr() {
        Ok(None) => cp.add_member(req).await.map_err(PeerError::of),
        Ok(Some(leader)) => match cp
            .peer
            .post(&leader, "/internal/cluster/join", body.to_vec())
            .await
        {
            Ok(b) => decode::<Result<(), PeerError>>(&b).and_then(|r| r),
            Err(e) => Err(PeerError::of(e)),
        },
        Err(e) => Err(PeerError::of(e)),
    };
    bin(&result)
}

async fn cluster_remove(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    match decode::<NodeId>(&body) {
        Ok(node) => bin(&cp.remove(node).await.map_err(PeerError::of)),
        Err(e) => bad(e),
    }
}

/// The coordinator's liveness probe.
async fn cluster_ping(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    match decode::<u64>(&body) {
        Ok(age) => {
            let at = std::time::Instant::now().checked_sub(Duration::from_millis(age));
            if let Some(at) = at {
                cp.touch_at(at);
            }
        }
        Err(e) => return bad(e),
    }
    bin(&cp.id)
}

async fn cluster_propose(State(cp): Cp, headers: HeaderMap, body: Bytes) -> HttpResponse {
    if let Some(r) = refuse(&cp, &headers) {
        return r;
    }
    match decode::<Command>(&body) {
        // `propose` forwards if leadership moved meanwhile
        Ok(cmd) => bin(&cp.propose_at(cmd).await.map_err(PeerError::of)),
        Err(e) => bad(e),
    }
}
