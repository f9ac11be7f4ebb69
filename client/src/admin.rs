//! [`Admin`]: create, delete, list and describe topics; list offsets; describe the cluster.

use std::collections::BTreeMap;

use rill_protocol::api::{
    ConfigEntry, CreatableTopic, CreatePartitionsRequest, CreatePartitionsTopic,
    CreateTopicsRequest, DeleteGroupsRequest, DeleteTopicsRequest, DescribeGroupsRequest,
    DescribeLogsRequest, ElectLeadersRequest, ListGroupsRequest, ListOffsetsPartition,
    ListOffsetsRequest, ListOffsetsTopic, OffsetCommitRequest, OffsetFetchRequest, OffsetSpec,
    ReplicaLog, RequestBody, ResponseBody,
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
    /// The leader's log end offset (records written, not all replicated yet).
    pub log_end_offset: Option<u64>,
    /// Bytes of the leader's segment files.
    pub size_bytes: Option<u64>,
    /// Segment files of the leader's log.
    pub segments: Option<u32>,
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

    /// Every topic with its partition count, replication health and size on disk (one
    /// DescribeLogs request to each broker).
    pub async fn topic_summaries(&self) -> Result<Vec<TopicSummary>> {
        self.client.refresh_metadata().await?;
        let metadata = self.client.metadata();
        let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
        let mut nodes: Vec<u32> = metadata
            .brokers
            .keys()
            .filter(|n| !metadata.fenced.contains(n))
            .copied()
            .collect();
        nodes.sort();
        for node in nodes {
            let Ok(replicas) = self.describe_logs(node, None).await else {
                continue;
            };
            for r in replicas.into_iter().filter(|r| r.leader) {
                *sizes.entry(r.topic).or_insert(0) += r.size_bytes;
            }
        }
        let mut topics: Vec<TopicSummary> = metadata
            .topics
            .iter()
            .map(|(name, partitions)| {
                let count = |f: fn(&crate::client::PartitionInfo) -> bool| {
                    partitions.iter().filter(|p| f(p)).count() as u32
                };
                TopicSummary {
                    name: name.clone(),
                    partitions: partitions.len() as u32,
                    replication_factor: partitions.first().map_or(0, |p| p.replicas.len() as u32),
                    under_replicated: count(|p| p.isr.len() < p.replicas.len()),
                    offline: count(|p| p.leader.is_none()),
                    size_bytes: sizes.get(name).copied().unwrap_or(0),
                    internal: name.starts_with("__"),
                }
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// Partitions of a topic with leaders, replicas, ISR, and the leader's log start, high
    /// watermark, log end and size (one DescribeLogs request to each leader).
    pub async fn describe_topic(&self, name: &str) -> Result<Vec<PartitionDescription>> {
        self.client.refresh_metadata().await?;
        let partitions = self.client.partitions(name).await?;
        let leaders: std::collections::BTreeSet<u32> =
            partitions.iter().filter_map(|p| p.leader).collect();
        let mut logs: BTreeMap<u32, ReplicaLog> = BTreeMap::new();
        for leader in leaders {
            // One attempt each: a leader that does not answer shows no offsets instead of
            // failing the whole description.
            let Ok(replicas) = self
                .describe_logs(leader, Some(vec![name.to_string()]))
                .await
            else {
                continue;
            };
            logs.extend(
                replicas
                    .into_iter()
                    .filter(|r| r.leader && r.topic == name)
                    .map(|r| (r.partition, r)),
            );
        }
        Ok(partitions
            .into_iter()
            .map(|p| {
                let log = p.leader.and_then(|_| logs.remove(&p.partition));
                PartitionDescription {
                    partition: p.partition,
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replicas,
                    isr: p.isr,
                    earliest_offset: log.as_ref().map(|l| l.log_start_offset),
                    latest_offset: log.as_ref().map(|l| l.high_watermark),
                    log_end_offset: log.as_ref().map(|l| l.log_end_offset),
                    size_bytes: log.as_ref().map(|l| l.size_bytes),
                    segments: log.as_ref().map(|l| l.segments),
                }
            })
            .collect())
    }

    /// The local partition replicas of broker `node` (of `topics`, or all): role, leader
    /// epoch, offsets and size on disk.
    pub async fn describe_logs(
        &self,
        node: u32,
        topics: Option<Vec<String>>,
    ) -> Result<Vec<ReplicaLog>> {
        let response = self
            .client
            .request_node(
                node,
                Purpose::Control,
                RequestBody::DescribeLogs(DescribeLogsRequest { topics }),
                self.client.config().request_timeout,
            )
            .await?;
        let ResponseBody::DescribeLogs(response) = response else {
            return Err(unexpected());
        };
        Ok(response.replicas)
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

    /// The cluster id, controller, quorum and brokers (`rill cluster info`).
    pub async fn cluster(&self) -> Result<ClusterDescription> {
        let brokers = self.describe_cluster().await?;
        let metadata = self.client.metadata();
        let quorum = if metadata.controller.is_some() {
            "leader elected"
        } else {
            "no active controller (quorum forming or lost)"
        };
        Ok(ClusterDescription {
            cluster_id: metadata.cluster_id,
            controller: metadata.controller,
            voters: metadata.voters,
            quorum: quorum.into(),
            brokers,
        })
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

/// The cluster as `rill cluster info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterDescription {
    /// Cluster name reported by the brokers.
    pub cluster_id: String,
    /// Node id of the active controller, if elected.
    pub controller: Option<u32>,
    /// Node ids of the metadata quorum's voters.
    pub voters: Vec<u32>,
    /// `leader elected`, or why there is no active controller.
    pub quorum: String,
    /// Every registered broker.
    pub brokers: Vec<BrokerDescription>,
}

/// A group as `ListGroups` reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct GroupSummary {
    /// The group id.
    pub group: String,
    /// `Empty`, `Reconciling` or `Stable`.
    pub state: String,
    /// Members now.
    pub members: u32,
}

/// One partition of a group's lag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionLag {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// The group's committed offset, if it committed one.
    pub committed: Option<u64>,
    /// The partition's high watermark (what the group can read up to).
    pub log_end: Option<u64>,
    /// `log_end - committed` (all of `log_end` without a commit).
    pub lag: Option<u64>,
    /// The member the partition is assigned to.
    pub member: Option<String>,
}

/// A group with its committed offsets and lag per partition (`rill group describe`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupLag {
    /// State, members and assignment.
    pub group: GroupDescription,
    /// Every partition of the topics the group subscribes to or committed for.
    pub partitions: Vec<PartitionLag>,
    /// The sum of every partition's lag.
    pub total_lag: u64,
}

/// A bounded slice of a partition's records (the console's record browser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSlice {
    /// The offset the slice starts at.
    pub start_offset: u64,
    /// The partition's high watermark when read.
    pub high_watermark: u64,
    /// The offset to read next (after the last record returned).
    pub next_offset: u64,
    /// At most the `max_records` asked, and at most `max_bytes` of keys, values and headers.
    pub records: Vec<crate::ConsumerRecord>,
    /// Stopped at a limit before the high watermark.
    pub truncated: bool,
}

/// Where a record slice starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceFrom {
    /// At this offset (moved to the log start if below it).
    Offset(u64),
    /// At the first record with a timestamp at or after this (ms since the Unix epoch).
    Timestamp(i64),
    /// The last `max_records` records below the high watermark.
    End,
}

/// A topic in a listing: its shape, replication health and size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopicSummary {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
    /// Replicas of its first partition.
    pub replication_factor: u32,
    /// Partitions whose ISR is smaller than their replica set.
    pub under_replicated: u32,
    /// Partitions without a leader.
    pub offline: u32,
    /// Bytes of the leaders' segment files (leaders that did not answer count nothing).
    pub size_bytes: u64,
    /// A broker's own topic (`__consumer_offsets`).
    pub internal: bool,
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
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>> {
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
            out.extend(response.groups.into_iter().map(|g| GroupSummary {
                group: g.group_id,
                state: g.state,
                members: g.members,
            }));
        }
        out.sort();
        Ok(out)
    }

    /// A group's members, committed offsets, high watermarks and lag per partition
    /// (`rill group describe`): every partition of the topics it subscribes to or committed for.
    pub async fn group_lag(&self, group_id: &str) -> Result<GroupLag> {
        let group = self.describe_group(group_id).await?;
        let committed = self.group_offsets(group_id).await?;
        let owner: BTreeMap<(String, u32), String> = group
            .members
            .iter()
            .flat_map(|m| {
                m.partitions
                    .iter()
                    .map(move |tp| (tp.clone(), m.member_id.clone()))
            })
            .collect();
        let topics: std::collections::BTreeSet<String> = committed
            .keys()
            .map(|(t, _)| t.clone())
            .chain(group.members.iter().flat_map(|m| m.topics.iter().cloned()))
            .collect();
        let mut partitions = Vec::new();
        let mut total_lag = 0u64;
        for topic in topics {
            // A topic deleted since the group committed for it has no lag to show.
            let Ok(ends) = self.list_offsets(&topic, OffsetSpec::Latest).await else {
                continue;
            };
            for (partition, end) in ends {
                let key = (topic.clone(), partition);
                let offset = committed.get(&key).copied();
                let lag = match (offset, end) {
                    (Some(o), Some(e)) => Some(e.saturating_sub(o)),
                    (None, Some(e)) => Some(e),
                    _ => None,
                };
                total_lag += lag.unwrap_or(0);
                partitions.push(PartitionLag {
                    topic: topic.clone(),
                    partition,
                    committed: offset,
                    log_end: end,
                    lag,
                    member: owner.get(&key).cloned(),
                });
            }
        }
        Ok(GroupLag {
            group,
            partitions,
            total_lag,
        })
    }

    /// At most `max_records` records of one partition, and at most `max_bytes` of their keys,
    /// values and headers, from `from`, never past the high watermark (the record browser).
    /// Returns what the limits allow; `next_offset` says where to go on.
    pub async fn read_records(
        &self,
        topic: &str,
        partition: u32,
        from: SliceFrom,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<RecordSlice> {
        use crate::consumer::{Consumer, ConsumerConfig, OffsetReset, SeekTo};
        let earliest = self
            .partition_offset(topic, partition, OffsetSpec::Earliest)
            .await?
            .unwrap_or(0);
        let high_watermark = self
            .partition_offset(topic, partition, OffsetSpec::Latest)
            .await?
            .unwrap_or(0);
        let start = match from {
            SliceFrom::Offset(offset) => offset.max(earliest),
            SliceFrom::End => high_watermark
                .saturating_sub(max_records as u64)
                .max(earliest),
            SliceFrom::Timestamp(ts) => self
                .partition_offset(topic, partition, OffsetSpec::Timestamp(ts))
                .await?
                .unwrap_or(high_watermark),
        };
        let fetch_bytes = u32::try_from(max_bytes.max(1024)).unwrap_or(u32::MAX);
        let mut consumer = Consumer::new(
            self.client.clone(),
            ConsumerConfig {
                fetch_max_wait: std::time::Duration::from_millis(100),
                fetch_max_bytes: fetch_bytes,
                partition_max_bytes: fetch_bytes,
                offset_reset: OffsetReset::Error,
                ..ConsumerConfig::default()
            },
        );
        consumer.assign([(topic.to_string(), partition)]);
        consumer
            .seek(topic, partition, SeekTo::Offset(start))
            .await?;
        let mut slice = RecordSlice {
            start_offset: start,
            high_watermark,
            next_offset: start,
            records: Vec::new(),
            truncated: false,
        };
        let mut bytes = 0usize;
        let deadline = tokio::time::Instant::now() + self.client.config().request_timeout;
        'reading: while slice.next_offset < high_watermark {
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout(
                    self.client.config().request_timeout,
                    format!(
                        "reading {topic}-{partition} from offset {}",
                        slice.next_offset
                    ),
                ));
            }
            for record in consumer.poll(std::time::Duration::from_millis(500)).await? {
                if record.offset >= high_watermark {
                    break 'reading;
                }
                let size = record.key.as_ref().map_or(0, |k| k.len())
                    + record.value.as_ref().map_or(0, |v| v.len())
                    + record
                        .headers
                        .iter()
                        .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
                        .sum::<usize>();
                if slice.records.len() >= max_records || bytes + size > max_bytes {
                    slice.truncated = true;
                    break 'reading;
                }
                bytes += size;
                slice.next_offset = record.offset + 1;
                slice.records.push(record);
            }
            // Every record polled was taken: the position also covers offsets with no record
            // (compacted away), so the loop ends at the high watermark.
            if let Some(position) = consumer.position(topic, partition) {
                slice.next_offset = slice.next_offset.max(position.min(high_watermark));
            }
        }
        Ok(slice)
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

/// A user and the SCRAM mechanisms (with iterations) it has a credential for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserListing {
    /// The user name.
    pub user: String,
    /// `(mechanism, iterations)`.
    pub credentials: Vec<(String, u32)>,
}

/// Users and ACLs (docs/SECURITY.md): every call goes to any broker, which forwards the
/// change to the controller quorum.
impl Admin {
    /// Creates `user` or sets its password, with a credential for each of `mechanisms`
    /// (SCRAM-SHA-256/512; PLAIN logins are checked against these). The password is salted
    /// and hashed here: only the salted password is sent, as Kafka's
    /// AlterUserScramCredentials does.
    pub async fn set_user(
        &self,
        user: &str,
        password: &str,
        mechanisms: &[rill_protocol::sasl::Mechanism],
        iterations: u32,
    ) -> Result<()> {
        use rill_protocol::sasl;
        let mut upsertions = Vec::new();
        for mechanism in mechanisms {
            let invalid = |e: sasl::SaslError| ClientError::Invalid(e.to_string());
            let salt = sasl::new_salt().map_err(invalid)?;
            let salted =
                sasl::salted_password(*mechanism, password, &salt, iterations).map_err(invalid)?;
            upsertions.push(rill_protocol::api::UserUpsertion {
                user: user.to_string(),
                mechanism: mechanism.name().to_string(),
                iterations,
                salt: salt.into(),
                salted_password: salted.into(),
            });
        }
        let request = RequestBody::AlterUsers(rill_protocol::api::AlterUsersRequest {
            deletions: Vec::new(),
            upsertions,
        });
        let results = self.alter_users("set user", request).await?;
        for result in results {
            check(
                result.error_code,
                format!("set user {user}"),
                result.error_message,
            )?;
        }
        Ok(())
    }

    /// Deletes `user` (its credentials of every mechanism).
    pub async fn delete_user(&self, user: &str) -> Result<()> {
        let request = RequestBody::AlterUsers(rill_protocol::api::AlterUsersRequest {
            deletions: rill_protocol::sasl::Mechanism::SCRAM
                .iter()
                .map(|m| rill_protocol::api::UserDeletion {
                    user: user.to_string(),
                    mechanism: m.name().to_string(),
                })
                .collect(),
            upsertions: Vec::new(),
        });
        let results = self.alter_users("delete user", request).await?;
        let mut deleted = false;
        for result in results {
            match result.error_code {
                ErrorCode::NONE => deleted = true,
                ErrorCode::RESOURCE_NOT_FOUND => {}
                code => check(code, format!("delete user {user}"), result.error_message)?,
            }
        }
        if !deleted {
            return Err(ClientError::broker(
                ErrorCode::RESOURCE_NOT_FOUND,
                format!("delete user {user}"),
                Some(format!("there is no user {user}")),
            ));
        }
        Ok(())
    }

    async fn alter_users(
        &self,
        context: &str,
        request: RequestBody,
    ) -> Result<Vec<rill_protocol::api::UserResult>> {
        self.client
            .retry(context, || async {
                let ResponseBody::AlterUsers(response) =
                    self.client.request_any(request.clone()).await?
                else {
                    return Err(unexpected());
                };
                // A retriable refusal (no controller yet) is retried as a whole.
                if let Some(r) = response
                    .results
                    .iter()
                    .find(|r| r.error_code.is_retriable())
                {
                    return Err(ClientError::broker(
                        r.error_code,
                        context.to_string(),
                        r.error_message.clone(),
                    ));
                }
                Ok(response.results)
            })
            .await
    }

    /// Every user, sorted, with its mechanisms.
    pub async fn list_users(&self) -> Result<Vec<UserListing>> {
        let request =
            RequestBody::DescribeUsers(rill_protocol::api::DescribeUsersRequest { users: None });
        self.client
            .retry("list users", || async {
                let ResponseBody::DescribeUsers(response) =
                    self.client.request_any(request.clone()).await?
                else {
                    return Err(unexpected());
                };
                check(
                    response.error_code,
                    "list users".into(),
                    response.error_message,
                )?;
                Ok(response
                    .users
                    .into_iter()
                    .map(|u| UserListing {
                        user: u.user,
                        credentials: u
                            .credentials
                            .into_iter()
                            .map(|c| (c.mechanism, c.iterations))
                            .collect(),
                    })
                    .collect())
            })
            .await
    }

    /// Adds ACLs.
    pub async fn create_acls(&self, acls: Vec<rill_protocol::api::AclEntry>) -> Result<()> {
        let request = RequestBody::CreateAcls(rill_protocol::api::CreateAclsRequest { acls });
        self.client
            .retry("create ACLs", || async {
                let ResponseBody::CreateAcls(response) =
                    self.client.request_any(request.clone()).await?
                else {
                    return Err(unexpected());
                };
                for result in response.results {
                    check(result.error_code, "create ACL".into(), result.error_message)?;
                }
                Ok(())
            })
            .await
    }

    /// The ACLs `filter` names.
    pub async fn describe_acls(
        &self,
        filter: rill_protocol::api::AclFilterEntry,
    ) -> Result<Vec<rill_protocol::api::AclEntry>> {
        let request = RequestBody::DescribeAcls(rill_protocol::api::DescribeAclsRequest { filter });
        self.client
            .retry("list ACLs", || async {
                let ResponseBody::DescribeAcls(response) =
                    self.client.request_any(request.clone()).await?
                else {
                    return Err(unexpected());
                };
                check(
                    response.error_code,
                    "list ACLs".into(),
                    response.error_message,
                )?;
                Ok(response.acls)
            })
            .await
    }

    /// Deletes the ACLs `filter` names; returns them.
    pub async fn delete_acls(
        &self,
        filter: rill_protocol::api::AclFilterEntry,
    ) -> Result<Vec<rill_protocol::api::AclEntry>> {
        let request = RequestBody::DeleteAcls(rill_protocol::api::DeleteAclsRequest {
            filters: vec![filter],
        });
        self.client
            .retry("delete ACLs", || async {
                let ResponseBody::DeleteAcls(response) =
                    self.client.request_any(request.clone()).await?
                else {
                    return Err(unexpected());
                };
                let result = response.results.into_iter().next().ok_or_else(unexpected)?;
                check(
                    result.error_code,
                    "delete ACLs".into(),
                    result.error_message,
                )?;
                Ok(result.deleted)
            })
            .await
    }
}

impl Admin {
    /// Sets (`Some`) or removes (`None`) client quotas (`producer_byte_rate`,
    /// `consumer_byte_rate`, bytes per second; 0 is no limit) of each client id (`None`: the
    /// default of every client id), all together.
    pub async fn alter_client_quotas(&self, entries: QuotaAlterations) -> Result<()> {
        use rill_protocol::api::{AlterClientQuotasRequest, ClientQuotaAlteration, QuotaOp};
        let request = RequestBody::AlterClientQuotas(AlterClientQuotasRequest {
            entries: entries
                .into_iter()
                .map(|(client_id, ops)| ClientQuotaAlteration {
                    client_id,
                    ops: ops
                        .into_iter()
                        .map(|(key, value)| QuotaOp { key, value })
                        .collect(),
                })
                .collect(),
        });
        self.client
            .retry("alter client quotas", || async {
                let ResponseBody::AlterClientQuotas(response) =
                    self.client.request_any(request.clone()).await?
                else {
                    return Err(unexpected());
                };
                for result in response.results {
                    check(
                        result.error_code,
                        "alter client quotas".into(),
                        result.error_message,
                    )?;
                }
                Ok(())
            })
            .await
    }

    /// Every client id's quotas set at run time (`None`: the default of every client id):
    /// key -> bytes per second.
    pub async fn describe_client_quotas(
        &self,
    ) -> Result<BTreeMap<Option<String>, BTreeMap<String, u64>>> {
        let request =
            RequestBody::DescribeClientQuotas(rill_protocol::api::DescribeClientQuotasRequest {});
        self.client
            .retry("list client quotas", || async {
                let ResponseBody::DescribeClientQuotas(response) =
                    self.client.request_any(request.clone()).await?
                else {
                    return Err(unexpected());
                };
                check(
                    response.error_code,
                    "list client quotas".into(),
                    response.error_message,
                )?;
                Ok(response
                    .entries
                    .into_iter()
                    .map(|e| {
                        let values = e.values.into_iter().map(|v| (v.key, v.value)).collect();
                        (e.client_id, values)
                    })
                    .collect())
            })
            .await
    }
}

/// Client quota changes: per client id (`None`: the default of every client id), quota key
/// -> bytes per second (`None`: remove it).
pub type QuotaAlterations = Vec<(Option<String>, Vec<(String, Option<u64>)>)>;

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
