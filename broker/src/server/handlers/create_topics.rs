//! CreateTopics: validates name, partition count, replication factor (against registered
//! brokers) and configs, then appends the topic to the metadata log and creates the local logs
//! before answering.

use std::sync::Arc;

use rill_protocol::api::{CreateTopicsRequest, CreateTopicsResponse, ResponseBody, TopicResult};

use super::{create_topic, reply, Pending};
use crate::server::BrokerState;

pub(super) async fn handle(state: &Arc<BrokerState>, request: CreateTopicsRequest) -> Pending {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let configs = topic
            .configs
            .into_iter()
            .map(|c| (c.key, c.value))
            .collect();
        let (error_code, error_message) = create_topic(
            state,
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
    reply(ResponseBody::CreateTopics(CreateTopicsResponse {
        topics: results,
    }))
}
