//! The controller port: Raft traffic between voters, and the requests brokers send to the
//! active controller (forwarded metadata changes, heartbeats, metadata for observers). One TCP
//! connection per peer, requests and responses as length-prefixed postcard frames (`u32`
//! length, then `RaftRequest` / `RaftResponse`). Frames are limited to [`RAFT_FRAME_BYTES_MAX`];
//! a peer that sends more is disconnected. The port has its own limits (`PortLimits`):
//! connections in all and per source address, and request memory granted before a frame's
//! body is read (`server::limits`), so a flood of connections or partial frames cannot take
//! the broker's memory or the voters' slots. A single-voter quorum never sends anything.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::controller::metadata::{Command, CommandResult, MetadataState, NodeId};
use crate::controller::{Controller, TypeConfig};
use crate::server::connection::Stream;
use crate::server::limits::{FrameReader, PortLimits};
use crate::tls::{Listener, Tls};
use rill_client::tls::Io;

/// Largest Raft frame accepted (metadata snapshots are small).
pub const RAFT_FRAME_BYTES_MAX: usize = 64 << 20;

/// A request on the controller port. Variants are only ever appended.
#[derive(Serialize, Deserialize)]
pub(crate) enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A metadata change for the active controller to append.
    Propose(Command),
    /// A broker is alive (and reachable for clients at host:port).
    Heartbeat {
        node_id: NodeId,
        host: String,
        port: u16,
        incarnation: u64,
        /// The cluster its data directory belongs to, if it knows yet.
        cluster_id: Option<String>,
    },
    /// An observer asks for the applied metadata, unless it already has the state as of log
    /// index `known`; with `wait_ms` > 0 the voter holds the request until something newer is
    /// applied or `wait_ms` passes (a long poll: observers see changes at once).
    GetMetadata {
        known: u64,
        wait_ms: u32,
    },
}

/// The answer to a [`RaftRequest`] of the same name.
#[derive(Serialize, Deserialize)]
pub(crate) enum RaftResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// The outcome and the index of the log entry that carried it.
    Propose(Result<(CommandResult, u64), ForwardError>),
    /// Accepted: the index of the last metadata entry applied on the active controller when
    /// it took the heartbeat (at least its registration). The broker acts as a leader again
    /// only once its own metadata has caught up with it.
    /// Also names the cluster.
    Heartbeat(Result<(u64, String), ForwardError>),
    Metadata {
        leader: Option<NodeId>,
        /// `None` when nothing was applied after the asker's `known` index.
        state: Option<MetadataState>,
        /// Index of the last log entry applied (read before `state`, so `state` is at least
        /// this new).
        applied: u64,
    },
}

/// Why the controller port could not take a forwarded request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ForwardError {
    /// This voter is not the active controller; the leader, if known.
    NotLeader(Option<NodeId>),
    /// The proposal failed (Raft error).
    Failed(String),
    /// A heartbeat from a broker of another cluster (its data directory says so).
    InconsistentClusterId(String),
    /// A heartbeat from a second process claiming a node id that a live broker at another
    /// address holds.
    DuplicateNodeId(String),
}

async fn write_frame(
    stream: &mut (impl AsyncWrite + Unpin),
    value: &impl Serialize,
) -> std::io::Result<()> {
    let bytes = postcard::to_allocvec(value).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(bytes.len() + 4);
    frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    frame.extend_from_slice(&bytes);
    stream.write_all(&frame).await
}

async fn read_frame<T: for<'de> Deserialize<'de>>(
    stream: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<T> {
    let len = stream.read_u32().await? as usize;
    if len > RAFT_FRAME_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "raft frame of {len} bytes exceeds {RAFT_FRAME_BYTES_MAX}"
        )));
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await?;
    postcard::from_bytes(&bytes).map_err(std::io::Error::other)
}

/// Serves the controller port on `listener` until `shutdown`, within `port`'s limits.
pub(crate) async fn serve(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    controller: Controller,
    shutdown: CancellationToken,
    port: PortLimits,
    tls: Option<Arc<Tls>>,
) {
    let slots = Arc::new(Semaphore::new(port.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("raft accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = port.max_connections, "controller port connection refused: too many connections");
            continue;
        };
        let peer_slot = match port.limits.admit(peer.ip()) {
            Ok(peer_slot) => peer_slot,
            Err(refused) => {
                tracing::warn!(%peer, max = refused.limit, "controller port connection refused: too many connections from this address (max_connections_per_ip)");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let raft = raft.clone();
        let controller = controller.clone();
        let shutdown = shutdown.clone();
        let acceptor = tls.as_ref().and_then(|t| t.acceptor(Listener::Controller));
        let read_timeout = port.read_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let Stream {
                read: read_half,
                write: mut stream,
                ..
            } = match Stream::accept(stream, acceptor, read_timeout).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(%peer, "controller port: {e}, closing the connection");
                    return;
                }
            };
            let mut frames =
                FrameReader::new(read_half, peer_slot, RAFT_FRAME_BYTES_MAX, read_timeout);
            loop {
                let frame = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    frame = frames.next() => frame,
                };
                let request = match frame {
                    Ok(Some(frame)) => match postcard::from_bytes::<RaftRequest>(&frame.bytes) {
                        Ok(request) => request,
                        Err(e) => {
                            tracing::warn!(%peer, "undecodable controller port request, closing the connection: {e}");
                            return;
                        }
                    },
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(%peer, "raft connection closed: {e}");
                        return;
                    }
                };
                let response = match request {
                    RaftRequest::AppendEntries(r) => {
                        RaftResponse::AppendEntries(raft.append_entries(r).await)
                    }
                    RaftRequest::Vote(r) => RaftResponse::Vote(raft.vote(r).await),
                    RaftRequest::InstallSnapshot(r) => {
                        RaftResponse::InstallSnapshot(raft.install_snapshot(r).await)
                    }
                    RaftRequest::Propose(command) => {
                        RaftResponse::Propose(controller.propose_local(command).await)
                    }
                    RaftRequest::Heartbeat {
                        node_id,
                        host,
                        port,
                        incarnation,
                        cluster_id,
                    } => RaftResponse::Heartbeat(
                        controller
                            .on_heartbeat(node_id, host, port, incarnation, cluster_id)
                            .await,
                    ),
                    RaftRequest::GetMetadata { known, wait_ms } => {
                        if wait_ms > 0 {
                            let wait = Duration::from_millis(u64::from(wait_ms.min(5_000)));
                            let _ = raft
                                .wait(Some(wait))
                                .applied_index_at_least(
                                    Some(known.saturating_add(1)),
                                    "metadata long poll",
                                )
                                .await;
                        }
                        let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
                        RaftResponse::Metadata {
                            leader: controller.leader(),
                            state: (applied > known).then(|| (*controller.metadata()).clone()),
                            applied,
                        }
                    }
                };
                if write_frame(&mut stream, &response).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Creates [`PeerClient`]s.
#[derive(Clone, Default)]
pub struct Network {
    /// TLS towards other voters' controller ports (`None`: plain).
    pub tls: Option<Arc<Tls>>,
}

/// A client to one peer voter; reconnects on the next call after a failure.
pub struct PeerClient {
    target: NodeId,
    address: String,
    tls: Option<Arc<Tls>>,
    stream: Option<Box<dyn Io>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient::new(target, node.addr.clone(), self.tls.clone())
    }
}

impl PeerClient {
    /// A client of the controller port at `address`, connecting on first use (with TLS when
    /// the controller port is a TLS listener).
    pub(crate) fn new(target: NodeId, address: String, tls: Option<Arc<Tls>>) -> PeerClient {
        PeerClient {
            target,
            address,
            tls,
            stream: None,
        }
    }

    /// Sends `request` and reads the response within `timeout`.
    pub(crate) async fn call(
        &mut self,
        request: RaftRequest,
        timeout: Duration,
    ) -> Result<RaftResponse, std::io::Error> {
        let exchange = async {
            if self.stream.is_none() {
                let tls = crate::tls::connector(&self.tls, Listener::Controller);
                self.stream = Some(rill_client::tls::open(&self.address, tls).await?);
            }
            let stream = self
                .stream
                .as_mut()
                .ok_or_else(|| std::io::Error::other("not connected"))?;
            write_frame(stream, &request).await?;
            read_frame::<RaftResponse>(stream).await
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "raft rpc timed out",
            )),
        };
        if result.is_err() {
            self.stream = None; // a half-used connection cannot be trusted: reconnect next time
        }
        result
    }

    fn failed<E: std::error::Error>(&self, e: std::io::Error) -> RPCError<NodeId, BasicNode, E> {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            RPCError::Unreachable(Unreachable::new(&e))
        } else {
            RPCError::Network(NetworkError::new(&e))
        }
    }

    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

fn protocol_error() -> std::io::Error {
    std::io::Error::other("peer answered with a response of the wrong type")
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .call(RaftRequest::AppendEntries(rpc), option.hard_ttl())
            .await
        {
            Ok(RaftResponse::AppendEntries(Ok(response))) => Ok(response),
            Ok(RaftResponse::AppendEntries(Err(e))) => Err(self.remote(e)),
            Ok(_) => Err(self.failed(protocol_error())),
            Err(e) => Err(self.failed(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(RaftRequest::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(RaftResponse::InstallSnapshot(Ok(response))) => Ok(response),
            Ok(RaftResponse::InstallSnapshot(Err(e))) => Err(self.remote(e)),
            Ok(_) => Err(self.failed(protocol_error())),
            Err(e) => Err(self.failed(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(RaftRequest::Vote(rpc), option.hard_ttl()).await {
            Ok(RaftResponse::Vote(Ok(response))) => Ok(response),
            Ok(RaftResponse::Vote(Err(e))) => Err(self.remote(e)),
            Ok(_) => Err(self.failed(protocol_error())),
            Err(e) => Err(self.failed(e)),
        }
    }
}
