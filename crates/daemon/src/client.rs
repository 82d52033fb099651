//! A small blocking client for the HTTP API (ureq), shared by lockstepctl,
//! `lockstep quickstart`/`bench` and the tests.

use serde_json::Value as Json;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach lockstepd at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("{method} {path}: HTTP {status}: {message}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{path}: unexpected reply: {message}")]
    Reply { path: String, message: String },
}

/// One response: status, body and the header a replay sets.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub replayed: bool,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or(Json::Null)
    }
}

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    /// `addr` is `host:port` or a full `http://` URL.
    pub fn new(addr: &str, token: &str) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .max_idle_connections_per_host(64)
            .build()
            .into();
        Client::with_agent(agent, addr, token)
    }

    /// A client on an existing agent (sharing its connection pool; the
    /// agent must not turn HTTP error statuses into errors).
    pub fn with_agent(agent: ureq::Agent, addr: &str, token: &str) -> Client {
        let base = if addr.starts_with("http://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        Client {
            agent,
            base,
            token: token.to_string(),
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
        let replayed = resp.headers().get("idempotent-replayed").is_some();
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
        let message = r
            .json()
            .get("error")
            .and_then(Json::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned());
        Err(ClientError::Status {
            method,
            path: path.to_string(),
            status: r.status,
            message,
        })
    }

    pub fn get_json(&self, path: &str) -> Result<Json, ClientError> {
        let r = self.request("GET", path, None, &[])?;
        Ok(self.ok("GET", path, r)?.json())
    }

    pub fn post_json(&self, path: &str, body: &[u8]) -> Result<Json, ClientError> {
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
}
