//! [`Admin`]: create, delete, list and describe topics; list offsets; describe the cluster.

use std::collections::BTreeMap;

use rill_protocol::api::{
    ConfigEntry, CreatableTopic, CreatePartitionsRequest, CreatePartitionsTopic,
    CreateTopicsRequest, DeleteGroupsRequest, DeleteTopicsRequest, DescribeGroupsRequest,
    ElectLeadersRequest, ListGroupsRequest, ListOffsetsPartition, ListOffsetsRequest,
    ListOffsetsTopic, OffsetCommitRequest, OffsetFetchRequest, OffsetSpec, RequestBody,
    ResponseBody,
};
use rill_protocol::ErrorCode;

use crate::client::{Client, Purpose};
use crate::error::{ClientError, Result};

/// A topic to create.
#[derive(Debug, Clone)]
pub struct NewTopic {
    /// Topic name: 1-249 characters of `[a-zA-Z0-9._-]`.
    pub name: String,
    /// Number of partitions (1-10000).
    pub partitions: u32,
    /// Replicas per partition; at most the number of live brokers.
    pub replication_factor: u16,
    /// Topic configs, e.g. `retention.ms`, `retention.bytes`, `segment.bytes`, `max.message.bytes`, `flush`.
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    /// A topic with replication factor 1 and no configs.
    pub fn new(name: impl Into<String>, partitions: u32) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            replication_factor: 1,
            configs: BTreeMap::new(),
        }
    }
}

/// A partition with its offsets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionDescription {
    /// Partition index.
    pub partition: u32,
    /// Node id of the leader, if elected.
    pub leader: Option<u32>,
    /// Incremented on every leadership change.
    pub leader_epoch: u32,
    /// Node ids holding a replica; the first is the preferred leader.
    pub replicas: Vec<u32>,
    /// Replicas in sync with the leader.
    pub isr: Vec<u32>,
    /// Log start offset.
    pub earliest_offset: Option<u64>,
    /// The high watermark: the offset after the last record every in-sync replica has
    /// (consumers read up to it). `None` while the partition has no leader.
    pub latest_offset: Option<u64>,
}

/// A broker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BrokerDescription {
    /// Broker node id.
    pub node_id: u32,
    /// `host:port` clients use.
    pub address: String,
    /// Whether this broker is the active metadata controller.
    pub is_controller: bool,
    /// Whether it votes in the metadata quorum.
    pub voter: bool,
    /// Fenced by the controller (missed heartbeats; leads nothing until it returns).
    pub fenced: bool,
}

/// Administrative operations. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    /// Admin operations over `client`.
    pub fn new(client: Client) -> Admin {
        Admin { client }
    }

    /// Creates a topic; fails with `TOPIC_ALREADY_EXISTS`, `INVALID_*` and so on.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<()> {
        let request = CreateTopicsRequest {
            topics: vec![CreatableTopic {
                name: topic.name.clone(),
                partitions: topic.partitions,
                replication_factor: topic.replication_factor,
                configs: topic
                    .configs
                    .iter()
                    .map(|(k, v)| ConfigEntry {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            }],
            timeout_ms: self.client.config().request_timeout.as_millis() as u32,
            validate_only: false,
        };
        // Per-topic codes such as CLUSTER_NOT_READY (a broker that just started) are retried too.
        self.client
            .retry("create topic", || async {
                let ResponseBody::CreateTopics(response) = self
                    .client
                    .request_any(RequestBody::CreateTopics(request.clone()))
                    .await?
                else {
                    return Err(unexpected());
                };
                let result = response.topics.into_iter().next().ok_or_else(unexpected)?;
                check(
                    result.error_code,
                    format!("create topic {}", topic.name),
                    result.error_message,
                )
            })
            .await?;
        self.client.refresh_metadata().await
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = DeleteTopicsRequest {
            names: vec![name.to_string()],
            timeout_ms: self.client.config().request_timeout.as_millis() as u32,
        };
        self.client
            .retry("delete topic", || async {
                let ResponseBody::DeleteTopics(response) = self
                    .client
                    .request_any(RequestBody::DeleteTopics(request.clone()))
                    .await?
                else {
                    return Err(unexpected());
                };
                let result = response.topics.into_iter().next().ok_or_else(unexpected)?;
                check(
                    result.error_code,
                    format!("delete topic {name}"),
                    result.error_message,
                )
            })
            .await?;
        self.client.refresh_metadata().await
    }

    /// Topic names, sorted.
    pub async fn list_topics(&self) -> Result<Vec<String>> {
        self.client.refresh_metadata().await?;
        let mut names: Vec<String> = self.client.metadata().topics.keys().cloned().collect();
        names.sort();
        Ok(names)
    }

    /// Partitions of a topic with leaders, replicas, ISR and earliest/latest offsets.
    pub async fn describe_topic(&self, name: &str) -> Result<Vec<PartitionDescription>> {
        self.client.refresh_metadata().await?;
        let partitions = self.client.partitions(name).await?;
        let mut described = Vec::with_capacity(partitions.len());
        for p in partitions {
            // One attempt each: an offline partition shows no offsets instead of failing all.
            let offset = |spec| async move {
                p.leader?; // offline: no leader to ask
                self.partition_offset(name, p.partition, spec)
                    .await
                    .ok()
                    .flatten()
            };
            let earliest_offset = offset(OffsetSpec::Earliest).await;
            let latest_offset = offset(OffsetSpec::Latest).await;
            described.push(PartitionDescription {
                partition: p.partition,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                replicas: p.replicas,
                isr: p.isr,
                earliest_offset,
                latest_offset,
            });
        }
        Ok(described)
    }

    /// The offset `spec` names in every partition of `topic` (`None`: no record at or after a timestamp).
    pub async fn list_offsets(
        &self,
        topic: &str,
        spec: OffsetSpec,
    ) -> Result<Vec<(u32, Option<u64>)>> {
        let partitions = self.client.partitions(topic).await?;
        let mut out = Vec::new();
        for p in partitions {
            let offset = self
                .client
                .retry("list offsets", || {
                    self.partition_offset(topic, p.partition, spec)
                })
                .await?;
            out.push((p.partition, offset));
        }
        Ok(out)
    }

    /// The offset `spec` names in one partition.
    pub async fn partition_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Option<u64>> {
        let leader = self.client.leader(topic, partition).await?;
        let request = ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: topic.into(),
                partitions: vec![ListOffsetsPartition {
                    partition,
                    current_leader_epoch: None,
                    spec,
                }],
            }],
        };
        let response = self
            .client
            .request_node(
                leader,
                Purpose::Control,
                RequestBody::ListOffsets(request),
                self.client.config().request_timeout,
            )
            .await?;
        let ResponseBody::ListOffsets(response) = response else {
            return Err(unexpected());
        };
        let p = response
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .ok_or_else(unexpected)?;
        check(
            p.error_code,
            format!("list offsets of {topic}-{partition}"),
            None,
        )?;
        Ok(p.offset)
    }

    /// The `host:port` of the broker coordinating `group_id`.
    pub async fn find_coordinator(&self, group_id: &str) -> Result<String> {
        crate::group::find_coordinator(&self.client, group_id).await
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Grows `topic` to `partitions` partitions (existing ones keep their data; keys may map to
    /// different partitions afterwards).
    pub async fn create_partitions(&self, topic: &str, partitions: u32) -> Result<()> {
        let request = RequestBody::CreatePartitions(CreatePartitionsRequest {
            topics: vec![CreatePartitionsTopic {
                name: topic.into(),
                count: partitions,
            }],
            validate_only: false,
        });
        // As for create_topic, retriable per-topic codes (a broker that just started) are retried.
        self.client
            .retry("create partitions", || async {
                let ResponseBody::CreatePartitions(response) =
                    self.client.request_any(request.clone()).await?
                else {
                    return Err(unexpected());
                };
                let result = response.topics.into_iter().next().ok_or_else(unexpected)?;
                check(
                    result.error_code,
                    format!("add partitions to {}", result.name),
                    result.error_message,
                )
            })
            .await?;
        self.client.refresh_metadata().await
    }

    /// Preferred leader election: moves leadership back to each partition's first replica
    /// where it is alive and in sync. Returns (partitions moved, partitions still elsewhere).
    pub async fn elect_preferred_leaders(&self, topics: Option<Vec<String>>) -> Result<(u32, u32)> {
        let request = RequestBody::ElectLeaders(ElectLeadersRequest { topics });
        let response = self
            .client
            .retry("elect leaders", || self.client.request_any(request.clone()))
            .await?;
        let ResponseBody::ElectLeaders(response) = response else {
            return Err(unexpected());
        };
        self.client.refresh_metadata().await?;
        Ok((response.elected, response.not_preferred))
    }

    /// The brokers, and which one is the active controller.
    pub async fn describe_cluster(&self) -> Result<Vec<BrokerDescription>> {
        self.client.refresh_metadata().await?;
        let metadata = self.client.metadata();
        let mut brokers: Vec<BrokerDescription> = metadata
            .brokers
            .iter()
            .map(|(id, address)| BrokerDescription {
                node_id: *id,
                address: address.clone(),
                is_controller: metadata.controller == Some(*id),
                voter: metadata.voters.contains(id),
                fenced: metadata.fenced.contains(id),
            })
            .collect();
        brokers.sort_by_key(|b| b.node_id);
        Ok(brokers)
    }
}

/// A consumer group as `DescribeGroups` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupDescription {
    /// The group id.
    pub group_id: String,
    /// `Empty`, `Reconciling` or `Stable`.
    pub state: String,
    /// Bumped on every membership or subscription change.
    pub group_epoch: i32,
    /// The assignment strategy.
    pub assignor: String,
    /// Members with their assigned partitions.
    pub members: Vec<MemberDescription>,
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberDescription {
    /// The member id the coordinator gave it.
    pub member_id: String,
    /// Its static membership id, if any.
    pub instance_id: Option<String>,
    /// Its epoch (equal to the group epoch once reconciled).
    pub member_epoch: i32,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Partitions it may consume.
    pub partitions: Vec<(String, u32)>,
}

impl Admin {
    /// Sends `body` to the group's coordinator (found again on every attempt), retrying
    /// retriable failures such as a coordinator moving.
    async fn group_request(
        &self,
        group_id: &str,
        what: &str,
        body: RequestBody,
    ) -> Result<ResponseBody> {
        self.client
            .retry(what, || async {
                let address = crate::group::find_coordinator(&self.client, group_id).await?;
                self.client
                    .connection(&address, Purpose::Control)
                    .await?
                    .request(body.clone(), self.client.config().request_timeout)
                    .await
            })
            .await
    }

    /// Groups with members or committed offsets, with their state and member count.
    pub async fn list_groups(&self) -> Result<Vec<(String, String, u32)>> {
        self.client.refresh_metadata().await?;
        let mut out = Vec::new();
        let mut brokers: Vec<u32> = self.client.metadata().brokers.keys().copied().collect();
        brokers.sort();
        for node in brokers {
            let response = self
                .client
                .request_node(
                    node,
                    Purpose::Control,
                    RequestBody::ListGroups(ListGroupsRequest {}),
                    self.client.config().request_timeout,
                )
                .await?;
            let ResponseBody::ListGroups(response) = response else {
                return Err(unexpected());
            };
            out.extend(
                response
                    .groups
                    .into_iter()
                    .map(|g| (g.group_id, g.state, g.members)),
            );
        }
        out.sort();
        Ok(out)
    }

    /// Members, their partitions and the group's state.
    pub async fn describe_group(&self, group_id: &str) -> Result<GroupDescription> {
        let request = RequestBody::DescribeGroups(DescribeGroupsRequest {
            group_ids: vec![group_id.to_string()],
        });
        let response = self
            .group_request(group_id, "describe group", request)
            .await?;
        let ResponseBody::DescribeGroups(response) = response else {
            return Err(unexpected());
        };
        let g = response.groups.into_iter().next().ok_or_else(unexpected)?;
        check(g.error_code, format!("describe group {group_id}"), None)?;
        Ok(GroupDescription {
            group_id: g.group_id,
            state: g.state,
            group_epoch: g.group_epoch,
            assignor: g.assignor,
            members: g
                .members
                .into_iter()
                .map(|m| MemberDescription {
                    member_id: m.member_id,
                    instance_id: m.instance_id,
                    member_epoch: m.member_epoch,
                    topics: m.subscribed_topics,
                    partitions: m
                        .assignment
                        .into_iter()
                        .flat_map(|t| t.partitions.into_iter().map(move |p| (t.topic.clone(), p)))
                        .collect(),
                })
                .collect(),
        })
    }

    /// The group's committed offsets (every partition it has committed).
    pub async fn group_offsets(&self, group_id: &str) -> Result<BTreeMap<(String, u32), u64>> {
        let request = RequestBody::OffsetFetch(OffsetFetchRequest {
            group_id: group_id.to_string(),
            topics: None,
        });
        let response = self
            .group_request(group_id, "fetch group offsets", request)
            .await?;
        crate::group::committed_offsets(response, group_id)
    }

    /// Sets committed offsets of a group that has no active members (offset reset); fails with
    /// `NON_EMPTY_GROUP` while members are consuming.
    pub async fn reset_group_offsets(
        &self,
        group_id: &str,
        offsets: &BTreeMap<(String, u32), u64>,
    ) -> Result<()> {
        let topics = crate::group::commit_topics(offsets);
        let request = RequestBody::OffsetCommit(OffsetCommitRequest {
            group_id: group_id.to_string(),
            member_id: String::new(),
            member_epoch: -1,
            topics,
        });
        let response = self
            .group_request(group_id, "reset group offsets", request)
            .await?;
        crate::group::check_commit(response, group_id)
    }

    /// Deletes a group with no active members, and its committed offsets.
    pub async fn delete_group(&self, group_id: &str) -> Result<()> {
        let request = RequestBody::DeleteGroups(DeleteGroupsRequest {
            group_ids: vec![group_id.to_string()],
        });
        let response = self
            .group_request(group_id, "delete group", request)
            .await?;
        let ResponseBody::DeleteGroups(response) = response else {
            return Err(unexpected());
        };
        let result = response.results.into_iter().next().ok_or_else(unexpected)?;
        check(result.error_code, format!("delete group {group_id}"), None)
    }
}

pub(crate) fn check(code: ErrorCode, context: String, message: Option<String>) -> Result<()> {
    if code == ErrorCode::NONE {
        Ok(())
    } else {
        Err(ClientError::broker(code, context, message))
    }
}

pub(crate) fn unexpected() -> ClientError {
    ClientError::Invalid("the broker sent a response of the wrong shape".into())
}
