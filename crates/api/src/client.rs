//! A blocking client for the HTTP API (ureq): a typed method per endpoint,
//! and [`Client::request`] for anything else (tests look at raw answers).

use crate::*;
use serde::de::DeserializeOwned;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach lockstepd at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("{method} {path}: HTTP {status}: {}", body.error)]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        body: ErrorBody,
    },
    #[error("{path}: unexpected reply: {message}")]
    Reply { path: String, message: String },
}

impl ClientError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One response: status, body and the headers clients act on.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Idempotent-Replayed: true`: the stored answer of an earlier request.
    pub replayed: bool,
    pub retry_after: Option<String>,
}

impl Reply {
    /// The body as untyped JSON (`null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as `T`.
    pub fn parse<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Reply {
            path: path.to_string(),
            message: format!("{e}: {}", String::from_utf8_lossy(&self.body)),
        })
    }

    /// The error body of a failed answer (its raw text if it is not one).
    pub fn error_body(&self) -> ErrorBody {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| ErrorBody::new(String::from_utf8_lossy(&self.body).into_owned()))
    }
}

/// Percent-encodes one path segment (a table, view, key or node name).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The agent every client starts from: HTTP errors are answers, not
/// errors; long requests (backfills) are allowed.
fn agent_config() -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .max_idle_connections_per_host(64)
}

/// `addr` as a base URL: a full `http://` or `https://` URL as given,
/// `host:port` with `scheme`.
fn base_url(addr: &str, scheme: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("{scheme}://{addr}")
    }
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    /// `addr` is `host:port` or a full `http://` URL (for `https://`, see
    /// [`Client::with_ca`]).
    pub fn new(addr: &str, token: &str) -> Client {
        Client::with_agent(agent_config().build().into(), addr, token)
    }

    /// A client over HTTPS that trusts `ca_pem` (PEM certificates: the CA
    /// that signed the node's certificate, or the certificate itself).
    /// `addr` is `host:port` (then `https://`) or a full URL.
    pub fn with_ca(addr: &str, token: &str, ca_pem: &[u8]) -> Result<Client, ClientError> {
        use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
        let bad = |message: String| ClientError::Connect {
            addr: addr.to_string(),
            message,
        };
        if addr.starts_with("http://") {
            return Err(bad(
                "a CA certificate is given for an http:// address: the token would cross in clear; use https:// or host:port".into(),
            ));
        }
        let roots: Vec<Certificate<'static>> = ureq::tls::parse_pem(ca_pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("the CA certificate: {e}")))?;
        if roots.is_empty() {
            return Err(bad("the CA file holds no PEM certificate".into()));
        }
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .root_certs(RootCerts::Specific(std::sync::Arc::new(roots)))
            .build();
        Ok(Client {
            agent: agent_config().tls_config(tls).build().into(),
            base: base_url(addr, "https"),
            token: token.to_string(),
        })
    }

    /// A client on an existing agent (sharing its connection pool; the
    /// agent must not turn HTTP error statuses into errors).
    pub fn with_agent(agent: ureq::Agent, addr: &str, token: &str) -> Client {
        Client {
            agent,
            base: base_url(addr, "http"),
            token: token.to_string(),
        }
    }

    /// This client (its connections, token and scheme) for another node
    /// at `addr` (`host:port`).
    pub fn at(&self, addr: &str) -> Client {
        let scheme = if self.base.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        Client {
            agent: self.agent.clone(),
            base: format!("{scheme}://{addr}"),
            token: self.token.clone(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn finish(
        &self,
        method: &'static str,
        path: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, ClientError> {
        let mut resp = r.map_err(|e| ClientError::Connect {
            addr: self.base.clone(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let replayed = resp.headers().get(IDEMPOTENT_REPLAYED).is_some();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .map_err(|e| ClientError::Connect {
                addr: self.base.clone(),
                message: format!("{method} {path}: {e}"),
            })?;
        Ok(Reply {
            status,
            body,
            replayed,
            retry_after,
        })
    }

    /// A request whatever its status (tests look at errors too).
    pub fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ClientError> {
        let url = format!("{}{}", self.base, path);
        let auth = format!("Bearer {}", self.token);
        let r = match method {
            "GET" => {
                let mut b = self.agent.get(&url).header("authorization", &auth);
                for (k, v) in headers {
                    b = b.header(*k, *v);
                }
                b.call()
            }
            _ => {
                let mut b = self.agent.post(&url).header("authorization", &auth);
                for (k, v) in headers {
                    b = b.header(*k, *v);
                }
                b.send(body.unwrap_or(&[]))
            }
        };
        self.finish(method, path, r)
    }

    fn ok(&self, method: &'static str, path: &str, r: Reply) -> Result<Reply, ClientError> {
        if (200..300).contains(&r.status) {
            return Ok(r);
        }
        Err(ClientError::Status {
            method,
            path: path.to_string(),
            status: r.status,
            body: r.error_body(),
        })
    }

    /// GET, a 2xx answer parsed as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let r = self.request("GET", path, None, &[])?;
        self.ok("GET", path, r)?.parse(path)
    }

    /// POST, a 2xx answer parsed as `T`.
    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, ClientError> {
        let r = self.request("POST", path, Some(body), &[])?;
        self.ok("POST", path, r)?.parse(path)
    }

    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let r = self.request("GET", path, None, &[])?;
        Ok(self.ok("GET", path, r)?.json())
    }

    pub fn post_json(&self, path: &str, body: &[u8]) -> Result<serde_json::Value, ClientError> {
        let r = self.request("POST", path, Some(body), &[])?;
        Ok(self.ok("POST", path, r)?.json())
    }

    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let r = self.request("GET", path, None, &[])?;
        Ok(self.ok("GET", path, r)?.body)
    }

    /// Waits until `/healthz` answers (a node starting up).
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), ClientError> {
        let start = std::time::Instant::now();
        loop {
            match self.request("GET", "/healthz", None, &[]) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(_) | Err(_) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(r) => {
                    return Err(ClientError::Reply {
                        path: "/healthz".into(),
                        message: format!("HTTP {}", r.status),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `POST /v1/tables/{table}/events`: JSON lines or a JSON array. The
    /// answer whatever its status (400 when no event was accepted), parsed.
    pub fn ingest(
        &self,
        table: &str,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<(IngestReply, Reply), ClientError> {
        let path = format!("/v1/tables/{}/events", path_segment(table));
        let headers: Vec<(&str, &str)> = idempotency_key
            .map(|k| vec![(IDEMPOTENCY_KEY, k)])
            .unwrap_or_default();
        let r = self.request("POST", &path, Some(body), &headers)?;
        if r.status != 200 && r.status != 400 {
            return Err(ClientError::Status {
                method: "POST",
                path,
                status: r.status,
                body: r.error_body(),
            });
        }
        Ok((r.parse(&path)?, r))
    }

    pub fn dead_letters(&self, table: &str, limit: usize) -> Result<DeadLetters, ClientError> {
        self.get(&format!(
            "/v1/tables/{}/deadletters?limit={limit}",
            path_segment(table)
        ))
    }

    /// Features of a hypothetical event for `key` now.
    pub fn features_for_key(&self, view: &str, key: &str) -> Result<Features, ClientError> {
        self.get(&format!(
            "/v1/views/{}/keys/{}",
            path_segment(view),
            path_segment(key)
        ))
    }

    /// Features of the event `event` (a JSON object); with `ingest`, the
    /// event is also ingested (serve-and-ingest).
    pub fn features(
        &self,
        view: &str,
        event: &[u8],
        ingest: bool,
    ) -> Result<Features, ClientError> {
        let q = if ingest { "?ingest=true" } else { "" };
        self.post(
            &format!("/v1/views/{}/features{q}", path_segment(view)),
            event,
        )
    }

    pub fn status(&self) -> Result<NodeStatus, ClientError> {
        self.get("/v1/status")
    }

    pub fn pipeline(&self) -> Result<PipelineInfo, ClientError> {
        self.get("/v1/pipeline")
    }

    pub fn views(&self) -> Result<ViewList, ClientError> {
        self.get("/v1/views")
    }

    /// `views apply`: a refused pipeline is [`ClientError::Status`] with the
    /// SQL error's line and column in its body.
    pub fn apply_views(&self, sql: &[u8]) -> Result<ApplyReply, ClientError> {
        self.post("/v1/views", sql)
    }

    pub fn checkpoint(&self) -> Result<CheckpointReply, ClientError> {
        self.post("/v1/checkpoint", b"")
    }

    /// Committed segments, filtered by kind (`raw`, `training`, `late`),
    /// table or view name, and shard.
    pub fn segments(
        &self,
        kind: Option<&str>,
        name: Option<&str>,
        shard: Option<u32>,
    ) -> Result<SegmentList, ClientError> {
        let mut q = Vec::new();
        if let Some(k) = kind {
            q.push(format!("kind={}", path_segment(k)));
        }
        if let Some(n) = name {
            q.push(format!("name={}", path_segment(n)));
        }
        if let Some(s) = shard {
            q.push(format!("shard={s}"));
        }
        self.get(&format!("/v1/segments?{}", q.join("&")))
    }

    pub fn compact(&self, target_bytes: u64) -> Result<CompactReply, ClientError> {
        self.post(
            &format!("/v1/segments/compact?target_bytes={target_bytes}"),
            b"",
        )
    }

    /// An object of the node's store, by its path (as segments list it).
    pub fn object(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let p: Vec<String> = path.split('/').map(path_segment).collect();
        self.get_bytes(&format!("/v1/objects/{}", p.join("/")))
    }

    /// The cluster, or `None` from a node that runs alone.
    pub fn cluster(&self) -> Result<Option<ClusterStatus>, ClientError> {
        let r = self.request("GET", "/v1/cluster", None, &[])?;
        if r.status == 404 {
            return Ok(None);
        }
        self.ok("GET", "/v1/cluster", r)?
            .parse("/v1/cluster")
            .map(Some)
    }

    pub fn drain(&self, node: &str) -> Result<DrainReply, ClientError> {
        self.post(
            &format!("/v1/cluster/nodes/{}/drain", path_segment(node)),
            b"",
        )
    }

    pub fn remove(&self, node: &str) -> Result<RemoveReply, ClientError> {
        self.post(
            &format!("/v1/cluster/nodes/{}/remove", path_segment(node)),
            b"",
        )
    }

    pub fn rebalance(&self) -> Result<RebalanceReply, ClientError> {
        self.post("/v1/cluster/rebalance", b"")
    }

    /// Starts a cluster backfill job and answers at once with its id.
    pub fn start_backfill(&self, req: &BackfillRequest) -> Result<BackfillStarted, ClientError> {
        let body = serde_json::to_vec(req).expect("requests encode");
        self.post("/v1/backfill?wait=false", &body)
    }

    pub fn backfill_jobs(&self) -> Result<BackfillJobs, ClientError> {
        self.get("/v1/backfill")
    }

    pub fn backfill_job(&self, job: &str) -> Result<BackfillJob, ClientError> {
        self.get(&format!("/v1/backfill/{}", path_segment(job)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_escape_what_a_url_path_cannot_hold() {
        assert_eq!(path_segment("user_ad-features.v2"), "user_ad-features.v2");
        assert_eq!(path_segment("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(path_segment("besucher_ü"), "besucher_%C3%BC");
    }
}
