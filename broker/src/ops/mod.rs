//! The broker operations: produce, fetch, list offsets, metadata, topic admin and consumer
//! groups, each one function over the broker state that both protocols call. The native handlers
//! (`server::handlers`) and the Kafka handlers (`kafka`) are codecs over them: they turn their
//! wire messages into the plain request structs of `rill_protocol::api` (the one vocabulary of
//! broker operations), call the operation, and encode what it returns. Behaviour (validation,
//! role checks, appends, long polls, error codes) lives here only.
//!
//! Every operation takes the caller's `Session` and checks its ACLs itself (docs/SECURITY.md
//! "ACLs"), so each door enforces the same permissions.
//!
//! An operation does its order-sensitive work before returning (a produce's appends), so
//! requests on one connection take effect in order, and returns the rest (waiting for
//! replication, a fetch's long poll) as a future.

pub mod acls;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_topics;
pub mod describe_configs;
pub mod describe_logs;
pub mod fetch;
pub mod groups;
pub mod init_producer_id;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod quotas;
pub mod users;

use std::sync::Arc;

use rill_protocol::ErrorCode;

use crate::controller::{metadata::assign_replicas, Command, CommandResult, MetadataState};
use crate::log::TopicPartition;
use crate::replica::Replica;
use crate::security::Session;
use crate::server::BrokerState;

/// The local replica of a partition, or the error code a client should see. Callers check
/// its role themselves (the produce and follower-fetch paths do it with their other checks).
pub(crate) fn local_replica(
    state: &BrokerState,
    metadata: &MetadataState,
    topic: &str,
    partition: u32,
) -> Result<Arc<Replica>, ErrorCode> {
    let info = metadata
        .topics
        .get(topic)
        .and_then(|t| t.partitions.get(partition as usize))
        .ok_or(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION)?;
    // Metadata is applied before the local replica exists: briefly, it may be missing.
    let replica = state
        .replicas
        .get(&TopicPartition::new(topic, partition))
        .ok_or(match info.leader {
            Some(_) => ErrorCode::NOT_LEADER,
            None => ErrorCode::LEADER_NOT_AVAILABLE,
        })?;
    Ok(replica)
}

/// The local replica of a partition this broker leads.
pub(crate) fn leader_replica(
    state: &BrokerState,
    metadata: &MetadataState,
    topic: &str,
    partition: u32,
) -> Result<Arc<Replica>, ErrorCode> {
    let replica = local_replica(state, metadata, topic, partition)?;
    replica.check_leader(None)?;
    Ok(replica)
}

/// Topic names: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..` (they become directory names).
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!(
            "topic name must be 1-249 characters, got {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be '.' or '..'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name contains {c:?}; use only [a-zA-Z0-9._-]"
        ));
    }
    Ok(())
}

/// Proposes a metadata change whose only outcomes are done or refused (users, ACLs, client
/// quotas): the refusal as an error code and message.
pub(crate) async fn propose_change(
    state: &BrokerState,
    command: Command,
) -> Result<(), (ErrorCode, String)> {
    match state.controller.propose(command).await {
        Ok(CommandResult::Ok) => Ok(()),
        Ok(CommandResult::UnknownUser) => Err((
            ErrorCode::RESOURCE_NOT_FOUND,
            "the user has no credential for this mechanism".into(),
        )),
        Ok(CommandResult::Invalid(e)) => Err((ErrorCode::INVALID_REQUEST, e)),
        Ok(other) => Err((ErrorCode::UNKNOWN_SERVER_ERROR, format!("{other:?}"))),
        Err(e) => Err((e.error_code(), e.to_string())),
    }
}

/// Most partitions a topic may have.
pub const PARTITIONS_MAX: u32 = 10_000;

/// Validates and creates a topic through the controller, then creates the local logs.
/// Refuses `added` more partitions when the cluster would then hold more than
/// `max_partitions` (docs/SECURITY.md "Limits"). Checked against this broker's metadata view
/// before proposing: two creations racing on different brokers may pass it together.
pub(crate) fn check_partition_limit(
    state: &BrokerState,
    metadata: &crate::controller::MetadataState,
    added: u32,
) -> Result<(), (ErrorCode, Option<String>)> {
    let held: usize = metadata.topics.values().map(|t| t.partitions.len()).sum();
    let max = state.config.max_partitions;
    if held + added as usize > max {
        return Err((
            ErrorCode::INVALID_PARTITIONS,
            Some(format!(
                "the cluster holds {held} partitions; {added} more would pass max_partitions ({max})"
            )),
        ));
    }
    Ok(())
}

pub(crate) async fn create_topic(
    state: &Arc<BrokerState>,
    session: &Session,
    name: &str,
    partitions: u32,
    replication_factor: u16,
    configs: std::collections::BTreeMap<String, String>,
    validate_only: bool,
) -> (ErrorCode, Option<String>) {
    if let Err(message) = validate_topic_name(name) {
        return (ErrorCode::INVALID_TOPIC, Some(message));
    }
    if !session.may_create_topic(state, name) {
        return (
            ErrorCode::TOPIC_AUTHORIZATION_FAILED,
            Some(format!("{} may not create topic {name}", session.principal)),
        );
    }
    if partitions == 0 || partitions > PARTITIONS_MAX {
        return (
            ErrorCode::INVALID_PARTITIONS,
            Some(format!(
                "partitions must be 1-{PARTITIONS_MAX}, got {partitions}"
            )),
        );
    }
    if let Err(e) = crate::config::topic_log_config(state.logs.default_config(), &configs) {
        return (ErrorCode::INVALID_CONFIG, Some(e.to_string()));
    }
    let metadata = state.controller.metadata();
    if metadata.topics.contains_key(name) {
        return (
            ErrorCode::TOPIC_ALREADY_EXISTS,
            Some(format!("topic {name} already exists")),
        );
    }
    if let Err(refused) = check_partition_limit(state, &metadata, partitions) {
        return refused;
    }
    let brokers: Vec<u64> = metadata.alive();
    if brokers.is_empty() {
        return (
            ErrorCode::CLUSTER_NOT_READY,
            Some("no broker has registered yet; retry shortly".into()),
        );
    }
    if replication_factor == 0 || replication_factor as usize > brokers.len() {
        return (
            ErrorCode::INVALID_REPLICATION_FACTOR,
            Some(format!(
                "replication factor {replication_factor} with {} live broker(s)",
                brokers.len()
            )),
        );
    }
    if validate_only {
        return (ErrorCode::NONE, None);
    }
    let assignments = assign_replicas(
        &brokers,
        metadata.topics.len(),
        partitions,
        replication_factor,
    );
    let mut configs = configs;
    if state.config.unclean_leader_election {
        configs
            .entry("unclean.leader.election.enable".into())
            .or_insert_with(|| "true".into());
    }
    match state
        .controller
        .propose(Command::CreateTopic {
            name: name.to_string(),
            assignments,
            configs,
        })
        .await
    {
        Ok(CommandResult::Ok) => {}
        Ok(CommandResult::TopicAlreadyExists) => {
            return (
                ErrorCode::TOPIC_ALREADY_EXISTS,
                Some(format!("topic {name} already exists")),
            )
        }
        Ok(other) => return (ErrorCode::INVALID_REQUEST, Some(format!("{other:?}"))),
        Err(e) => return (e.error_code(), Some(e.to_string())),
    }
    if let Err(e) = state.reconcile(Default::default()).await {
        return (
            e.error_code(),
            Some(format!(
                "topic created but its logs could not be created here: {e}"
            )),
        );
    }
    tracing::info!(
        topic = name,
        partitions,
        replication_factor,
        "created topic"
    );
    (ErrorCode::NONE, None)
}
