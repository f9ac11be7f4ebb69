//! Produce: validates and appends each partition's batches on the partition leader, in
//! parallel across partitions, before the next request of the connection is read. An append
//! that only writes into the page cache (the log lock free, no flush, roll, preallocation or
//! write-behind due; at most `INLINE_APPEND_MAX_BYTES`) runs on the connection's task; any
//! other goes to a blocking thread, since it may wait on the disk or on a lock held across an
//! fsync. `acks = 0` sends no response; `acks = 1`
//! answers once appended on the leader; `acks = all` first requires `min.insync.replicas`
//! in-sync replicas (else NOT_ENOUGH_REPLICAS, nothing written) and answers once the high
//! watermark passes the batch, i.e. every in-sync replica has it (NOT_LEADER if leadership is
//! lost meanwhile, REQUEST_TIMED_OUT after the request's timeout). The bytes sent count
//! against the client id's produce quota (`crate::quota`): over it, the response carries the
//! throttle time and the connection is muted for it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use rill_protocol::api::{
    Acks, ProducePartitionResponse, ProduceRequest, ProduceResponse, ProduceTopicResponse,
};
use rill_protocol::ErrorCode;

use super::{create_topic, local_replica};
use crate::log::INLINE_APPEND_MAX_BYTES;
use crate::quota::Direction;
use crate::security::acl::Operation;
use crate::security::Session;
use crate::server::BrokerState;

/// Appends (before returning) and returns the acknowledgement still to come: `None` for
/// `acks = 0` (no response is sent). Each topic needs `Write` (TOPIC_AUTHORIZATION_FAILED).
pub async fn produce(
    state: &Arc<BrokerState>,
    session: &Session,
    request: ProduceRequest,
) -> BoxFuture<'static, Option<ProduceResponse>> {
    let started = std::time::Instant::now();
    let refused = session.refused_topics(
        state,
        Operation::Write,
        request.topics.iter().map(|t| t.name.as_str()),
    );
    if state.config.auto_create_topics {
        for topic in request.topics.iter().filter(|t| !refused.contains(&t.name)) {
            if !state.controller.metadata().topics.contains_key(&topic.name) {
                let _ = create_topic(
                    state,
                    session,
                    &topic.name,
                    state.config.default_partitions,
                    state.config.default_replication_factor,
                    Default::default(),
                    false,
                )
                .await;
            }
        }
    }
    let metadata = state.controller.metadata();
    let all = request.acks == Acks::All;
    let lag_max = state.replicas.config().lag_max;
    let mut appends = Vec::new();
    for (t, topic) in request.topics.iter().enumerate() {
        for partition in &topic.partitions {
            // Internal topics are written by the broker only (forged commits or membership, or
            // a batch the coordinator cannot replay, would break every group mapped there).
            let internal = topic.name == crate::group::coordinator::OFFSETS_TOPIC;
            let denied = refused.contains(&topic.name);
            let target = (if internal {
                Err(ErrorCode::INVALID_TOPIC)
            } else if denied {
                Err(ErrorCode::TOPIC_AUTHORIZATION_FAILED)
            } else {
                local_replica(state, &metadata, &topic.name, partition.partition)
            })
            .and_then(|replica| {
                let epoch = replica.admit_produce(all, lag_max)?;
                Ok((replica, epoch))
            });
            let records: Bytes = partition.records.clone();
            let index = partition.partition;
            let (metrics, name) = (state.metrics.clone(), topic.name.clone());
            appends.push(async move {
                let outcome = match target {
                    Err(code) => Err((
                        code,
                        if internal {
                            Some(format!(
                                "{} is an internal topic: only brokers write to it",
                                crate::group::coordinator::OFFSETS_TOPIC
                            ))
                        } else {
                            denied.then(|| format!("not authorized to write to topic {name}"))
                        },
                    )),
                    Ok((replica, epoch)) => {
                        let log = replica.log.clone();
                        let records_len = records.len();
                        // On this task when it cannot wait on the disk or a lock (and is
                        // small enough to copy at once), else on the blocking pool.
                        let here = (records_len <= INLINE_APPEND_MAX_BYTES)
                            .then(|| log.try_append_in_page_cache(&records, epoch))
                            .flatten();
                        let appended = match here {
                            Some(result) => Ok(result),
                            None => {
                                tokio::task::spawn_blocking(move || {
                                    let info = log.append(&records, epoch);
                                    let start =
                                        log.with_log(|l| Ok(l.log_start_offset())).unwrap_or(0);
                                    info.map(|info| (info, start))
                                })
                                .await
                            }
                        };
                        match appended {
                            Ok(Ok(ok)) => {
                                // A repeat of an idempotent producer's batch writes nothing.
                                if ok.0.batches > 0 {
                                    let count = ok.0.last_offset + 1 - ok.0.base_offset;
                                    metrics.produced(&name, records_len, count);
                                }
                                Ok((replica, epoch, ok))
                            }
                            Ok(Err(e)) => Err((e.error_code(), Some(e.to_string()))),
                            Err(e) => Err((
                                ErrorCode::UNKNOWN_SERVER_ERROR,
                                Some(format!("append task failed: {e}")),
                            )),
                        }
                    }
                };
                if let Err((code, _)) = &outcome {
                    metrics.partition_error("Produce", *code);
                }
                (t, index, outcome)
            });
        }
    }
    let appended = futures::future::join_all(appends).await;
    // Quotas count what was sent, appended or not (Kafka counts the request's size).
    let throttle_time_ms = session
        .charge(state, Direction::Produce)
        .map_or(0, |charge| {
            let bytes: usize = request
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .map(|p| p.records.len())
                .sum();
            charge.record(&state.quotas, &state.metrics, bytes as u64)
        });
    // The HW advances by follower fetches (or at once with a single in-sync replica).
    for (_, _, outcome) in &appended {
        if let Ok((replica, _, _)) = outcome {
            state.replicas.appended(replica);
        }
    }
    if request.acks == Acks::None {
        state.metrics.produce_done("0", started.elapsed());
        return futures::future::ready(None).boxed();
    }
    let timeout =
        Duration::from_millis(u64::from(request.timeout_ms).min(state.config.request_timeout_ms));
    let names: Vec<String> = request.topics.iter().map(|t| t.name.clone()).collect();
    let metrics = state.metrics.clone();
    // Waiting for replication is not order-sensitive: the connection reads on meanwhile.
    async move {
    let metrics = &metrics;
    let outcomes =
        futures::future::join_all(appended.into_iter().map(|(t, index, outcome)| async move {
            let outcome = match outcome {
                Ok((replica, epoch, (info, start))) if all => replica
                    .wait_replicated(info.last_offset + 1, epoch, timeout)
                    .await
                    .map(|()| (info, start))
                    .map_err(|code| {
                        metrics.partition_error("Produce", code);
                        (code, None)
                    }),
                Ok((_, _, ok)) => Ok(ok),
                Err(e) => Err(e),
            };
            (t, index, outcome)
        }))
        .await;
    let mut topics: Vec<ProduceTopicResponse> = names
        .into_iter()
        .map(|name| ProduceTopicResponse {
            name,
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
    metrics.produce_done(if all { "all" } else { "1" }, started.elapsed());
    Some(ProduceResponse {
        topics,
        throttle_time_ms,
    })
    }
    .boxed()
}
