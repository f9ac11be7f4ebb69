//! CreateTopics: validates name, partition count, replication factor (against registered
//! brokers) and configs, then appends the topic to the metadata log and creates the local logs
//! before answering.

use std::sync::Arc;

use rill_protocol::api::{CreateTopicsRequest, CreateTopicsResponse, TopicResult};

use super::create_topic;
use crate::security::Session;
use crate::server::BrokerState;

/// Each topic needs `Create` on the cluster or on the topic.
pub async fn create_topics(
    state: &Arc<BrokerState>,
    session: &Session,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let configs = topic
            .configs
            .into_iter()
            .map(|c| (c.key, c.value))
            .collect();
        let (error_code, error_message) = create_topic(
            state,
            session,
            &topic.name,
            topic.partitions,
            topic.replication_factor,
            configs,
            request.validate_only,
        )
        .await;
        results.push(TopicResult {
            name: topic.name,
            error_code,
            error_message,
        });
    }
    CreateTopicsResponse { topics: results }
}
