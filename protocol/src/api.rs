//! API keys and the typed request and response bodies of every API.
//!
//! Every body is the concatenation of its fields' encodings (see [`crate::wire`]), in the order
//! declared here. A request body is decoded with [`RequestBody::decode`] once the header told the
//! api key and version; a body must be consumed exactly, trailing bytes are an error.
//!
//! Key ranges are reserved so later APIs fit without renumbering: 0-9 data and topic APIs
//! (this file), 10-19 consumer groups, 20-29 replication between brokers, 30-39 controller,
//! 40-49 idempotent and transactional producers.
//!
//! ```
//! use rill_protocol::api::{RequestBody, MetadataRequest};
//! let body = RequestBody::Metadata(MetadataRequest { topics: Some(vec!["orders".into()]) });
//! let bytes = body.encode_to_bytes();
//! let back = RequestBody::decode(body.api_key() as u16, 0, bytes).unwrap();
//! assert_eq!(back, body);
//! ```

use bytes::{Bytes, BytesMut};

use crate::error::{ErrorCode, ProtocolError};
use crate::wire::{decode_exact, wire_struct, Chunks, Wire};

/// The API a request calls. Numbers are stable.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    ApiVersions = 0,
    Metadata = 1,
    CreateTopics = 2,
    DeleteTopics = 3,
    Produce = 4,
    Fetch = 5,
    ListOffsets = 6,
    CreatePartitions = 7,
    ElectLeaders = 8,
    DescribeLogs = 9,
    FindCoordinator = 10,
    ConsumerGroupHeartbeat = 11,
    OffsetCommit = 12,
    OffsetFetch = 13,
    ListGroups = 14,
    DescribeGroups = 15,
    DeleteGroups = 16,
    SaslHandshake = 17,
    SaslAuthenticate = 18,
    AlterUsers = 19,
    DescribeUsers = 20,
    CreateAcls = 21,
    DescribeAcls = 22,
    DeleteAcls = 23,
    AlterClientQuotas = 24,
    DescribeClientQuotas = 25,
    InitProducerId = 40,
}

impl ApiKey {
    /// Every API this protocol version defines.
    pub const ALL: [ApiKey; 27] = [
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::CreatePartitions,
        ApiKey::ElectLeaders,
        ApiKey::DescribeLogs,
        ApiKey::FindCoordinator,
        ApiKey::ConsumerGroupHeartbeat,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::ListGroups,
        ApiKey::DescribeGroups,
        ApiKey::DeleteGroups,
        ApiKey::SaslHandshake,
        ApiKey::SaslAuthenticate,
        ApiKey::AlterUsers,
        ApiKey::DescribeUsers,
        ApiKey::CreateAcls,
        ApiKey::DescribeAcls,
        ApiKey::DeleteAcls,
        ApiKey::AlterClientQuotas,
        ApiKey::DescribeClientQuotas,
        ApiKey::InitProducerId,
    ];

    /// The key for a number, if this version knows it.
    pub fn from_u16(key: u16) -> Option<ApiKey> {
        ApiKey::ALL.into_iter().find(|k| *k as u16 == key)
    }

    /// The API's name, as docs/PROTOCOL.md and the broker's metrics labels spell it.
    pub fn name(self) -> &'static str {
        match self {
            ApiKey::ApiVersions => "ApiVersions",
            ApiKey::Metadata => "Metadata",
            ApiKey::CreateTopics => "CreateTopics",
            ApiKey::DeleteTopics => "DeleteTopics",
            ApiKey::Produce => "Produce",
            ApiKey::Fetch => "Fetch",
            ApiKey::ListOffsets => "ListOffsets",
            ApiKey::CreatePartitions => "CreatePartitions",
            ApiKey::ElectLeaders => "ElectLeaders",
            ApiKey::DescribeLogs => "DescribeLogs",
            ApiKey::FindCoordinator => "FindCoordinator",
            ApiKey::ConsumerGroupHeartbeat => "ConsumerGroupHeartbeat",
            ApiKey::OffsetCommit => "OffsetCommit",
            ApiKey::OffsetFetch => "OffsetFetch",
            ApiKey::ListGroups => "ListGroups",
            ApiKey::DescribeGroups => "DescribeGroups",
            ApiKey::DeleteGroups => "DeleteGroups",
            ApiKey::SaslHandshake => "SaslHandshake",
            ApiKey::SaslAuthenticate => "SaslAuthenticate",
            ApiKey::AlterUsers => "AlterUsers",
            ApiKey::DescribeUsers => "DescribeUsers",
            ApiKey::CreateAcls => "CreateAcls",
            ApiKey::DescribeAcls => "DescribeAcls",
            ApiKey::DeleteAcls => "DeleteAcls",
            ApiKey::AlterClientQuotas => "AlterClientQuotas",
            ApiKey::DescribeClientQuotas => "DescribeClientQuotas",
            ApiKey::InitProducerId => "InitProducerId",
        }
    }

    /// Oldest and newest body version this crate can encode and decode. Produce and Fetch
    /// v1 responses end with `throttle_time_ms` (quotas); every other api is at version 0.
    pub fn supported_versions(self) -> (u16, u16) {
        match self {
            ApiKey::Produce | ApiKey::Fetch => (0, 1),
            _ => (0, 0),
        }
    }
}

/// Acknowledgement level of a produce request.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Acks {
    /// The broker sends no response at all.
    None,
    /// Acknowledged once the leader has appended the batch.
    #[default]
    Leader,
    /// Acknowledged once every in-sync replica has the batch (below the high watermark).
    All,
}

impl Wire for Acks {
    fn encode(&self, buf: &mut BytesMut) {
        let v: i8 = match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        };
        v.encode(buf);
    }
    fn decode(buf: &mut Bytes) -> Result<Self, ProtocolError> {
        match i8::decode(buf)? {
            0 => Ok(Acks::None),
            1 => Ok(Acks::Leader),
            -1 => Ok(Acks::All),
            other => Err(ProtocolError::invalid(
                "acks",
                format!("{other} is not one of 0, 1, -1"),
            )),
        }
    }
}

/// Which offset a ListOffsets partition asks for.
#[derive(Debug, Copy, Clone, PartialEq, Eq, Hash, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum OffsetSpec {
    /// The log start offset.
    #[default]
    Earliest,
    /// The log end offset (for consumers: the high watermark).
    Latest,
    /// The first offset whose record timestamp is >= this (ms since the Unix epoch).
    Timestamp(i64),
}

impl Wire for OffsetSpec {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            OffsetSpec::Earliest => 0u8.encode(buf),
            OffsetSpec::Latest => 1u8.encode(buf),
            OffsetSpec::Timestamp(ts) => {
                2u8.encode(buf);
                ts.encode(buf);
            }
        }
    }
    fn decode(buf: &mut Bytes) -> Result<Self, ProtocolError> {
        match u8::decode(buf)? {
            0 => Ok(OffsetSpec::Earliest),
            1 => Ok(OffsetSpec::Latest),
            2 => Ok(OffsetSpec::Timestamp(i64::decode(buf)?)),
            other => Err(ProtocolError::invalid(
                "offset spec",
                format!("kind {other} is not 0, 1 or 2"),
            )),
        }
    }
}

#[cfg(test)]
fn arb_bytes() -> impl proptest::strategy::Strategy<Value = Bytes> {
    use proptest::prelude::*;
    // Now and then one large enough to be shared by `Wire::encode_chunks` instead of copied.
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from),
        1 => (crate::wire::Chunks::SHARE_BYTES_MIN - 2..crate::wire::Chunks::SHARE_BYTES_MIN + 2)
            .prop_map(|n| Bytes::from(vec![0xab; n])),
    ]
}

// ---------------------------------------------------------------- ApiVersions (0)

wire_struct! {
    /// Asks which APIs and versions the broker supports. Always sent with version 0.
    pub struct ApiVersionsRequest {}
}

wire_struct! {
    /// One supported API and its version range.
    pub struct ApiVersionRange {
        pub api_key: u16,
        pub min_version: u16,
        pub max_version: u16,
    }
}

wire_struct! {
    pub struct ApiVersionsResponse {
        pub apis: Vec<ApiVersionRange>,
    }
}

// ---------------------------------------------------------------- Metadata (1)

wire_struct! {
    /// Asks for brokers and topics. `None` means every topic.
    pub struct MetadataRequest {
        pub topics: Option<Vec<String>>,
    }
}

wire_struct! {
    pub struct BrokerMetadata {
        pub node_id: u32,
        pub host: String,
        pub port: u16,
        /// Fenced by the controller (missed its heartbeats): leads nothing until it returns.
        pub fenced: bool,
    }
}

wire_struct! {
    pub struct PartitionMetadata {
        pub error_code: ErrorCode,
        pub partition: u32,
        /// Node id of the leader; `None` while no leader is elected.
        pub leader: Option<u32>,
        pub leader_epoch: u32,
        pub replicas: Vec<u32>,
        pub isr: Vec<u32>,
    }
}

wire_struct! {
    pub struct TopicMetadata {
        pub error_code: ErrorCode,
        pub name: String,
        pub partitions: Vec<PartitionMetadata>,
    }
}

wire_struct! {
    pub struct MetadataResponse {
        pub cluster_id: String,
        /// Node id of the active controller, if one is elected.
        pub controller_id: Option<u32>,
        /// Node ids of the metadata quorum's voters.
        pub voters: Vec<u32>,
        pub brokers: Vec<BrokerMetadata>,
        pub topics: Vec<TopicMetadata>,
    }
}

// ---------------------------------------------------------------- CreateTopics (2)

wire_struct! {
    pub struct ConfigEntry {
        pub key: String,
        pub value: String,
    }
}

wire_struct! {
    pub struct CreatableTopic {
        pub name: String,
        pub partitions: u32,
        pub replication_factor: u16,
        pub configs: Vec<ConfigEntry>,
    }
}

wire_struct! {
    pub struct CreateTopicsRequest {
        pub topics: Vec<CreatableTopic>,
        pub timeout_ms: u32,
        /// Check everything, create nothing.
        pub validate_only: bool,
    }
}

wire_struct! {
    /// Outcome for one topic of a CreateTopics or DeleteTopics request.
    pub struct TopicResult {
        pub name: String,
        pub error_code: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    pub struct CreateTopicsResponse {
        pub topics: Vec<TopicResult>,
    }
}

// ---------------------------------------------------------------- DeleteTopics (3)

wire_struct! {
    pub struct DeleteTopicsRequest {
        pub names: Vec<String>,
        pub timeout_ms: u32,
    }
}

wire_struct! {
    pub struct DeleteTopicsResponse {
        pub topics: Vec<TopicResult>,
    }
}

// ---------------------------------------------------------------- Produce (4)

wire_struct! {
    pub struct ProducePartition {
        pub partition: u32,
        /// One or more record batches (see [`crate::batch`]), exactly as the producer built them.
        #[cfg_attr(test, proptest(strategy = "arb_bytes()"))]
        pub records: Bytes,
    }
}

wire_struct! {
    pub struct ProduceTopic {
        pub name: String,
        pub partitions: Vec<ProducePartition>,
    }
}

wire_struct! {
    pub struct ProduceRequest {
        pub acks: Acks,
        pub timeout_ms: u32,
        pub topics: Vec<ProduceTopic>,
    }
}

wire_struct! {
    pub struct ProducePartitionResponse {
        pub partition: u32,
        pub error_code: ErrorCode,
        /// Offset assigned to the first record of the first batch (meaningful when error_code = NONE).
        pub base_offset: u64,
        /// Broker time of the append when the topic uses log-append time, else -1.
        pub log_append_time_ms: i64,
        pub log_start_offset: u64,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    pub struct ProduceTopicResponse {
        pub name: String,
        pub partitions: Vec<ProducePartitionResponse>,
    }
}

wire_struct! {
    /// Version 1 (this encoding); version 0 is the same without `throttle_time_ms`.
    pub struct ProduceResponse {
        pub topics: Vec<ProduceTopicResponse>,
        /// How long the client was throttled for exceeding its produce quota (the broker
        /// reads its next request only after that long), ms; 0 when not throttled. v1+.
        pub throttle_time_ms: u32,
    }
}

impl ProduceResponse {
    /// The body as version `version` encodes it.
    pub fn encode_at(&self, version: u16) -> Bytes {
        let mut buf = BytesMut::new();
        if version == 0 {
            self.topics.encode(&mut buf);
        } else {
            self.encode(&mut buf);
        }
        buf.freeze()
    }

    /// Decodes a body of version `version` (consumed exactly).
    pub fn decode_at(version: u16, body: Bytes) -> Result<Self, ProtocolError> {
        if version > 0 {
            return decode_exact(body, "ProduceResponse");
        }
        Ok(ProduceResponse {
            topics: decode_exact(body, "ProduceResponse")?,
            throttle_time_ms: 0,
        })
    }
}

// ---------------------------------------------------------------- Fetch (5)

wire_struct! {
    pub struct FetchPartition {
        pub partition: u32,
        /// Leader epoch the fetcher believes current; `None` skips the fencing check.
        pub current_leader_epoch: Option<u32>,
        pub fetch_offset: u64,
        pub partition_max_bytes: u32,
        /// Followers only: the epoch of the last batch in their log, checked by the leader for
        /// divergence (KIP-320); `None` for consumers and empty logs.
        pub last_fetched_epoch: Option<u32>,
    }
}

wire_struct! {
    /// Where a follower's log diverges: the leader's end offset of the follower's epoch.
    pub struct EpochEndOffset {
        /// The largest epoch the leader has that is <= the follower's last fetched epoch.
        pub epoch: u32,
        /// The offset at which that epoch ends in the leader's log.
        pub end_offset: u64,
    }
}

wire_struct! {
    pub struct FetchTopic {
        pub name: String,
        pub partitions: Vec<FetchPartition>,
    }
}

wire_struct! {
    pub struct FetchRequest {
        /// Set by follower brokers (replication); `None` for consumers.
        pub replica_id: Option<u32>,
        /// Longest the broker may wait for `min_bytes` to accumulate.
        pub max_wait_ms: u32,
        pub min_bytes: u32,
        /// Upper bound on record bytes in the whole response (at least one batch is returned
        /// even if larger, so a consumer can always make progress).
        pub max_bytes: u32,
        pub topics: Vec<FetchTopic>,
    }
}

wire_struct! {
    pub struct FetchPartitionResponse {
        pub partition: u32,
        pub error_code: ErrorCode,
        pub high_watermark: u64,
        pub log_start_offset: u64,
        /// Followers only: set when the follower's log diverges from the leader's; the
        /// follower truncates to it and fetches again. `records` is empty then.
        pub diverging_epoch: Option<EpochEndOffset>,
        /// Whole record batches, concatenated, as stored.
        #[cfg_attr(test, proptest(strategy = "arb_bytes()"))]
        pub records: Bytes,
    }
}

wire_struct! {
    pub struct FetchTopicResponse {
        pub name: String,
        pub partitions: Vec<FetchPartitionResponse>,
    }
}

wire_struct! {
    /// Version 1 (this encoding); version 0 is the same without `throttle_time_ms`.
    pub struct FetchResponse {
        pub topics: Vec<FetchTopicResponse>,
        /// How long the client was throttled for exceeding its fetch quota (the broker reads
        /// its next request only after that long), ms; 0 when not throttled. v1+.
        pub throttle_time_ms: u32,
    }
}

impl FetchResponse {
    /// Decodes a body of version `version` (consumed exactly).
    pub fn decode_at(version: u16, body: Bytes) -> Result<Self, ProtocolError> {
        if version > 0 {
            return decode_exact(body, "FetchResponse");
        }
        Ok(FetchResponse {
            topics: decode_exact(body, "FetchResponse")?,
            throttle_time_ms: 0,
        })
    }

    /// Encodes the response (version 1) as chunks whose concatenation equals [`Wire::encode`]'s
    /// output, large `records` (slices of a segment mapping on the broker) as chunks of their
    /// own ([`Chunks`]): handed to a vectored write instead of being copied into a buffer.
    pub fn encode_chunks(&self) -> Vec<Bytes> {
        self.encode_chunks_at(1)
    }

    /// [`FetchResponse::encode_chunks`] as version `version` encodes the body.
    pub fn encode_chunks_at(&self, version: u16) -> Vec<Bytes> {
        let mut out = Chunks::default();
        self.topics.encode_chunks(&mut out);
        if version > 0 {
            self.throttle_time_ms.encode(out.buf());
        }
        out.finish()
    }
}

// ---------------------------------------------------------------- ListOffsets (6)

wire_struct! {
    pub struct ListOffsetsPartition {
        pub partition: u32,
        pub current_leader_epoch: Option<u32>,
        pub spec: OffsetSpec,
    }
}

wire_struct! {
    pub struct ListOffsetsTopic {
        pub name: String,
        pub partitions: Vec<ListOffsetsPartition>,
    }
}

wire_struct! {
    pub struct ListOffsetsRequest {
        pub topics: Vec<ListOffsetsTopic>,
    }
}

wire_struct! {
    pub struct ListOffsetsPartitionResponse {
        pub partition: u32,
        pub error_code: ErrorCode,
        /// Timestamp of the record found (by-timestamp lookups), else -1.
        pub timestamp: i64,
        /// The offset; `None` when a timestamp lookup found no record at or after the timestamp.
        pub offset: Option<u64>,
    }
}

wire_struct! {
    pub struct ListOffsetsTopicResponse {
        pub name: String,
        pub partitions: Vec<ListOffsetsPartitionResponse>,
    }
}

wire_struct! {
    pub struct ListOffsetsResponse {
        pub topics: Vec<ListOffsetsTopicResponse>,
    }
}

// ---------------------------------------------------------------- CreatePartitions (7)

wire_struct! {
    pub struct CreatePartitionsTopic {
        pub name: String,
        /// The new total partition count (must exceed the current one).
        pub count: u32,
    }
}

wire_struct! {
    /// Adds partitions to existing topics; existing partitions keep their data and keys may
    /// map to different partitions afterwards.
    pub struct CreatePartitionsRequest {
        pub topics: Vec<CreatePartitionsTopic>,
        pub validate_only: bool,
    }
}

wire_struct! {
    pub struct CreatePartitionsResponse {
        pub topics: Vec<TopicResult>,
    }
}

// ---------------------------------------------------------------- ElectLeaders (8)

wire_struct! {
    /// Moves leadership of each partition (of `topics`, or every topic when `None`) to its
    /// preferred replica (the first one) when that replica is alive and in sync.
    pub struct ElectLeadersRequest {
        pub topics: Option<Vec<String>>,
    }
}

wire_struct! {
    pub struct ElectLeadersResponse {
        /// Partitions whose leader moved.
        pub elected: u32,
        /// Partitions still led by a non-preferred replica (preferred one down or out of sync).
        pub not_preferred: u32,
    }
}

// ---------------------------------------------------------------- DescribeLogs (9)

wire_struct! {
    /// The local partition replicas of the broker asked (of `topics`, or of every topic when
    /// `None`): role, offsets and size on disk. Answered by any broker for its own replicas, so
    /// a tool asks each partition's leader for its high watermark.
    pub struct DescribeLogsRequest {
        pub topics: Option<Vec<String>>,
    }
}

wire_struct! {
    /// One local replica.
    pub struct ReplicaLog {
        pub topic: String,
        pub partition: u32,
        /// This broker leads the partition (and holds its leadership lease).
        pub leader: bool,
        /// The leader epoch this replica is at.
        pub leader_epoch: u32,
        pub log_start_offset: u64,
        /// On the leader, what consumers may read up to; on a follower, the leader's as last
        /// fetched.
        pub high_watermark: u64,
        pub log_end_offset: u64,
        /// Bytes of segment files (data, not indexes).
        pub size_bytes: u64,
        pub segments: u32,
    }
}

wire_struct! {
    pub struct DescribeLogsResponse {
        pub replicas: Vec<ReplicaLog>,
    }
}

// ---------------------------------------------------------------- consumer groups (10-16)

wire_struct! {
    /// Partitions of one topic.
    pub struct TopicPartitions {
        pub topic: String,
        pub partitions: Vec<u32>,
    }
}

wire_struct! {
    /// Which broker coordinates a group.
    pub struct FindCoordinatorRequest {
        pub group_id: String,
    }
}

wire_struct! {
    pub struct FindCoordinatorResponse {
        pub error_code: ErrorCode,
        pub node_id: Option<u32>,
        pub host: String,
        pub port: u16,
    }
}

wire_struct! {
    /// Joins, stays in, or leaves a group; carries the subscription and the partitions the
    /// member owns, and returns the partitions it may consume (KIP-848 style).
    pub struct ConsumerGroupHeartbeatRequest {
        pub group_id: String,
        /// Empty to join.
        pub member_id: String,
        /// -1 to leave; otherwise the epoch last returned (0 when joining).
        pub member_epoch: i32,
        /// Static membership id (e.g. a host name): a restart within the session gets the same partitions.
        pub instance_id: Option<String>,
        /// Absent: unchanged since the last heartbeat.
        pub subscribed_topics: Option<Vec<String>>,
        pub owned: Vec<TopicPartitions>,
        pub session_timeout_ms: u32,
        /// `range`, `roundrobin` or `sticky`; used when the group is empty.
        pub assignor: Option<String>,
    }
}

wire_struct! {
    pub struct ConsumerGroupHeartbeatResponse {
        pub error_code: ErrorCode,
        pub error_message: Option<String>,
        pub member_id: String,
        pub member_epoch: i32,
        pub heartbeat_interval_ms: u32,
        /// The partitions the member may consume now; it must stop consuming any others.
        pub assignment: Vec<TopicPartitions>,
    }
}

wire_struct! {
    pub struct OffsetCommitPartition {
        pub partition: u32,
        /// The next offset to consume.
        pub offset: u64,
        pub metadata: Option<String>,
    }
}

wire_struct! {
    pub struct OffsetCommitTopic {
        pub name: String,
        pub partitions: Vec<OffsetCommitPartition>,
    }
}

wire_struct! {
    /// Commits offsets as a member (its id and current epoch), or as an admin (empty member id,
    /// epoch -1) for a group with no members (offset reset).
    pub struct OffsetCommitRequest {
        pub group_id: String,
        pub member_id: String,
        pub member_epoch: i32,
        pub topics: Vec<OffsetCommitTopic>,
    }
}

wire_struct! {
    pub struct PartitionResult {
        pub partition: u32,
        pub error_code: ErrorCode,
    }
}

wire_struct! {
    pub struct OffsetCommitTopicResponse {
        pub name: String,
        pub partitions: Vec<PartitionResult>,
    }
}

wire_struct! {
    pub struct OffsetCommitResponse {
        /// Group-level outcome (e.g. NOT_COORDINATOR); partition results follow.
        pub error_code: ErrorCode,
        pub topics: Vec<OffsetCommitTopicResponse>,
    }
}

wire_struct! {
    pub struct OffsetFetchRequest {
        pub group_id: String,
        /// Absent: every partition with a committed offset.
        pub topics: Option<Vec<TopicPartitions>>,
    }
}

wire_struct! {
    pub struct OffsetFetchPartition {
        pub partition: u32,
        /// Absent when nothing is committed.
        pub offset: Option<u64>,
        pub metadata: Option<String>,
    }
}

wire_struct! {
    pub struct OffsetFetchTopic {
        pub name: String,
        pub partitions: Vec<OffsetFetchPartition>,
    }
}

wire_struct! {
    pub struct OffsetFetchResponse {
        pub error_code: ErrorCode,
        pub topics: Vec<OffsetFetchTopic>,
    }
}

wire_struct! {
    /// Groups this broker coordinates.
    pub struct ListGroupsRequest {}
}

wire_struct! {
    pub struct GroupListing {
        pub group_id: String,
        pub state: String,
        pub members: u32,
    }
}

wire_struct! {
    pub struct ListGroupsResponse {
        pub groups: Vec<GroupListing>,
    }
}

wire_struct! {
    pub struct DescribeGroupsRequest {
        pub group_ids: Vec<String>,
    }
}

wire_struct! {
    pub struct GroupMember {
        pub member_id: String,
        pub instance_id: Option<String>,
        pub member_epoch: i32,
        pub subscribed_topics: Vec<String>,
        pub assignment: Vec<TopicPartitions>,
    }
}

wire_struct! {
    pub struct GroupDescription {
        pub error_code: ErrorCode,
        pub group_id: String,
        /// Empty, Reconciling or Stable.
        pub state: String,
        pub group_epoch: i32,
        pub assignor: String,
        pub members: Vec<GroupMember>,
    }
}

wire_struct! {
    pub struct DescribeGroupsResponse {
        pub groups: Vec<GroupDescription>,
    }
}

wire_struct! {
    /// Deletes groups without members, with their committed offsets.
    pub struct DeleteGroupsRequest {
        pub group_ids: Vec<String>,
    }
}

wire_struct! {
    pub struct GroupResult {
        pub group_id: String,
        pub error_code: ErrorCode,
    }
}

wire_struct! {
    pub struct DeleteGroupsResponse {
        pub results: Vec<GroupResult>,
    }
}

// ---------------------------------------------------------------- producers

wire_struct! {
    /// Asks any broker for a new producer id (idempotent producers; transactions are not
    /// supported: `transactional_id` must be null).
    pub struct InitProducerIdRequest {
        pub transactional_id: Option<String>,
        pub transaction_timeout_ms: i32,
    }
}

wire_struct! {
    /// A producer id unique in the cluster, at epoch 0.
    pub struct InitProducerIdResponse {
        pub error_code: ErrorCode,
        pub producer_id: i64,
        pub producer_epoch: i16,
    }
}

// ---------------------------------------------------------------- security

wire_struct! {
    /// Chooses the SASL mechanism (docs/SECURITY.md "Users"): `SCRAM-SHA-256`,
    /// `SCRAM-SHA-512` or `PLAIN`.
    pub struct SaslHandshakeRequest {
        pub mechanism: String,
    }
}

wire_struct! {
    /// UNSUPPORTED_SASL_MECHANISM with the ones offered, or success.
    pub struct SaslHandshakeResponse {
        pub error_code: ErrorCode,
        pub mechanisms: Vec<String>,
    }
}

wire_struct! {
    /// One message of the mechanism's exchange (`rill_protocol::sasl`).
    pub struct SaslAuthenticateRequest {
        #[cfg_attr(test, proptest(strategy = "arb_bytes()"))]
        pub auth_bytes: Bytes,
    }
}

wire_struct! {
    /// The server's next message, or SASL_AUTHENTICATION_FAILED (the connection is then
    /// closed).
    pub struct SaslAuthenticateResponse {
        pub error_code: ErrorCode,
        pub error_message: Option<String>,
        #[cfg_attr(test, proptest(strategy = "arb_bytes()"))]
        pub auth_bytes: Bytes,
    }
}

wire_struct! {
    /// A user's credential for one SCRAM mechanism, as Kafka's AlterUserScramCredentials
    /// sends it: the salted password (PBKDF2), never the password.
    pub struct UserUpsertion {
        pub user: String,
        pub mechanism: String,
        pub iterations: u32,
        #[cfg_attr(test, proptest(strategy = "arb_bytes()"))]
        pub salt: Bytes,
        #[cfg_attr(test, proptest(strategy = "arb_bytes()"))]
        pub salted_password: Bytes,
    }
}

wire_struct! {
    pub struct UserDeletion {
        pub user: String,
        pub mechanism: String,
    }
}

wire_struct! {
    /// Creates, replaces and deletes users' SCRAM credentials.
    pub struct AlterUsersRequest {
        pub deletions: Vec<UserDeletion>,
        pub upsertions: Vec<UserUpsertion>,
    }
}

wire_struct! {
    pub struct UserResult {
        pub user: String,
        pub error_code: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// One result per deletion, then per upsertion.
    pub struct AlterUsersResponse {
        pub results: Vec<UserResult>,
    }
}

wire_struct! {
    /// Users and their mechanisms; absent: every user.
    pub struct DescribeUsersRequest {
        pub users: Option<Vec<String>>,
    }
}

wire_struct! {
    pub struct CredentialInfo {
        pub mechanism: String,
        pub iterations: u32,
    }
}

wire_struct! {
    pub struct UserDescription {
        pub user: String,
        /// RESOURCE_NOT_FOUND for a named user that does not exist.
        pub error_code: ErrorCode,
        pub credentials: Vec<CredentialInfo>,
    }
}

wire_struct! {
    pub struct DescribeUsersResponse {
        pub error_code: ErrorCode,
        pub error_message: Option<String>,
        pub users: Vec<UserDescription>,
    }
}

wire_struct! {
    /// One ACL, with Kafka's numeric codes: resource type topic 2, group 3, cluster 4;
    /// pattern literal 3, prefixed 4; operation all 2, read 3, write 4, create 5, delete 6,
    /// alter 7, describe 8, cluster_action 9, describe_configs 10, alter_configs 11,
    /// idempotent_write 12; permission deny 2, allow 3.
    pub struct AclEntry {
        pub resource_type: u8,
        pub resource_name: String,
        pub pattern_type: u8,
        pub principal: String,
        pub host: String,
        pub operation: u8,
        pub permission: u8,
    }
}

wire_struct! {
    /// Names ACLs: code 1 (any) or an absent string matches everything; pattern 2 (match)
    /// names every ACL that applies to `resource_name`.
    pub struct AclFilterEntry {
        pub resource_type: u8,
        pub resource_name: Option<String>,
        pub pattern_type: u8,
        pub principal: Option<String>,
        pub host: Option<String>,
        pub operation: u8,
        pub permission: u8,
    }
}

wire_struct! {
    pub struct CreateAclsRequest {
        pub acls: Vec<AclEntry>,
    }
}

wire_struct! {
    pub struct AclResult {
        pub error_code: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// One result per ACL, in order.
    pub struct CreateAclsResponse {
        pub results: Vec<AclResult>,
    }
}

wire_struct! {
    pub struct DescribeAclsRequest {
        pub filter: AclFilterEntry,
    }
}

wire_struct! {
    pub struct DescribeAclsResponse {
        pub error_code: ErrorCode,
        pub error_message: Option<String>,
        pub acls: Vec<AclEntry>,
    }
}

wire_struct! {
    pub struct DeleteAclsRequest {
        pub filters: Vec<AclFilterEntry>,
    }
}

wire_struct! {
    /// The ACLs one filter deleted.
    pub struct DeleteAclsResult {
        pub error_code: ErrorCode,
        pub error_message: Option<String>,
        pub deleted: Vec<AclEntry>,
    }
}

wire_struct! {
    pub struct DeleteAclsResponse {
        pub results: Vec<DeleteAclsResult>,
    }
}

// ---------------------------------------------------------------- client quotas (24, 25)

wire_struct! {
    /// One quota of an entity: `producer_byte_rate` or `consumer_byte_rate`, bytes per
    /// second (0: no limit); `None` removes it (the next layer applies again).
    pub struct QuotaOp {
        pub key: String,
        pub value: Option<u64>,
    }
}

wire_struct! {
    /// Changes to one client id's quotas; `client_id` `None` is the default of every client id.
    pub struct ClientQuotaAlteration {
        pub client_id: Option<String>,
        pub ops: Vec<QuotaOp>,
    }
}

wire_struct! {
    pub struct AlterClientQuotasRequest {
        pub entries: Vec<ClientQuotaAlteration>,
    }
}

wire_struct! {
    /// The outcome of one alteration, in request order.
    pub struct ClientQuotaResult {
        pub error_code: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    pub struct AlterClientQuotasResponse {
        pub results: Vec<ClientQuotaResult>,
    }
}

wire_struct! {
    pub struct DescribeClientQuotasRequest {}
}

wire_struct! {
    /// A quota as the metadata holds it.
    pub struct QuotaValue {
        pub key: String,
        pub value: u64,
    }
}

wire_struct! {
    /// One client id's quotas (`None`: the default of every client id).
    pub struct ClientQuotaEntry {
        pub client_id: Option<String>,
        pub values: Vec<QuotaValue>,
    }
}

wire_struct! {
    pub struct DescribeClientQuotasResponse {
        pub error_code: ErrorCode,
        pub error_message: Option<String>,
        pub entries: Vec<ClientQuotaEntry>,
    }
}

// ---------------------------------------------------------------- dispatch

macro_rules! body_enum {
    ($(#[$meta:meta])* $enum:ident { $($key:ident => $ty:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub enum $enum { $($key($ty),)* }

        impl $enum {
            /// The api this body belongs to.
            pub fn api_key(&self) -> ApiKey {
                match self { $($enum::$key(_) => ApiKey::$key,)* }
            }

            /// Appends the body's encoding (no header) to `buf`.
            pub fn encode(&self, buf: &mut BytesMut) {
                match self { $($enum::$key(body) => body.encode(buf),)* }
            }

            /// The body's encoding in a fresh buffer.
            pub fn encode_to_bytes(&self) -> Bytes {
                let mut buf = BytesMut::new();
                self.encode(&mut buf);
                buf.freeze()
            }

            /// The body's encoding as chunks for a vectored write, large byte strings (record
            /// batches) shared instead of copied ([`Chunks`]).
            pub fn encode_chunks(&self) -> Vec<Bytes> {
                let mut out = Chunks::default();
                match self { $($enum::$key(body) => Wire::encode_chunks(body, &mut out),)* }
                out.finish()
            }

            /// Decodes a body of api `api_key`, version `version`; the body must be consumed exactly.
            pub fn decode(api_key: u16, version: u16, body: Bytes) -> Result<Self, ProtocolError> {
                let key = ApiKey::from_u16(api_key).ok_or(ProtocolError::UnknownApiKey(api_key))?;
                let (min, max) = key.supported_versions();
                if version < min || version > max {
                    return Err(ProtocolError::UnsupportedVersion { api_key, version });
                }
                if let Some(body) = Self::decode_versioned(key, version, &body) {
                    return body;
                }
                Ok(match key { $(ApiKey::$key => $enum::$key(decode_exact(body, stringify!($ty))?),)* })
            }
        }
    };
}

body_enum! {
    /// Any request body.
    RequestBody {
        ApiVersions => ApiVersionsRequest,
        Metadata => MetadataRequest,
        CreateTopics => CreateTopicsRequest,
        DeleteTopics => DeleteTopicsRequest,
        Produce => ProduceRequest,
        Fetch => FetchRequest,
        ListOffsets => ListOffsetsRequest,
        CreatePartitions => CreatePartitionsRequest,
        ElectLeaders => ElectLeadersRequest,
        DescribeLogs => DescribeLogsRequest,
        FindCoordinator => FindCoordinatorRequest,
        ConsumerGroupHeartbeat => ConsumerGroupHeartbeatRequest,
        OffsetCommit => OffsetCommitRequest,
        OffsetFetch => OffsetFetchRequest,
        ListGroups => ListGroupsRequest,
        DescribeGroups => DescribeGroupsRequest,
        DeleteGroups => DeleteGroupsRequest,
        SaslHandshake => SaslHandshakeRequest,
        SaslAuthenticate => SaslAuthenticateRequest,
        AlterUsers => AlterUsersRequest,
        DescribeUsers => DescribeUsersRequest,
        CreateAcls => CreateAclsRequest,
        DescribeAcls => DescribeAclsRequest,
        DeleteAcls => DeleteAclsRequest,
        AlterClientQuotas => AlterClientQuotasRequest,
        DescribeClientQuotas => DescribeClientQuotasRequest,
        InitProducerId => InitProducerIdRequest,
    }
}

body_enum! {
    /// Any response body.
    ResponseBody {
        ApiVersions => ApiVersionsResponse,
        Metadata => MetadataResponse,
        CreateTopics => CreateTopicsResponse,
        DeleteTopics => DeleteTopicsResponse,
        Produce => ProduceResponse,
        Fetch => FetchResponse,
        ListOffsets => ListOffsetsResponse,
        CreatePartitions => CreatePartitionsResponse,
        ElectLeaders => ElectLeadersResponse,
        DescribeLogs => DescribeLogsResponse,
        FindCoordinator => FindCoordinatorResponse,
        ConsumerGroupHeartbeat => ConsumerGroupHeartbeatResponse,
        OffsetCommit => OffsetCommitResponse,
        OffsetFetch => OffsetFetchResponse,
        ListGroups => ListGroupsResponse,
        DescribeGroups => DescribeGroupsResponse,
        DeleteGroups => DeleteGroupsResponse,
        SaslHandshake => SaslHandshakeResponse,
        SaslAuthenticate => SaslAuthenticateResponse,
        AlterUsers => AlterUsersResponse,
        DescribeUsers => DescribeUsersResponse,
        CreateAcls => CreateAclsResponse,
        DescribeAcls => DescribeAclsResponse,
        DeleteAcls => DeleteAclsResponse,
        AlterClientQuotas => AlterClientQuotasResponse,
        DescribeClientQuotas => DescribeClientQuotasResponse,
        InitProducerId => InitProducerIdResponse,
    }
}

impl RequestBody {
    /// Requests have one encoding per api (only their responses differ by version).
    fn decode_versioned(_: ApiKey, _: u16, _: &Bytes) -> Option<Result<Self, ProtocolError>> {
        None
    }
}

impl ResponseBody {
    /// The bodies whose encoding depends on the version: Produce and Fetch.
    fn decode_versioned(
        key: ApiKey,
        version: u16,
        body: &Bytes,
    ) -> Option<Result<Self, ProtocolError>> {
        match key {
            ApiKey::Produce => {
                Some(ProduceResponse::decode_at(version, body.clone()).map(ResponseBody::Produce))
            }
            ApiKey::Fetch => {
                Some(FetchResponse::decode_at(version, body.clone()).map(ResponseBody::Fetch))
            }
            _ => None,
        }
    }

    /// The body as version `version` of its api encodes it.
    pub fn encode_at(&self, version: u16) -> Bytes {
        match self {
            ResponseBody::Produce(response) => response.encode_at(version),
            ResponseBody::Fetch(response) => {
                let chunks = response.encode_chunks_at(version);
                let mut buf = BytesMut::new();
                for chunk in chunks {
                    buf.extend_from_slice(&chunk);
                }
                buf.freeze()
            }
            _ => self.encode_to_bytes(),
        }
    }
}

/// The ApiVersions answer this crate supports, for brokers to send.
pub fn supported_api_versions() -> ApiVersionsResponse {
    ApiVersionsResponse {
        apis: ApiKey::ALL
            .iter()
            .map(|key| {
                let (min_version, max_version) = key.supported_versions();
                ApiVersionRange {
                    api_key: *key as u16,
                    min_version,
                    max_version,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_request_round_trips(body in any::<RequestBody>()) {
            let bytes = body.encode_to_bytes();
            prop_assert_eq!(RequestBody::decode(body.api_key() as u16, 0, bytes).unwrap(), body);
        }

        #[test]
        fn every_response_round_trips(body in any::<ResponseBody>()) {
            let (_, newest) = body.api_key().supported_versions();
            let bytes = body.encode_to_bytes();
            prop_assert_eq!(&bytes, &body.encode_at(newest));
            prop_assert_eq!(ResponseBody::decode(body.api_key() as u16, newest, bytes).unwrap(), body);
        }

        #[test]
        fn every_response_round_trips_at_version_0(mut body in any::<ResponseBody>()) {
            // Version 0 has no throttle time: it reads back as 0.
            match &mut body {
                ResponseBody::Produce(r) => r.throttle_time_ms = 0,
                ResponseBody::Fetch(r) => r.throttle_time_ms = 0,
                _ => {}
            }
            let bytes = body.encode_at(0);
            prop_assert_eq!(ResponseBody::decode(body.api_key() as u16, 0, bytes).unwrap(), body);
        }

        #[test]
        fn every_truncation_of_a_valid_body_is_an_error(body in any::<RequestBody>(), cut in any::<proptest::sample::Index>()) {
            let bytes = body.encode_to_bytes();
            prop_assume!(!bytes.is_empty());
            let cut = cut.index(bytes.len());
            prop_assert!(RequestBody::decode(body.api_key() as u16, 0, bytes.slice(..cut)).is_err());
        }

        #[test]
        fn arbitrary_bodies_never_panic(key in 0u16..45, bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = RequestBody::decode(key, 0, Bytes::from(bytes.clone()));
            let _ = ResponseBody::decode(key, 0, Bytes::from(bytes));
        }
    }

    /// The chunks' concatenation.
    fn joined(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    proptest! {
        #[test]
        fn body_chunks_concatenate_to_the_encoding(request in any::<RequestBody>(), response in any::<ResponseBody>()) {
            prop_assert_eq!(&joined(&request.encode_chunks())[..], &request.encode_to_bytes()[..]);
            prop_assert_eq!(&joined(&response.encode_chunks())[..], &response.encode_to_bytes()[..]);
        }

        #[test]
        fn large_records_are_shared_not_copied(sizes in proptest::collection::vec(0usize..10_000, 1..6)) {
            let batches: Vec<Bytes> = sizes.iter().map(|n| Bytes::from(vec![7u8; *n])).collect();
            let request = RequestBody::Produce(ProduceRequest {
                acks: Acks::Leader,
                timeout_ms: 1000,
                topics: vec![ProduceTopic {
                    name: "t".into(),
                    partitions: batches.iter().enumerate().map(|(i, records)| ProducePartition {
                        partition: i as u32,
                        records: records.clone(),
                    }).collect(),
                }],
            });
            let chunks = request.encode_chunks();
            prop_assert_eq!(&joined(&chunks)[..], &request.encode_to_bytes()[..]);
            for batch in &batches {
                let shared = chunks.iter().any(|c| c.as_ptr() == batch.as_ptr() && c.len() == batch.len());
                prop_assert_eq!(shared, batch.len() >= crate::wire::Chunks::SHARE_BYTES_MIN);
            }
        }

        #[test]
        fn fetch_response_chunks_concatenate_to_the_encoding(response in any::<FetchResponse>()) {
            let chunks = response.encode_chunks();
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            prop_assert_eq!(&joined[..], &crate::wire::encode_to_bytes(&response)[..]);
            let v0: Vec<u8> = response.encode_chunks_at(0).iter().flat_map(|c| c.iter().copied()).collect();
            prop_assert_eq!(&v0[..], &crate::wire::encode_to_bytes(&response.topics)[..]);
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let err = RequestBody::decode(ApiKey::ApiVersions as u16, 0, Bytes::from_static(&[1]))
            .unwrap_err();
        assert!(matches!(err, ProtocolError::TrailingBytes { .. }));
    }

    #[test]
    fn unknown_key_and_version_map_to_error_codes() {
        let err = RequestBody::decode(999, 0, Bytes::new()).unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::UNSUPPORTED_API);
        let err = RequestBody::decode(0, 7, Bytes::new()).unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::UNSUPPORTED_VERSION);
    }

    #[test]
    fn api_versions_lists_every_api() {
        assert_eq!(supported_api_versions().apis.len(), ApiKey::ALL.len());
    }
}
