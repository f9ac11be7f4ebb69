//! The consumer group APIs: FindCoordinator, ConsumerGroupHeartbeat, Kafka's classic JoinGroup,
//! SyncGroup, Heartbeat and LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups,
//! DeleteGroups. A group runs one protocol at a time (native or classic); offsets are shared. Every group request other than
//! FindCoordinator must reach the group's coordinator (the leader of its `__consumer_offsets`
//! partition), or gets NOT_COORDINATOR. Limits: ids of at most 255 bytes, at most 1000
//! subscribed topics and 100000 owned partitions per heartbeat.
//!
//! ACLs (docs/SECURITY.md "ACLs"): joining, heartbeats, leaving and committing need `Read` on
//! the group (committing also `Read` on each topic), FindCoordinator, OffsetFetch and
//! DescribeGroups `Describe` (OffsetFetch shows no offsets of topics the caller may not
//! describe), DeleteGroups `Delete`; ListGroups lists the groups the caller may describe.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rill_protocol::api::*;
use rill_protocol::ErrorCode;

use crate::group::classic::{self, Join, Joined, Sync, Synced};
use crate::group::coordinator::{
    error_code, partition_for, Committed, GROUP_ID_BYTES_MAX, OFFSETS_TOPIC,
};
use crate::group::state::Heartbeat;
use crate::log::{monotonic_ms, now_ms, TopicPartition};
use crate::security::acl::{Operation, ResourceType};
use crate::security::Session;
use crate::server::BrokerState;

const SUBSCRIBED_TOPICS_MAX: usize = 1000;
const OWNED_PARTITIONS_MAX: usize = 100_000;

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= GROUP_ID_BYTES_MAX
}

/// Checks that `session` may do `operation` on the group, that this broker coordinates
/// `group_id`, and that its offsets are loaded.
async fn coordinate(
    state: &Arc<BrokerState>,
    session: &Session,
    operation: Operation,
    group_id: &str,
) -> Result<(), ErrorCode> {
    if !valid_id(group_id) {
        return Err(ErrorCode::INVALID_GROUP_ID);
    }
    session.check(state, operation, ResourceType::Group, group_id)?;
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

/// The node that coordinates `group_id` (the leader of its offsets partition); needs
/// `Describe` on the group.
pub fn coordinator_node(
    state: &Arc<BrokerState>,
    session: &Session,
    group_id: &str,
) -> Result<u64, ErrorCode> {
    if !valid_id(group_id) {
        return Err(ErrorCode::INVALID_GROUP_ID);
    }
    session.check(state, Operation::Describe, ResourceType::Group, group_id)?;
    state
        .controller
        .metadata()
        .topics
        .get(OFFSETS_TOPIC)
        .and_then(|t| t.partitions.get(partition_for(group_id) as usize))
        .and_then(|p| p.leader)
        .ok_or(ErrorCode::COORDINATOR_NOT_AVAILABLE)
}

pub fn find_coordinator(
    state: &Arc<BrokerState>,
    session: &Session,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let mut response = FindCoordinatorResponse {
        error_code: ErrorCode::NONE,
        node_id: None,
        host: String::new(),
        port: 0,
    };
    let node = match coordinator_node(state, session, &request.group_id) {
        Ok(node) => node,
        Err(code) => {
            response.error_code = code;
            return response;
        }
    };
    match state.controller.metadata().brokers.get(&node) {
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
    session: &Session,
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
    let problem =
        if let Err(code) = coordinate(state, session, Operation::Read, &request.group_id).await {
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
        if entry.is_classic() {
            return Err(None);
        }
        entry
            .group
            .heartbeat(heartbeat, monotonic_ms(), &topics)
            .map_err(Some)
    }) {
        Ok(outcome) => {
            response.member_id = outcome.member_id;
            response.member_epoch = outcome.member_epoch;
            response.heartbeat_interval_ms = outcome.heartbeat_interval_ms;
            response.assignment = to_wire(&outcome.assignment);
        }
        Err(Some(e)) => {
            response.error_code = error_code(&e);
            response.error_message = Some(e.to_string());
        }
        Err(None) => {
            response.error_code = ErrorCode::INCONSISTENT_GROUP_PROTOCOL;
            response.error_message = Some(
                "the group has members of Kafka's classic protocol (JoinGroup); use another group id"
                    .into(),
            );
        }
    }
    persist(state, &request.group_id).await;
    if response.error_code == ErrorCode::NONE {
        if let Err(code) = membership_replicated(state, &request.group_id).await {
            response.error_code = code;
            response.error_message = Some(
                "the group's membership is not on every in-sync replica of its offsets partition yet; retry".into(),
            );
            response.assignment = Vec::new();
        }
    }
    response
}

/// Waits until everything appended to the group's offsets partition so far (the membership
/// snapshot this heartbeat wrote, or one another member's heartbeat wrote) is on every in-sync
/// replica: a member hears of an assignment only once no coordinator failover can forget it.
/// Otherwise a new coordinator, not knowing the assignment, could give the same partitions to
/// another member while the first still works them (the fault suite found two members on one
/// partition at once, seed 2009). NOT_COORDINATOR if this broker stopped leading the partition,
/// COORDINATOR_NOT_AVAILABLE if replication does not come in time (both retriable).
async fn membership_replicated(state: &Arc<BrokerState>, group_id: &str) -> Result<(), ErrorCode> {
    let tp = TopicPartition::new(OFFSETS_TOPIC, partition_for(group_id));
    let replica = state.replicas.get(&tp).ok_or(ErrorCode::NOT_COORDINATOR)?;
    let epoch = replica
        .leader_epoch()
        .map_err(|_| ErrorCode::NOT_COORDINATOR)?;
    let end = replica.log.log_end_offset();
    match replicated(state, group_id, epoch, end).await {
        Err(ErrorCode::NOT_COORDINATOR) => Err(ErrorCode::NOT_COORDINATOR),
        Err(_) => Err(ErrorCode::COORDINATOR_NOT_AVAILABLE),
        Ok(()) => Ok(()),
    }
}

/// Most bytes of a client id or host, and of a protocol name, in a classic join.
const CLIENT_FIELD_BYTES_MAX: usize = 1024;

/// Waits for a parked classic answer: a dropped sender means the group was unloaded (this
/// broker stopped coordinating it); `refuse` builds the answer for that and for a timeout.
async fn parked<T>(
    rx: tokio::sync::oneshot::Receiver<T>,
    wait: Duration,
    refuse: impl Fn(ErrorCode) -> T,
) -> T {
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => refuse(ErrorCode::NOT_COORDINATOR),
        Err(_) => refuse(ErrorCode::REBALANCE_IN_PROGRESS),
    }
}

/// Kafka's JoinGroup: joins (or rejoins) a classic group; answers when the rebalance completes.
pub async fn join_group(
    state: &Arc<BrokerState>,
    session: &Session,
    group_id: &str,
    join: Join,
) -> Joined {
    let member_id = join.member_id.clone();
    let refuse = |code| Joined {
        error_code: code,
        generation: -1,
        member_id: member_id.clone(),
        ..Joined::default()
    };
    if let Err(code) = coordinate(state, session, Operation::Read, group_id).await {
        return refuse(code);
    }
    let too_long = join.member_id.len() > GROUP_ID_BYTES_MAX
        || join.instance_id.as_ref().is_some_and(|i| !valid_id(i))
        || join.client_id.len() > CLIENT_FIELD_BYTES_MAX
        || join.protocol_type.len() > CLIENT_FIELD_BYTES_MAX
        || join
            .protocols
            .iter()
            .any(|(name, _)| name.len() > CLIENT_FIELD_BYTES_MAX);
    if too_long {
        return refuse(ErrorCode::INVALID_REQUEST);
    }
    let delay = state.config.group_initial_rebalance_delay_ms;
    let wait = Duration::from_millis(
        join.rebalance_timeout_ms
            .clamp(1, classic::REBALANCE_TIMEOUT_MS_MAX)
            .saturating_add(delay)
            .saturating_add(5_000),
    );
    let joined = state.groups.with_group(group_id, |entry| {
        if !entry.group.members.is_empty() {
            return None;
        }
        Some(entry.classic.join(join, monotonic_ms(), delay))
    });
    let Some((rx, replies)) = joined else {
        return refuse(ErrorCode::INCONSISTENT_GROUP_PROTOCOL);
    };
    persist(state, group_id).await;
    replies.deliver();
    parked(rx, wait, refuse).await
}

/// Kafka's SyncGroup: the leader's carries every assignment; each member gets its own.
pub async fn sync_group(
    state: &Arc<BrokerState>,
    session: &Session,
    group_id: &str,
    sync: Sync,
) -> Synced {
    let refuse = |code| Synced {
        error_code: code,
        ..Synced::default()
    };
    if let Err(code) = coordinate(state, session, Operation::Read, group_id).await {
        return refuse(code);
    }
    let (rx, replies) = state
        .groups
        .with_group(group_id, |entry| entry.classic.sync(sync, monotonic_ms()));
    persist(state, group_id).await;
    replies.deliver();
    let wait = Duration::from_millis(classic::REBALANCE_TIMEOUT_MS_MAX);
    parked(rx, wait, refuse).await
}

/// Kafka's Heartbeat (classic groups).
pub async fn classic_heartbeat(
    state: &Arc<BrokerState>,
    session: &Session,
    group_id: &str,
    member_id: &str,
    instance_id: Option<&str>,
    generation: i32,
) -> ErrorCode {
    if let Err(code) = coordinate(state, session, Operation::Read, group_id).await {
        return code;
    }
    state.groups.with_group(group_id, |entry| {
        entry
            .classic
            .heartbeat(member_id, instance_id, generation, monotonic_ms())
    })
}

/// Kafka's LeaveGroup: each (member id, instance id) leaves; one code per member, or the
/// group's error.
pub async fn leave_group(
    state: &Arc<BrokerState>,
    session: &Session,
    group_id: &str,
    members: &[(String, Option<String>)],
) -> Result<Vec<ErrorCode>, ErrorCode> {
    coordinate(state, session, Operation::Read, group_id).await?;
    let mut all = classic::Replies::default();
    let codes = state.groups.with_group(group_id, |entry| {
        members
            .iter()
            .map(|(member, instance)| {
                let (code, replies) =
                    entry
                        .classic
                        .leave(member, instance.as_deref(), monotonic_ms());
                all.extend(replies);
                code
            })
            .collect()
    });
    persist(state, group_id).await;
    all.deliver();
    Ok(codes)
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

/// Deletes the groups that stayed empty for `offsets_retention_ms` (their offsets, membership
/// and the group itself, as DeleteGroups does), logged one line each.
pub(crate) async fn expire(state: &Arc<BrokerState>) {
    let expirer = state.clone();
    let expired = match tokio::task::spawn_blocking(move || expirer.groups.expire(now_ms())).await {
        Ok(expired) => expired,
        Err(e) => {
            tracing::error!("expiring groups failed: {e}");
            return;
        }
    };
    for group in expired {
        tracing::info!(group = %group, retention_ms = state.config.offsets_retention_ms, "group expired: no members and no commit or membership change for offsets_retention_ms; its offsets are deleted");
        let tp = TopicPartition::new(OFFSETS_TOPIC, partition_for(&group));
        if let Some(replica) = state.replicas.get(&tp) {
            state.replicas.appended(&replica);
        }
    }
}

pub async fn offset_commit(
    state: &Arc<BrokerState>,
    session: &Session,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    offset_commit_as(state, session, request, None).await
}

/// OffsetCommit with the committer's group instance id (Kafka's static members). In a classic
/// group `member_epoch` is the generation.
pub async fn offset_commit_as(
    state: &Arc<BrokerState>,
    session: &Session,
    request: OffsetCommitRequest,
    instance_id: Option<String>,
) -> OffsetCommitResponse {
    let mut response = OffsetCommitResponse {
        error_code: ErrorCode::NONE,
        topics: Vec::new(),
    };
    if let Err(code) = coordinate(state, session, Operation::Read, &request.group_id).await {
        response.error_code = code;
        return response;
    }
    let refused = session.refused_topics(
        state,
        Operation::Read,
        request.topics.iter().map(|t| t.name.as_str()),
    );
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
                let valid = if entry.is_classic() {
                    entry.classic.validate_commit(
                        &request.member_id,
                        instance_id.as_deref(),
                        request.member_epoch,
                    )
                } else {
                    entry
                        .group
                        .validate_commit(&request.member_id, request.member_epoch, &tp)
                        .map_err(|e| error_code(&e))
                };
                let code = match count {
                    _ if refused.contains(&topic.name) => ErrorCode::TOPIC_AUTHORIZATION_FAILED,
                    Some(n) if p.partition < n => match valid {
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
                        Err(code) => code,
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
    session: &Session,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse {
        error_code: ErrorCode::NONE,
        topics: Vec::new(),
    };
    if let Err(code) = coordinate(state, session, Operation::Describe, &request.group_id).await {
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
    let refused = session.refused_topics(
        state,
        Operation::Describe,
        wanted.iter().map(|tp| tp.topic.as_str()),
    );
    for tp in wanted {
        // A topic the caller may not describe shows no offset.
        let committed = offsets.get(&tp).filter(|_| !refused.contains(&tp.topic));
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

pub fn list_groups(state: &Arc<BrokerState>, session: &Session) -> ListGroupsResponse {
    ListGroupsResponse {
        groups: list_group_views(state, session)
            .into_iter()
            .map(|(listing, _, _)| listing)
            .collect(),
    }
}

/// Every group hosted here, with its protocol type ("consumer" for native groups; empty for a
/// group that only has offsets) and whether Kafka's classic protocol runs it. Only groups
/// `session` may describe.
pub fn list_group_views(
    state: &Arc<BrokerState>,
    session: &Session,
) -> Vec<(GroupListing, String, bool)> {
    state
        .groups
        .group_ids()
        .into_iter()
        .filter(|id| session.allowed(state, Operation::Describe, ResourceType::Group, id))
        .filter_map(|id| {
            state.groups.with_existing(&id, |entry| {
                if entry.is_classic() {
                    let listing = GroupListing {
                        group_id: id.clone(),
                        state: entry.classic.state.name().into(),
                        members: entry.classic.members.len() as u32,
                    };
                    let protocol_type = entry.classic.protocol_type.clone().unwrap_or_default();
                    (listing, protocol_type, true)
                } else {
                    let listing = GroupListing {
                        group_id: id.clone(),
                        state: entry.group.state().name().into(),
                        members: entry.group.members.len() as u32,
                    };
                    let protocol_type = if entry.group.members.is_empty() {
                        String::new()
                    } else {
                        "consumer".to_string()
                    };
                    (listing, protocol_type, false)
                }
            })
        })
        .collect()
}

/// A group as both doors describe it: the native description (classic members appear with
/// their generation as epoch and their decoded consumer-protocol assignment), and what Kafka's
/// DescribeGroups adds.
pub struct GroupView {
    pub description: GroupDescription,
    pub protocol_type: String,
    /// Per member of `description.members`: client id, client host, metadata of the chosen
    /// protocol, assignment bytes (classic groups only; empty for native members).
    pub classic_members: Vec<ClassicMemberView>,
}

pub struct ClassicMemberView {
    pub client_id: String,
    pub client_host: String,
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

pub async fn describe_groups(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    DescribeGroupsResponse {
        groups: describe_group_views(state, session, request.group_ids)
            .await
            .into_iter()
            .map(|view| view.description)
            .collect(),
    }
}

fn classic_view(group: &classic::ClassicGroup, description: &mut GroupDescription) -> GroupView {
    description.state = group.state.name().into();
    description.group_epoch = group.generation;
    description.assignor = group.protocol.clone().unwrap_or_default();
    let protocol = group.protocol.clone().unwrap_or_default();
    let mut views = Vec::new();
    description.members = group
        .members
        .values()
        .map(|m| {
            views.push(ClassicMemberView {
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: m.metadata(&protocol).to_vec(),
                assignment: m.assignment.clone(),
            });
            GroupMember {
                member_id: m.member_id.clone(),
                instance_id: m.instance_id.clone(),
                member_epoch: group.generation,
                subscribed_topics: group.subscribed_topics(m),
                assignment: to_wire(&group.assigned_partitions(m)),
            }
        })
        .collect();
    GroupView {
        description: description.clone(),
        protocol_type: group.protocol_type.clone().unwrap_or_default(),
        classic_members: views,
    }
}

pub async fn describe_group_views(
    state: &Arc<BrokerState>,
    session: &Session,
    group_ids: Vec<String>,
) -> Vec<GroupView> {
    let mut groups = Vec::with_capacity(group_ids.len());
    for group_id in group_ids {
        let mut description = GroupDescription {
            error_code: ErrorCode::NONE,
            group_id: group_id.clone(),
            state: String::new(),
            group_epoch: 0,
            assignor: String::new(),
            members: Vec::new(),
        };
        let unknown = |description: GroupDescription| GroupView {
            description,
            protocol_type: String::new(),
            classic_members: Vec::new(),
        };
        if let Err(code) = coordinate(state, session, Operation::Describe, &group_id).await {
            description.error_code = code;
            groups.push(unknown(description));
            continue;
        }
        let found = state.groups.with_existing(&group_id, |entry| {
            if entry.is_classic() {
                return classic_view(&entry.classic, &mut description);
            }
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
            GroupView {
                description: description.clone(),
                protocol_type: if group.members.is_empty() {
                    String::new()
                } else {
                    "consumer".into()
                },
                classic_members: Vec::new(),
            }
        });
        match found {
            Some(view) => groups.push(view),
            None => {
                description.error_code = ErrorCode::GROUP_ID_NOT_FOUND;
                groups.push(unknown(description));
            }
        }
    }
    groups
}

pub async fn delete_groups(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.group_ids.len());
    for group_id in request.group_ids {
        let code = match coordinate(state, session, Operation::Delete, &group_id).await {
            Err(code) => code,
            Ok(()) => match state.groups.with_existing(&group_id, |entry| {
                entry.group.members.len() + entry.classic.members.len()
            }) {
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
