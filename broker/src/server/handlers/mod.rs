//! One handler per API. [`start`] decodes a request body and runs its handler; a handler does
//! its order-sensitive work before returning (so requests on one connection take effect in
//! order) and returns the rest as a [`Pending`] response.

mod api_versions;
mod create_partitions;
mod create_topics;
mod delete_topics;
mod elect_leaders;
mod fetch;
mod groups;
mod init_producer_id;

pub(crate) use groups::persist as persist_group;
mod list_offsets;
mod metadata;
mod produce;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use rill_protocol::api::{RequestBody, ResponseBody};
use rill_protocol::frame::RequestFrame;
use rill_protocol::ErrorCode;

use super::BrokerState;
use crate::controller::{metadata::assign_replicas, Command, CommandResult, MetadataState};
use crate::log::TopicPartition;
use crate::replica::Replica;

/// A response still being produced: `None` means "send nothing" (produce with acks = 0);
/// otherwise the request-level error code and the body's chunks.
pub type Pending = BoxFuture<'static, Option<(ErrorCode, Vec<Bytes>)>>;

/// A response with a request-level error and an empty body.
pub fn error_reply(code: ErrorCode) -> Pending {
    futures::future::ready(Some((code, Vec::new()))).boxed()
}

/// A complete response body.
fn reply(body: ResponseBody) -> Pending {
    futures::future::ready(Some((ErrorCode::NONE, vec![body.encode_to_bytes()]))).boxed()
}

/// Decodes and starts one request.
pub async fn start(state: &Arc<BrokerState>, frame: RequestFrame, peer: SocketAddr) -> Pending {
    let header = frame.header;
    let request = match RequestBody::decode(header.api_key, header.api_version, frame.body) {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(%peer, api_key = header.api_key, api_version = header.api_version, client_id = %header.client_id, "rejected request: {e}");
            return error_reply(e.error_code());
        }
    };
    match request {
        RequestBody::ApiVersions(_) => api_versions::handle(),
        RequestBody::Metadata(request) => metadata::handle(state, request).await,
        RequestBody::CreateTopics(request) => create_topics::handle(state, request).await,
        RequestBody::DeleteTopics(request) => delete_topics::handle(state, request).await,
        RequestBody::Produce(request) => produce::handle(state, request).await,
        RequestBody::Fetch(request) => fetch::handle(state, request),
        RequestBody::ListOffsets(request) => list_offsets::handle(state, request).await,
        RequestBody::CreatePartitions(request) => create_partitions::handle(state, request).await,
        RequestBody::ElectLeaders(request) => elect_leaders::handle(state, request).await,
        RequestBody::FindCoordinator(request) => groups::find_coordinator(state, request),
        RequestBody::ConsumerGroupHeartbeat(request) => groups::heartbeat(state, request).await,
        RequestBody::OffsetCommit(request) => groups::offset_commit(state, request).await,
        RequestBody::OffsetFetch(request) => groups::offset_fetch(state, request).await,
        RequestBody::ListGroups(_) => groups::list_groups(state),
        RequestBody::DescribeGroups(request) => groups::describe_groups(state, request).await,
        RequestBody::DeleteGroups(request) => groups::delete_groups(state, request).await,
        RequestBody::InitProducerId(request) => init_producer_id::handle(state, request).await,
    }
}

/// The local replica of a partition, or the error code a client should see. Callers check
/// its role themselves (the produce and follower-fetch paths do it with their other checks).
fn local_replica(
    state: &BrokerState,
    metadata: &MetadataState,
    topic: &str,
    partition: u32,
) -> Result<Arc<Replica>, ErrorCode> {
    let info = metadata
        .topics
        .get(topic)
        .and_then(|t| t.partitions.get(partition as usize))
        .ok_or(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION)?;
    // Metadata is applied before the local replica exists: briefly, it may be missing.
    let replica = state
        .replicas
        .get(&TopicPartition::new(topic, partition))
        .ok_or(match info.leader {
            Some(_) => ErrorCode::NOT_LEADER,
            None => ErrorCode::LEADER_NOT_AVAILABLE,
        })?;
    Ok(replica)
}

/// The local replica of a partition this broker leads.
fn leader_replica(
    state: &BrokerState,
    metadata: &MetadataState,
    topic: &str,
    partition: u32,
) -> Result<Arc<Replica>, ErrorCode> {
    let replica = local_replica(state, metadata, topic, partition)?;
    replica.check_leader(None)?;
    Ok(replica)
}

/// Topic names: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..` (they become directory names).
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!(
            "topic name must be 1-249 characters, got {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be '.' or '..'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name contains {c:?}; use only [a-zA-Z0-9._-]"
        ));
    }
    Ok(())
}

/// Most partitions a topic may have.
pub const PARTITIONS_MAX: u32 = 10_000;

/// Validates and creates a topic through the controller, then creates the local logs.
pub(crate) async fn create_topic(
    state: &Arc<BrokerState>,
    name: &str,
    partitions: u32,
    replication_factor: u16,
    configs: std::collections::BTreeMap<String, String>,
    validate_only: bool,
) -> (ErrorCode, Option<String>) {
    if let Err(message) = validate_topic_name(name) {
        return (ErrorCode::INVALID_TOPIC, Some(message));
    }
    if partitions == 0 || partitions > PARTITIONS_MAX {
        return (
            ErrorCode::INVALID_PARTITIONS,
            Some(format!(
                "partitions must be 1-{PARTITIONS_MAX}, got {partitions}"
            )),
        );
    }
    if let Err(e) = crate::config::topic_log_config(state.logs.default_config(), &configs) {
        return (ErrorCode::INVALID_CONFIG, Some(e.to_string()));
    }
    let metadata = state.controller.metadata();
    if metadata.topics.contains_key(name) {
        return (
            ErrorCode::TOPIC_ALREADY_EXISTS,
            Some(format!("topic {name} already exists")),
        );
    }
    let brokers: Vec<u64> = metadata.alive();
    if brokers.is_empty() {
        return (
            ErrorCode::CLUSTER_NOT_READY,
            Some("no broker has registered yet; retry shortly".into()),
        );
    }
    if replication_factor == 0 || replication_factor as usize > brokers.len() {
        return (
            ErrorCode::INVALID_REPLICATION_FACTOR,
            Some(format!(
                "replication factor {replication_factor} with {} live broker(s)",
                brokers.len()
            )),
        );
    }
    if validate_only {
        return (ErrorCode::NONE, None);
    }
    let assignments = assign_replicas(
        &brokers,
        metadata.topics.len(),
        partitions,
        replication_factor,
    );
    let mut configs = configs;
    if state.config.unclean_leader_election {
        configs
            .entry("unclean.leader.election.enable".into())
            .or_insert_with(|| "true".into());
    }
    match state
        .controller
        .propose(Command::CreateTopic {
            name: name.to_string(),
            assignments,
            configs,
        })
        .await
    {
        Ok(CommandResult::Ok) => {}
        Ok(CommandResult::TopicAlreadyExists) => {
            return (
                ErrorCode::TOPIC_ALREADY_EXISTS,
                Some(format!("topic {name} already exists")),
            )
        }
        Ok(other) => return (ErrorCode::INVALID_REQUEST, Some(format!("{other:?}"))),
        Err(e) => return (e.error_code(), Some(e.to_string())),
    }
    if let Err(e) = state.reconcile(Default::default()).await {
        return (
            e.error_code(),
            Some(format!(
                "topic created but its logs could not be created here: {e}"
            )),
        );
    }
    tracing::info!(
        topic = name,
        partitions,
        replication_factor,
        "created topic"
    );
    (ErrorCode::NONE, None)
}
