//! The admin HTTP listener (`admin_listen`, default `127.0.0.1:9644`, `off` disables it;
//! docs/OPERATIONS.md): probes for load balancers and Kubernetes, and Prometheus metrics.
//! Read-only: nothing here changes the broker.
//!
//! - `GET /health/live`: 200 while the process serves HTTP at all.
//! - `GET /health/ready`: 200 once the broker has registered with the controller quorum, its
//!   metadata has caught up and its logs are recovered (it takes client requests); 503 before
//!   and while it shuts down.
//! - `GET /metrics`: every metric (`crate::metrics`) in Prometheus's OpenMetrics text.
//! - `GET /v1/...`: the JSON API ([`api`]): cluster, topics, groups, records.
//! - `GET /`: the web console ([`console`]), over the JSON API and `/metrics`.
//!
//! HTTPS when `admin` is in `tls_listeners` (docs/SECURITY.md "TLS"). Connections are limited
//! as on the other listeners (`max_connections`, `max_connections_per_ip`), with counts of
//! their own (docs/SECURITY.md "Limits").

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::server::limits::PeerSlot;
use crate::server::BrokerState;
use crate::tls::Listener;

pub mod api;
pub mod console;

use api::Api;

/// Serves the admin API on `listener` until the broker shuts down.
pub async fn serve(state: Arc<BrokerState>, listener: TcpListener) {
    let shutdown = state.shutdown.clone();
    let app = Router::new()
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(api::cluster))
        .route("/v1/topics", get(api::topics))
        .route("/v1/topics/{topic}", get(api::topic))
        .route(
            "/v1/topics/{topic}/partitions/{partition}/records",
            get(api::records),
        )
        .route("/v1/groups", get(api::groups))
        .route("/v1/groups/{group}", get(api::group))
        .merge(console::routes())
        .with_state(Api::new(state.clone()));
    let incoming = Incoming::start(state, listener);
    let served = axum::serve(incoming, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!("admin listener stopped: {e}");
    }
}

/// A stream the admin listener serves: plain TCP or past a TLS handshake.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An admitted admin connection: its stream, holding its place in the listener's connection
/// count and its address's for as long as it is open.
struct Admitted {
    io: Box<dyn Io>,
    _slot: OwnedSemaphorePermit,
    _peer: PeerSlot,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

/// The admin listener's connections, admitted within its limits (at most `max_connections`
/// at once, at most `max_connections_per_ip` from one address: one more is closed at once,
/// logged and counted, as on the other listeners) and past their TLS handshakes when it
/// speaks HTTPS. Handshakes run concurrently, each within `request_read_timeout_ms`, so a slow
/// one holds up no other.
struct Incoming {
    ready: tokio::sync::mpsc::Receiver<(Admitted, SocketAddr)>,
    local: std::io::Result<SocketAddr>,
}

impl Incoming {
    fn start(state: Arc<BrokerState>, listener: TcpListener) -> Incoming {
        let local = listener.local_addr();
        let (done, ready) = tokio::sync::mpsc::channel(64);
        let slots = Arc::new(Semaphore::new(state.config.max_connections));
        tokio::spawn(async move {
            let timeout = Duration::from_millis(state.config.request_read_timeout_ms);
            loop {
                let (socket, peer) = tokio::select! {
                    _ = state.shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            tracing::warn!("admin accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, listener = "admin", max = state.config.max_connections, "connection refused: too many connections");
                    state.metrics.connection_limited("max_connections");
                    continue;
                };
                let peer_slot = match state.admin_limits.admit(peer.ip()) {
                    Ok(peer_slot) => peer_slot,
                    Err(refused) => {
                        tracing::warn!(%peer, listener = "admin", max = refused.limit, "connection refused: too many connections from this address (max_connections_per_ip)");
                        state.metrics.connection_limited("max_connections_per_ip");
                        continue;
                    }
                };
                let tls = state
                    .tls
                    .as_ref()
                    .filter(|t| t.is_on(Listener::Admin))
                    .map(|t| t.acceptor(Listener::Admin));
                let admitted = |io: Box<dyn Io>| Admitted {
                    io,
                    _slot: slot,
                    _peer: peer_slot,
                };
                let Some(acceptor) = tls else {
                    if done.send((admitted(Box::new(socket)), peer)).await.is_err() {
                        return;
                    }
                    continue;
                };
                let Some(acceptor) = acceptor else {
                    return;
                };
                let (state, done) = (state.clone(), done.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            let _ = done.send((admitted(Box::new(stream)), peer)).await;
                        }
                        failed => {
                            let reason = match failed {
                                Ok(Err(e)) => e.to_string(),
                                _ => format!("not finished within {timeout:?}"),
                            };
                            tracing::warn!(%peer, listener = "admin", "TLS handshake failed, closing the connection: {reason}");
                            state.metrics.tls_handshake_failed("admin");
                        }
                    }
                });
            }
        });
        Incoming { ready, local }
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Admitted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The broker shuts down: no more connections (graceful shutdown ends the server).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.local {
            Ok(address) => Ok(*address),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

async fn ready(State(api): State<Arc<Api>>) -> impl IntoResponse {
    let state = &api.state;
    let ready = state.ready.load(Ordering::Acquire)
        && state.lease.is_valid()
        && !state.shutdown.is_cancelled();
    if ready {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> impl IntoResponse {
    let remote = api.remote_high_watermarks().await;
    let state = api.state.clone();
    // Log sizes take each log's lock, which an fsync may hold: off the async threads.
    let rendered = tokio::task::spawn_blocking(move || state.metrics.render(&state, &remote)).await;
    match rendered {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics failed: {e}\n"),
        )
            .into_response(),
    }
}
