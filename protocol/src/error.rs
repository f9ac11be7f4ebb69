//! The one error-code table of the Rill protocol, and the decode error of this crate.
//!
//! [`ErrorCode`] is a newtype over `i16` rather than a Rust `enum` so that a client can decode a
//! code added by a newer broker without failing: unknown codes keep their number and print as
//! `UNKNOWN(n)`. Codes are stable forever once released; docs/PROTOCOL.md lists every one.

use std::fmt;

/// A numeric, stable protocol error code carried by every response (see docs/PROTOCOL.md).
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ErrorCode(pub i16);

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:expr, retriable = $retriable:expr, $text:expr; )*) => {
        impl ErrorCode {
            $( $(#[$doc])* pub const $name: ErrorCode = ErrorCode($value); )*

            /// Every code this version of the protocol defines, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code's name as written in docs/PROTOCOL.md, or `None` if this version does not know it.
            pub fn name(self) -> Option<&'static str> {
                match self { $(ErrorCode::$name => Some(stringify!($name)),)* _ => None }
            }

            /// What went wrong and what to do, for people.
            pub fn description(self) -> &'static str {
                match self { $(ErrorCode::$name => $text,)* _ => "an error code this client version does not know; upgrade the client" }
            }

            /// Whether the same request may succeed if retried later (after a metadata refresh).
            pub fn is_retriable(self) -> bool {
                match self { $(ErrorCode::$name => $retriable,)* _ => false }
            }
        }
    };
}

error_codes! {
    /// Success.
    NONE = 0, retriable = false, "no error";
    /// The broker failed in a way it could not classify; its log has the details.
    UNKNOWN_SERVER_ERROR = 1, retriable = false, "the broker hit an unexpected error; see the broker log";
    /// A record batch failed its CRC or structural checks.
    CORRUPT_MESSAGE = 2, retriable = true, "a record batch failed its CRC or size checks; the client should re-send it";
    /// The topic or partition does not exist (or is not yet known to this broker).
    UNKNOWN_TOPIC_OR_PARTITION = 3, retriable = true, "the topic or partition does not exist; create it or check the name";
    /// This broker is not the leader of the partition.
    NOT_LEADER = 4, retriable = true, "this broker is not the partition leader; refresh metadata and retry";
    /// The requested offset is outside the partition's [log start, log end] range.
    OFFSET_OUT_OF_RANGE = 5, retriable = false, "the offset is not in the log; seek to earliest or latest";
    /// A record batch is larger than the broker's or topic's maximum.
    MESSAGE_TOO_LARGE = 6, retriable = false, "the record batch exceeds the maximum batch size; send smaller batches";
    /// The request frame is larger than the broker's maximum frame size.
    REQUEST_TOO_LARGE = 7, retriable = false, "the request exceeds the broker's maximum frame size";
    /// The request body could not be decoded or breaks a rule of the protocol.
    INVALID_REQUEST = 8, retriable = false, "the request is malformed; this is a client bug";
    /// The api version is not supported; use ApiVersions to negotiate.
    UNSUPPORTED_VERSION = 9, retriable = false, "the api version is not supported by this broker; negotiate with ApiVersions";
    /// CreateTopics for a name that exists.
    TOPIC_ALREADY_EXISTS = 10, retriable = false, "a topic with this name already exists";
    /// Fewer in-sync replicas than `min_insync_replicas`; nothing was written.
    NOT_ENOUGH_REPLICAS = 11, retriable = true, "too few in-sync replicas to accept the write; retry later";
    /// The request did not complete within its timeout.
    REQUEST_TIMED_OUT = 12, retriable = true, "the request timed out on the broker; retry";
    /// The api key is not known to this broker.
    UNSUPPORTED_API = 13, retriable = false, "the broker does not implement this api; upgrade the broker";
    /// A topic name that breaks the naming rules.
    INVALID_TOPIC = 14, retriable = false, "the topic name is invalid: use 1-249 characters of [a-zA-Z0-9._-]";
    /// A partition count that is zero or over the limit.
    INVALID_PARTITIONS = 15, retriable = false, "the partition count is invalid";
    /// A replication factor that is zero or larger than the live brokers.
    INVALID_REPLICATION_FACTOR = 16, retriable = false, "the replication factor is invalid or larger than the number of live brokers";
    /// An unknown config key or an invalid value.
    INVALID_CONFIG = 17, retriable = false, "a config key is unknown or its value is invalid";
    /// The request went to a broker that is not the active controller.
    NOT_CONTROLLER = 18, retriable = true, "this broker is not the active controller; refresh metadata and retry";
    /// The partition has no leader right now (election in progress).
    LEADER_NOT_AVAILABLE = 19, retriable = true, "the partition has no leader right now; retry shortly";
    /// Written on the leader, but the ISR shrank below the minimum before it was replicated.
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20, retriable = true, "written but not replicated to enough replicas; retry";
    /// A disk error on the broker (full disk, I/O error) for this partition.
    STORAGE_ERROR = 21, retriable = true, "the broker could not read or write its disk for this partition";
    /// The leader epoch in the request is older than the partition's.
    FENCED_LEADER_EPOCH = 22, retriable = true, "the request carried an old leader epoch; refresh metadata";
    /// The leader epoch in the request is newer than the broker knows.
    UNKNOWN_LEADER_EPOCH = 23, retriable = true, "the request carried a leader epoch this broker does not know yet; retry";
    /// A record timestamp that the topic's rules reject.
    INVALID_TIMESTAMP = 24, retriable = false, "a record timestamp is invalid";
    /// A compression codec this broker does not support.
    UNSUPPORTED_COMPRESSION = 25, retriable = false, "the batch uses a compression codec this broker does not support";
    /// The cluster is still forming (no metadata quorum yet).
    CLUSTER_NOT_READY = 26, retriable = true, "the cluster metadata quorum is not ready; retry shortly";
    /// The broker is shutting down.
    BROKER_SHUTTING_DOWN = 27, retriable = true, "the broker is shutting down; retry on another broker";
    /// A record the topic does not accept (a record without a key on a compacted topic).
    INVALID_RECORD = 28, retriable = false, "a record breaks the topic's rules: a compacted topic needs a key on every record";
    /// Broker-only traffic (a follower fetch naming a `replica_id`) on a client listener: it
    /// is served only on the inter-broker listener (`replication_listen`).
    /// Also: the principal may not do this cluster-wide operation (ACLs).
    CLUSTER_AUTHORIZATION_FAILED = 29, retriable = false, "not authorized for this cluster operation (and follower fetches come only from brokers, on the inter-broker listener)";
    /// The principal may not do this to the topic (ACLs).
    TOPIC_AUTHORIZATION_FAILED = 30, retriable = false, "not authorized to access this topic; ask an operator for an ACL";
    /// The principal may not do this to the group (ACLs).
    GROUP_AUTHORIZATION_FAILED = 31, retriable = false, "not authorized to access this group; ask an operator for an ACL";
    /// Wrong user or password (or a malformed SASL exchange).
    SASL_AUTHENTICATION_FAILED = 32, retriable = false, "authentication failed: check the user name, password and mechanism";
    /// The listener does not offer this SASL mechanism.
    UNSUPPORTED_SASL_MECHANISM = 33, retriable = false, "the broker does not offer this SASL mechanism";
    /// A request before authentication on a listener that requires it, or SASL out of order.
    ILLEGAL_SASL_STATE = 34, retriable = false, "this listener requires SASL authentication first (SaslHandshake, SaslAuthenticate)";
    /// A user (or other named resource) that does not exist.
    RESOURCE_NOT_FOUND = 35, retriable = false, "the user or resource does not exist";
    /// This broker is not the group's coordinator.
    NOT_COORDINATOR = 100, retriable = true, "this broker is not the group's coordinator; find the coordinator again";
    /// The coordinator is loading or not elected yet.
    COORDINATOR_NOT_AVAILABLE = 101, retriable = true, "the group coordinator is not available yet; retry shortly";
    /// The member id is not (or no longer) in the group.
    UNKNOWN_MEMBER_ID = 102, retriable = false, "the member is not in the group (it left or its session expired); rejoin";
    /// The member epoch is stale: the member was fenced.
    FENCED_MEMBER_EPOCH = 103, retriable = false, "the member epoch is stale; rejoin the group";
    /// The group does not exist.
    GROUP_ID_NOT_FOUND = 104, retriable = false, "the group does not exist";
    /// The group id is empty or too long.
    INVALID_GROUP_ID = 105, retriable = false, "the group id is invalid: 1-255 bytes";
    /// The group has active members.
    NON_EMPTY_GROUP = 106, retriable = false, "the group has active members; stop them first";
    /// Unknown assignment strategy.
    UNSUPPORTED_ASSIGNOR = 107, retriable = false, "unknown assignor: use range, roundrobin or sticky";
    /// The group has as many members as it may.
    GROUP_MAX_SIZE_REACHED = 108, retriable = false, "the group is full";
    /// A commit for a partition the member does not hold.
    PARTITION_NOT_ASSIGNED = 109, retriable = false, "the partition is not assigned to this member";
    /// A classic (Kafka JoinGroup) member spoke with a generation the group has left behind.
    ILLEGAL_GENERATION = 110, retriable = false, "the group generation is stale; rejoin the group";
    /// The classic group is rebalancing: the member must rejoin.
    REBALANCE_IN_PROGRESS = 111, retriable = true, "the group is rebalancing; rejoin";
    /// The member's protocols share none with the group's, or the group speaks the other protocol.
    INCONSISTENT_GROUP_PROTOCOL = 112, retriable = false, "the member's protocol does not match the group's (classic and native members cannot share a group)";
    /// A classic join without a member id: the answer carries one, join again with it (KIP-394).
    MEMBER_ID_REQUIRED = 113, retriable = false, "join again with the member id this answer carries";
    /// The session timeout is outside the broker's bounds.
    INVALID_SESSION_TIMEOUT = 114, retriable = false, "the session timeout is out of range (1 s to 30 min)";
    /// Another member joined with this group.instance.id (KIP-345).
    FENCED_INSTANCE_ID = 115, retriable = false, "another member has this group instance id";
    /// An idempotent producer's batch does not continue its sequence on this partition.
    OUT_OF_ORDER_SEQUENCE = 200, retriable = false, "the batch's sequence number does not follow the producer's last one on this partition (an earlier batch is missing)";
    /// An idempotent producer's epoch is older than the one the partition knows.
    INVALID_PRODUCER_EPOCH = 201, retriable = false, "the producer epoch is older than the partition's: this producer was replaced";
    /// The partition knows no state of this producer id, and the batch does not start it.
    UNKNOWN_PRODUCER_ID = 202, retriable = false, "the partition has no state for this producer id (expired or deleted); get a new producer id";
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}({})", self.0),
            None => write!(f, "UNKNOWN({})", self.0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}: {}", self.description())
    }
}

impl ErrorCode {
    /// True for [`ErrorCode::NONE`].
    pub fn is_ok(self) -> bool {
        self == ErrorCode::NONE
    }
}

/// Why bytes could not be decoded (or a frame could not be accepted).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("truncated input: needed {needed} more bytes while decoding {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        len: usize,
        max: usize,
        correlation_id: Option<u32>,
    },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("{trailing} unexpected trailing bytes after {what}")]
    TrailingBytes { what: &'static str, trailing: usize },
    #[error("unknown api key {0}")]
    UnknownApiKey(u16),
    #[error("unsupported version {version} of api {api_key}")]
    UnsupportedVersion { api_key: u16, version: u16 },
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record batch uses compression codec {0}, which this version does not support")]
    UnsupportedCompression(u8),
    #[error("i/o error in codec: {0}")]
    Io(String),
    #[error("the batch's records decompress to more than {limit} bytes (max_batch_decompressed_bytes): refused")]
    DecompressedTooLarge { limit: usize },
    #[error("record {index} has no key: a compacted topic accepts only records with a key")]
    MissingKey { index: i32 },
}

impl ProtocolError {
    /// The error code a broker answers with when a request fails with this error.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } => ErrorCode::REQUEST_TOO_LARGE,
            ProtocolError::UnknownApiKey(_) => ErrorCode::UNSUPPORTED_API,
            ProtocolError::UnsupportedVersion { .. } => ErrorCode::UNSUPPORTED_VERSION,
            ProtocolError::CrcMismatch { .. } => ErrorCode::CORRUPT_MESSAGE,
            ProtocolError::UnsupportedCompression(_) => ErrorCode::UNSUPPORTED_COMPRESSION,
            ProtocolError::Io(_) => ErrorCode::UNKNOWN_SERVER_ERROR,
            ProtocolError::DecompressedTooLarge { .. } => ErrorCode::MESSAGE_TOO_LARGE,
            ProtocolError::MissingKey { .. } => ErrorCode::INVALID_RECORD,
            _ => ErrorCode::INVALID_REQUEST,
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        ProtocolError::Invalid {
            what,
            reason: reason.into(),
        }
    }
}

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> Self {
        ProtocolError::Io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_named() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.0), "duplicate error code {}", code.0);
            assert!(code.name().is_some());
        }
        assert_eq!(format!("{:?}", ErrorCode(9999)), "UNKNOWN(9999)");
        assert!(!ErrorCode(9999).is_retriable());
        assert!(ErrorCode::NOT_LEADER.is_retriable());
    }
}
