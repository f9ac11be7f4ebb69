//! ListOffsets, on the partition leader: the earliest offset (log start), the latest (the high
//! watermark: consumers never see past it), or the first offset at or after a timestamp (below
//! the high watermark).

use std::sync::Arc;

use rill_protocol::api::{
    ListOffsetsPartitionResponse, ListOffsetsRequest, ListOffsetsResponse,
    ListOffsetsTopicResponse, OffsetSpec,
};
use rill_protocol::ErrorCode;

use super::leader_replica;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::server::BrokerState;

/// Each topic needs `Describe`.
pub async fn list_offsets(
    state: &Arc<BrokerState>,
    session: &Session,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let refused = session.refused_topics(
        state,
        Operation::Describe,
        request.topics.iter().map(|t| t.name.as_str()),
    );
    let metadata = state.controller.metadata();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let mut response = ListOffsetsPartitionResponse {
                partition: p.partition,
                error_code: ErrorCode::NONE,
                timestamp: -1,
                offset: None,
            };
            let replica = if refused.contains(&topic.name) {
                Err(ErrorCode::TOPIC_AUTHORIZATION_FAILED)
            } else {
                leader_replica(state, &metadata, &topic.name, p.partition)
            };
            match replica {
                Err(code) => response.error_code = code,
                Ok(replica) => {
                    let log = replica.log.clone();
                    let hw = log.high_watermark();
                    // A timestamp lookup may read segment data: keep it off the async threads.
                    let found = tokio::task::spawn_blocking(move || {
                        log.with_log(|l| match p.spec {
                            OffsetSpec::Earliest => Ok(Some((l.log_start_offset(), -1))),
                            OffsetSpec::Latest => Ok(Some((hw, -1))),
                            OffsetSpec::Timestamp(ts) => Ok(l
                                .offset_for_timestamp(ts)?
                                .filter(|(offset, _)| *offset < hw)),
                        })
                    })
                    .await;
                    match found {
                        Ok(Ok(Some((offset, timestamp)))) => {
                            response.offset = Some(offset);
                            response.timestamp = timestamp;
                        }
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => response.error_code = e.error_code(),
                        Err(_) => response.error_code = ErrorCode::UNKNOWN_SERVER_ERROR,
                    }
                }
            }
            partitions.push(response);
        }
        topics.push(ListOffsetsTopicResponse {
            name: topic.name,
            partitions,
        });
    }
    ListOffsetsResponse { topics }
}
