//! [`Admin`]: create, delete, list and describe topics; list offsets; describe the cluster.

use std::collections::BTreeMap;

use rill_protocol::api::{
    ConfigEntry, CreatableTopic, CreateTopicsRequest, DeleteTopicsRequest, ListOffsetsPartition,
    ListOffsetsRequest, ListOffsetsTopic, OffsetSpec, RequestBody, ResponseBody,
};
use rill_protocol::ErrorCode;

use crate::client::{Client, PartitionInfo, Purpose};
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
    /// Log end offset (the next offset to be written).
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
        let response = self
            .client
            .retry("create topic", || {
                self.client
                    .request_any(RequestBody::CreateTopics(request.clone()))
            })
            .await?;
        let ResponseBody::CreateTopics(response) = response else {
            return Err(unexpected());
        };
        let result = response.topics.into_iter().next().ok_or_else(unexpected)?;
        check(
            result.error_code,
            format!("create topic {}", topic.name),
            result.error_message,
        )?;
        self.client.refresh_metadata().await
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = DeleteTopicsRequest {
            names: vec![name.to_string()],
            timeout_ms: self.client.config().request_timeout.as_millis() as u32,
        };
        let response = self
            .client
            .retry("delete topic", || {
                self.client
                    .request_any(RequestBody::DeleteTopics(request.clone()))
            })
            .await?;
        let ResponseBody::DeleteTopics(response) = response else {
            return Err(unexpected());
        };
        let result = response.topics.into_iter().next().ok_or_else(unexpected)?;
        check(
            result.error_code,
            format!("delete topic {name}"),
            result.error_message,
        )?;
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
        let earliest: BTreeMap<u32, Option<u64>> = self
            .list_offsets(name, OffsetSpec::Earliest)
            .await?
            .into_iter()
            .collect();
        let latest: BTreeMap<u32, Option<u64>> = self
            .list_offsets(name, OffsetSpec::Latest)
            .await?
            .into_iter()
            .collect();
        Ok(partitions
            .into_iter()
            .map(|p: PartitionInfo| PartitionDescription {
                partition: p.partition,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                replicas: p.replicas,
                isr: p.isr,
                earliest_offset: earliest.get(&p.partition).copied().flatten(),
                latest_offset: latest.get(&p.partition).copied().flatten(),
            })
            .collect())
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
            })
            .collect();
        brokers.sort_by_key(|b| b.node_id);
        Ok(brokers)
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
