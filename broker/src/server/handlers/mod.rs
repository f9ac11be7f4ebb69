//! The native protocol's door. [`start`] decodes a request body, calls the broker operation
//! (`crate::ops`) and encodes what it returns; leader election still has its handler here.
//! Each does its order-sensitive work before returning (so requests on one connection take
//! effect in order) and returns the rest as a [`Pending`] response.

mod api_versions;
mod elect_leaders;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use rill_protocol::api::{
    RequestBody, ResponseBody, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use rill_protocol::frame::RequestFrame;
use rill_protocol::ErrorCode;

use super::connection::Door;
use super::BrokerState;
use crate::ops;
use crate::security::Session;

/// A response still being produced: `None` means "send nothing" (produce with acks = 0);
/// otherwise the request-level error code and the body's chunks.
pub type Pending = BoxFuture<'static, Option<(ErrorCode, Vec<Bytes>)>>;

/// A response with a request-level error and an empty body.
pub fn error_reply(code: ErrorCode) -> Pending {
    futures::future::ready(Some((code, Vec::new()))).boxed()
}

/// A complete response body.
fn reply(body: ResponseBody) -> Pending {
    reply_with(ErrorCode::NONE, body)
}

/// A complete response body with a request-level error code.
fn reply_with(code: ErrorCode, body: ResponseBody) -> Pending {
    futures::future::ready(Some((code, vec![body.encode_to_bytes()]))).boxed()
}

/// Decodes and starts one request that came in on `door`, from `session`.
pub async fn start(
    state: &Arc<BrokerState>,
    frame: RequestFrame,
    peer: SocketAddr,
    door: Door,
    session: &mut Session,
) -> Pending {
    let header = frame.header;
    // Produce and Fetch answer in the version asked (v1 adds the throttle time).
    let version = header.api_version;
    let request = match RequestBody::decode(header.api_key, header.api_version, frame.body) {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(%peer, api_key = header.api_key, api_version = header.api_version, client_id = %header.client_id, "rejected request: {e}");
            return error_reply(e.error_code());
        }
    };
    session.set_client_id(&header.client_id);
    if !session.may_serve()
        && !matches!(
            request,
            RequestBody::ApiVersions(_)
                | RequestBody::SaslHandshake(_)
                | RequestBody::SaslAuthenticate(_)
        )
    {
        tracing::warn!(%peer, api = request.api_key().name(), client_id = %header.client_id, "request before SASL authentication on a listener that requires it; closing the connection");
        session.refuse();
        return error_reply(ErrorCode::ILLEGAL_SASL_STATE);
    }
    match request {
        RequestBody::ApiVersions(_) => api_versions::handle(),
        RequestBody::SaslHandshake(request) => {
            let (error_code, mechanisms) = session.handshake(state, &request.mechanism);
            reply(ResponseBody::SaslHandshake(SaslHandshakeResponse {
                error_code,
                mechanisms,
            }))
        }
        RequestBody::SaslAuthenticate(request) => {
            match session.authenticate(state, request.auth_bytes).await {
                Ok(auth_bytes) => reply(ResponseBody::SaslAuthenticate(SaslAuthenticateResponse {
                    error_code: ErrorCode::NONE,
                    error_message: None,
                    auth_bytes,
                })),
                // The refusal travels in the body (with its reason), the header says success.
                Err((error_code, message)) => {
                    reply(ResponseBody::SaslAuthenticate(SaslAuthenticateResponse {
                        error_code,
                        error_message: Some(message),
                        auth_bytes: Bytes::new(),
                    }))
                }
            }
        }
        RequestBody::AlterUsers(request) => reply(ResponseBody::AlterUsers(
            ops::users::alter_users(state, session, request).await,
        )),
        RequestBody::DescribeUsers(request) => reply(ResponseBody::DescribeUsers(
            ops::users::describe_users(state, session, request),
        )),
        RequestBody::CreateAcls(request) => reply(ResponseBody::CreateAcls(
            ops::acls::create_acls(state, session, request).await,
        )),
        RequestBody::DescribeAcls(request) => reply(ResponseBody::DescribeAcls(
            ops::acls::describe_acls(state, session, request),
        )),
        RequestBody::DeleteAcls(request) => reply(ResponseBody::DeleteAcls(
            ops::acls::delete_acls(state, session, request).await,
        )),
        RequestBody::AlterClientQuotas(request) => reply(ResponseBody::AlterClientQuotas(
            ops::quotas::alter_client_quotas(state, session, request, false).await,
        )),
        RequestBody::DescribeClientQuotas(_) => reply(ResponseBody::DescribeClientQuotas(
            ops::quotas::describe_client_quotas(state, session),
        )),
        RequestBody::Metadata(request) => {
            match ops::metadata::metadata(state, session, request).await {
                Ok(response) => reply(ResponseBody::Metadata(response)),
                Err(code) => error_reply(code),
            }
        }
        RequestBody::CreateTopics(request) => reply(ResponseBody::CreateTopics(
            ops::create_topics::create_topics(state, session, request).await,
        )),
        RequestBody::DeleteTopics(request) => reply(ResponseBody::DeleteTopics(
            ops::delete_topics::delete_topics(state, session, request).await,
        )),
        RequestBody::Produce(request) => {
            let acked = ops::produce::produce(state, session, request).await;
            async move {
                let response = acked.await?;
                Some((ErrorCode::NONE, vec![response.encode_at(version)]))
            }
            .boxed()
        }
        RequestBody::Fetch(request)
            if request.replica_id.is_some() && door != Door::InterBroker =>
        {
            // A follower fetch reads above the high watermark and moves it and the ISR: only
            // other brokers send one, on the inter-broker listener. On a client listener it
            // is refused, whatever it claims (docs/PROTOCOL.md "Fetch").
            tracing::warn!(%peer, replica_id = ?request.replica_id, client_id = %header.client_id, "refused a follower fetch on the client listener: follower fetches are served only on the inter-broker listener (replication_listen)");
            error_reply(ErrorCode::CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestBody::Fetch(request) => {
            let fetched = ops::fetch::fetch(state, session, request);
            async move {
                Some(match fetched.await {
                    Some(response) => (ErrorCode::NONE, response.encode_chunks_at(version)),
                    None => (ErrorCode::UNKNOWN_SERVER_ERROR, Vec::new()),
                })
            }
            .boxed()
        }
        RequestBody::ListOffsets(request) => reply(ResponseBody::ListOffsets(
            ops::list_offsets::list_offsets(state, session, request).await,
        )),
        RequestBody::CreatePartitions(request) => reply(ResponseBody::CreatePartitions(
            ops::create_partitions::create_partitions(state, session, request).await,
        )),
        RequestBody::ElectLeaders(request) => elect_leaders::handle(state, session, request).await,
        RequestBody::DescribeLogs(request) => reply(ResponseBody::DescribeLogs(
            ops::describe_logs::describe_logs(state, session, request).await,
        )),
        RequestBody::FindCoordinator(request) => reply(ResponseBody::FindCoordinator(
            ops::groups::find_coordinator(state, session, request),
        )),
        RequestBody::ConsumerGroupHeartbeat(request) => {
            reply(ResponseBody::ConsumerGroupHeartbeat(
                ops::groups::heartbeat(state, session, request).await,
            ))
        }
        RequestBody::OffsetCommit(request) => reply(ResponseBody::OffsetCommit(
            ops::groups::offset_commit(state, session, request).await,
        )),
        RequestBody::OffsetFetch(request) => reply(ResponseBody::OffsetFetch(
            ops::groups::offset_fetch(state, session, request).await,
        )),
        RequestBody::ListGroups(_) => reply(ResponseBody::ListGroups(ops::groups::list_groups(
            state, session,
        ))),
        RequestBody::DescribeGroups(request) => reply(ResponseBody::DescribeGroups(
            ops::groups::describe_groups(state, session, request).await,
        )),
        RequestBody::DeleteGroups(request) => reply(ResponseBody::DeleteGroups(
            ops::groups::delete_groups(state, session, request).await,
        )),
        RequestBody::InitProducerId(request) => reply(ResponseBody::InitProducerId(
            ops::init_producer_id::init_producer_id(state, session, request).await,
        )),
    }
}
