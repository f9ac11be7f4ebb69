//! One client connection: a reader that decodes frames and starts each request in order, and a
//! writer that sends the responses in the same order.
//!
//! Between them runs a bounded queue of pending responses (`in_flight_requests_max`): the reader
//! stops reading when it is full, so a client cannot make the broker buffer unbounded work.
//! Handlers do their order-sensitive part (appends) before the next request is read and return
//! the rest (e.g. a fetch's long poll) as a task. Responses are written with vectored writes:
//! frame prefix + body chunks, record bytes straight from the segment mapping.
//!
//! A connection a quota throttles (`crate::quota`) reads and starts its next request only once
//! the throttle time has passed.
//!
//! Frames are read within the connection's limits (`super::limits`): a frame's memory is
//! granted before its body is read and returned once the request has done its
//! order-sensitive part.
//!
//! Bad input: a frame over `max_frame_bytes` gets `REQUEST_TOO_LARGE` (when its correlation id is
//! readable) and the connection is closed; an undecodable header closes the connection; an
//! unknown api, unsupported version or malformed body gets an error response with an empty
//! body. Every case logs a line. Nothing a client sends panics the broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use rill_protocol::frame::{decode_request_header, response_prefix, RequestFrame, ResponseHeader};
use rill_protocol::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::handlers::{self, Pending};
use super::limits::{Frame, FrameError, FrameReader, PeerSlot};
use super::BrokerState;
use crate::security::Session;
use crate::tls::Listener;

/// The reading half of an accepted connection (plain TCP or TLS).
pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// Its writing half.
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// An accepted connection, past its TLS handshake if its listener has one.
pub(crate) struct Stream {
    pub read: BoxRead,
    pub write: BoxWrite,
    /// The client's certificate (DER), when it presented one in a TLS handshake.
    pub certificate: Option<Vec<u8>>,
}

impl Stream {
    /// `socket` as its listener speaks it: plain, or past a TLS handshake with `acceptor`
    /// that must end within `timeout` (`Err` says why it failed).
    pub(crate) async fn accept(
        socket: tokio::net::TcpStream,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        timeout: Duration,
    ) -> Result<Stream, String> {
        let Some(acceptor) = acceptor else {
            let (read, write) = socket.into_split();
            return Ok(Stream {
                read: Box::new(read),
                write: Box::new(write),
                certificate: None,
            });
        };
        match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
            Ok(Ok(tls)) => {
                let certificate = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|der| der.as_ref().to_vec());
                let (read, write) = tokio::io::split(tls);
                Ok(Stream {
                    read: Box::new(read),
                    write: Box::new(write),
                    certificate,
                })
            }
            Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
            Err(_) => Err(format!("TLS handshake did not finish within {timeout:?}")),
        }
    }
}

/// A response on its way: the whole frame's chunks, still being produced (`None` = send
/// nothing). Both protocols' connections queue these, in request order.
pub(crate) type Outgoing = BoxFuture<'static, Option<Vec<Bytes>>>;

/// Runs a connection: `read` reads requests (frames within `slot`'s limits) and queues their
/// responses (at most `in_flight_requests_max` ahead), a writer task sends them in order.
pub(crate) async fn serve_with<F, Fut>(
    state: Arc<BrokerState>,
    socket: Stream,
    peer: SocketAddr,
    slot: PeerSlot,
    listener: Listener,
    read: F,
) where
    F: FnOnce(Arc<BrokerState>, FrameReader<BoxRead>, mpsc::Sender<Outgoing>, Session) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tracing::debug!(%peer, "connection opened");
    let Stream {
        read: read_half,
        write: write_half,
        certificate,
    } = socket;
    let principal = certificate.and_then(|der| {
        let principal = state.security.certificate_principal(&der);
        if principal.is_none() {
            tracing::warn!(%peer, "the client certificate's subject could not be read; the connection is anonymous");
        }
        principal
    });
    let session = Session::new(&state, listener, peer.ip(), principal);
    let frames = FrameReader::new(
        read_half,
        slot,
        state.config.max_frame_bytes,
        Duration::from_millis(state.config.request_read_timeout_ms),
    );
    let (queue, pending) = mpsc::channel::<Outgoing>(state.config.in_flight_requests_max);
    let writer = tokio::spawn(write_loop(write_half, pending, peer));
    read(state, frames, queue, session).await;
    // The queue is closed: the writer sends what is pending and ends.
    if let Err(e) = writer.await {
        tracing::warn!(%peer, "connection writer failed: {e}");
    }
    tracing::debug!(%peer, "connection closed");
}

/// A native-protocol connection on the client listener.
pub(super) async fn serve(
    state: Arc<BrokerState>,
    socket: Stream,
    peer: SocketAddr,
    slot: PeerSlot,
) {
    let _open = state.metrics.connection("rill");
    serve_with(
        state,
        socket,
        peer,
        slot,
        Listener::Client,
        |state, frames, queue, session| async move {
            read_loop(&state, frames, queue, peer, Door::Client, session).await
        },
    )
    .await
}

/// A native-protocol connection on the inter-broker listener (`replication_listen`): the
/// same requests, and follower fetches besides.
pub(super) async fn serve_inter_broker(
    state: Arc<BrokerState>,
    socket: Stream,
    peer: SocketAddr,
    slot: PeerSlot,
) {
    let _open = state.metrics.connection("replication");
    serve_with(
        state,
        socket,
        peer,
        slot,
        Listener::Replication,
        |state, frames, queue, session| async move {
            read_loop(&state, frames, queue, peer, Door::InterBroker, session).await
        },
    )
    .await
}

/// Which listener a native connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `listen`: clients (and brokers' own client traffic: forwarded admin calls, the admin
    /// HTTP API's client).
    Client,
    /// `replication_listen`: other brokers' replica fetchers.
    InterBroker,
}

/// The native response frame for `reply`: prefix (size, correlation id, error code) + body.
fn framed(correlation_id: u32, reply: Pending) -> Outgoing {
    async move {
        let (error_code, body) = reply.await?;
        let body_bytes: usize = body.iter().map(Bytes::len).sum();
        let header = ResponseHeader {
            correlation_id,
            error_code,
        };
        let mut chunks = Vec::with_capacity(body.len() + 1);
        chunks.push(response_prefix(&header, body_bytes));
        chunks.extend(body);
        Some(chunks)
    }
    .boxed()
}

async fn read_loop(
    state: &Arc<BrokerState>,
    mut frames: FrameReader<BoxRead>,
    queue: mpsc::Sender<Outgoing>,
    peer: SocketAddr,
    door: Door,
    mut session: Session,
) {
    let listener = match door {
        Door::Client => "rill",
        Door::InterBroker => "replication",
    };
    loop {
        if !unmuted(state, &session).await {
            return;
        }
        let Some(next) = next_frame(state, frames.next(), peer).await else {
            return;
        };
        let (frame, grant) = match next {
            Ok(Frame { mut bytes, grant }) => match decode_request_header(&mut bytes) {
                Ok(header) => (
                    RequestFrame {
                        header,
                        body: bytes,
                    },
                    grant,
                ),
                Err(e) => {
                    tracing::warn!(%peer, "undecodable request, closing the connection: {e}");
                    return;
                }
            },
            Err(FrameError::TooLarge {
                len,
                max,
                correlation_id,
            }) => {
                tracing::warn!(%peer, len, max, "request frame too large; closing the connection");
                if let Some(correlation_id) = correlation_id {
                    let reply = handlers::error_reply(ErrorCode::REQUEST_TOO_LARGE);
                    let _ = queue.send(framed(correlation_id, reply)).await;
                }
                return;
            }
            Err(e) => {
                tracing::warn!(%peer, "bad request frame, closing the connection: {e}");
                return;
            }
        };
        // A fetch answered meanwhile may have muted the connection after this frame was
        // read (its client sent it on receiving that answer): it waits too.
        if !unmuted(state, &session).await {
            return;
        }
        let correlation_id = frame.header.correlation_id;
        let started = std::time::Instant::now();
        let api = rill_protocol::api::ApiKey::from_u16(frame.header.api_key)
            .map_or("unknown", rill_protocol::api::ApiKey::name);
        let in_flight = state.metrics.request_started(listener);
        let reply = handlers::start(state, frame, peer, door, &mut session).await;
        // The request's order-sensitive part is done and its frame dropped: its memory is free.
        drop(grant);
        let metrics = state.metrics.clone();
        let reply: Pending = reply
            .inspect(move |answer| {
                drop(in_flight);
                let code = answer.as_ref().map_or(ErrorCode::NONE, |(code, _)| *code);
                metrics.request(listener, api, code, started.elapsed());
            })
            .boxed();
        if queue.send(framed(correlation_id, reply)).await.is_err() {
            return; // the writer failed: the peer is gone
        }
        if session.failed() {
            return; // authentication failed: the answer is sent, then the connection closes
        }
    }
}

/// Waits while a quota throttles the connection (`crate::quota`): its next request is read
/// only once the throttle time has passed. `false` when the broker shuts down meanwhile.
pub(crate) async fn unmuted(state: &BrokerState, session: &Session) -> bool {
    let Some(until) = session.mute.until() else {
        return true;
    };
    tokio::select! {
        _ = state.shutdown.cancelled() => false,
        _ = tokio::time::sleep_until(until.into()) => true,
    }
}

/// A connection's next frame (or why it cannot be read), or `None` when the connection is to
/// close: the broker shuts down, the peer closed it, or it was idle for `idle_timeout_ms`
/// (logged; this includes waiting for request memory).
pub(crate) async fn next_frame(
    state: &BrokerState,
    next: impl std::future::Future<Output = Result<Option<Frame>, FrameError>>,
    peer: SocketAddr,
) -> Option<Result<Frame, FrameError>> {
    let idle = Duration::from_millis(state.config.idle_timeout_ms.max(1));
    let next = tokio::select! {
        _ = state.shutdown.cancelled() => return None,
        next = tokio::time::timeout(idle, next) => match next {
            Err(_) => {
                tracing::info!(%peer, ?idle, "closing idle connection");
                return None;
            }
            Ok(next) => next,
        },
    };
    if let Err(FrameError::ReadTimeout { .. }) = &next {
        state.metrics.connection_limited("request_read_timeout");
    }
    next.transpose()
}

async fn write_loop(mut socket: BoxWrite, mut pending: mpsc::Receiver<Outgoing>, peer: SocketAddr) {
    while let Some(outgoing) = pending.recv().await {
        let Some(mut chunks) = outgoing.await else {
            continue;
        };
        if let Err(e) = rill_client::tls::write_all_chunks(&mut socket, &mut chunks).await {
            tracing::debug!(%peer, "writing a response failed, closing: {e}");
            return;
        }
    }
    let _ = socket.shutdown().await;
}
