//! DeleteTopics: removes the topic from the metadata log, then deletes the local logs (data
//! removed from disk) before answering.

use std::sync::Arc;

use rill_protocol::api::{DeleteTopicsRequest, DeleteTopicsResponse, TopicResult};
use rill_protocol::ErrorCode;

use crate::controller::{Command, CommandResult};
use crate::security::acl::{Operation, ResourceType};
use crate::security::Session;
use crate::server::BrokerState;

/// Each topic needs `Delete` on it.
pub async fn delete_topics(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let mut results = Vec::with_capacity(request.names.len());
    for name in request.names {
        if !session.authorize(state, Operation::Delete, ResourceType::Topic, &name) {
            results.push(TopicResult {
                error_message: Some(format!("{} may not delete topic {name}", session.principal)),
                name,
                error_code: ErrorCode::TOPIC_AUTHORIZATION_FAILED,
            });
            continue;
        }
        let (error_code, error_message) = match state
            .controller
            .propose(Command::DeleteTopic { name: name.clone() })
            .await
        {
            Ok(CommandResult::Ok) => match state
                .reconcile(std::collections::BTreeSet::from([name.clone()]))
                .await
            {
                Ok(()) => {
                    tracing::info!(topic = %name, "deleted topic");
                    (ErrorCode::NONE, None)
                }
                Err(e) => (
                    e.error_code(),
                    Some(format!(
                        "topic deleted but its local logs could not be removed: {e}"
                    )),
                ),
            },
            Ok(CommandResult::UnknownTopic) => (
                ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                Some(format!("topic {name} does not exist")),
            ),
            Ok(other) => (ErrorCode::INVALID_REQUEST, Some(format!("{other:?}"))),
            Err(e) => (e.error_code(), Some(e.to_string())),
        };
        results.push(TopicResult {
            name,
            error_code,
            error_message,
        });
    }
    DeleteTopicsResponse { topics: results }
}
