//! The consumer group APIs: FindCoordinator, ConsumerGroupHeartbeat, OffsetCommit,
//! OffsetFetch, ListGroups, DescribeGroups, DeleteGroups. Every group request other than
//! FindCoordinator must reach the group's coordinator (the leader of its `__consumer_offsets`
//! partition), or gets NOT_COORDINATOR. Limits: ids of at most 255 bytes, at most 1000
//! subscribed topics and 100000 owned partitions per heartbeat.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rill_protocol::api::*;
use rill_protocol::ErrorCode;

use crate::group::coordinator::{
    error_code, partition_for, Committed, GROUP_ID_BYTES_MAX, OFFSETS_TOPIC,
};
use crate::group::state::Heartbeat;
use crate::log::{monotonic_ms, TopicPartition};
use crate::server::BrokerState;

const SUBSCRIBED_TOPICS_MAX: usize = 1000;
const OWNED_PARTITIONS_MAX: usize = 100_000;

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= GROUP_ID_BYTES_MAX
}

/// Checks that this broker coordinates `group_id` and its offsets are loaded.
async fn coordinate(state: &Arc<BrokerState>, group_id: &str) -> Result<(), ErrorCode> {
    if !valid_id(group_id) {
        return Err(ErrorCode::INVALID_GROUP_ID);
    }
    let partition = partition_for(group_id);
    let metadata = state.controller.metadata();
    let info = metadata
        .topics
        .get(OFFSETS_TOPIC)
        .and_then(|t| t.partitions.get(partition as usize))
        .ok_or(ErrorCode::COORDINATOR_NOT_AVAILABLE)?;
    // Without the lease this broker may have been replaced as leader of the offsets
    // partition without knowing it: members must find the coordinator again.
    if info.leader != Some(state.node_id) || !state.lease.is_valid() {
        return Err(ErrorCode::NOT_COORDINATOR);
    }
    let leads = state
        .replicas
        .get(&TopicPartition::new(OFFSETS_TOPIC, partition))
        .is_some_and(|r| r.check_leader(Some(info.leader_epoch)).is_ok());
    if !leads {
        return Err(ErrorCode::COORDINATOR_NOT_AVAILABLE);
    }
    let loader = state.clone();
    let epoch = info.leader_epoch;
    match tokio::task::spawn_blocking(move || loader.groups.ensure_loaded(partition, epoch)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::error!(partition, "loading group offsets failed: {e}");
            Err(ErrorCode::COORDINATOR_NOT_AVAILABLE)
        }
        Err(_) => Err(ErrorCode::COORDINATOR_NOT_AVAILABLE),
    }
}

fn to_wire(partitions: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions {
            topic: topic.to_string(),
            partitions,
        })
        .collect()
}

fn from_wire(topics: Vec<TopicPartitions>) -> BTreeSet<TopicPartition> {
    topics
        .into_iter()
        .flat_map(|t| {
            t.partitions
                .into_iter()
                .map(move |p| TopicPartition::new(t.topic.clone(), p))
        })
        .collect()
}

pub fn find_coordinator(
    state: &Arc<BrokerState>,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let mut response = FindCoordinatorResponse {
        error_code: ErrorCode::NONE,
        node_id: None,
        host: String::new(),
        port: 0,
    };
    if !valid_id(&request.group_id) {
        response.error_code = ErrorCode::INVALID_GROUP_ID;
        return response;
    }
    let metadata = state.controller.metadata();
    let leader = metadata
        .topics
        .get(OFFSETS_TOPIC)
        .and_then(|t| t.partitions.get(partition_for(&request.group_id) as usize))
        .and_then(|p| p.leader);
    match leader.and_then(|node| metadata.brokers.get(&node)) {
        Some(broker) => {
            response.node_id = Some(broker.node_id as u32);
            response.host = broker.host.clone();
            response.port = broker.port;
        }
        None => response.error_code = ErrorCode::COORDINATOR_NOT_AVAILABLE,
    }
    response
}

pub async fn heartbeat(
    state: &Arc<BrokerState>,
    request: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    let mut response = ConsumerGroupHeartbeatResponse {
        error_code: ErrorCode::NONE,
        error_message: None,
        member_id: request.member_id.clone(),
        member_epoch: request.member_epoch,
        heartbeat_interval_ms: 0,
        assignment: Vec::new(),
    };
    let invalid = |message: String| (ErrorCode::INVALID_REQUEST, Some(message));
    let problem = if let Err(code) = coordinate(state, &request.group_id).await {
        Some((code, None))
    } else if request.member_id.len() > GROUP_ID_BYTES_MAX
        || request.instance_id.as_ref().is_some_and(|i| !valid_id(i))
    {
        Some(invalid(format!(
            "member and instance ids must be 1-{GROUP_ID_BYTES_MAX} bytes"
        )))
    } else if request
        .subscribed_topics
        .as_ref()
        .is_some_and(|t| t.len() > SUBSCRIBED_TOPICS_MAX)
    {
        Some(invalid(format!(
            "at most {SUBSCRIBED_TOPICS_MAX} subscribed topics"
        )))
    } else if request
        .owned
        .iter()
        .map(|t| t.partitions.len())
        .sum::<usize>()
        > OWNED_PARTITIONS_MAX
    {
        Some(invalid(format!(
            "at most {OWNED_PARTITIONS_MAX} owned partitions"
        )))
    } else {
        None
    };
    if let Some((code, message)) = problem {
        response.error_code = code;
        response.error_message = message;
        return response;
    }
    let metadata = state.controller.metadata();
    let topics: BTreeMap<String, u32> = metadata
        .topics
        .iter()
        .filter(|(name, _)| !name.starts_with("__"))
        .map(|(name, t)| (name.clone(), t.partitions.len() as u32))
        .collect();
    let heartbeat = Heartbeat {
        member_id: request.member_id,
        member_epoch: request.member_epoch,
        instance_id: request.instance_id,
        subscriptions: request.subscribed_topics.map(|t| t.into_iter().collect()),
        owned: from_wire(request.owned),
        session_timeout_ms: u64::from(request.session_timeout_ms.clamp(1000, 300_000)),
        assignor: request.assignor,
    };
    match state.groups.with_group(&request.group_id, |entry| {
        entry.group.heartbeat(heartbeat, monotonic_ms(), &topics)
    }) {
        Ok(outcome) => {
            response.member_id = outcome.member_id;
            response.member_epoch = outcome.member_epoch;
            response.heartbeat_interval_ms = outcome.heartbeat_interval_ms;
            response.assignment = to_wire(&outcome.assignment);
        }
        Err(e) => {
            response.error_code = error_code(&e);
            response.error_message = Some(e.to_string());
        }
    }
    persist(state, &request.group_id).await;
    response
}

/// Waits until a commit appended at leader `epoch`, ending at `end`, is on every in-sync replica
/// of the group's offsets partition (acks=all for commits), so it survives the coordinator's
/// death. The epoch is the one the append used: had this broker lost and regained leadership
/// since, the append may have been truncated away, and waiting at the new epoch would ack it.
async fn replicated(
    state: &Arc<BrokerState>,
    group_id: &str,
    epoch: u32,
    end: u64,
) -> Result<(), ErrorCode> {
    let tp = TopicPartition::new(OFFSETS_TOPIC, partition_for(group_id));
    let replica = state.replicas.get(&tp).ok_or(ErrorCode::NOT_COORDINATOR)?;
    state.replicas.appended(&replica);
    let timeout = Duration::from_millis(state.config.request_timeout_ms.min(10_000));
    replica
        .wait_replicated(end, epoch, timeout)
        .await
        .map_err(|code| match code {
            ErrorCode::NOT_LEADER => ErrorCode::NOT_COORDINATOR,
            other => other,
        })
}

/// Writes the group's membership to its offsets partition if it changed (before the member
/// hears about the change, so a restarted coordinator resumes from what members were told).
/// A failure costs a rebalance after a coordinator failover, not offsets: logged at ERROR.
pub(crate) async fn persist(state: &Arc<BrokerState>, group_id: &str) {
    let writer = state.clone();
    let group = group_id.to_string();
    match tokio::task::spawn_blocking(move || writer.groups.persist_if_changed(&group)).await {
        Ok(Ok(())) => {
            let tp = TopicPartition::new(OFFSETS_TOPIC, partition_for(group_id));
            if let Some(replica) = state.replicas.get(&tp) {
                state.replicas.appended(&replica);
            }
        }
        Ok(Err(e)) => tracing::error!(group = group_id, "persisting group membership failed (a coordinator failover will rebalance this group; a snapshot over max_batch_bytes needs fewer members or partitions per group, or a larger max_batch_bytes): {e}"),
        Err(e) => tracing::error!(group = group_id, "persisting group membership failed: {e}"),
    }
}

pub async fn offset_commit(
    state: &Arc<BrokerState>,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let mut response = OffsetCommitResponse {
        error_code: ErrorCode::NONE,
        topics: Vec::new(),
    };
    if let Err(code) = coordinate(state, &request.group_id).await {
        response.error_code = code;
        return response;
    }
    let metadata = state.controller.metadata();
    let mut accepted: Vec<(TopicPartition, Committed)> = Vec::new();
    let mut results: Vec<(String, Vec<(u32, ErrorCode)>)> = Vec::new();
    state.groups.with_group(&request.group_id, |entry| {
        for topic in &request.topics {
            let count = metadata
                .topics
                .get(&topic.name)
                .map(|t| t.partitions.len() as u32);
            let mut partitions = Vec::new();
            for p in &topic.partitions {
                let tp = TopicPartition::new(topic.name.clone(), p.partition);
                let code = match count {
                    Some(n) if p.partition < n => match entry.group.validate_commit(
                        &request.member_id,
                        request.member_epoch,
                        &tp,
                    ) {
                        Ok(()) => {
                            accepted.push((
                                tp,
                                Committed {
                                    offset: p.offset,
                                    metadata: p.metadata.clone(),
                                },
                            ));
                            ErrorCode::NONE
                        }
                        Err(e) => error_code(&e),
                    },
                    _ => ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                };
                partitions.push((p.partition, code));
            }
            results.push((topic.name.clone(), partitions));
        }
    });
    let writer = state.clone();
    let group_id = request.group_id.clone();
    let stored =
        tokio::task::spawn_blocking(move || writer.groups.store_offsets(&group_id, &accepted))
            .await;
    let storage_error = match stored {
        Ok(Ok(Some((epoch, end)))) => replicated(state, &request.group_id, epoch, end).await.err(),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => Some(e.error_code()),
        Err(_) => Some(ErrorCode::UNKNOWN_SERVER_ERROR),
    };
    response.topics = results
        .into_iter()
        .map(|(name, partitions)| OffsetCommitTopicResponse {
            name,
            partitions: partitions
                .into_iter()
                .map(|(partition, code)| PartitionResult {
                    partition,
                    error_code: if code == ErrorCode::NONE {
                        storage_error.unwrap_or(code)
                    } else {
                        code
                    },
                })
                .collect(),
        })
        .collect();
    response
}

pub async fn offset_fetch(
    state: &Arc<BrokerState>,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse {
        error_code: ErrorCode::NONE,
        topics: Vec::new(),
    };
    if let Err(code) = coordinate(state, &request.group_id).await {
        response.error_code = code;
        return response;
    }
    let offsets = state
        .groups
        .with_existing(&request.group_id, |entry| entry.offsets.clone())
        .unwrap_or_default();
    let wanted: Vec<TopicPartition> = match request.topics {
        Some(topics) => from_wire(topics).into_iter().collect(),
        None => offsets.keys().cloned().collect(),
    };
    let mut by_topic: BTreeMap<String, Vec<OffsetFetchPartition>> = BTreeMap::new();
    for tp in wanted {
        let committed = offsets.get(&tp);
        by_topic
            .entry(tp.topic.clone())
            .or_default()
            .push(OffsetFetchPartition {
                partition: tp.partition,
                offset: committed.map(|c| c.offset),
                metadata: committed.and_then(|c| c.metadata.clone()),
            });
    }
    response.topics = by_topic
        .into_iter()
        .map(|(name, partitions)| OffsetFetchTopic { name, partitions })
        .collect();
    response
}

pub fn list_groups(state: &Arc<BrokerState>) -> ListGroupsResponse {
    let groups = state
        .groups
        .group_ids()
        .into_iter()
        .filter_map(|id| {
            state.groups.with_existing(&id, |entry| GroupListing {
                group_id: id.clone(),
                state: entry.group.state().name().into(),
                members: entry.group.members.len() as u32,
            })
        })
        .collect();
    ListGroupsResponse { groups }
}

pub async fn describe_groups(
    state: &Arc<BrokerState>,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(request.group_ids.len());
    for group_id in request.group_ids {
        let mut description = GroupDescription {
            error_code: ErrorCode::NONE,
            group_id: group_id.clone(),
            state: String::new(),
            group_epoch: 0,
            assignor: String::new(),
            members: Vec::new(),
        };
        if let Err(code) = coordinate(state, &group_id).await {
            description.error_code = code;
            groups.push(description);
            continue;
        }
        let found = state.groups.with_existing(&group_id, |entry| {
            let group = &entry.group;
            description.state = group.state().name().into();
            description.group_epoch = group.epoch;
            description.assignor = group.strategy.name().into();
            description.members = group
                .members
                .values()
                .map(|m| GroupMember {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    member_epoch: m.member_epoch,
                    subscribed_topics: m.subscriptions.iter().cloned().collect(),
                    assignment: to_wire(&m.assigned),
                })
                .collect();
        });
        if found.is_none() {
            description.error_code = ErrorCode::GROUP_ID_NOT_FOUND;
        }
        groups.push(description);
    }
    DescribeGroupsResponse { groups }
}

pub async fn delete_groups(
    state: &Arc<BrokerState>,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.group_ids.len());
    for group_id in request.group_ids {
        let code = match coordinate(state, &group_id).await {
            Err(code) => code,
            Ok(()) => match state
                .groups
                .with_existing(&group_id, |entry| entry.group.members.len())
            {
                None => ErrorCode::GROUP_ID_NOT_FOUND,
                Some(members) if members > 0 => ErrorCode::NON_EMPTY_GROUP,
                Some(_) => {
                    let deleter = state.clone();
                    let id = group_id.clone();
                    match tokio::task::spawn_blocking(move || deleter.groups.delete_group(&id))
                        .await
                    {
                        Ok(Ok(())) => ErrorCode::NONE,
                        Ok(Err(e)) => e.error_code(),
                        Err(_) => ErrorCode::UNKNOWN_SERVER_ERROR,
                    }
                }
            },
        };
        results.push(GroupResult {
            group_id,
            error_code: code,
        });
    }
    DeleteGroupsResponse { results }
}
