//! Accepts client connections on a listener (native or Kafka), at most `max_connections` at
//! once over both; one more is closed at once with a log line. Stops accepting when the broker
//! shuts down.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::BrokerState;

/// Runs one accepted connection of a protocol.
pub(crate) type Serve = fn(Arc<BrokerState>, TcpStream, SocketAddr) -> BoxFuture<'static, ()>;

pub(crate) async fn accept_loop(
    state: Arc<BrokerState>,
    listener: TcpListener,
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
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
            continue;
        };
        let _ = socket.set_nodelay(true);
        let state = state.clone();
        tracker.spawn(async move {
            serve(state, socket, peer).await;
            drop(slot);
        });
    }
}
