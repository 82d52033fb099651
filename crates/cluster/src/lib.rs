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

mod membership;
mod routes;
pub use network::ClientCertVerified;
pub use routes::same_secret;

use crate::network::{decode, encode, CallError, Network, Peer, PeerError};
use crate::state::{ClusterState, Command, NodeId, Response};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
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

/// The internal routes' body limit: above any RPC the Raft configuration
/// lets a member send (32 entries of at most a 1 MiB pipeline each, or a
/// 1 MiB snapshot chunk), where axum's default (2 MiB) is not.
pub const INTERNAL_BODY_LIMIT: usize = 96 << 20;

/// How many members vote by default (`cluster.voters`: 3 or 5); later
/// ones are learners (they replicate the state and serve, but elections
/// and commits need only the voters).
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
    /// The nodes' API addresses (this node's own may be among them);
    /// empty: this node starts a new cluster.
    pub seeds: Vec<String>,
    /// With seeds: a fresh node founds a cluster with them once this many
    /// nodes (itself included), none yet in a cluster, answer, if it has
    /// the lowest id of them; `None`: it only ever joins a cluster.
    pub bootstrap_expect: Option<usize>,
    pub secret: String,
    pub dir: std::path::PathBuf,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// How many members vote (3 or 5).
    pub voters: usize,
    /// Mutual TLS between the nodes: calls go over TLS with this client
    /// config, and the internal routes take only calls that presented a
    /// certificate the CA signed.
    pub tls: Option<rustls::ClientConfig>,
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
    /// Set while a fresh member with seeds finds its cluster: it takes no
    /// Raft call then (see [`ControlPlane::bootstrap`]).
    settling: std::sync::atomic::AtomicBool,
    /// Internal calls must come with a client certificate the CA signed.
    mutual_tls: bool,
    /// A random number of this process (see `HelloReply::incarnation`).
    incarnation: u64,
    /// How many members vote.
    voters: usize,
}

impl ControlPlane {
    /// Opens the storage and starts the Raft member. A fresh member with
    /// no seeds starts a new cluster with itself as the only voter; with
    /// seeds it joins their cluster, or founds one with them
    /// ([`ControlPlane::bootstrap`]). A member with stored state rejoins
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
            // what one RPC may carry, under the internal routes' body
            // limit: a snapshot in 1 MiB chunks; at most 32 entries, each
            // at most a 1 MiB pipeline and small commands
            snapshot_max_chunk_size: 1 << 20,
            max_payload_entries: 32,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| ClusterError::Raft(e.to_string()))?,
        );
        let mutual_tls = cfg.tls.is_some();
        let peer = Peer::new(&cfg.secret, Duration::from_secs(5), cfg.tls.clone());
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
            settling: std::sync::atomic::AtomicBool::new(fresh && !cfg.seeds.is_empty()),
            mutual_tls,
            voters: cfg.voters,
            incarnation: {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(std::process::id());
                h.finish()
            },
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
            // a node that failed to join stays settling: it exits
            cp.bootstrap(&cfg.seeds, cfg.bootstrap_expect).await?;
        }
        cp.clone().announce(cfg.seeds.clone());
        Ok(cp)
    }

    /// What the state machine measures of itself (apply time, snapshot
    /// size), for `/metrics`.
    pub fn sm_stats(&self) -> store::SmStats {
        self.sm.stats.clone()
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
    /// is and the index it has applied, which members of earlier releases
    /// took as a lease renewal; members renew their leases themselves now
    /// ([`Self::renew_lease`]).
    pub async fn ping(&self, addr: &str) -> bool {
        let age = self.since_contact().as_millis() as u64;
        self.peer
            .post(
                addr,
                "/internal/cluster/ping",
                encode(&(age, self.applied_index())),
            )
            .await
            .is_ok()
    }

    /// Renews this member's serving lease: asks the leader how old its
    /// word from a majority is and what it has applied, and takes that word
    /// as of when the question was *sent* (less its age), once this member
    /// has applied as much. The member's own clock starts the lease, so a
    /// delay anywhere (a slow network, this process paused by SIGSTOP with
    /// the answer waiting in its socket) only shortens it. The leader's
    /// pings no longer renew it: a ping that waited in the socket of a
    /// paused member looked fresh when read after SIGCONT, and the member
    /// served its moved shards' old state (seen by the paused-node test).
    pub async fn renew_lease(&self) -> bool {
        let sent = std::time::Instant::now();
        let Ok(Some(addr)) = self.leader_addr() else {
            return false;
        };
        let Ok(b) = self
            .peer
            .post(&addr, "/internal/cluster/lease", Vec::new())
            .await
        else {
            return false;
        };
        let Ok(Some((age, index))) = decode::<Option<(u64, u64)>>(&b) else {
            return false;
        };
        let Some(at) = sent.checked_sub(Duration::from_millis(age)) else {
            return false;
        };
        if self.applied_index() >= index || self.wait_applied(index, Duration::from_secs(2)).await {
            self.touch_at(at);
            return true;
        }
        false
    }

    /// The leader's answer to [`Self::renew_lease`]: how old its word from
    /// a majority is (ms) and the index it has applied; `None` if this
    /// member does not lead.
    pub fn lease_grant(&self) -> Option<(u64, u64)> {
        self.is_leader().then(|| {
            (
                self.since_contact().as_millis() as u64,
                self.applied_index(),
            )
        })
    }

    /// Waits until this member has applied log index `index`; false if it
    /// has not within `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if rx.borrow_and_update().last_applied.map_or(0, |l| l.index) >= index {
                return true;
            }
            // a timeout, or Raft shut down
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                return false;
            }
        }
    }

    /// Why this member's Raft stopped for good (a storage error: a full
    /// or failed disk), if it did. It cannot recover in this process.
    pub fn fatal(&self) -> Option<String> {
        let rx = self.raft.metrics();
        match &rx.borrow().running_state {
            // shut down on purpose
            Err(openraft::error::Fatal::Stopped) => return None,
            Err(e) => return Some(e.to_string()),
            Ok(()) => {}
        }
        // Raft's core gone while its metrics still say it runs: it quit
        // without saying why (CI saw "quit RaftCore::main on error ... No
        // space left on device" and the node stayed up, unready, for good),
        // or its runtime is being dropped (the caller checks for that)
        rx.has_changed()
            .is_err()
            .then(|| "Raft's core exited".to_string())
    }

    /// The last log index this member has applied to its state.
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// Where a request for the leader goes: `None` if this member leads.
    fn leader_addr(&self) -> Result<Option<String>, ClusterError> {
        match self.leader() {
            Some((id, _)) if id == self.id => Ok(None),
            Some((_, addr)) => Ok(Some(addr)),
            None => Err(ClusterError::NoLeader),
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// The replicated state's size as it is encoded (in snapshots and
/// `lockstep_control_plane_state_bytes`), counted without building it.
pub fn state_bytes(st: &ClusterState) -> usize {
    let mut w = bincode::enc::write::SizeWriter::default();
    match bincode::serde::encode_into_writer(st, &mut w, bincode::config::standard()) {
        Ok(()) => w.bytes_written,
        Err(_) => 0,
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
