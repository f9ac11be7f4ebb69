//! Accepts client connections on a listener (native or Kafka), at most `max_connections` at
//! once over both and at most `max_connections_per_ip` from one address (`super::limits`); one
//! more is closed at once with a log line. Stops accepting when the broker shuts down.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::limits::{Limits, PeerSlot};
use super::BrokerState;

/// Runs one accepted connection of a protocol, within its address's slot.
pub(crate) type Serve =
    fn(Arc<BrokerState>, TcpStream, SocketAddr, PeerSlot) -> BoxFuture<'static, ()>;

pub(crate) async fn accept_loop(
    state: Arc<BrokerState>,
    listener: TcpListener,
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
    limits: Arc<Limits>,
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
            serve(state, socket, peer, peer_slot).await;
            drop(slot);
        });
    }
}
