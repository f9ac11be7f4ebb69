//! Produce: validates and appends each partition's batches on the partition leader, in
//! parallel across partitions (each on a blocking thread: appends do file I/O and may fsync),
//! before the next request of the connection is read. `acks = 0` sends no response; `acks = 1`
//! answers once appended; `acks = all` equals 1 while partitions have a single replica.

use std::sync::Arc;

use bytes::Bytes;
use rill_protocol::api::{
    Acks, ProducePartitionResponse, ProduceRequest, ProduceResponse, ProduceTopicResponse,
    ResponseBody,
};
use rill_protocol::ErrorCode;

use super::{create_topic, leader_log, reply, Pending};
use crate::server::BrokerState;

pub(super) async fn handle(state: &Arc<BrokerState>, request: ProduceRequest) -> Pending {
    if state.config.auto_create_topics {
        for topic in &request.topics {
            if !state.controller.metadata().topics.contains_key(&topic.name) {
                let _ = create_topic(
                    state,
                    &topic.name,
                    state.config.default_partitions,
                    1,
                    Default::default(),
                    false,
                )
                .await;
            }
        }
    }
    let metadata = state.controller.metadata();
    let mut appends = Vec::new();
    for (t, topic) in request.topics.iter().enumerate() {
        for partition in &topic.partitions {
            let target = leader_log(state, &metadata, &topic.name, partition.partition);
            let epoch = metadata
                .topics
                .get(&topic.name)
                .and_then(|t| t.partitions.get(partition.partition as usize))
                .map_or(0, |p| p.leader_epoch as i32);
            let records: Bytes = partition.records.clone();
            let index = partition.partition;
            appends.push(async move {
                let outcome = match target {
                    Err(code) => Err((code, None)),
                    Ok(log) => match tokio::task::spawn_blocking(move || {
                        let info = log.append(&records, epoch);
                        let start = log.with_log(|l| Ok(l.log_start_offset())).unwrap_or(0);
                        info.map(|info| (info, start))
                    })
                    .await
                    {
                        Ok(Ok(ok)) => Ok(ok),
                        Ok(Err(e)) => Err((e.error_code(), Some(e.to_string()))),
                        Err(e) => Err((
                            ErrorCode::UNKNOWN_SERVER_ERROR,
                            Some(format!("append task failed: {e}")),
                        )),
                    },
                };
                (t, index, outcome)
            });
        }
    }
    let outcomes = futures::future::join_all(appends).await;
    if request.acks == Acks::None {
        return futures::FutureExt::boxed(futures::future::ready(None));
    }
    let mut topics: Vec<ProduceTopicResponse> = request
        .topics
        .iter()
        .map(|t| ProduceTopicResponse {
            name: t.name.clone(),
            partitions: Vec::new(),
        })
        .collect();
    for (t, partition, outcome) in outcomes {
        let response = match outcome {
            Ok((info, log_start_offset)) => ProducePartitionResponse {
                partition,
                error_code: ErrorCode::NONE,
                base_offset: info.base_offset,
                log_append_time_ms: -1,
                log_start_offset,
                error_message: None,
            },
            Err((error_code, error_message)) => {
                if error_code == ErrorCode::STORAGE_ERROR
                    || error_code == ErrorCode::UNKNOWN_SERVER_ERROR
                {
                    tracing::error!(topic = %topics[t].name, partition, "produce failed: {error_message:?}");
                }
                ProducePartitionResponse {
                    partition,
                    error_code,
                    base_offset: 0,
                    log_append_time_ms: -1,
                    log_start_offset: 0,
                    error_message,
                }
            }
        };
        topics[t].partitions.push(response);
    }
    reply(ResponseBody::Produce(ProduceResponse { topics }))
}
