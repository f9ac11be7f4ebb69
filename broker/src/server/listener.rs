//! Accepts client connections on a listener (native or Kafka), at most `max_connections` at
//! once over both and at most `max_connections_per_ip` from one address (`super::limits`); one
//! more is closed at once with a log line. Stops accepting when the broker shuts down.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::connection::Stream;
use super::limits::{Limits, PeerSlot};
use super::BrokerState;
use crate::tls::Listener;

/// Runs one accepted connection of a protocol (past its TLS handshake), within its
/// address's slot.
pub(crate) type Serve =
    fn(Arc<BrokerState>, Stream, SocketAddr, PeerSlot) -> BoxFuture<'static, ()>;

pub(crate) async fn accept_loop(
    state: Arc<BrokerState>,
    listener: TcpListener,
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
    limits: Arc<Limits>,
    kind: Listener,
    serve: Serve,
) {
    loop {
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = state.config.max_connections, "connection refused: too many connections");
            state.metrics.connection_limited("max_connections");
            continue;
        };
        let peer_slot = match limits.admit(peer.ip()) {
            Ok(peer_slot) => peer_slot,
            Err(refused) => {
                tracing::warn!(%peer, max = refused.limit, "connection refused: too many connections from this address (max_connections_per_ip)");
                state.metrics.connection_limited("max_connections_per_ip");
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let state = state.clone();
        tracker.spawn(async move {
            if let Some(stream) = handshake(&state, socket, peer, kind).await {
                serve(state, stream, peer, peer_slot).await;
            }
            drop(slot);
        });
    }
}

/// The connection as its listener speaks it (`Stream::accept`); a failed TLS handshake is
/// logged and counted, and closes the connection.
async fn handshake(
    state: &BrokerState,
    socket: TcpStream,
    peer: SocketAddr,
    kind: Listener,
) -> Option<Stream> {
    let acceptor = state.tls.as_ref().and_then(|tls| tls.acceptor(kind));
    let timeout = std::time::Duration::from_millis(state.config.request_read_timeout_ms);
    match Stream::accept(socket, acceptor, timeout).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::warn!(%peer, listener = kind.name(), "{e}, closing the connection");
            state.metrics.tls_handshake_failed(kind.name());
            None
        }
    }
}
