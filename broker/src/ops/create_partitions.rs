//! CreatePartitions: grows a topic to a new partition count through the controller (existing
//! partitions and their data are untouched; new ones are placed over the live brokers with the
//! topic's replication factor), then creates the local logs before answering.

use std::sync::Arc;

use rill_protocol::api::{CreatePartitionsRequest, CreatePartitionsResponse, TopicResult};
use rill_protocol::ErrorCode;

use super::PARTITIONS_MAX;
use crate::controller::{metadata::assign_replicas, Command, CommandResult};
use crate::security::acl::{Operation, ResourceType};
use crate::security::Session;
use crate::server::BrokerState;

/// Each topic needs `Alter` on it.
pub async fn create_partitions(
    state: &Arc<BrokerState>,
    session: &Session,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let (error_code, error_message) =
            if !session.authorize(state, Operation::Alter, ResourceType::Topic, &topic.name) {
                (
                    ErrorCode::TOPIC_AUTHORIZATION_FAILED,
                    Some(format!(
                        "{} may not alter topic {}",
                        session.principal, topic.name
                    )),
                )
            } else {
                grow(state, &topic.name, topic.count, request.validate_only).await
            };
        results.push(TopicResult {
            name: topic.name,
            error_code,
            error_message,
        });
    }
    if let Err(e) = state.reconcile(Default::default()).await {
        tracing::warn!("creating local logs for new partitions failed: {e}");
    }
    CreatePartitionsResponse { topics: results }
}

async fn grow(
    state: &Arc<BrokerState>,
    name: &str,
    count: u32,
    validate_only: bool,
) -> (ErrorCode, Option<String>) {
    let metadata = state.controller.metadata();
    let Some(topic) = metadata.topics.get(name) else {
        return (
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
            Some(format!("topic {name} does not exist")),
        );
    };
    let current = topic.partitions.len() as u32;
    if count <= current || count > PARTITIONS_MAX {
        return (
            ErrorCode::INVALID_PARTITIONS,
            Some(format!(
                "topic {name} has {current} partitions; the new count must be more, at most {PARTITIONS_MAX}"
            )),
        );
    }
    if let Err(refused) = super::check_partition_limit(state, &metadata, count - current) {
        return refused;
    }
    let rf = topic.partitions.first().map_or(1, |p| p.replicas.len());
    let brokers = metadata.alive();
    if rf > brokers.len() {
        return (
            ErrorCode::INVALID_REPLICATION_FACTOR,
            Some(format!(
                "the topic's replication factor {rf} exceeds the {} live broker(s)",
                brokers.len()
            )),
        );
    }
    if validate_only {
        return (ErrorCode::NONE, None);
    }
    let assignments = assign_replicas(&brokers, current as usize, count - current, rf as u16);
    match state
        .controller
        .propose(Command::CreatePartitions {
            name: name.to_string(),
            assignments,
        })
        .await
    {
        Ok(CommandResult::Ok) => {
            tracing::info!(topic = name, from = current, to = count, "added partitions");
            (ErrorCode::NONE, None)
        }
        Ok(CommandResult::UnknownTopic) => (
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
            Some(format!("topic {name} does not exist")),
        ),
        Ok(other) => (ErrorCode::INVALID_REQUEST, Some(format!("{other:?}"))),
        Err(e) => (e.error_code(), Some(e.to_string())),
    }
}
