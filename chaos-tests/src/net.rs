//! The harness's network between nodes. Every node advertises the address
//! of an [`Ingress`] proxy in front of it, so the others reach it only
//! through that, and sends its own node-to-node calls (Raft, pings,
//! forwarding) through an [`Egress`] HTTP proxy (`LOCKSTEP_PEER_PROXY`).
//! Cutting one, the other or both makes a partition, a one-way partition;
//! a delay on both adds latency. Clients of the harness (ingest, serving)
//! go to the node's own address, not through these.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a proxy does to the traffic through it now.
#[derive(Default)]
struct Shape {
    /// Refuse new connections (open ones were broken when it was set).
    cut: AtomicBool,
    /// Added to every chunk relayed, in milliseconds, plus up to `jitter`.
    delay_ms: AtomicU64,
    jitter_ms: AtomicU64,
    /// Advances the jitter (no RNG shared between threads).
    tick: AtomicU64,
}

impl Shape {
    fn pause(&self) {
        let d = self.delay_ms.load(Ordering::Relaxed);
        if d == 0 {
            return;
        }
        let j = self.jitter_ms.load(Ordering::Relaxed);
        let t = self.tick.fetch_add(1, Ordering::Relaxed);
        // a cheap spread over 0..=j (Weyl sequence)
        let extra = if j == 0 {
            0
        } else {
            t.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40 & 0xFFFF_FFFF
        } % (j + 1);
        std::thread::sleep(Duration::from_millis(d + extra));
    }
}

/// The open connections of a proxy, so a cut can break them.
#[derive(Clone, Default)]
struct Conns {
    open: Arc<Mutex<HashMap<u64, TcpStream>>>,
    next: Arc<AtomicU64>,
}

impl Conns {
    /// Relays `a` ⇄ `b` on two threads until either side closes.
    fn relay(&self, a: TcpStream, b: TcpStream, shape: Arc<Shape>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (Ok(a2), Ok(b2), Ok(kept)) = (a.try_clone(), b.try_clone(), a.try_clone()) else {
            return;
        };
        self.open.lock().expect("conns").insert(id, kept);
        let s2 = shape.clone();
        std::thread::spawn(move || pump(b2, a2, &s2));
        let open = self.open.clone();
        std::thread::spawn(move || {
            pump(a, b, &shape);
            open.lock().expect("conns").remove(&id);
        });
    }

    fn break_all(&self) {
        for s in self.open.lock().expect("conns").values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to`, delaying each chunk as `shape` says; closes both
/// ways at the end.
fn pump(mut from: TcpStream, mut to: TcpStream, shape: &Shape) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        shape.pause();
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// A TCP proxy in front of a node: the address the node advertises.
pub struct Ingress {
    pub addr: String,
    target: Arc<Mutex<String>>,
    shape: Arc<Shape>,
    conns: Conns,
}

impl Ingress {
    pub fn start(target: &str) -> anyhow::Result<Ingress> {
        Ingress::start_on("127.0.0.1:0", target)
    }

    /// Listens on `bind` (a fixed address an operator's node advertises).
    pub fn start_on(bind: &str, target: &str) -> anyhow::Result<Ingress> {
        let listener = TcpListener::bind(bind)
            .map_err(|e| anyhow::anyhow!("cannot listen on {bind} for a node's proxy: {e}"))?;
        let addr = listener.local_addr()?.to_string();
        let target = Arc::new(Mutex::new(target.to_string()));
        let shape = Arc::new(Shape::default());
        let conns = Conns::default();
        let (t, s, c) = (target.clone(), shape.clone(), conns.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                if s.cut.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let to = t.lock().expect("target").clone();
                let (s, c) = (s.clone(), c.clone());
                // connected off the accept loop: a paused node's full
                // backlog must not hold connections to it after it resumes
                std::thread::spawn(move || {
                    let out = to
                        .parse()
                        .ok()
                        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).ok());
                    match out {
                        Some(out) => c.relay(inbound, out, s),
                        None => {
                            let _ = inbound.shutdown(Shutdown::Both);
                        }
                    }
                });
            }
        });
        Ok(Ingress {
            addr,
            target,
            shape,
            conns,
        })
    }

    /// The node listens elsewhere now (restarted on a new port).
    pub fn retarget(&self, target: &str) {
        *self.target.lock().expect("target") = target.to_string();
    }

    pub fn cut(&self) {
        self.shape.cut.store(true, Ordering::SeqCst);
        self.conns.break_all();
    }

    pub fn delay(&self, ms: u64, jitter: u64) {
        self.shape.delay_ms.store(ms, Ordering::Relaxed);
        self.shape.jitter_ms.store(jitter, Ordering::Relaxed);
    }

    pub fn heal(&self) {
        self.shape.cut.store(false, Ordering::SeqCst);
        self.delay(0, 0);
    }
}

/// The HTTP proxy a node sends its node-to-node calls through
/// (`CONNECT host:port` for TLS, absolute-form requests for plain HTTP).
pub struct Egress {
    pub url: String,
    shape: Arc<Shape>,
    conns: Conns,
}

impl Egress {
    pub fn start() -> anyhow::Result<Egress> {
        Egress::start_on("127.0.0.1:0")
    }

    /// Listens on `bind` (the fixed address an operator's node is given as
    /// `LOCKSTEP_PEER_PROXY`).
    pub fn start_on(bind: &str) -> anyhow::Result<Egress> {
        let listener = TcpListener::bind(bind)
            .map_err(|e| anyhow::anyhow!("cannot listen on {bind} for a node's proxy: {e}"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let shape = Arc::new(Shape::default());
        let conns = Conns::default();
        let (s, c) = (shape.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (s, c) = (s.clone(), c.clone());
                std::thread::spawn(move || egress_conn(client, s, &c));
            }
        });
        Ok(Egress { url, shape, conns })
    }

    pub fn cut(&self) {
        self.shape.cut.store(true, Ordering::SeqCst);
        self.conns.break_all();
    }

    pub fn delay(&self, ms: u64, jitter: u64) {
        self.shape.delay_ms.store(ms, Ordering::Relaxed);
        self.shape.jitter_ms.store(jitter, Ordering::Relaxed);
    }

    pub fn heal(&self) {
        self.shape.cut.store(false, Ordering::SeqCst);
        self.delay(0, 0);
    }
}

/// One proxied connection: reads the request head, connects to its host
/// (a cut proxy drops the connection, as a partitioned network would),
/// then relays.
fn egress_conn(mut client: TcpStream, shape: Arc<Shape>, conns: &Conns) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return;
        }
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let _ = client.set_read_timeout(None);
    if shape.cut.load(Ordering::SeqCst) {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut first = text.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let connect = method.eq_ignore_ascii_case("CONNECT");
    let host = if connect {
        target.to_string()
    } else {
        target
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("")
            .to_string()
    };
    let Ok(mut server) = TcpStream::connect(&host) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    if connect {
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
    } else if server.write_all(&head).is_err() {
        return;
    }
    conns.relay(client, server, shape);
}

/// What the S3 proxy does to requests now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Fault {
    /// Relays them to the store.
    None = 0,
    /// Answers `503 SlowDown`, as S3 does when throttling.
    SlowDown = 1,
    /// Answers `500 InternalError`.
    InternalError = 2,
    /// Answers nothing: the client's requests time out.
    Hang = 3,
}

impl S3Fault {
    fn from_u8(v: u8) -> S3Fault {
        match v {
            1 => S3Fault::SlowDown,
            2 => S3Fault::InternalError,
            3 => S3Fault::Hang,
            _ => S3Fault::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            S3Fault::None => "none",
            S3Fault::SlowDown => "503 SlowDown",
            S3Fault::InternalError => "500 InternalError",
            S3Fault::Hang => "no answer (timeouts)",
        }
    }
}

/// A proxy in front of the S3 server (the nodes' `AWS_ENDPOINT_URL`) that
/// fails requests on demand.
pub struct S3Proxy {
    pub url: String,
    mode: Arc<std::sync::atomic::AtomicU8>,
    conns: Conns,
}

impl S3Proxy {
    pub fn start(target: &str) -> anyhow::Result<S3Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let conns = Conns::default();
        let (m, c, target) = (mode.clone(), conns.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (m, c, target) = (m.clone(), c.clone(), target.clone());
                std::thread::spawn(move || s3_conn(client, &m, &c, &target));
            }
        });
        Ok(S3Proxy { url, mode, conns })
    }

    /// Sets the fault; open connections are broken, so the next requests
    /// meet it.
    pub fn set(&self, f: S3Fault) {
        self.mode.store(f as u8, Ordering::SeqCst);
        self.conns.break_all();
    }
}

fn s3_conn(mut client: TcpStream, mode: &std::sync::atomic::AtomicU8, conns: &Conns, target: &str) {
    match S3Fault::from_u8(mode.load(Ordering::SeqCst)) {
        S3Fault::None => {
            let out = target
                .trim_start_matches("http://")
                .parse()
                .ok()
                .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).ok());
            match out {
                Some(out) => conns.relay(client, out, Arc::new(Shape::default())),
                None => {
                    let _ = client.shutdown(Shutdown::Both);
                }
            }
        }
        S3Fault::Hang => {
            // held open, answering nothing, until the fault is healed
            let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 4096];
            while S3Fault::from_u8(mode.load(Ordering::SeqCst)) == S3Fault::Hang {
                if matches!(client.read(&mut buf), Ok(0)) {
                    break;
                }
            }
            let _ = client.shutdown(Shutdown::Both);
        }
        f => {
            // read the request head, answer the error, close
            let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                match client.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let (status, code, msg) = if f == S3Fault::SlowDown {
                (
                    "503 Slow Down",
                    "SlowDown",
                    "Please reduce your request rate.",
                )
            } else {
                (
                    "500 Internal Server Error",
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                )
            };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{msg}</Message><RequestId>lockstep-chaos</RequestId></Error>"
            );
            let _ = client.write_all(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            // the answer is out; the request's body is read and dropped, so
            // the client sees the error rather than a reset connection
            let _ = client.shutdown(Shutdown::Write);
            let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
            let mut sink = [0u8; 64 * 1024];
            while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
            let _ = client.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(addr: &str) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        Ok(buf.to_vec())
    }

    #[test]
    fn an_ingress_relays_until_cut_and_again_once_healed() {
        let p = Ingress::start(&echo_server()).unwrap();
        assert_eq!(round_trip(&p.addr).unwrap(), b"ping");
        let mut open = TcpStream::connect(&p.addr).unwrap();
        open.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).unwrap();
        p.cut();
        // the open connection is broken, a new one gets nothing back
        open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = open.write_all(b"y");
        assert!(matches!(open.read(&mut one), Ok(0) | Err(_)));
        assert!(round_trip(&p.addr).is_err());
        p.heal();
        assert_eq!(round_trip(&p.addr).unwrap(), b"ping");
    }

    #[test]
    fn an_egress_tunnels_connect_and_drops_everything_when_cut() {
        let target = echo_server();
        let e = Egress::start().unwrap();
        let proxy = e.url.trim_start_matches("http://").to_string();
        let tunnel = |proxy: &str| -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect(proxy)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())?;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b)? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                head.push(b[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 200"));
            s.write_all(b"ping")?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf)?;
            Ok(buf.to_vec())
        };
        assert_eq!(tunnel(&proxy).unwrap(), b"ping");
        e.cut();
        assert!(tunnel(&proxy).is_err());
        e.heal();
        assert_eq!(tunnel(&proxy).unwrap(), b"ping");
    }

    #[test]
    fn the_s3_proxy_relays_then_fails_each_way_and_heals() {
        let target = echo_server();
        let p = S3Proxy::start(&target).unwrap();
        let addr = p.url.trim_start_matches("http://").to_string();
        assert_eq!(round_trip(&addr).unwrap(), b"ping");
        let ask = |addr: &str| -> String {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.write_all(b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        };
        p.set(S3Fault::SlowDown);
        let r = ask(&addr);
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("<Code>SlowDown</Code>"),
            "{r}"
        );
        p.set(S3Fault::InternalError);
        assert!(ask(&addr).starts_with("HTTP/1.1 500"));
        p.set(S3Fault::Hang);
        assert_eq!(ask(&addr), "", "a hung store answers nothing");
        p.set(S3Fault::None);
        assert_eq!(round_trip(&addr).unwrap(), b"ping");
    }
}
