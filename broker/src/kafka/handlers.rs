//! The Kafka APIs Rill serves: each turns a Kafka request (decoded by `kafka-protocol`) into
//! the plain request of a broker operation (`crate::ops`), calls it, and turns its answer into
//! the Kafka response. No behaviour lives here, only field mapping and Kafka's conventions
//! (-1 for "none", Kafka's error numbers, version differences).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, FetchRequest, FetchResponse, InitProducerIdRequest,
    InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ProduceRequest,
    ProduceResponse, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rill_protocol::api as rill;
use rill_protocol::ErrorCode;

use super::errors::kafka_code;
use super::groups;
use super::security;
use crate::group::coordinator::OFFSETS_TOPIC;
use crate::ops;
use crate::security::Session;
use crate::server::BrokerState;

/// Every API this listener serves and the versions of it, as ApiVersions advertises them
/// (docs/KAFKA.md). A request for anything else is answered by `unserved` or closes the
/// connection, as Kafka does.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    // v0: the SASL tokens follow as bare size-prefixed frames (`kafka::start` reads them);
    // v1: they travel in SaslAuthenticate. librdkafka asks for the range 0-1.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
    (ApiKey::AlterUserScramCredentials, 0, 0),
];

/// The version range served for `api`, if it is served.
pub fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(key, _, _)| *key == api)
        .map(|(_, min, max)| (*min, *max))
}

/// The answer to a request of an API that is not served but that a client may send anyway:
/// transactions, which clients configured for them ask for even when ApiVersions
/// does not list them. Every result carries UNSUPPORTED_VERSION, so the client gets an error
/// naming the cause rather than a closed connection, after which it would reconnect and ask
/// again. `None` for any other API (the connection is closed, as Kafka does).
pub fn unserved(request: RequestKind) -> Option<ResponseKind> {
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kafka_protocol::messages::add_partitions_to_txn_response::{
        AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
    };
    use kafka_protocol::messages::describe_transactions_response::TransactionState;
    use kafka_protocol::messages::txn_offset_commit_response::{
        TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
    };
    use kafka_protocol::messages::{
        AddOffsetsToTxnResponse, AddPartitionsToTxnResponse, DescribeTransactionsResponse,
        EndTxnResponse, ListTransactionsResponse, TxnOffsetCommitResponse,
    };
    let code = kafka_code(ErrorCode::UNSUPPORTED_API);
    let txn_topics = |topics: &[AddPartitionsToTxnTopic]| {
        topics
            .iter()
            .map(|topic| {
                AddPartitionsToTxnTopicResult::default()
                    .with_name(topic.name.clone())
                    .with_results_by_partition(
                        topic
                            .partitions
                            .iter()
                            .map(|p| {
                                AddPartitionsToTxnPartitionResult::default()
                                    .with_partition_index(*p)
                                    .with_partition_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect::<Vec<_>>()
    };
    Some(match request {
        RequestKind::AddPartitionsToTxn(request) => ResponseKind::AddPartitionsToTxn(
            AddPartitionsToTxnResponse::default()
                .with_error_code(code)
                .with_results_by_topic_v3_and_below(txn_topics(&request.v3_and_below_topics))
                .with_results_by_transaction(
                    request
                        .transactions
                        .iter()
                        .map(|t| {
                            AddPartitionsToTxnResult::default()
                                .with_transactional_id(t.transactional_id.clone())
                                .with_topic_results(txn_topics(&t.topics))
                        })
                        .collect(),
                ),
        ),
        RequestKind::AddOffsetsToTxn(_) => {
            ResponseKind::AddOffsetsToTxn(AddOffsetsToTxnResponse::default().with_error_code(code))
        }
        RequestKind::EndTxn(_) => ResponseKind::EndTxn(
            EndTxnResponse::default()
                .with_error_code(code)
                .with_producer_id(kafka_protocol::messages::ProducerId(-1))
                .with_producer_epoch(-1),
        ),
        RequestKind::TxnOffsetCommit(request) => ResponseKind::TxnOffsetCommit(
            TxnOffsetCommitResponse::default().with_topics(
                request
                    .topics
                    .iter()
                    .map(|topic| {
                        TxnOffsetCommitResponseTopic::default()
                            .with_name(topic.name.clone())
                            .with_partitions(
                                topic
                                    .partitions
                                    .iter()
                                    .map(|p| {
                                        TxnOffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::ListTransactions(_) => ResponseKind::ListTransactions(
            ListTransactionsResponse::default().with_error_code(code),
        ),
        RequestKind::DescribeTransactions(request) => ResponseKind::DescribeTransactions(
            DescribeTransactionsResponse::default().with_transaction_states(
                request
                    .transactional_ids
                    .iter()
                    .map(|id| {
                        TransactionState::default()
                            .with_error_code(code)
                            .with_transactional_id(id.clone())
                            .with_producer_id(kafka_protocol::messages::ProducerId(-1))
                            .with_producer_epoch(-1)
                    })
                    .collect(),
            ),
        ),
        _ => return None,
    })
}

/// A response still being produced; `None` sends nothing (produce with acks = 0).
pub type Reply = BoxFuture<'static, Option<Response>>;

/// A response to encode.
pub enum Response {
    Message(ResponseKind),
    /// A Fetch response whose partitions' records (in order) are sent as they are.
    Fetch {
        response: FetchResponse,
        records: Vec<Bytes>,
    },
}

fn ready(response: ResponseKind) -> Reply {
    futures::future::ready(Some(Response::Message(response))).boxed()
}

/// A response that takes long (a parked group request, a commit waiting for replication): the
/// connection reads on meanwhile, and answers in request order.
fn deferred(response: impl std::future::Future<Output = ResponseKind> + Send + 'static) -> Reply {
    async move { Some(Response::Message(response.await)) }.boxed()
}

/// Runs one decoded request (its version is served: checked by the caller); `Err` for an
/// API in `SUPPORTED` without a handler here (a bug: the connection is closed, not left
/// waiting for an answer).
pub async fn start(
    state: &Arc<BrokerState>,
    request: RequestKind,
    version: i16,
    client: &groups::Client,
    session: &mut Session,
) -> Result<Reply, String> {
    Ok(match request {
        RequestKind::SaslHandshake(request) => ready(ResponseKind::SaslHandshake(
            security::sasl_handshake(state, session, request, version),
        )),
        RequestKind::SaslAuthenticate(request) => ready(ResponseKind::SaslAuthenticate(
            security::sasl_authenticate(state, session, request).await,
        )),
        RequestKind::CreateAcls(request) => ready(ResponseKind::CreateAcls(
            security::create_acls(state, session, request).await,
        )),
        RequestKind::DescribeAcls(request) => ready(ResponseKind::DescribeAcls(
            security::describe_acls(state, session, request),
        )),
        RequestKind::DeleteAcls(request) => ready(ResponseKind::DeleteAcls(
            security::delete_acls(state, session, request).await,
        )),
        RequestKind::AlterClientQuotas(request) => ready(ResponseKind::AlterClientQuotas(
            security::alter_client_quotas(state, session, request).await,
        )),
        RequestKind::DescribeClientQuotas(request) => ready(ResponseKind::DescribeClientQuotas(
            security::describe_client_quotas(state, session, request),
        )),
        RequestKind::AlterUserScramCredentials(request) => {
            ready(ResponseKind::AlterUserScramCredentials(
                security::alter_user_scram_credentials(state, session, request).await,
            ))
        }
        RequestKind::DescribeUserScramCredentials(request) => {
            ready(ResponseKind::DescribeUserScramCredentials(
                security::describe_user_scram_credentials(state, session, request),
            ))
        }
        RequestKind::ApiVersions(_) => ready(ResponseKind::ApiVersions(api_versions(0))),
        RequestKind::Metadata(request) => ready(ResponseKind::Metadata(
            metadata(state, session, request, version).await,
        )),
        RequestKind::Produce(request) => produce(state, session, request).await,
        RequestKind::Fetch(request) => fetch(state, session, request),
        RequestKind::ListOffsets(request) => ready(ResponseKind::ListOffsets(
            list_offsets(state, session, request).await,
        )),
        RequestKind::CreateTopics(request) => ready(ResponseKind::CreateTopics(
            create_topics(state, session, request).await,
        )),
        RequestKind::DeleteTopics(request) => ready(ResponseKind::DeleteTopics(
            delete_topics(state, session, request).await,
        )),
        RequestKind::InitProducerId(request) => ready(ResponseKind::InitProducerId(
            init_producer_id(state, session, request).await,
        )),
        RequestKind::FindCoordinator(request) => ready(ResponseKind::FindCoordinator(
            groups::find_coordinator(state, session, request, version),
        )),
        RequestKind::JoinGroup(request) => {
            let (state, client, session) = (state.clone(), client.clone(), session.clone());
            deferred(async move {
                ResponseKind::JoinGroup(
                    groups::join_group(&state, &session, request, version, &client).await,
                )
            })
        }
        RequestKind::SyncGroup(request) => {
            let (state, session) = (state.clone(), session.clone());
            deferred(async move {
                ResponseKind::SyncGroup(groups::sync_group(&state, &session, request).await)
            })
        }
        RequestKind::Heartbeat(request) => ready(ResponseKind::Heartbeat(
            groups::heartbeat(state, session, request).await,
        )),
        RequestKind::LeaveGroup(request) => ready(ResponseKind::LeaveGroup(
            groups::leave_group(state, session, request, version).await,
        )),
        RequestKind::OffsetCommit(request) => {
            let (state, session) = (state.clone(), session.clone());
            deferred(async move {
                ResponseKind::OffsetCommit(groups::offset_commit(&state, &session, request).await)
            })
        }
        RequestKind::OffsetFetch(request) => ready(ResponseKind::OffsetFetch(
            groups::offset_fetch(state, session, request, version).await,
        )),
        RequestKind::ListGroups(request) => ready(ResponseKind::ListGroups(groups::list_groups(
            state, session, request,
        ))),
        RequestKind::DescribeGroups(request) => ready(ResponseKind::DescribeGroups(
            groups::describe_groups(state, session, request).await,
        )),
        RequestKind::DeleteGroups(request) => ready(ResponseKind::DeleteGroups(
            groups::delete_groups(state, session, request).await,
        )),
        RequestKind::CreatePartitions(request) => ready(ResponseKind::CreatePartitions(
            create_partitions(state, session, request).await,
        )),
        RequestKind::DescribeCluster(request) => ready(ResponseKind::DescribeCluster(
            describe_cluster(state, session, request).await,
        )),
        RequestKind::OffsetForLeaderEpoch(request) => ready(ResponseKind::OffsetForLeaderEpoch(
            offset_for_leader_epoch(state, session, request).await,
        )),
        RequestKind::DescribeConfigs(request) => ready(ResponseKind::DescribeConfigs(
            describe_configs(state, session, request),
        )),
        _ => return Err("served but without a handler".into()),
    })
}

/// The ApiVersions answer, with `error_code` (UNSUPPORTED_VERSION for KIP-511's fallback).
pub fn api_versions(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            SUPPORTED
                .iter()
                .map(|(key, min, max)| {
                    ApiVersion::default()
                        .with_api_key(*key as i16)
                        .with_min_version(*min)
                        .with_max_version(*max)
                })
                .collect(),
        )
}

fn name(topic: &TopicName) -> String {
    topic.0.as_str().to_string()
}

fn topic_name(name: String) -> TopicName {
    TopicName(StrBytes::from_string(name))
}

fn message(text: Option<String>) -> Option<StrBytes> {
    text.map(StrBytes::from_string)
}

/// A Kafka partition index (an `i32`) as Rill's; a negative one names no partition.
fn partition(index: i32) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// Kafka's "none" (-1) for an optional epoch.
fn epoch(value: i32) -> Option<u32> {
    u32::try_from(value).ok()
}

/// Every live broker that has a Kafka listener, at its registered Kafka address (this one's
/// own address even before its registration is applied).
fn brokers(state: &BrokerState) -> Vec<MetadataResponseBroker> {
    let metadata = state.controller.metadata();
    let mut brokers: BTreeMap<u64, (String, u16)> = metadata
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .filter_map(|b| {
            let address = metadata.listeners.get(&b.node_id)?.get("kafka")?;
            Some((b.node_id, address.clone()))
        })
        .collect();
    if let Some(own) = &state.kafka_advertised {
        brokers.insert(state.node_id, own.clone());
    }
    brokers
        .into_iter()
        .map(|(node_id, (host, port))| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(node_id as i32))
                .with_host(StrBytes::from_string(host))
                .with_port(i32::from(port))
        })
        .collect()
}

async fn metadata(
    state: &Arc<BrokerState>,
    session: &Session,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    // v0 asks for every topic with an empty list; later versions with null.
    let names: Option<Vec<String>> = match request.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => Some(
            topics
                .iter()
                .map(|t| t.name.as_ref().map(name).unwrap_or_default())
                .collect(),
        ),
        _ => None,
    };
    // Before v4 requesting a topic auto-created it (if the broker allows).
    let auto_create = version < 4 || request.allow_auto_topic_creation;
    let response = MetadataResponse::default()
        .with_brokers(brokers(state))
        // Every Rill broker takes admin requests (they go through the controller quorum).
        .with_controller_id(BrokerId(state.node_id as i32));
    let cluster = ops::metadata::metadata_of(
        state,
        session,
        rill::MetadataRequest {
            topics: names.clone(),
        },
        auto_create,
    )
    .await;
    let cluster = match cluster {
        Ok(cluster) => cluster,
        Err(code) => {
            // Not ready: named topics answer retriably, so clients refresh and retry.
            let topics = names
                .unwrap_or_default()
                .into_iter()
                .map(|n| {
                    MetadataResponseTopic::default()
                        .with_name(Some(topic_name(n)))
                        .with_error_code(kafka_code(code))
                })
                .collect();
            return response.with_topics(topics);
        }
    };
    let topics = cluster
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_error_code(kafka_code(p.error_code))
                        .with_partition_index(p.partition as i32)
                        .with_leader_id(BrokerId(p.leader.map_or(-1, |l| l as i32)))
                        .with_leader_epoch(p.leader_epoch as i32)
                        .with_replica_nodes(
                            p.replicas.iter().map(|r| BrokerId(*r as i32)).collect(),
                        )
                        .with_isr_nodes(p.isr.iter().map(|r| BrokerId(*r as i32)).collect())
                })
                .collect();
            MetadataResponseTopic::default()
                .with_error_code(kafka_code(t.error_code))
                .with_is_internal(t.name == OFFSETS_TOPIC)
                .with_name(Some(topic_name(t.name)))
                .with_partitions(partitions)
        })
        .collect();
    response
        .with_cluster_id(Some(StrBytes::from_string(cluster.cluster_id)))
        .with_topics(topics)
}

async fn produce(state: &Arc<BrokerState>, session: &Session, request: ProduceRequest) -> Reply {
    let acks = match request.acks {
        0 => rill::Acks::None,
        1 => rill::Acks::Leader,
        -1 => rill::Acks::All,
        _ => {
            return ready(ResponseKind::Produce(produce_refused(
                &request,
                21,
                "acks must be 0, 1 or -1",
            )))
        }
    };
    if request.transactional_id.is_some() {
        // Transactions are not served (docs/KAFKA.md); InitProducerId refuses them first.
        return ready(ResponseKind::Produce(produce_refused(
            &request,
            kafka_code(ErrorCode::UNSUPPORTED_API),
            "transactions are not supported by Rill yet",
        )));
    }
    let produce = rill::ProduceRequest {
        acks,
        timeout_ms: u32::try_from(request.timeout_ms).unwrap_or(0),
        topics: request
            .topic_data
            .into_iter()
            .map(|t| rill::ProduceTopic {
                name: name(&t.name),
                partitions: t
                    .partition_data
                    .into_iter()
                    .map(|p| rill::ProducePartition {
                        partition: partition(p.index),
                        records: p.records.unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect(),
    };
    let acked = ops::produce::produce(state, session, produce).await;
    async move {
        let response = acked.await?;
        let responses = response
            .topics
            .into_iter()
            .map(|t| {
                TopicProduceResponse::default()
                    .with_name(topic_name(t.name))
                    .with_partition_responses(
                        t.partitions
                            .into_iter()
                            .map(|p| {
                                let failed = p.error_code != ErrorCode::NONE;
                                PartitionProduceResponse::default()
                                    .with_index(p.partition as i32)
                                    .with_error_code(kafka_code(p.error_code))
                                    .with_base_offset(if failed {
                                        -1
                                    } else {
                                        p.base_offset as i64
                                    })
                                    .with_log_append_time_ms(-1)
                                    .with_log_start_offset(if failed {
                                        -1
                                    } else {
                                        p.log_start_offset as i64
                                    })
                                    .with_error_message(message(p.error_message))
                            })
                            .collect(),
                    )
            })
            .collect();
        Some(Response::Message(ResponseKind::Produce(
            ProduceResponse::default()
                .with_responses(responses)
                .with_throttle_time_ms(throttle_ms(response.throttle_time_ms)),
        )))
    }
    .boxed()
}

/// A quota's throttle time as Kafka's responses carry it (clients back off for it, KIP-219).
fn throttle_ms(ms: u32) -> i32 {
    i32::try_from(ms).unwrap_or(i32::MAX)
}

/// Every partition of `request` answered with `error_code`.
fn produce_refused(request: &ProduceRequest, error_code: i16, text: &str) -> ProduceResponse {
    ProduceResponse::default().with_responses(
        request
            .topic_data
            .iter()
            .map(|t| {
                TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(
                        t.partition_data
                            .iter()
                            .map(|p| {
                                PartitionProduceResponse::default()
                                    .with_index(p.index)
                                    .with_error_code(error_code)
                                    .with_base_offset(-1)
                                    .with_log_append_time_ms(-1)
                                    .with_log_start_offset(-1)
                                    .with_error_message(Some(StrBytes::from_string(text.into())))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn fetch(state: &Arc<BrokerState>, session: &Session, request: FetchRequest) -> Reply {
    // A Kafka client is always a consumer here: brokers replicate over Rill's own protocol,
    // and a `replica_id` from this port is not believed. No fetch sessions (KIP-227): the
    // answer's session id 0 tells clients to send full fetches. No transactions, so
    // read_committed reads what read_uncommitted reads: up to the high watermark.
    let fetch = rill::FetchRequest {
        replica_id: None,
        max_wait_ms: u32::try_from(request.max_wait_ms).unwrap_or(0),
        min_bytes: u32::try_from(request.min_bytes).unwrap_or(0),
        max_bytes: u32::try_from(request.max_bytes).unwrap_or(0),
        topics: request
            .topics
            .into_iter()
            .map(|t| rill::FetchTopic {
                name: name(&t.topic),
                partitions: t
                    .partitions
                    .into_iter()
                    .map(|p| rill::FetchPartition {
                        partition: partition(p.partition),
                        current_leader_epoch: epoch(p.current_leader_epoch),
                        fetch_offset: u64::try_from(p.fetch_offset).unwrap_or(u64::MAX),
                        partition_max_bytes: u32::try_from(p.partition_max_bytes).unwrap_or(0),
                        last_fetched_epoch: None,
                    })
                    .collect(),
            })
            .collect(),
    };
    let fetched = ops::fetch::fetch(state, session, fetch);
    async move {
        let Some(response) = fetched.await else {
            let code = kafka_code(ErrorCode::UNKNOWN_SERVER_ERROR);
            let response = FetchResponse::default().with_error_code(code);
            return Some(Response::Message(ResponseKind::Fetch(response)));
        };
        let mut records = Vec::new();
        let throttle_time_ms = response.throttle_time_ms;
        let responses = response
            .topics
            .into_iter()
            .map(|t| {
                FetchableTopicResponse::default()
                    .with_topic(topic_name(t.name))
                    .with_partitions(
                        t.partitions
                            .into_iter()
                            .map(|p| {
                                // Kafka answers an errored partition with -1 offsets
                                // (a 0 high watermark reads as "end of partition").
                                let failed = p.error_code != ErrorCode::NONE;
                                let hw = if failed { -1 } else { p.high_watermark as i64 };
                                let start = if failed {
                                    -1
                                } else {
                                    p.log_start_offset as i64
                                };
                                records.push(p.records);
                                PartitionData::default()
                                    .with_partition_index(p.partition as i32)
                                    .with_error_code(kafka_code(p.error_code))
                                    .with_high_watermark(hw)
                                    .with_last_stable_offset(hw)
                                    .with_log_start_offset(start)
                                    .with_aborted_transactions(Some(Vec::new()))
                                    .with_preferred_read_replica(BrokerId(-1))
                                    // Sent on their own, from the mapping (`fetch.rs`).
                                    .with_records(None)
                            })
                            .collect(),
                    )
            })
            .collect();
        let response = FetchResponse::default()
            .with_responses(responses)
            .with_throttle_time_ms(throttle_ms(throttle_time_ms));
        Some(Response::Fetch { response, records })
    }
    .boxed()
}

async fn list_offsets(
    state: &Arc<BrokerState>,
    session: &Session,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    // Specs Rill does not serve are answered per partition, the rest go to the operation.
    let mut refused: BTreeSet<(String, i32)> = BTreeSet::new();
    let list = rill::ListOffsetsRequest {
        topics: request
            .topics
            .iter()
            .map(|t| rill::ListOffsetsTopic {
                name: name(&t.name),
                partitions: t
                    .partitions
                    .iter()
                    .filter_map(|p| {
                        let spec = match p.timestamp {
                            -1 => rill::OffsetSpec::Latest,
                            -2 => rill::OffsetSpec::Earliest,
                            ts if ts >= 0 => rill::OffsetSpec::Timestamp(ts),
                            _ => {
                                refused.insert((name(&t.name), p.partition_index));
                                return None;
                            }
                        };
                        Some(rill::ListOffsetsPartition {
                            partition: partition(p.partition_index),
                            current_leader_epoch: epoch(p.current_leader_epoch),
                            spec,
                        })
                    })
                    .collect(),
            })
            .collect(),
    };
    let listed = ops::list_offsets::list_offsets(state, session, list).await;
    let mut topics: Vec<ListOffsetsTopicResponse> = listed
        .topics
        .into_iter()
        .map(|t| {
            let topic = t.name.clone();
            let mut partitions: Vec<ListOffsetsPartitionResponse> = t
                .partitions
                .into_iter()
                .map(|p| {
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition as i32)
                        .with_error_code(kafka_code(p.error_code))
                        .with_timestamp(p.timestamp)
                        .with_offset(p.offset.map_or(-1, |o| o as i64))
                        .with_leader_epoch(-1)
                })
                .collect();
            for (_, index) in refused.iter().filter(|(name, _)| *name == topic) {
                partitions.push(
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(*index)
                        .with_error_code(kafka_code(ErrorCode::UNSUPPORTED_VERSION))
                        .with_timestamp(-1)
                        .with_offset(-1)
                        .with_leader_epoch(-1),
                );
            }
            ListOffsetsTopicResponse::default()
                .with_name(topic_name(topic))
                .with_partitions(partitions)
        })
        .collect();
    topics.retain(|t| !t.partitions.is_empty());
    ListOffsetsResponse::default().with_topics(topics)
}

async fn create_topics(
    state: &Arc<BrokerState>,
    session: &Session,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let topic_name_text = name(&topic.name);
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        if !topic.assignments.is_empty() {
            results.push(
                result
                    .with_error_code(kafka_code(ErrorCode::INVALID_REQUEST))
                    .with_error_message(message(Some(
                        "manual replica assignments are not supported; give a partition count and a replication factor".into(),
                    ))),
            );
            continue;
        }
        // -1: the broker's defaults (KIP-464).
        let partitions =
            u32::try_from(topic.num_partitions).unwrap_or(state.config.default_partitions);
        let replication_factor = u16::try_from(topic.replication_factor)
            .unwrap_or(state.config.default_replication_factor);
        let create = rill::CreateTopicsRequest {
            topics: vec![rill::CreatableTopic {
                name: topic_name_text,
                partitions,
                replication_factor,
                configs: topic
                    .configs
                    .into_iter()
                    .filter_map(|c| {
                        Some(rill::ConfigEntry {
                            key: c.name.as_str().to_string(),
                            value: c.value?.as_str().to_string(),
                        })
                    })
                    .collect(),
            }],
            timeout_ms: u32::try_from(request.timeout_ms).unwrap_or(0),
            validate_only: request.validate_only,
        };
        let created = ops::create_topics::create_topics(state, session, create).await;
        let (error_code, error_message) = created
            .topics
            .into_iter()
            .next()
            .map_or((ErrorCode::UNKNOWN_SERVER_ERROR, None), |t| {
                (t.error_code, t.error_message)
            });
        let ok = error_code == ErrorCode::NONE;
        results.push(
            result
                .with_error_code(kafka_code(error_code))
                .with_error_message(message(error_message))
                .with_num_partitions(if ok { partitions as i32 } else { -1 })
                .with_replication_factor(if ok { replication_factor as i16 } else { -1 }),
        );
    }
    CreateTopicsResponse::default().with_topics(results)
}

async fn delete_topics(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    // v0-5 name topics in `topic_names`, v6 in `topics` (by name; ids are not served).
    let mut names: Vec<Option<String>> =
        request.topic_names.iter().map(|n| Some(name(n))).collect();
    names.extend(request.topics.iter().map(|t| t.name.as_ref().map(name)));
    let mut responses = Vec::with_capacity(names.len());
    for topic in names {
        let Some(topic) = topic else {
            responses.push(
                DeletableTopicResult::default()
                    .with_error_code(kafka_protocol::error::ResponseError::UnknownTopicId.code())
                    .with_error_message(message(Some(
                        "topic ids are not supported; name the topic".into(),
                    ))),
            );
            continue;
        };
        let deleted = ops::delete_topics::delete_topics(
            state,
            session,
            rill::DeleteTopicsRequest {
                names: vec![topic.clone()],
                timeout_ms: u32::try_from(request.timeout_ms).unwrap_or(0),
            },
        )
        .await;
        let (error_code, error_message) = deleted
            .topics
            .into_iter()
            .next()
            .map_or((ErrorCode::UNKNOWN_SERVER_ERROR, None), |t| {
                (t.error_code, t.error_message)
            });
        responses.push(
            DeletableTopicResult::default()
                .with_name(Some(topic_name(topic)))
                .with_error_code(kafka_code(error_code))
                .with_error_message(message(error_message)),
        );
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

async fn init_producer_id(
    state: &Arc<BrokerState>,
    session: &Session,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let response = ops::init_producer_id::init_producer_id(
        state,
        session,
        rill::InitProducerIdRequest {
            transactional_id: request.transactional_id.map(|t| t.0.as_str().to_string()),
            transaction_timeout_ms: request.transaction_timeout_ms,
        },
    )
    .await;
    InitProducerIdResponse::default()
        .with_error_code(kafka_code(response.error_code))
        .with_producer_id(kafka_protocol::messages::ProducerId(response.producer_id))
        .with_producer_epoch(response.producer_epoch)
}

async fn create_partitions(
    state: &Arc<BrokerState>,
    session: &Session,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    // Manual assignments are refused per topic; the rest go to the operation.
    let mut results = Vec::with_capacity(request.topics.len());
    let mut grow = Vec::new();
    for topic in &request.topics {
        if topic.assignments.is_some() {
            results.push(
                CreatePartitionsTopicResult::default()
                    .with_name(topic.name.clone())
                    .with_error_code(kafka_code(ErrorCode::INVALID_REQUEST))
                    .with_error_message(message(Some(
                        "manual replica assignments are not supported; give a partition count"
                            .into(),
                    ))),
            );
            continue;
        }
        grow.push(rill::CreatePartitionsTopic {
            name: name(&topic.name),
            count: u32::try_from(topic.count).unwrap_or(0),
        });
    }
    let grown = ops::create_partitions::create_partitions(
        state,
        session,
        rill::CreatePartitionsRequest {
            topics: grow,
            validate_only: request.validate_only,
        },
    )
    .await;
    results.extend(grown.topics.into_iter().map(|t| {
        CreatePartitionsTopicResult::default()
            .with_name(topic_name(t.name))
            .with_error_code(kafka_code(t.error_code))
            .with_error_message(message(t.error_message))
    }));
    CreatePartitionsResponse::default().with_results(results)
}

async fn describe_cluster(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let response = DescribeClusterResponse::default()
        .with_controller_id(BrokerId(state.node_id as i32))
        .with_cluster_authorized_operations(i32::MIN)
        .with_endpoint_type(1);
    if request.endpoint_type != 1 {
        // Endpoint type 2 (controllers, KIP-919): Rill's controllers speak Raft, not Kafka.
        return response
            .with_error_code(kafka_code(ErrorCode::INVALID_REQUEST))
            .with_error_message(message(Some(
                "only broker endpoints (type 1) are served".into(),
            )));
    }
    let cluster = ops::metadata::metadata_of(
        state,
        session,
        rill::MetadataRequest {
            topics: Some(Vec::new()),
        },
        false,
    )
    .await;
    let cluster_id = match cluster {
        Ok(cluster) => cluster.cluster_id,
        Err(code) => return response.with_error_code(kafka_code(code)),
    };
    let brokers = brokers(state)
        .into_iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(b.node_id)
                .with_host(b.host)
                .with_port(b.port)
        })
        .collect();
    response
        .with_cluster_id(StrBytes::from_string(cluster_id))
        .with_brokers(brokers)
}

async fn offset_for_leader_epoch(
    state: &Arc<BrokerState>,
    session: &Session,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    // A Kafka client is a consumer here (brokers replicate over Rill's protocol): `replica_id`
    // is not believed. A negative epoch asks about no epoch: UNDEFINED (-1, -1).
    let queries: Vec<ops::offset_for_leader_epoch::EpochQuery> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| ops::offset_for_leader_epoch::EpochQuery {
                    topic: name(&t.topic),
                    partition: partition(p.partition),
                    current_leader_epoch: epoch(p.current_leader_epoch),
                    leader_epoch: epoch(p.leader_epoch).unwrap_or(0),
                })
        })
        .collect();
    let mut answers =
        ops::offset_for_leader_epoch::offset_for_leader_epoch(state, session, &queries)
            .await
            .into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let answer = answers.next();
                    let (code, end) = answer.map_or((ErrorCode::UNKNOWN_SERVER_ERROR, None), |a| {
                        (a.error_code, a.end)
                    });
                    let end = end.filter(|_| p.leader_epoch >= 0);
                    EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_error_code(kafka_code(code))
                        .with_leader_epoch(end.map_or(-1, |(e, _)| e as i32))
                        .with_end_offset(end.map_or(-1, |(_, o)| o as i64))
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// Kafka's broker config name for a topic config key (its default), where it has one.
fn broker_config_name(topic_key: &str) -> &str {
    match topic_key {
        "retention.ms" => "log.retention.ms",
        "retention.bytes" => "log.retention.bytes",
        "segment.bytes" => "log.segment.bytes",
        "segment.ms" => "log.roll.ms",
        "max.message.bytes" => "message.max.bytes",
        "cleanup.policy" => "log.cleanup.policy",
        "min.cleanable.dirty.ratio" => "log.cleaner.min.cleanable.ratio",
        "delete.retention.ms" => "log.cleaner.delete.retention.ms",
        "min.compaction.lag.ms" => "log.cleaner.min.compaction.lag.ms",
        other => other,
    }
}

fn describe_configs(
    state: &Arc<BrokerState>,
    session: &Session,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    const TOPIC: i8 = 2;
    const BROKER: i8 = 4;
    // Kafka's config sources.
    const TOPIC_CONFIG: i8 = 1;
    const STATIC_BROKER_CONFIG: i8 = 4;
    const DEFAULT_CONFIG: i8 = 5;
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let name = resource.resource_name.as_str();
            let configs = match resource.resource_type {
                TOPIC => {
                    ops::describe_configs::topic_configs(state, session, name).map(|configs| {
                        configs
                            .into_iter()
                            .map(|c| {
                                let source = if c.from_topic {
                                    TOPIC_CONFIG
                                } else {
                                    DEFAULT_CONFIG
                                };
                                (c.name.to_string(), c.value, source, false)
                            })
                            .collect::<Vec<_>>()
                    })
                }
                // Empty: the broker answering (the cluster-wide default resource).
                BROKER if name.is_empty() || name == state.node_id.to_string() => {
                    ops::describe_configs::broker_defaults(state, session).map(|configs| {
                        configs
                            .into_iter()
                            .map(|c| {
                                let key = broker_config_name(c.name).to_string();
                                (key, c.value, STATIC_BROKER_CONFIG, true)
                            })
                            .collect()
                    })
                }
                BROKER => {
                    return result
                        .with_error_code(kafka_code(ErrorCode::INVALID_REQUEST))
                        .with_error_message(message(Some(format!(
                            "this is broker {}: ask broker {name} for its configs",
                            state.node_id
                        ))))
                }
                other => {
                    return result
                        .with_error_code(kafka_code(ErrorCode::INVALID_REQUEST))
                        .with_error_message(message(Some(format!(
                            "resource type {other} is not served (topics 2 and brokers 4 are)"
                        ))))
                }
            };
            match configs {
                Err(code) => result.with_error_code(kafka_code(code)),
                Ok(configs) => {
                    let wanted = resource.configuration_keys.as_ref();
                    result.with_configs(
                        configs
                            .into_iter()
                            .filter(|(key, ..)| {
                                wanted.is_none_or(|keys| keys.iter().any(|k| k.as_str() == key))
                            })
                            .map(|(key, value, source, read_only)| {
                                DescribeConfigsResourceResult::default()
                                    .with_name(StrBytes::from_string(key))
                                    .with_value(Some(StrBytes::from_string(value)))
                                    .with_config_source(source)
                                    .with_read_only(read_only)
                            })
                            .collect(),
                    )
                }
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
