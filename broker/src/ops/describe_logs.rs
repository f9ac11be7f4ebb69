//! DescribeLogs: this broker's local partition replicas with their role, leader epoch, log
//! start, high watermark, log end, size on disk and segment count (`rill topic describe` asks
//! each partition's leader; the admin HTTP API shows the same figures).

use std::sync::Arc;

use rill_protocol::api::{DescribeLogsRequest, DescribeLogsResponse, ReplicaLog};

use crate::security::acl::{Operation, ResourceType};
use crate::security::Session;
use crate::server::BrokerState;

/// Only replicas of topics the session may `Describe` are listed.
pub async fn describe_logs(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DescribeLogsRequest,
) -> DescribeLogsResponse {
    let mut replicas = state.replicas.local_replicas(request.topics.as_deref());
    replicas.retain(|(tp, ..)| {
        session.allowed(state, Operation::Describe, ResourceType::Topic, &tp.topic)
    });
    // Sizes take each log's lock, which an fsync may hold: off the async threads.
    let described = tokio::task::spawn_blocking(move || {
        replicas
            .into_iter()
            .map(|(tp, replica, leader, leader_epoch)| {
                let (log_start_offset, size_bytes, segments) = replica
                    .log
                    .with_log(|l| {
                        Ok((
                            l.log_start_offset(),
                            l.size_bytes(),
                            u32::try_from(l.segment_count()).unwrap_or(u32::MAX),
                        ))
                    })
                    .unwrap_or((0, 0, 0));
                ReplicaLog {
                    topic: tp.topic,
                    partition: tp.partition,
                    leader,
                    leader_epoch,
                    log_start_offset,
                    high_watermark: replica.log.high_watermark(),
                    log_end_offset: replica.log.log_end_offset(),
                    size_bytes,
                    segments,
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    DescribeLogsResponse {
        replicas: described,
    }
}
