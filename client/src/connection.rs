//! One multiplexed connection to a broker: many requests in flight (up to a limit), responses
//! matched to requests in order (the broker answers each connection in request order).
//!
//! Quotas: a produce or fetch response that says the client is throttled (`throttle_time_ms`,
//! Kafka's KIP-219) holds the connection's next writes until the throttle time has passed, as
//! the broker holds its reads; and every request on the connection waits its full timeout
//! after that time, not from when it was queued, so requests held back by a throttle (here or
//! in the broker) are not timed out and retried, which would only spend more of the quota.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rill_protocol::api::{ApiKey, ApiVersionRange, ApiVersionsRequest, RequestBody, ResponseBody};
use rill_protocol::frame::{request_prefix, RequestHeader, ResponseCodec, ResponseFrame};
use rill_protocol::ErrorCode;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::error::{ClientError, Result};

type Reply = oneshot::Sender<Result<ResponseFrame>>;

/// The longest throttle one response holds the connection for. The broker never asks for
/// more than 10 s at once (`quota::MAX_THROTTLE`); a larger figure is taken as this.
const MAX_THROTTLE: Duration = Duration::from_secs(30);

/// Until when a quota throttles the connection (set from responses, read by the writer and by
/// requests' timeouts).
#[derive(Default)]
struct Throttle(Mutex<Option<Instant>>);

impl Throttle {
    fn until(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a response's throttle time (ms; 0: not throttled), counted from now.
    fn note(&self, throttle_time_ms: u32) {
        if throttle_time_ms == 0 {
            return;
        }
        let time = Duration::from_millis(u64::from(throttle_time_ms)).min(MAX_THROTTLE);
        let until = Instant::now() + time;
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_none_or(|current| current < until) {
            *current = Some(until);
        }
    }

    /// Waits until the connection is no longer throttled.
    async fn wait(&self) {
        while let Some(until) = self.until().filter(|until| *until > Instant::now()) {
            tokio::time::sleep_until(until).await;
        }
    }
}

/// A request on its way: the frame as chunks for one vectored write (record batches shared
/// with the producer, not copied).
struct Outbound {
    correlation_id: u32,
    chunks: Vec<Bytes>,
    reply: Option<(Reply, OwnedSemaphorePermit)>,
}

/// A connection; clones share it.
#[derive(Clone)]
pub(crate) struct Connection {
    address: String,
    client_id: String,
    max_frame_bytes: usize,
    outbound: mpsc::Sender<Outbound>,
    /// Set when the connection failed; the pool then opens a new one.
    dead: Arc<std::sync::atomic::AtomicBool>,
    in_flight: Arc<Semaphore>,
    next_correlation_id: Arc<AtomicU32>,
    /// The version each api is sent in, by api key (from ApiVersions; absent: 0).
    versions: Arc<Vec<u16>>,
    throttle: Arc<Throttle>,
}

/// The newest version of each api both this client and the broker (`offered`) speak.
fn negotiate(offered: &[ApiVersionRange]) -> Vec<u16> {
    let mut versions = Vec::new();
    for key in ApiKey::ALL {
        let (ours_min, ours_max) = key.supported_versions();
        let version = offered
            .iter()
            .find(|range| range.api_key == key as u16)
            .filter(|range| range.min_version <= ours_max && ours_min <= range.max_version)
            .map_or(ours_min, |range| range.max_version.min(ours_max));
        let index = key as usize;
        if versions.len() <= index {
            versions.resize(index + 1, 0);
        }
        versions[index] = version;
    }
    versions
}

impl Connection {
    pub async fn connect(
        address: &str,
        client_id: &str,
        max_frame_bytes: usize,
        in_flight_max: usize,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Connection> {
        let connect = async {
            crate::tls::open(address, tls).await.map_err(|e| {
                // rustls reports certificate and protocol failures as invalid data.
                if e.kind() == std::io::ErrorKind::InvalidData {
                    ClientError::Tls {
                        address: address.into(),
                        reason: e.to_string(),
                    }
                } else {
                    ClientError::Connection {
                        address: address.into(),
                        reason: e.to_string(),
                    }
                }
            })
        };
        let socket = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(ClientError::Connection {
                    address: address.into(),
                    reason: format!("connect timed out after {timeout:?}"),
                })
            }
        };
        let (read_half, mut write_half) = tokio::io::split(socket);
        let mut stream = FramedRead::new(read_half, ResponseCodec::new(max_frame_bytes));
        let (outbound, mut requests) = mpsc::channel::<Outbound>(in_flight_max);
        let waiting: Arc<Mutex<VecDeque<(u32, Reply, OwnedSemaphorePermit)>>> = Arc::default();
        let address_owned = address.to_string();
        // Set once either half fails: the connection is never used again (a request queued
        // after the reader saw the broker vanish would otherwise wait for its timeout).
        let dead: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let fail_all = {
            let waiting = waiting.clone();
            let address = address_owned.clone();
            let dead = dead.clone();
            move |reason: String| {
                dead.store(true, Ordering::Release);
                let drained: Vec<_> = waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .drain(..)
                    .collect();
                // A TLS alert from the broker (TLS 1.3 sends its refusal of our certificate
                // after the handshake, on the first read) is a refusal retrying cannot change.
                let refused = reason.contains("received fatal alert");
                for (_, reply, _) in drained {
                    let (address, reason) = (address.clone(), reason.clone());
                    let _ = reply.send(Err(if refused {
                        ClientError::Tls { address, reason }
                    } else {
                        ClientError::Connection { address, reason }
                    }));
                }
            }
        };
        let writer_waiting = waiting.clone();
        let writer_fail = fail_all.clone();
        let writer_dead = dead.clone();
        let throttle: Arc<Throttle> = Arc::default();
        let writer_throttle = throttle.clone();
        tokio::spawn(async move {
            while let Some(mut request) = requests.recv().await {
                writer_throttle.wait().await;
                if let Some((reply, permit)) = request.reply {
                    writer_waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back((request.correlation_id, reply, permit));
                }
                if writer_dead.load(Ordering::Acquire) {
                    requests.close();
                    writer_fail("the connection failed earlier".into());
                    while let Some(request) = requests.recv().await {
                        if let Some((reply, _)) = request.reply {
                            let _ = reply.send(Err(ClientError::Connection {
                                address: String::new(),
                                reason: "the connection failed earlier".into(),
                            }));
                        }
                    }
                    return;
                }
                let written =
                    crate::tls::write_all_chunks(&mut write_half, &mut request.chunks).await;
                if let Err(e) = written {
                    writer_fail(format!("write failed: {e}"));
                    return;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let frame = match stream.next().await {
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => return fail_all(format!("read failed: {e}")),
                    None => return fail_all("the broker closed the connection".into()),
                };
                let next = waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front();
                match next {
                    Some((id, reply, _permit)) if id == frame.header.correlation_id => {
                        let _ = reply.send(Ok(frame));
                    }
                    Some((id, reply, _permit)) => {
                        let reason = format!(
                            "response for correlation id {} while waiting for {id}",
                            frame.header.correlation_id
                        );
                        let _ = reply.send(Err(ClientError::Connection {
                            address: address_owned.clone(),
                            reason: reason.clone(),
                        }));
                        return fail_all(reason);
                    }
                    None => {
                        return fail_all(format!(
                            "unexpected response with correlation id {}",
                            frame.header.correlation_id
                        ))
                    }
                }
            }
        });
        let connection = Connection {
            address: address.into(),
            client_id: client_id.into(),
            max_frame_bytes,
            outbound,
            dead,
            in_flight: Arc::new(Semaphore::new(in_flight_max)),
            next_correlation_id: Arc::new(AtomicU32::new(1)),
            versions: Arc::default(),
            throttle,
        };
        // Each api at the newest version both sides speak (docs/PROTOCOL.md "Versioning").
        let body = RequestBody::ApiVersions(ApiVersionsRequest {});
        let ResponseBody::ApiVersions(offered) = connection.request(body, timeout).await? else {
            return Err(ClientError::Connection {
                address: address.into(),
                reason: "the broker answered ApiVersions with another response".into(),
            });
        };
        let versions = negotiate(&offered.apis);
        Ok(Connection {
            versions: Arc::new(versions),
            ..connection
        })
    }

    pub fn is_closed(&self) -> bool {
        self.outbound.is_closed() || self.dead.load(Ordering::Acquire)
    }

    /// The version requests of `api` are sent (and their responses read) in.
    fn version(&self, api: ApiKey) -> u16 {
        self.versions.get(api as usize).copied().unwrap_or(0)
    }

    /// The request's frame as chunks, and its correlation id; a frame over `max_frame_bytes`
    /// (or a client id over its limit) fails here, alone, instead of on the connection.
    fn frame(&self, body: &RequestBody) -> Result<(u32, Vec<Bytes>)> {
        let header = RequestHeader {
            api_key: body.api_key() as u16,
            api_version: self.version(body.api_key()),
            correlation_id: self.next_correlation_id.fetch_add(1, Ordering::Relaxed),
            client_id: self.client_id.clone(),
        };
        let body = body.encode_chunks();
        let body_bytes = body.iter().map(Bytes::len).sum();
        let mut chunks = Vec::with_capacity(body.len() + 1);
        chunks.push(request_prefix(&header, body_bytes, self.max_frame_bytes)?);
        chunks.extend(body);
        Ok((header.correlation_id, chunks))
    }

    fn closed(&self) -> ClientError {
        ClientError::Connection {
            address: self.address.clone(),
            reason: "connection closed".into(),
        }
    }

    /// Sends a request and waits for its response (at most `timeout`).
    pub async fn request(&self, body: RequestBody, timeout: Duration) -> Result<ResponseBody> {
        self.enqueue(body, timeout).await?.await
    }

    /// Queues a request for writing (requests go out in the order they were queued) and
    /// returns the wait for its response (at most `timeout`).
    pub async fn enqueue(
        &self,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<impl std::future::Future<Output = Result<ResponseBody>> + Send + 'static> {
        let api_key = body.api_key();
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.closed())?;
        let (reply, response) = oneshot::channel();
        let (correlation_id, chunks) = self.frame(&body)?;
        self.outbound
            .send(Outbound {
                correlation_id,
                chunks,
                reply: Some((reply, permit)),
            })
            .await
            .map_err(|_| self.closed())?;
        let connection = self.clone();
        Ok(async move { connection.response(api_key, response, timeout).await })
    }

    async fn response(
        &self,
        api_key: ApiKey,
        response: oneshot::Receiver<Result<ResponseFrame>>,
        timeout: Duration,
    ) -> Result<ResponseBody> {
        tokio::pin!(response);
        let mut deadline = Instant::now() + timeout;
        let frame = loop {
            match tokio::time::timeout_at(deadline, &mut response).await {
                Ok(Ok(result)) => break result?,
                Ok(Err(_)) => return Err(self.closed()),
                Err(_) => {
                    // A throttle since the request was queued delays it (the writer held
                    // it, or the broker read it late): it gets its timeout after that.
                    match self.throttle.until().map(|until| until + timeout) {
                        Some(later) if later > deadline => deadline = later,
                        _ => {
                            return Err(ClientError::Timeout(
                                timeout,
                                format!("{api_key:?} request to {}", self.address),
                            ))
                        }
                    }
                }
            }
        };
        if frame.header.error_code != ErrorCode::NONE {
            return Err(ClientError::broker(
                frame.header.error_code,
                format!("{api_key:?} request to {}", self.address),
                None,
            ));
        }
        let body = ResponseBody::decode(api_key as u16, self.version(api_key), frame.body)?;
        match &body {
            ResponseBody::Produce(r) => self.throttle.note(r.throttle_time_ms),
            ResponseBody::Fetch(r) => self.throttle.note(r.throttle_time_ms),
            _ => {}
        }
        Ok(body)
    }

    /// Sends a request that gets no response (produce with acks = 0).
    pub async fn send_only(&self, body: RequestBody) -> Result<()> {
        let (correlation_id, chunks) = self.frame(&body)?;
        self.outbound
            .send(Outbound {
                correlation_id,
                chunks,
                reply: None,
            })
            .await
            .map_err(|_| self.closed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_api_goes_at_the_newest_version_both_sides_speak() {
        let range = |key: ApiKey, min, max| ApiVersionRange {
            api_key: key as u16,
            min_version: min,
            max_version: max,
        };
        // A broker of this version: Produce at 1.
        let versions = negotiate(&[range(ApiKey::Produce, 0, 1), range(ApiKey::Fetch, 0, 1)]);
        assert_eq!(versions[ApiKey::Produce as usize], 1);
        assert_eq!(versions[ApiKey::Fetch as usize], 1);
        // An older broker (version 0 only), a newer one (up to 5), one that does not list the
        // api (it will refuse it, whatever the version): 0, 1, 0.
        let versions = negotiate(&[range(ApiKey::Produce, 0, 0), range(ApiKey::Fetch, 0, 5)]);
        assert_eq!(versions[ApiKey::Produce as usize], 0);
        assert_eq!(versions[ApiKey::Fetch as usize], 1);
        assert_eq!(versions[ApiKey::Metadata as usize], 0);
    }
}
