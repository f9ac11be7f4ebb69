//! DescribeConfigs: a topic's effective configs (each key of `config::TOPIC_CONFIG_KEYS`, its
//! own value or the broker default it inherits) and this broker's defaults for them.

use std::sync::Arc;

use rill_protocol::ErrorCode;

use crate::config::TOPIC_CONFIG_KEYS;
use crate::security::acl::{Operation, ResourceType};
use crate::security::Session;
use crate::server::BrokerState;

/// One config's effective value.
pub struct ConfigValue {
    pub name: &'static str,
    pub value: String,
    /// Set on the topic (else the broker's default).
    pub from_topic: bool,
}

/// The broker's default for a topic config key.
fn broker_default(state: &BrokerState, key: &str) -> Result<String, ErrorCode> {
    let base = state
        .config
        .log_config()
        .map_err(|_| ErrorCode::UNKNOWN_SERVER_ERROR)?;
    let none = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    Ok(match key {
        "retention.ms" => none(base.retention_ms),
        "retention.bytes" => none(base.retention_bytes),
        "segment.bytes" => base.segment_bytes.to_string(),
        "segment.ms" => base.segment_ms.to_string(),
        "max.message.bytes" => base.max_batch_bytes.to_string(),
        "flush" => state.config.flush.clone(),
        "min.insync.replicas" => state.config.min_insync_replicas.to_string(),
        "unclean.leader.election.enable" => state.config.unclean_leader_election.to_string(),
        "cleanup.policy" => base.cleanup_policy.to_string(),
        "min.cleanable.dirty.ratio" => base.min_cleanable_dirty_ratio.to_string(),
        "delete.retention.ms" => base.delete_retention_ms.to_string(),
        "min.compaction.lag.ms" => base.min_compaction_lag_ms.to_string(),
        _ => String::new(),
    })
}

/// Every topic config of `topic`, effective; needs `DescribeConfigs` on the topic.
pub fn topic_configs(
    state: &Arc<BrokerState>,
    session: &Session,
    topic: &str,
) -> Result<Vec<ConfigValue>, ErrorCode> {
    if !session.authorize(
        state,
        Operation::DescribeConfigs,
        ResourceType::Topic,
        topic,
    ) {
        return Err(ErrorCode::TOPIC_AUTHORIZATION_FAILED);
    }
    let metadata = state.controller.metadata();
    let info = metadata
        .topics
        .get(topic)
        .ok_or(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION)?;
    TOPIC_CONFIG_KEYS
        .iter()
        .map(|key| {
            Ok(match info.configs.get(*key) {
                Some(value) => ConfigValue {
                    name: key,
                    value: value.clone(),
                    from_topic: true,
                },
                None => ConfigValue {
                    name: key,
                    value: broker_default(state, key)?,
                    from_topic: false,
                },
            })
        })
        .collect()
}

/// This broker's defaults for every topic config key; needs `DescribeConfigs` on the
/// cluster.
pub fn broker_defaults(
    state: &Arc<BrokerState>,
    session: &Session,
) -> Result<Vec<ConfigValue>, ErrorCode> {
    session.check_cluster(state, Operation::DescribeConfigs)?;
    TOPIC_CONFIG_KEYS
        .iter()
        .map(|key| {
            Ok(ConfigValue {
                name: key,
                value: broker_default(state, key)?,
                from_topic: false,
            })
        })
        .collect()
}
