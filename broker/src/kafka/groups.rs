//! Kafka's group APIs as codecs over `ops::groups`: FindCoordinator, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups.
//! Kafka conventions only: -1 for "no offset" and "no epoch", version differences (batched
//! FindCoordinator from v4, OffsetFetch of several groups from v8, LeaveGroup of several members
//! from v3).

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequestPartition;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rill_protocol::api as rill;
use rill_protocol::ErrorCode;

use super::errors::kafka_code;
use crate::group::classic::{Join, Sync};
use crate::ops;
use crate::security::Session;
use crate::server::BrokerState;

/// Who sent a request (JoinGroup records it; DescribeGroups shows it).
#[derive(Clone)]
pub struct Client {
    pub client_id: String,
    pub host: String,
}

fn text(value: String) -> StrBytes {
    StrBytes::from_string(value)
}

fn group_id(value: String) -> GroupId {
    GroupId(text(value))
}

fn opt(value: &Option<StrBytes>) -> Option<String> {
    value.as_ref().map(|s| s.as_str().to_string())
}

/// The Kafka address of broker `node` (this broker's own even before it is registered).
pub fn kafka_address(state: &BrokerState, node: u64) -> Option<(String, u16)> {
    if node == state.node_id {
        if let Some(own) = &state.kafka_advertised {
            return Some(own.clone());
        }
    }
    state
        .controller
        .metadata()
        .listeners
        .get(&node)?
        .get("kafka")
        .cloned()
}

pub fn find_coordinator(
    state: &Arc<BrokerState>,
    session: &Session,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let locate = |key: &str| -> Coordinator {
        let found = if request.key_type != 0 {
            // Transaction coordinators (key type 1) are not served: no transactions yet.
            Err(ErrorCode::UNSUPPORTED_API)
        } else {
            ops::groups::coordinator_node(state, session, key).and_then(|node| {
                kafka_address(state, node)
                    .map(|address| (node, address))
                    .ok_or(ErrorCode::COORDINATOR_NOT_AVAILABLE)
            })
        };
        let coordinator = Coordinator::default().with_key(text(key.to_string()));
        match found {
            Ok((node, (host, port))) => coordinator
                .with_node_id(BrokerId(node as i32))
                .with_host(text(host))
                .with_port(i32::from(port)),
            Err(code) => coordinator
                .with_node_id(BrokerId(-1))
                .with_port(-1)
                .with_error_code(kafka_code(code))
                .with_error_message(Some(text(code.description().to_string()))),
        }
    };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| locate(key.as_str()))
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let one = locate(request.key.as_str());
    FindCoordinatorResponse::default()
        .with_error_code(one.error_code)
        .with_error_message(one.error_message)
        .with_node_id(one.node_id)
        .with_host(one.host)
        .with_port(one.port)
}

pub async fn join_group(
    state: &Arc<BrokerState>,
    session: &Session,
    request: JoinGroupRequest,
    version: i16,
    client: &Client,
) -> JoinGroupResponse {
    let join = Join {
        member_id: request.member_id.as_str().to_string(),
        instance_id: opt(&request.group_instance_id),
        client_id: client.client_id.clone(),
        client_host: client.host.clone(),
        session_timeout_ms: u64::try_from(request.session_timeout_ms).unwrap_or(0),
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version == 0 || request.rebalance_timeout_ms < 0 {
            u64::try_from(request.session_timeout_ms).unwrap_or(0)
        } else {
            request.rebalance_timeout_ms as u64
        },
        protocol_type: request.protocol_type.as_str().to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.as_str().to_string(), p.metadata.to_vec()))
            .collect(),
        // KIP-394: from v4 a new member first gets its id.
        require_known_member_id: version >= 4,
    };
    let joined = ops::groups::join_group(state, session, request.group_id.0.as_str(), join).await;
    JoinGroupResponse::default()
        .with_error_code(kafka_code(joined.error_code))
        .with_generation_id(joined.generation)
        .with_protocol_type(joined.protocol_type.map(text))
        .with_protocol_name(joined.protocol.map(text))
        .with_leader(text(joined.leader))
        .with_member_id(text(joined.member_id))
        .with_members(
            joined
                .members
                .into_iter()
                .map(|(member_id, instance_id, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(text(member_id))
                        .with_group_instance_id(instance_id.map(text))
                        .with_metadata(Bytes::from(metadata))
                })
                .collect(),
        )
}

pub async fn sync_group(
    state: &Arc<BrokerState>,
    session: &Session,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let sync = Sync {
        member_id: request.member_id.as_str().to_string(),
        instance_id: opt(&request.group_instance_id),
        generation: request.generation_id,
        protocol_type: opt(&request.protocol_type),
        protocol: opt(&request.protocol_name),
        assignments: request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.as_str().to_string(), a.assignment.to_vec()))
            .collect(),
    };
    let synced = ops::groups::sync_group(state, session, request.group_id.0.as_str(), sync).await;
    SyncGroupResponse::default()
        .with_error_code(kafka_code(synced.error_code))
        .with_protocol_type(synced.protocol_type.map(text))
        .with_protocol_name(synced.protocol.map(text))
        .with_assignment(Bytes::from(synced.assignment))
}

pub async fn heartbeat(
    state: &Arc<BrokerState>,
    session: &Session,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    let code = ops::groups::classic_heartbeat(
        state,
        session,
        request.group_id.0.as_str(),
        request.member_id.as_str(),
        request.group_instance_id.as_ref().map(|s| s.as_str()),
        request.generation_id,
    )
    .await;
    HeartbeatResponse::default().with_error_code(kafka_code(code))
}

pub async fn leave_group(
    state: &Arc<BrokerState>,
    session: &Session,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| (m.member_id.as_str().to_string(), opt(&m.group_instance_id)))
            .collect()
    } else {
        vec![(request.member_id.as_str().to_string(), None)]
    };
    match ops::groups::leave_group(state, session, request.group_id.0.as_str(), &members).await {
        Err(code) => LeaveGroupResponse::default().with_error_code(kafka_code(code)),
        Ok(codes) if version < 3 => LeaveGroupResponse::default()
            .with_error_code(kafka_code(codes.first().copied().unwrap_or_default())),
        Ok(codes) => LeaveGroupResponse::default().with_members(
            members
                .into_iter()
                .zip(codes)
                .map(|((member_id, instance_id), code)| {
                    MemberResponse::default()
                        .with_member_id(text(member_id))
                        .with_group_instance_id(instance_id.map(text))
                        .with_error_code(kafka_code(code))
                })
                .collect(),
        ),
    }
}

pub async fn offset_commit(
    state: &Arc<BrokerState>,
    session: &Session,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    // Offsets a Kafka client cannot mean (negative) are refused per partition.
    let refused =
        |p: &OffsetCommitRequestPartition| p.partition_index < 0 || p.committed_offset < 0;
    let commit = rill::OffsetCommitRequest {
        group_id: request.group_id.0.as_str().to_string(),
        member_id: request.member_id.as_str().to_string(),
        member_epoch: request.generation_id_or_member_epoch,
        topics: request
            .topics
            .iter()
            .map(|t| rill::OffsetCommitTopic {
                name: t.name.0.as_str().to_string(),
                partitions: t
                    .partitions
                    .iter()
                    .filter(|p| !refused(p))
                    .map(|p| rill::OffsetCommitPartition {
                        // Both checked non-negative above.
                        partition: p.partition_index as u32,
                        offset: p.committed_offset as u64,
                        metadata: opt(&p.committed_metadata),
                    })
                    .collect(),
            })
            .collect(),
    };
    let instance_id = opt(&request.group_instance_id);
    let response = ops::groups::offset_commit_as(state, session, commit, instance_id).await;
    let answered: std::collections::HashMap<(&str, u32), ErrorCode> = response
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| ((t.name.as_str(), p.partition), p.error_code))
        })
        .collect();
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let name = t.name.0.as_str();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = if refused(p) {
                        ErrorCode::INVALID_REQUEST
                    } else if response.error_code != ErrorCode::NONE {
                        response.error_code
                    } else {
                        answered
                            .get(&(name, p.partition_index as u32))
                            .copied()
                            .unwrap_or(ErrorCode::UNKNOWN_SERVER_ERROR)
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(kafka_code(code))
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// One group's committed offsets: `(error, [(topic, [(partition, offset or -1, metadata)])])`.
type Fetched = (i16, Vec<(String, Vec<(i32, i64, Option<String>)>)>);

async fn fetch_offsets(
    state: &Arc<BrokerState>,
    session: &Session,
    group_id: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Fetched {
    let request = rill::OffsetFetchRequest {
        group_id,
        topics: topics.map(|topics| {
            topics
                .into_iter()
                .map(|(topic, partitions)| rill::TopicPartitions {
                    topic,
                    partitions: partitions
                        .into_iter()
                        .filter_map(|p| u32::try_from(p).ok())
                        .collect(),
                })
                .collect()
        }),
    };
    let response = ops::groups::offset_fetch(state, session, request).await;
    let topics = response
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let offset = p.offset.and_then(|o| i64::try_from(o).ok()).unwrap_or(-1);
                    (p.partition as i32, offset, p.metadata)
                })
                .collect();
            (t.name, partitions)
        })
        .collect();
    (kafka_code(response.error_code), topics)
}

pub async fn offset_fetch(
    state: &Arc<BrokerState>,
    session: &Session,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for group in request.groups {
            let topics = group.topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes))
                    .collect()
            });
            let (error_code, topics) = fetch_offsets(
                state,
                session,
                group.group_id.0.as_str().to_string(),
                topics,
            )
            .await;
            let topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopics::default()
                        .with_name(TopicName(text(name)))
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(partition, offset, metadata)| {
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(partition)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(-1)
                                        .with_metadata(Some(text(metadata.unwrap_or_default())))
                                })
                                .collect(),
                        )
                })
                .collect();
            groups.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(group.group_id)
                    .with_error_code(error_code)
                    .with_topics(topics),
            );
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes))
            .collect()
    });
    let (error_code, topics) = fetch_offsets(
        state,
        session,
        request.group_id.0.as_str().to_string(),
        topics,
    )
    .await;
    let topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(text(name)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(partition, offset, metadata)| {
                            // Before v2 a group error is reported on each partition.
                            let code = if version < 2 { error_code } else { 0 };
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(partition)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(-1)
                                .with_metadata(Some(text(metadata.unwrap_or_default())))
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default()
        .with_error_code(error_code)
        .with_topics(topics)
}

pub fn list_groups(
    state: &Arc<BrokerState>,
    session: &Session,
    request: ListGroupsRequest,
) -> ListGroupsResponse {
    let wanted = |filter: &[StrBytes], value: &str| {
        filter.is_empty()
            || filter
                .iter()
                .any(|f| f.as_str().eq_ignore_ascii_case(value))
    };
    let groups = ops::groups::list_group_views(state, session)
        .into_iter()
        .filter_map(|(listing, protocol_type, classic)| {
            // Kafka 4's group types: "classic" for JoinGroup groups, "consumer" for the
            // broker-assigned protocol (Rill's native groups are that kind).
            let group_type = if classic { "classic" } else { "consumer" };
            let shown = wanted(&request.states_filter, &listing.state)
                && wanted(&request.types_filter, group_type);
            shown.then(|| {
                ListedGroup::default()
                    .with_group_id(group_id(listing.group_id))
                    .with_protocol_type(text(protocol_type))
                    .with_group_state(text(listing.state))
                    .with_group_type(text(group_type.to_string()))
            })
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub async fn describe_groups(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let ids = request
        .groups
        .iter()
        .map(|g| g.0.as_str().to_string())
        .collect();
    let groups = ops::groups::describe_group_views(state, session, ids)
        .await
        .into_iter()
        .map(|view| {
            let description = view.description;
            let described = DescribedGroup::default()
                .with_group_id(group_id(description.group_id))
                .with_authorized_operations(i32::MIN);
            match description.error_code {
                ErrorCode::NONE => {}
                // Kafka describes an unknown group as Dead, without error.
                ErrorCode::GROUP_ID_NOT_FOUND => {
                    return described.with_group_state(text("Dead".into()));
                }
                code => return described.with_error_code(kafka_code(code)),
            }
            let members = description
                .members
                .into_iter()
                .enumerate()
                .map(|(i, m)| {
                    let member = DescribedGroupMember::default()
                        .with_member_id(text(m.member_id))
                        .with_group_instance_id(m.instance_id.map(text));
                    match view.classic_members.get(i) {
                        Some(c) => member
                            .with_client_id(text(c.client_id.clone()))
                            .with_client_host(text(c.client_host.clone()))
                            .with_member_metadata(Bytes::from(c.metadata.clone()))
                            .with_member_assignment(Bytes::from(c.assignment.clone())),
                        None => member,
                    }
                })
                .collect();
            described
                .with_group_state(text(description.state))
                .with_protocol_type(text(view.protocol_type))
                .with_protocol_data(text(description.assignor))
                .with_members(members)
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub async fn delete_groups(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let request = rill::DeleteGroupsRequest {
        group_ids: request
            .groups_names
            .iter()
            .map(|g| g.0.as_str().to_string())
            .collect(),
    };
    let response = ops::groups::delete_groups(state, session, request).await;
    DeleteGroupsResponse::default().with_results(
        response
            .results
            .into_iter()
            .map(|r| {
                DeletableGroupResult::default()
                    .with_group_id(group_id(r.group_id))
                    .with_error_code(kafka_code(r.error_code))
            })
            .collect(),
    )
}
