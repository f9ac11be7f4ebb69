//! Metadata: brokers (and which are fenced), the active controller and the voters, and topics
//! with their partitions' leaders, epochs, replicas and ISR, as applied on this broker. Unknown topics get UNKNOWN_TOPIC_OR_PARTITION, or are created when
//! `auto_create_topics` is on.

use std::sync::Arc;

use rill_protocol::api::{
    BrokerMetadata, MetadataRequest, MetadataResponse, PartitionMetadata, TopicMetadata,
};
use rill_protocol::ErrorCode;

use super::create_topic;
use crate::controller::TopicInfo;
use crate::security::acl::{Operation, ResourceType};
use crate::security::Session;
use crate::server::BrokerState;

/// The cluster as applied here, or the request-level error (CLUSTER_NOT_READY).
pub async fn metadata(
    state: &Arc<BrokerState>,
    session: &Session,
    request: MetadataRequest,
) -> Result<MetadataResponse, ErrorCode> {
    metadata_of(state, session, request, true).await
}

/// [`metadata`]; unknown named topics are created only if `auto_create` too (a Kafka client
/// may ask not to). Topics need `Describe`: a listing leaves out the others, a named one
/// the session may not describe is TOPIC_AUTHORIZATION_FAILED (and not auto-created).
pub async fn metadata_of(
    state: &Arc<BrokerState>,
    session: &Session,
    request: MetadataRequest,
    auto_create: bool,
) -> Result<MetadataResponse, ErrorCode> {
    // Until this broker has caught up and registered, its metadata may be stale (a restarted
    // broker replays its own old log first): clients ask another broker. The same without
    // the leadership lease (no heartbeat accepted lately): this broker may be cut off from the
    // controller and its view of the leaders stale. Without a quorum no broker has a lease.
    if !state.ready.load(std::sync::atomic::Ordering::Acquire) || !state.lease.is_valid() {
        return Err(ErrorCode::CLUSTER_NOT_READY);
    }
    let refused = match &request.topics {
        Some(names) => {
            session.refused_topics(state, Operation::Describe, names.iter().map(String::as_str))
        }
        None => Default::default(),
    };
    if let (Some(names), true) = (
        &request.topics,
        state.config.auto_create_topics && auto_create,
    ) {
        let metadata = state.controller.metadata();
        for name in names
            .iter()
            .filter(|n| !metadata.topics.contains_key(*n) && !refused.contains(*n))
        {
            let (code, message) = create_topic(
                state,
                session,
                name,
                state.config.default_partitions,
                state.config.default_replication_factor,
                Default::default(),
                false,
            )
            .await;
            if code != ErrorCode::NONE && code != ErrorCode::TOPIC_ALREADY_EXISTS {
                tracing::warn!(topic = %name, ?code, ?message, "auto-creating topic failed");
            }
        }
    }
    let metadata = state.controller.metadata();
    let brokers = metadata
        .brokers
        .values()
        .map(|b| BrokerMetadata {
            node_id: b.node_id as u32,
            host: b.host.clone(),
            port: b.port,
            fenced: b.fenced,
        })
        .collect();
    let topics = match request.topics {
        None => metadata
            .topics
            .values()
            .filter(|t| session.allowed(state, Operation::Describe, ResourceType::Topic, &t.name))
            .map(describe)
            .collect(),
        Some(names) => names
            .into_iter()
            .map(|name| match metadata.topics.get(&name) {
                _ if refused.contains(&name) => TopicMetadata {
                    error_code: ErrorCode::TOPIC_AUTHORIZATION_FAILED,
                    name,
                    partitions: Vec::new(),
                },
                Some(topic) => describe(topic),
                None => TopicMetadata {
                    error_code: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                    name,
                    partitions: Vec::new(),
                },
            })
            .collect(),
    };
    let response = MetadataResponse {
        cluster_id: "rill".into(),
        controller_id: state.controller.leader().map(|l| l as u32),
        voters: state
            .controller
            .voters()
            .into_iter()
            .map(|v| v as u32)
            .collect(),
        brokers,
        topics,
    };
    Ok(response)
}

fn describe(topic: &TopicInfo) -> TopicMetadata {
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| PartitionMetadata {
            error_code: if p.leader.is_some() {
                ErrorCode::NONE
            } else {
                ErrorCode::LEADER_NOT_AVAILABLE
            },
            partition: i as u32,
            leader: p.leader.map(|l| l as u32),
            leader_epoch: p.leader_epoch,
            replicas: p.replicas.iter().map(|r| *r as u32).collect(),
            isr: p.isr.iter().map(|r| *r as u32).collect(),
        })
        .collect();
    TopicMetadata {
        error_code: ErrorCode::NONE,
        name: topic.name.clone(),
        partitions,
    }
}
