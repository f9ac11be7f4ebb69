//! Limits no client can exhaust (docs/SECURITY.md "Limits"): connections per source address,
//! and the memory that buffered request frames may take, globally and per source address.
//!
//! A connection reads a frame's 4-byte size first, checks it against `max_frame_bytes`, and
//! then waits for that many bytes of budget — from its source address's share
//! (`request_memory_per_ip_bytes`) and then from its listener group's total
//! (`request_memory_bytes`) — before it reserves any room for the frame or reads its body. A
//! granted frame must arrive within `request_read_timeout_ms`, so a peer that stalls mid-frame
//! holds budget for at most that long. The grant is returned once the request has done its
//! order-sensitive part (an append has written the batch) and its bytes are dropped.
//!
//! Invariants: the bytes of frames being read or handled never exceed the budget (plus one
//! small read-ahead buffer per connection, `READ_AHEAD_BYTES`); one address never holds more
//! than its share, so clients at other addresses still get budget while it floods; a frame
//! is granted whole or not at all (no two half-read frames can wait on each other forever).
//! The client listeners (native and Kafka) share one set of limits; the inter-broker listener
//! has its own, so a client flood cannot starve replication.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes a connection reads ahead while looking for the next frame's size: not counted in the
/// budget (a fixed cost per connection, bounded by `max_connections`).
pub const READ_AHEAD_BYTES: usize = 8 * 1024;

/// Length of the size prefix of both protocols' frames.
const PREFIX_BYTES: usize = 4;

/// The limits of one group of listeners.
pub struct Limits {
    /// Connections one source address may hold (0: no limit).
    per_ip_max: usize,
    /// Per-address exceptions to `per_ip_max`.
    overrides: HashMap<IpAddr, usize>,
    /// Frame bytes one source address may hold.
    per_ip_memory: usize,
    /// Frame bytes all connections may hold.
    memory: Arc<Semaphore>,
    memory_total: usize,
    peers: Mutex<HashMap<IpAddr, Peer>>,
}

struct Peer {
    connections: usize,
    memory: Arc<Semaphore>,
}

/// The limits of a port outside the listener groups (the controller port): its `Limits`, its
/// own connection count and how long a granted frame may take.
#[derive(Clone)]
pub struct PortLimits {
    pub limits: Arc<Limits>,
    pub max_connections: usize,
    pub read_timeout: Duration,
}

impl PortLimits {
    /// `config`'s limits for a port whose frames may be up to `frame_bytes_max` long (its
    /// memory budget and per-address share are raised to hold one such frame).
    pub fn from_config(config: &crate::config::BrokerConfig, frame_bytes_max: usize) -> Self {
        PortLimits {
            limits: Limits::new(
                config.request_memory_bytes.max(frame_bytes_max),
                config.request_memory_per_ip_bytes.max(frame_bytes_max),
                config.max_connections_per_ip,
                config.connection_overrides().unwrap_or_default(),
            ),
            max_connections: config.max_connections,
            read_timeout: Duration::from_millis(config.request_read_timeout_ms),
        }
    }
}

impl Default for PortLimits {
    fn default() -> Self {
        PortLimits::from_config(&crate::config::BrokerConfig::default(), 64 << 20)
    }
}

impl std::fmt::Debug for PortLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortLimits")
            .field("memory", &self.limits.memory_total)
            .field("per_ip_memory", &self.limits.per_ip_memory)
            .field("max_connections", &self.max_connections)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyConnections {
    pub limit: usize,
}

impl Limits {
    /// Limits with `memory` bytes of frames in all, `per_ip_memory` per address, and at most
    /// `per_ip_max` connections per address (0: no limit) except the `overrides`.
    pub fn new(
        memory: usize,
        per_ip_memory: usize,
        per_ip_max: usize,
        overrides: HashMap<IpAddr, usize>,
    ) -> Arc<Limits> {
        Arc::new(Limits {
            per_ip_max,
            overrides,
            per_ip_memory: per_ip_memory.min(memory),
            memory: Arc::new(Semaphore::new(memory)),
            memory_total: memory,
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// Admits one more connection from `ip`, or says the limit it would pass.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<PeerSlot, TooManyConnections> {
        let limit = self.overrides.get(&ip).copied().unwrap_or(self.per_ip_max);
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let peer = peers.entry(ip).or_insert_with(|| Peer {
            connections: 0,
            memory: Arc::new(Semaphore::new(self.per_ip_memory)),
        });
        if limit != 0 && peer.connections >= limit {
            return Err(TooManyConnections { limit });
        }
        peer.connections += 1;
        Ok(PeerSlot {
            limits: self.clone(),
            ip,
            memory: peer.memory.clone(),
        })
    }

    /// Frame bytes held now by connections of this group.
    pub fn memory_used(&self) -> usize {
        self.memory_total - self.memory.available_permits()
    }

    /// Connections held now by `ip`.
    pub fn connections_of(&self, ip: IpAddr) -> usize {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(&ip).map_or(0, |p| p.connections)
    }
}

/// One admitted connection: its place in its address's count and memory share.
pub struct PeerSlot {
    limits: Arc<Limits>,
    ip: IpAddr,
    memory: Arc<Semaphore>,
}

impl PeerSlot {
    /// Waits until `bytes` of frame memory are free for this connection: its address's share
    /// first, then the group's. `bytes` is at most `max_frame_bytes`, which the configuration
    /// keeps within both.
    pub async fn reserve(&self, bytes: usize) -> MemoryGrant {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        // Neither semaphore is ever closed, so acquiring only fails if it were.
        let own = self.memory.clone().acquire_many_owned(n).await.ok();
        let all = self.limits.memory.clone().acquire_many_owned(n).await.ok();
        MemoryGrant {
            _own: own,
            _all: all,
        }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self.limits.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(peer) = peers.get_mut(&self.ip) {
            peer.connections -= 1;
            if peer.connections == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// Frame memory held by one request; returned when dropped.
pub struct MemoryGrant {
    _own: Option<OwnedSemaphorePermit>,
    _all: Option<OwnedSemaphorePermit>,
}

/// One request frame (without its size prefix) and the memory grant that covers it.
pub struct Frame {
    pub bytes: Bytes,
    pub grant: MemoryGrant,
}

/// Why a connection stops reading frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes (max_frame_bytes)")]
    TooLarge {
        len: usize,
        max: usize,
        /// The request's correlation id, when it came with the size (both protocols put it at
        /// bytes 4-8 of the frame), so the refusal can be answered.
        correlation_id: Option<u32>,
    },
    #[error("the peer closed the connection {0} bytes into a frame")]
    Truncated(usize),
    #[error("a {len}-byte frame did not arrive within {timeout:?} (request_read_timeout_ms)")]
    ReadTimeout { len: usize, timeout: Duration },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads size-prefixed frames within a connection's limits.
pub struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    max_frame_bytes: usize,
    read_timeout: Duration,
    slot: PeerSlot,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R, slot: PeerSlot, max_frame_bytes: usize, read_timeout: Duration) -> Self {
        FrameReader {
            reader,
            buf: BytesMut::new(),
            max_frame_bytes,
            read_timeout,
            slot,
        }
    }

    /// The next frame, `Ok(None)` when the peer closed the connection between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        while self.buf.len() < PREFIX_BYTES {
            let read = match self.read_ahead().await {
                // A TLS peer that closes without close_notify, between frames: a plain close.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && self.buf.is_empty() => 0,
                read => read?,
            };
            if read == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    n => Err(FrameError::Truncated(n)),
                };
            }
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        // A frame bigger than its address's share could never be granted (the configuration
        // keeps `max_frame_bytes` within it; this keeps a mistake from hanging a connection).
        let max = self.max_frame_bytes.min(self.slot.limits.per_ip_memory);
        if len > max {
            let correlation_id = (self.buf.len() >= 12).then(|| {
                u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
            });
            return Err(FrameError::TooLarge {
                len,
                max,
                correlation_id,
            });
        }
        // Waiting for budget is not timed here (the connection's idle timeout covers it); once
        // granted, the frame has `read_timeout` to arrive.
        let grant = self.slot.reserve(len).await;
        let total = PREFIX_BYTES + len;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            let (reader, buf, timeout) = (&mut self.reader, &mut self.buf, self.read_timeout);
            let read = async {
                while buf.len() < total {
                    // Exactly the frame's rest: no read-ahead past a granted frame.
                    let want = (total - buf.len()) as u64;
                    let n = (&mut *reader).take(want).read_buf(&mut *buf).await?;
                    if n == 0 {
                        return Err(FrameError::Truncated(buf.len()));
                    }
                }
                Ok(())
            };
            match tokio::time::timeout(timeout, read).await {
                Ok(read) => read?,
                Err(_) => return Err(FrameError::ReadTimeout { len, timeout }),
            }
        }
        self.buf.advance(PREFIX_BYTES);
        let bytes = self.buf.split_to(len).freeze();
        Ok(Some(Frame { bytes, grant }))
    }

    /// Reads what is there, up to [`READ_AHEAD_BYTES`] past what is buffered.
    async fn read_ahead(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_AHEAD_BYTES / 2 {
            self.buf.reserve(READ_AHEAD_BYTES);
        }
        let room = READ_AHEAD_BYTES.saturating_sub(self.buf.len()).max(1) as u64;
        (&mut self.reader).take(room).read_buf(&mut self.buf).await
    }
}

/// Parses `max_connections_per_ip_overrides`: `ip:count,ip:count` (IPv6 in brackets or bare,
/// the count after the last colon).
pub fn parse_overrides(text: &str) -> Result<HashMap<IpAddr, usize>, String> {
    let mut overrides = HashMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (ip, count) = item
            .rsplit_once(':')
            .ok_or_else(|| format!("{item:?}: expected ip:count"))?;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = ip
            .parse()
            .map_err(|e| format!("{item:?}: {ip:?} is not an IP address ({e})"))?;
        let count: usize = count
            .parse()
            .map_err(|e| format!("{item:?}: {count:?} is not a count ({e})"))?;
        overrides.insert(ip, count);
    }
    Ok(overrides)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_per_address_are_counted_and_returned() {
        let overrides = HashMap::from([(ip("10.0.0.9"), 3)]);
        let limits = Limits::new(1 << 20, 1 << 20, 2, overrides);
        let a1 = limits.admit(ip("10.0.0.1")).unwrap();
        let _a2 = limits.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            limits.admit(ip("10.0.0.1")).err(),
            Some(TooManyConnections { limit: 2 })
        );
        let _b = limits.admit(ip("10.0.0.2")).unwrap();
        let overridden: Vec<_> = (0..3)
            .map(|_| limits.admit(ip("10.0.0.9")).unwrap())
            .collect();
        assert!(limits.admit(ip("10.0.0.9")).is_err());
        drop(a1);
        assert_eq!(limits.connections_of(ip("10.0.0.1")), 1);
        let _a3 = limits.admit(ip("10.0.0.1")).unwrap();
        drop(overridden);
        assert_eq!(limits.connections_of(ip("10.0.0.9")), 0);
        assert!(limits.peers.lock().unwrap().get(&ip("10.0.0.9")).is_none());
    }

    #[test]
    fn overrides_parse_and_bad_ones_are_named() {
        let parsed = parse_overrides("127.0.0.1:5, [::1]:7 ,10.1.2.3:0").unwrap();
        assert_eq!(parsed[&ip("127.0.0.1")], 5);
        assert_eq!(parsed[&ip("::1")], 7);
        assert_eq!(parsed[&ip("10.1.2.3")], 0);
        assert!(parse_overrides("").unwrap().is_empty());
        assert!(parse_overrides("host:5").unwrap_err().contains("host"));
        assert!(parse_overrides("127.0.0.1").is_err());
        assert!(parse_overrides("127.0.0.1:x").is_err());
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn frames_are_read_whole_and_their_memory_held_until_dropped() {
        let limits = Limits::new(100, 60, 0, HashMap::new());
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let slot = limits.admit(ip("10.0.0.1")).unwrap();
        let mut reader = FrameReader::new(server, slot, 50, Duration::from_secs(5));
        let mut sent = frame(b"hello");
        sent.extend(frame(&[7; 40]));
        sent.extend(frame(&[]));
        client.write_all(&sent).await.unwrap();
        let first = reader.next().await.unwrap().unwrap();
        assert_eq!(&first.bytes[..], b"hello");
        assert_eq!(limits.memory_used(), 5);
        let second = reader.next().await.unwrap().unwrap();
        assert_eq!(&second.bytes[..], &[7; 40][..]);
        assert_eq!(limits.memory_used(), 45);
        drop(first);
        assert_eq!(limits.memory_used(), 40);
        let third = reader.next().await.unwrap().unwrap();
        assert!(third.bytes.is_empty());
        drop((second, third));
        assert_eq!(limits.memory_used(), 0);
        drop(client);
        assert!(reader.next().await.unwrap().is_none(), "clean close");
    }

    #[tokio::test]
    async fn an_address_waits_for_its_share_while_others_are_served() {
        let limits = Limits::new(100, 60, 0, HashMap::new());
        let (mut a, a_server) = tokio::io::duplex(1 << 16);
        let (mut b, b_server) = tokio::io::duplex(1 << 16);
        let mut a_reader = FrameReader::new(
            a_server,
            limits.admit(ip("10.0.0.1")).unwrap(),
            50,
            Duration::from_secs(5),
        );
        let mut b_reader = FrameReader::new(
            b_server,
            limits.admit(ip("10.0.0.2")).unwrap(),
            50,
            Duration::from_secs(5),
        );
        let mut sent = frame(&[1; 50]);
        sent.extend(frame(&[2; 20]));
        a.write_all(&sent).await.unwrap();
        let held = a_reader.next().await.unwrap().unwrap();
        // 50 + 20 is past the address's 60: the second frame waits.
        let waiting = tokio::time::timeout(Duration::from_millis(50), a_reader.next()).await;
        assert!(waiting.is_err(), "over its share, the address waits");
        // Another address still gets budget.
        b.write_all(&frame(&[3; 40])).await.unwrap();
        let other = b_reader.next().await.unwrap().unwrap();
        assert_eq!(other.bytes.len(), 40);
        drop(held);
        let second = a_reader.next().await.unwrap().unwrap();
        assert_eq!(&second.bytes[..], &[2; 20][..]);
    }

    #[tokio::test]
    async fn oversized_stalled_and_truncated_frames_are_errors() {
        let limits = Limits::new(1000, 1000, 0, HashMap::new());
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let slot = limits.admit(ip("10.0.0.1")).unwrap();
        let mut reader = FrameReader::new(server, slot, 100, Duration::from_millis(100));
        let mut big = 101u32.to_be_bytes().to_vec();
        big.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 42]);
        client.write_all(&big).await.unwrap();
        match reader.next().await {
            Err(FrameError::TooLarge {
                len: 101,
                max: 100,
                correlation_id: Some(42),
            }) => {}
            other => panic!(
                "expected TooLarge, got {other:?}",
                other = other.map(|_| ())
            ),
        }

        let (mut client, server) = tokio::io::duplex(1 << 16);
        let slot = limits.admit(ip("10.0.0.1")).unwrap();
        let mut reader = FrameReader::new(server, slot, 100, Duration::from_millis(100));
        client.write_all(&frame(&[1; 80])[..30]).await.unwrap();
        assert!(matches!(
            reader.next().await,
            Err(FrameError::ReadTimeout { len: 80, .. })
        ));
        assert_eq!(
            limits.memory_used(),
            0,
            "a stalled frame gives its grant back"
        );

        let (mut client, server) = tokio::io::duplex(1 << 16);
        let slot = limits.admit(ip("10.0.0.1")).unwrap();
        let mut reader = FrameReader::new(server, slot, 100, Duration::from_secs(5));
        client.write_all(&frame(&[1; 80])[..30]).await.unwrap();
        drop(client);
        assert!(matches!(
            reader.next().await,
            Err(FrameError::Truncated(30))
        ));
    }
}
