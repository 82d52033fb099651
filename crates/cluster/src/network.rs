//! Raft RPCs between nodes, over the nodes' own HTTP API (internal routes
//! that require the cluster secret). Bodies are bincode.

use crate::TypeConfig;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;
use std::time::Duration;

type NodeId = u64;

/// The header that carries the cluster secret on internal calls.
pub const SECRET_HEADER: &str = "x-lockstep-cluster-secret";

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).expect("rpc encodes")
}

/// An error that crossed the network as text: what went wrong on another
/// member, or why its answer could not be read. On the wire it is a
/// string (bincode encodes the newtype as its content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, thiserror::Error)]
#[error("{0}")]
pub struct PeerError(pub String);

impl PeerError {
    pub fn of(e: impl std::fmt::Display) -> PeerError {
        PeerError(e.to_string())
    }
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, PeerError> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| PeerError(format!("undecodable rpc body: {e}")))
}

/// Marks a request that came over TLS with a client certificate the
/// node's CA signed (set by the listener). Under mutual TLS the internal
/// routes require it.
#[derive(Debug, Clone, Copy)]
pub struct ClientCertVerified;

/// The HTTP client for internal calls: async, with its own connection pool
/// (Raft heartbeats never wait behind forwarded requests or blocking
/// work); over TLS, presenting this node's certificate, when the cluster
/// has one.
#[derive(Clone)]
pub struct Peer {
    client: reqwest::Client,
    scheme: &'static str,
    secret: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: connection refused, reset or timed out.
    #[error("{addr} unreachable: {message}")]
    Unreachable { addr: String, message: String },
    /// An answer that is not a success.
    #[error("{addr}: HTTP {status}: {message}")]
    Status {
        addr: String,
        status: u16,
        message: String,
    },
}

/// A reqwest error with its causes (a TLS failure's reason is a cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// What every node-to-node HTTP client starts from: HTTP/1.1, no
/// redirects, and no proxy from the environment (`HTTP_PROXY`,
/// `ALL_PROXY`: they are for the object store; a proxy in between would
/// see the cluster secret, and its own error answers would read as a
/// node's). `LOCKSTEP_PEER_PROXY` (an `http://` URL) sends node-to-node
/// calls through a proxy on purpose.
pub fn peer_client_builder() -> reqwest::ClientBuilder {
    let b = reqwest::Client::builder()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    match std::env::var("LOCKSTEP_PEER_PROXY")
        .ok()
        .and_then(|p| reqwest::Proxy::all(p).ok())
    {
        Some(p) => b.proxy(p),
        None => b,
    }
}

impl Peer {
    /// `tls`: the client side of the cluster's mutual TLS (calls go to
    /// `https://`); `None`: plain HTTP.
    pub fn new(secret: &str, timeout: Duration, tls: Option<rustls::ClientConfig>) -> Peer {
        let builder = peer_client_builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(8);
        let (builder, scheme) = match tls {
            Some(cfg) => (builder.use_preconfigured_tls(cfg), "https"),
            None => (builder, "http"),
        };
        Peer {
            client: builder.build().expect("the internal HTTP client builds"),
            scheme,
            secret: secret.to_string(),
        }
    }

    /// POSTs `body` to `{scheme}://{addr}{path}`; returns the reply body of
    /// a 2xx answer.
    pub async fn post(&self, addr: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>, CallError> {
        let unreachable = |e: reqwest::Error| CallError::Unreachable {
            addr: addr.to_string(),
            message: error_chain(&e),
        };
        let resp = self
            .client
            .post(format!("{}://{addr}{path}", self.scheme))
            .header(SECRET_HEADER, &self.secret)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        if (200..300).contains(&status) {
            Ok(bytes.to_vec())
        } else {
            Err(CallError::Status {
                addr: addr.to_string(),
                status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            })
        }
    }
}

/// Every member's latest known address. A member that restarts at a new
/// address is reached there at once, also by replication streams created
/// for its old one.
pub type AddressBook = Arc<std::sync::RwLock<std::collections::HashMap<NodeId, String>>>;

/// Makes a [`Conn`] per target node.
pub struct Network {
    pub(crate) peer: Peer,
    pub(crate) book: AddressBook,
}

pub struct Conn {
    peer: Peer,
    target: NodeId,
    addr: String,
    book: AddressBook,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Conn {
        Conn {
            peer: self.peer.clone(),
            target,
            addr: node.addr.clone(),
            book: self.book.clone(),
        }
    }
}

impl Conn {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let addr = self
            .book
            .read()
            .expect("address book")
            .get(&self.target)
            .cloned()
            .unwrap_or_else(|| self.addr.clone());
        let bytes = match self.peer.post(&addr, path, encode(req)).await {
            Ok(b) => b,
            Err(e @ CallError::Unreachable { .. }) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let reply: Result<Resp, RaftError<NodeId, E>> = decode(&bytes)
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("/internal/raft/append", &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("/internal/raft/snapshot", &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("/internal/raft/vote", &rpc).await
    }
}
