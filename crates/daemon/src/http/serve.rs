//! The listener: accepts connections and serves HTTP/1.1 on them with
//! hyper, bounded in number and in how long a client may take to send its
//! headers (axum's `serve` sets neither: a client sending one header byte a
//! minute held its connection forever).

use crate::config::Limits;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, lets each connection finish the request it is on, and
/// returns when all are closed; connections still open after
/// `limits.request_timeout` are cut (their tasks aborted, so nothing they
/// hold, such as the ingest writer's queue, outlives the server).
///
/// - At most `limits.max_connections` connections are open at once; one
///   more is closed as soon as it is accepted (the client sees the
///   connection close and may retry).
/// - A client has `limits.header_read_timeout` to send a request's
///   headers, the first request's as every later one's on a kept-alive
///   connection; then the connection is closed. So an idle kept-alive
///   connection is closed after that time too.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(listener, app, limits, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given (HTTPS only: a plain-text
/// client's connection is closed). The TLS handshake has its own
/// `header_read_timeout`. A request on a connection whose client presented
/// a certificate the node's CA signed carries [`ClientCertVerified`] (the
/// internal routes require it under mutual TLS).
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refused: u64 = 0;
    // the connections' tasks, to cut those still open at the end
    let mut conns: Vec<tokio::task::AbortHandle> = Vec::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // out of file descriptors, or a connection reset
                    // before it was accepted: wait a moment, go on
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    "{refused} connections closed at once: {} are open (max_connections)",
                    limits.max_connections
                );
            }
            drop(tcp);
            continue;
        };
        // replies are small: send them at once instead of waiting on Nagle
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let mut stop = stop_rx.clone();
        let header_timeout = limits.header_read_timeout;
        if conns.len() >= limits.max_connections {
            conns.retain(|h| !h.is_finished());
        }
        let task = tokio::spawn(async move {
            let _slot = slot;
            let io: Box<dyn Io> = match acceptor {
                None => Box::new(tcp),
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => Box::new(tls),
                        Ok(Err(e)) => {
                            tracing::debug!("TLS handshake with {peer}: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake with {peer}: over header_read_timeout");
                            return;
                        }
                    }
                }
            };
            let app = if io.client_cert_verified() {
                app.layer(axum::Extension(lockstep_cluster::ClientCertVerified))
            } else {
                app
            };
            let service = TowerToHyperService::new(app);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
        conns.push(task.abort_handle());
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // every connection gives its slot back when it closes
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.request_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        conns.retain(|h| !h.is_finished());
        tracing::warn!(
            "{} connections still open after request_timeout: cut",
            conns.len()
        );
    }
    for h in &conns {
        h.abort();
    }
    // an aborted task drops what it held (the router's clone) when it
    // next runs: give them that turn
    tokio::task::yield_now().await;
    Ok(())
}

/// A connection's byte stream: plain TCP or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {
    /// The client presented a certificate the CA signed (rustls refuses
    /// the handshake of one that presents another).
    fn client_cert_verified(&self) -> bool;
}

impl Io for tokio::net::TcpStream {
    fn client_cert_verified(&self) -> bool {
        false
    }
}

impl Io for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn client_cert_verified(&self) -> bool {
        self.get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty())
    }
}
