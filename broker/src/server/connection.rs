//! One client connection: a reader that decodes frames and starts each request in order, and a
//! writer that sends the responses in the same order.
//!
//! Between them runs a bounded queue of pending responses (`in_flight_requests_max`): the reader
//! stops reading when it is full, so a client cannot make the broker buffer unbounded work.
//! Reader and writer are two futures of one task ([`Duplex`]), and the reader gives way to the
//! writer after queueing each response: an answer that is ready goes out before the next
//! request is read, not after every request the client has pipelined (see `Duplex`).
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

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
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
/// responses (at most `in_flight_requests_max` ahead), a writer sends them in order; both run
/// on this task ([`Duplex`]).
pub(crate) async fn serve_with<F, Fut>(
    state: Arc<BrokerState>,
    socket: Stream,
    peer: SocketAddr,
    slot: PeerSlot,
    listener: Listener,
    read: F,
) where
    F: FnOnce(Arc<BrokerState>, FrameReader<BoxRead>, Replies, Session) -> Fut,
    Fut: Future<Output = ()>,
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
    let gave_way = Arc::new(AtomicBool::new(false));
    let replies = Replies {
        queue,
        gave_way: gave_way.clone(),
    };
    // When the reader ends, its queue closes: the writer sends what is pending and ends.
    Duplex {
        reader: Some(Box::pin(read(state, frames, replies, session))),
        writer: Some(Box::pin(write_loop(write_half, pending, peer))),
        gave_way,
    }
    .await;
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

/// Where a connection's reader queues its responses, in request order.
pub(crate) struct Replies {
    queue: mpsc::Sender<Outgoing>,
    gave_way: Arc<AtomicBool>,
}

/// The connection's writer is gone (the peer is): stop reading.
#[derive(Debug)]
pub(crate) struct WriterGone;

impl Replies {
    /// Queues `outgoing` (waiting while `in_flight_requests_max` responses are queued), then
    /// gives way to the writer once, so that it sends what is ready before the next request
    /// is read.
    pub(crate) async fn send(&self, outgoing: Outgoing) -> Result<(), WriterGone> {
        self.queue.send(outgoing).await.map_err(|_| WriterGone)?;
        GiveWay {
            flag: &self.gave_way,
            given: false,
        }
        .await;
        Ok(())
    }
}

/// Pending once, without a wake-up, after raising `flag`: only [`Duplex`] polls a reader,
/// and it polls the reader again (or wakes the task) when the flag is up.
struct GiveWay<'a> {
    flag: &'a AtomicBool,
    given: bool,
}

impl Future for GiveWay<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.given {
            return Poll::Ready(());
        }
        self.given = true;
        self.flag.store(true, Ordering::Relaxed);
        Poll::Pending
    }
}

/// How many requests a connection's reader may start in one poll of its task, giving way to
/// the writer after each, before the task yields to the runtime.
const DUPLEX_ROUNDS: usize = 32;

/// A connection's reader and writer on one task, the writer polled after every request the
/// reader starts.
///
/// Why not two tasks: a writer task woken by the reader waits in its worker's next-task slot
/// until the reader's task is pending, and a reader with pipelined requests in its socket is
/// not pending until it has read them all. A producer with five 256 KiB batches in flight got
/// its five acknowledgements in one burst after the fifth append (strace), waited for them
/// with the broker idle meanwhile, and refilled the broker's socket only then: client and
/// broker each about a third idle.
struct Duplex<R, W> {
    reader: Option<Pin<Box<R>>>,
    writer: Option<Pin<Box<W>>>,
    gave_way: Arc<AtomicBool>,
}

impl<R: Future<Output = ()>, W: Future<Output = ()>> Future for Duplex<R, W> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..DUPLEX_ROUNDS {
            let mut again = false;
            if let Some(reader) = this.reader.as_mut() {
                this.gave_way.store(false, Ordering::Relaxed);
                if reader.as_mut().poll(cx).is_ready() {
                    // Dropping the reader closes the queue: the writer ends once it is empty.
                    this.reader = None;
                } else {
                    again = this.gave_way.load(Ordering::Relaxed);
                }
            }
            if let Some(writer) = this.writer.as_mut() {
                if writer.as_mut().poll(cx).is_ready() {
                    this.writer = None;
                }
            }
            if this.reader.is_none() && this.writer.is_none() {
                return Poll::Ready(());
            }
            if !again {
                return Poll::Pending;
            }
        }
        // The reader gave way in every round and has more to do: let other tasks run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
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
    queue: Replies,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A socket's writing half that logs the first byte of every write (or fails every write).
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
        fail: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.fail {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            let entry = format!("wrote {}", buf.first().copied().unwrap_or_default());
            let mut log = self.log.lock().unwrap();
            if log.last() != Some(&entry) {
                log.push(entry);
            }
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Runs a reader that starts `requests` requests, each answered at once with 8 bytes of
    /// its number, against a `Recorder`; returns the log and how many answers were queued.
    async fn run(requests: u8, fail: bool) -> (Vec<String>, u8) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (queue, pending) = mpsc::channel::<Outgoing>(8);
        let gave_way = Arc::new(AtomicBool::new(false));
        let replies = Replies {
            queue,
            gave_way: gave_way.clone(),
        };
        let reader_log = log.clone();
        let queued = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let reader_queued = queued.clone();
        let reader = async move {
            for i in 0..requests {
                reader_log.lock().unwrap().push(format!("read {i}"));
                let answer = futures::future::ready(Some(vec![Bytes::from(vec![i; 8])])).boxed();
                if replies.send(answer).await.is_err() {
                    return;
                }
                reader_queued.fetch_add(1, Ordering::Relaxed);
            }
        };
        let socket: BoxWrite = Box::new(Recorder {
            log: log.clone(),
            fail,
        });
        let writer = write_loop(socket, pending, "127.0.0.1:9".parse().unwrap());
        Duplex {
            reader: Some(Box::pin(reader)),
            writer: Some(Box::pin(writer)),
            gave_way,
        }
        .await;
        let log = log.lock().unwrap().clone();
        (log, queued.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn a_ready_answer_is_written_before_the_next_request_is_read() {
        let (log, queued) = run(3, false).await;
        assert_eq!(queued, 3);
        assert_eq!(
            log,
            ["read 0", "wrote 0", "read 1", "wrote 1", "read 2", "wrote 2"],
            "each answer goes out before the next request is read"
        );
    }

    #[tokio::test]
    async fn more_requests_than_one_poll_allows_are_all_answered() {
        let requests = (DUPLEX_ROUNDS * 3) as u8;
        let (log, queued) = run(requests, false).await;
        assert_eq!(queued, requests);
        let written = log.iter().filter(|e| e.starts_with("wrote")).count();
        assert_eq!(written, usize::from(requests));
    }

    #[tokio::test]
    async fn a_failed_writer_stops_the_reader() {
        let (log, queued) = run(5, true).await;
        assert!(queued < 5, "the reader stopped: {log:?}");
        assert!(!log.iter().any(|e| e.starts_with("wrote")));
    }
}
