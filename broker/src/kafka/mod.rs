//! The Kafka-protocol listener (`kafka_listen`, docs/KAFKA.md): Kafka clients and tools talk to
//! the same broker operations (`crate::ops`) as Rill's own protocol, over Kafka's framing and
//! messages (decoded and encoded by the `kafka-protocol` crate, generated from Kafka's message
//! schemas).
//!
//! A connection reads size-prefixed frames (at most `max_frame_bytes`, refused before any
//! buffer is allocated for them), decodes the request header and body, and queues the
//! response in request order on the shared connection writer (`server::connection`), which
//! also bounds the requests read ahead (`in_flight_requests_max`).
//!
//! Bad input, Kafka's way: an oversized or truncated frame, an api key or version this
//! listener does not serve (see [`handlers::SUPPORTED`]) or a body that does not decode closes
//! the connection with a log line; nothing a client sends panics the broker. ApiVersions at a
//! version above the newest served gets KIP-511's answer: version 0 with UNSUPPORTED_VERSION
//! and the served ranges, so the client can retry with one it shares.

mod errors;
mod fetch;
pub mod groups;
pub mod handlers;
mod security;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

pub use errors::kafka_code;

use crate::security::Session;
use crate::server::connection::{
    next_frame, serve_with, unmuted, BoxRead, Outgoing, Replies, Stream,
};
use crate::server::limits::{Frame, FrameReader, PeerSlot};
use crate::server::BrokerState;

/// Serves one Kafka client connection.
pub(crate) async fn serve(
    state: Arc<BrokerState>,
    socket: Stream,
    peer: SocketAddr,
    slot: PeerSlot,
) {
    let _open = state.metrics.connection("kafka");
    serve_with(
        state,
        socket,
        peer,
        slot,
        crate::tls::Listener::Kafka,
        |state, frames, queue, session| async move {
            read_loop(&state, frames, queue, peer, session).await
        },
    )
    .await
}

async fn read_loop(
    state: &Arc<BrokerState>,
    mut frames: FrameReader<BoxRead>,
    queue: Replies,
    peer: SocketAddr,
    mut session: Session,
) {
    // Kafka frames: a 4-byte big-endian size, then the request; the size is checked against
    // `max_frame_bytes` and the frame's memory granted before its body is read.
    loop {
        if !unmuted(state, &session).await {
            return;
        }
        let Some(next) = next_frame(state, frames.next(), peer).await else {
            return;
        };
        let (frame, grant) = match next {
            Ok(Frame { bytes, grant }) => (bytes, grant),
            Err(e) => {
                tracing::warn!(%peer, "bad Kafka request frame, closing the connection: {e}");
                return;
            }
        };
        // A fetch answered meanwhile may have muted the connection after this frame was read.
        if !unmuted(state, &session).await {
            return;
        }
        let started = start(state, frame, peer, &mut session).await;
        drop(grant);
        match started {
            Ok(outgoing) => {
                if queue.send(outgoing).await.is_err() {
                    return; // the writer failed: the peer is gone
                }
                if session.failed() {
                    return; // authentication failed: answered, then the connection closes
                }
            }
            Err(reason) => {
                tracing::warn!(%peer, "Kafka request refused, closing the connection: {reason}");
                return;
            }
        }
    }
}

/// Decodes and starts one request; `Err` (why) closes the connection.
async fn start(
    state: &Arc<BrokerState>,
    mut frame: Bytes,
    peer: SocketAddr,
    session: &mut Session,
) -> Result<Outgoing, String> {
    if session.awaits_bare_token() {
        // SaslHandshake v0: this frame is a SASL token, answered by a bare size-prefixed
        // token; a refusal closes the connection (there is no frame to carry an error).
        let token = session
            .authenticate(state, frame)
            .await
            .map_err(|(_, e)| format!("SASL authentication failed: {e}"))?;
        let size = Bytes::copy_from_slice(&(token.len() as u32).to_be_bytes());
        return Ok(futures::future::ready(Some(vec![size, token])).boxed());
    }
    if frame.len() < 8 {
        return Err(format!("a {}-byte request has no header", frame.len()));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(api_key).map_err(|_| format!("unknown api key {api_key}"))?;
    let Some((min, max)) = handlers::supported(api) else {
        // Transactions and SASL get an answer with UNSUPPORTED_VERSION if the request decodes;
        // anything else closes the connection.
        let answer = RequestHeader::decode(&mut frame, api.request_header_version(version))
            .ok()
            .and_then(|_| RequestKind::decode(api, &mut frame, version).ok())
            .and_then(handlers::unserved)
            .ok_or_else(|| format!("{api:?} (key {api_key}) is not served"))?;
        tracing::debug!(?api, version, %peer, "Kafka request for an API not served: UNSUPPORTED_VERSION");
        let response = handlers::Response::Message(answer);
        let header_version = api.response_header_version(version);
        return Ok(futures::future::ready(encode(
            correlation_id,
            &response,
            version,
            header_version,
        ))
        .boxed());
    };
    if api == ApiKey::ApiVersions && version > max {
        // KIP-511: answer in version 0 (whose layout every client reads) with the ranges.
        let response = handlers::Response::Message(ResponseKind::ApiVersions(
            handlers::api_versions(kafka_code(rill_protocol::ErrorCode::UNSUPPORTED_VERSION)),
        ));
        return Ok(futures::future::ready(encode(correlation_id, &response, 0, 0)).boxed());
    }
    if version < min || version > max {
        return Err(format!(
            "{api:?} version {version} is not served (versions {min}-{max})"
        ));
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| format!("{api:?} v{version}: undecodable request header: {e}"))?;
    let request = RequestKind::decode(api, &mut frame, version)
        .map_err(|e| format!("{api:?} v{version}: undecodable request body: {e}"))?;
    if !session.may_serve()
        && !matches!(
            api,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        )
    {
        // Kafka closes such a connection (IllegalSaslStateException).
        return Err(format!(
            "{api:?} before SASL authentication on a listener that requires it"
        ));
    }
    tracing::trace!(?api, version, correlation_id, client_id = ?header.client_id, "Kafka request");
    session.set_client_id(header.client_id.as_ref().map_or("", |c| c.as_str()));
    let client = groups::Client {
        client_id: header
            .client_id
            .as_ref()
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        host: format!("/{}", peer.ip()),
    };
    let in_flight = state.metrics.request_started("kafka");
    let reply = handlers::start(state, request, version, &client, session)
        .await
        .map_err(|e| format!("{api:?} v{version}: {e}"))?;
    let header_version = api.response_header_version(version);
    let (started, metrics) = (std::time::Instant::now(), state.metrics.clone());
    Ok(async move {
        let response = reply.await;
        drop(in_flight);
        // Kafka answers carry their errors per partition or group (counted by the operations).
        metrics.request(
            "kafka",
            api_name(api),
            rill_protocol::ErrorCode::NONE,
            started.elapsed(),
        );
        encode(correlation_id, &response?, version, header_version)
    }
    .boxed())
}

/// The response frame's chunks: size, header, body (a fetch's records as their own chunks).
/// `None` (logged) if the body cannot be encoded at the request's version, which would be a
/// bug here: the client then times out and retries.
fn encode(
    correlation_id: i32,
    response: &handlers::Response,
    version: i16,
    header_version: i16,
) -> Option<Vec<Bytes>> {
    let mut buf = BytesMut::with_capacity(256);
    buf.extend_from_slice(&[0; 4]);
    let encoded = ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, header_version)
        .and_then(|()| match response {
            handlers::Response::Message(message) => {
                message.encode(&mut buf, version)?;
                Ok(Vec::new())
            }
            handlers::Response::Fetch { response, records } => {
                fetch::encode_chunks(response, records, version)
            }
        });
    let body = match encoded {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(version, "encoding a Kafka response failed: {e}");
            return None;
        }
    };
    let size = buf.len() - 4 + body.iter().map(Bytes::len).sum::<usize>();
    buf[..4].copy_from_slice(&(size as u32).to_be_bytes());
    let mut chunks = Vec::with_capacity(body.len() + 1);
    chunks.push(buf.freeze());
    chunks.extend(body);
    Some(chunks)
}

/// The name of a served Kafka api for metrics labels (a fixed set: `handlers::SUPPORTED`).
fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        ApiKey::CreateAcls => "CreateAcls",
        ApiKey::DescribeAcls => "DescribeAcls",
        ApiKey::DeleteAcls => "DeleteAcls",
        ApiKey::DescribeUserScramCredentials => "DescribeUserScramCredentials",
        ApiKey::AlterUserScramCredentials => "AlterUserScramCredentials",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::MetadataRequest;

    #[test]
    fn a_claimed_array_length_beyond_the_frame_is_an_error_not_an_allocation() {
        // Metadata v1: topics array claims 2^31-1 entries, then nothing follows.
        let mut body = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(MetadataRequest::decode(&mut body, 1).is_err());
        // Compact (v9+): an unsigned varint of 2^32-1.
        let mut body = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(MetadataRequest::decode(&mut body, 9).is_err());
    }

    #[test]
    fn every_served_api_has_a_handler_and_valid_versions() {
        for (api, min, max) in handlers::SUPPORTED {
            let valid = api.valid_versions();
            assert!(
                *min >= valid.min && *max <= valid.max && min <= max,
                "{api:?} {min}-{max} outside {valid:?}"
            );
        }
    }

    #[test]
    fn api_versions_encodes_at_every_served_version() {
        let response =
            handlers::Response::Message(ResponseKind::ApiVersions(handlers::api_versions(0)));
        for version in 0..=3 {
            let frame = encode(7, &response, version, 0).expect("encodes");
            assert_eq!(&frame[0][4..8], &7i32.to_be_bytes());
        }
    }
}
