//! Rill's error codes as Kafka's. Rill's codes have their own numbers (docs/PROTOCOL.md); a
//! Kafka client must see Kafka's (the protocol guide's error table), so every code the broker
//! operations return maps to the Kafka code with the same meaning.

use kafka_protocol::error::ResponseError as K;
use rill_protocol::ErrorCode;

/// The Kafka error code for a Rill one.
pub fn kafka_code(code: ErrorCode) -> i16 {
    let kafka = match code {
        ErrorCode::NONE => return 0,
        ErrorCode::UNKNOWN_SERVER_ERROR => K::UnknownServerError,
        ErrorCode::CORRUPT_MESSAGE => K::CorruptMessage,
        ErrorCode::UNKNOWN_TOPIC_OR_PARTITION => K::UnknownTopicOrPartition,
        ErrorCode::NOT_LEADER => K::NotLeaderOrFollower,
        ErrorCode::OFFSET_OUT_OF_RANGE => K::OffsetOutOfRange,
        ErrorCode::MESSAGE_TOO_LARGE => K::MessageTooLarge,
        // Kafka has no code for an oversized request frame (it closes the connection).
        ErrorCode::REQUEST_TOO_LARGE => K::MessageTooLarge,
        ErrorCode::INVALID_REQUEST => K::InvalidRequest,
        ErrorCode::UNSUPPORTED_VERSION | ErrorCode::UNSUPPORTED_API => K::UnsupportedVersion,
        ErrorCode::TOPIC_ALREADY_EXISTS => K::TopicAlreadyExists,
        ErrorCode::NOT_ENOUGH_REPLICAS => K::NotEnoughReplicas,
        ErrorCode::REQUEST_TIMED_OUT => K::RequestTimedOut,
        ErrorCode::INVALID_TOPIC => K::InvalidTopicException,
        ErrorCode::INVALID_PARTITIONS => K::InvalidPartitions,
        ErrorCode::INVALID_REPLICATION_FACTOR => K::InvalidReplicationFactor,
        ErrorCode::INVALID_CONFIG => K::InvalidConfig,
        ErrorCode::NOT_CONTROLLER => K::NotController,
        ErrorCode::LEADER_NOT_AVAILABLE => K::LeaderNotAvailable,
        ErrorCode::NOT_ENOUGH_REPLICAS_AFTER_APPEND => K::NotEnoughReplicasAfterAppend,
        ErrorCode::STORAGE_ERROR => K::KafkaStorageError,
        ErrorCode::FENCED_LEADER_EPOCH => K::FencedLeaderEpoch,
        ErrorCode::UNKNOWN_LEADER_EPOCH => K::UnknownLeaderEpoch,
        ErrorCode::INVALID_TIMESTAMP => K::InvalidTimestamp,
        ErrorCode::UNSUPPORTED_COMPRESSION => K::UnsupportedCompressionType,
        // Retriable "no leader here yet" for Kafka clients: they refresh metadata and retry.
        ErrorCode::CLUSTER_NOT_READY | ErrorCode::BROKER_SHUTTING_DOWN => K::LeaderNotAvailable,
        ErrorCode::INVALID_RECORD => K::InvalidRecord,
        ErrorCode::CLUSTER_AUTHORIZATION_FAILED => K::ClusterAuthorizationFailed,
        ErrorCode::TOPIC_AUTHORIZATION_FAILED => K::TopicAuthorizationFailed,
        ErrorCode::GROUP_AUTHORIZATION_FAILED => K::GroupAuthorizationFailed,
        ErrorCode::SASL_AUTHENTICATION_FAILED => K::SaslAuthenticationFailed,
        ErrorCode::UNSUPPORTED_SASL_MECHANISM => K::UnsupportedSaslMechanism,
        ErrorCode::ILLEGAL_SASL_STATE => K::IllegalSaslState,
        ErrorCode::RESOURCE_NOT_FOUND => K::ResourceNotFound,
        ErrorCode::NOT_COORDINATOR => K::NotCoordinator,
        ErrorCode::COORDINATOR_NOT_AVAILABLE => K::CoordinatorNotAvailable,
        ErrorCode::UNKNOWN_MEMBER_ID => K::UnknownMemberId,
        ErrorCode::FENCED_MEMBER_EPOCH => K::FencedMemberEpoch,
        ErrorCode::GROUP_ID_NOT_FOUND => K::GroupIdNotFound,
        ErrorCode::INVALID_GROUP_ID => K::InvalidGroupId,
        ErrorCode::NON_EMPTY_GROUP => K::NonEmptyGroup,
        ErrorCode::UNSUPPORTED_ASSIGNOR => K::UnsupportedAssignor,
        ErrorCode::GROUP_MAX_SIZE_REACHED => K::GroupMaxSizeReached,
        ErrorCode::PARTITION_NOT_ASSIGNED => K::IllegalGeneration,
        ErrorCode::ILLEGAL_GENERATION => K::IllegalGeneration,
        ErrorCode::REBALANCE_IN_PROGRESS => K::RebalanceInProgress,
        ErrorCode::INCONSISTENT_GROUP_PROTOCOL => K::InconsistentGroupProtocol,
        ErrorCode::MEMBER_ID_REQUIRED => K::MemberIdRequired,
        ErrorCode::INVALID_SESSION_TIMEOUT => K::InvalidSessionTimeout,
        ErrorCode::FENCED_INSTANCE_ID => K::FencedInstanceId,
        ErrorCode::OUT_OF_ORDER_SEQUENCE => K::OutOfOrderSequenceNumber,
        ErrorCode::INVALID_PRODUCER_EPOCH => K::InvalidProducerEpoch,
        ErrorCode::UNKNOWN_PRODUCER_ID => K::UnknownProducerId,
        _ => K::UnknownServerError,
    };
    kafka.code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rill_code_has_a_kafka_code_and_only_success_is_zero() {
        for code in ErrorCode::ALL {
            let kafka = kafka_code(*code);
            assert_eq!(kafka == 0, *code == ErrorCode::NONE, "{code:?}");
            assert!(
                K::try_from_code(kafka).is_some() || kafka == 0,
                "{code:?} -> {kafka}"
            );
        }
        // A few that clients act on.
        assert_eq!(kafka_code(ErrorCode::NOT_LEADER), 6);
        assert_eq!(kafka_code(ErrorCode::OFFSET_OUT_OF_RANGE), 1);
        assert_eq!(kafka_code(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION), 3);
        assert_eq!(kafka_code(ErrorCode::OUT_OF_ORDER_SEQUENCE), 45);
    }
}
