//! Cluster metadata: the commands appended to the Raft log and the state they build.
//!
//! Pure and deterministic: every broker applies the same commands in the same order and reaches
//! the same `MetadataState`. Validation that depends on the state (does the topic exist?) happens
//! here, at apply time, so two racing proposals cannot both succeed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node (broker) id.
pub type NodeId = u64;

/// A change to cluster metadata. Versioned by variant: new variants are only ever appended, and
/// existing variants never change shape (postcard is not self-describing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A broker announces itself and the address clients reach it at.
    RegisterBroker {
        node_id: NodeId,
        host: String,
        port: u16,
    },
    /// Creates a topic; `assignments[p]` lists partition `p`'s replicas, the first preferred leader.
    CreateTopic {
        name: String,
        assignments: Vec<Vec<NodeId>>,
        configs: BTreeMap<String, String>,
    },
    /// Deletes a topic.
    DeleteTopic { name: String },
}

/// Outcome of applying a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResult {
    #[default]
    Ok,
    TopicAlreadyExists,
    UnknownTopic,
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub node_id: NodeId,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub replicas: Vec<NodeId>,
    pub leader: Option<NodeId>,
    pub leader_epoch: u32,
    pub isr: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
    pub configs: BTreeMap<String, String>,
}

/// Everything the controller knows. Snapshots serialize it whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetadataState {
    pub brokers: BTreeMap<NodeId, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
}

impl MetadataState {
    /// Applies one command; deterministic.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::RegisterBroker {
                node_id,
                host,
                port,
            } => {
                self.brokers.insert(
                    *node_id,
                    BrokerInfo {
                        node_id: *node_id,
                        host: host.clone(),
                        port: *port,
                    },
                );
                CommandResult::Ok
            }
            Command::CreateTopic {
                name,
                assignments,
                configs,
            } => {
                if self.topics.contains_key(name) {
                    return CommandResult::TopicAlreadyExists;
                }
                if assignments.is_empty() || assignments.iter().any(Vec::is_empty) {
                    return CommandResult::Invalid(
                        "every partition needs at least one replica".into(),
                    );
                }
                let partitions = assignments
                    .iter()
                    .map(|replicas| PartitionInfo {
                        replicas: replicas.clone(),
                        leader: replicas.first().copied(),
                        leader_epoch: 0,
                        isr: replicas.clone(),
                    })
                    .collect();
                self.topics.insert(
                    name.clone(),
                    TopicInfo {
                        name: name.clone(),
                        partitions,
                        configs: configs.clone(),
                    },
                );
                CommandResult::Ok
            }
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => CommandResult::Ok,
                None => CommandResult::UnknownTopic,
            },
        }
    }

    /// Partitions (topic, index, info) whose replicas include `node_id`.
    pub fn partitions_of(
        &self,
        node_id: NodeId,
    ) -> impl Iterator<Item = (&str, u32, &PartitionInfo)> {
        self.topics.values().flat_map(move |topic| {
            topic
                .partitions
                .iter()
                .enumerate()
                .filter(move |(_, p)| p.replicas.contains(&node_id))
                .map(move |(i, p)| (topic.name.as_str(), i as u32, p))
        })
    }
}

/// Places `partitions` x `replication_factor` replicas over `brokers` round-robin, rotating the
/// starting broker per partition so leaders (first replicas) spread evenly.
pub fn assign_replicas(
    brokers: &[NodeId],
    partitions: u32,
    replication_factor: u16,
) -> Vec<Vec<NodeId>> {
    let n = brokers.len();
    (0..partitions as usize)
        .map(|p| {
            (0..replication_factor as usize)
                .map(|r| brokers[(p + r) % n])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_delete_topics_deterministically() {
        let mut state = MetadataState::default();
        let create = Command::CreateTopic {
            name: "t".into(),
            assignments: vec![vec![1], vec![1]],
            configs: BTreeMap::new(),
        };
        assert_eq!(state.apply(&create), CommandResult::Ok);
        assert_eq!(state.apply(&create), CommandResult::TopicAlreadyExists);
        assert_eq!(state.topics["t"].partitions[1].leader, Some(1));
        assert_eq!(state.partitions_of(1).count(), 2);
        assert_eq!(state.partitions_of(2).count(), 0);
        assert_eq!(
            state.apply(&Command::DeleteTopic { name: "t".into() }),
            CommandResult::Ok
        );
        assert_eq!(
            state.apply(&Command::DeleteTopic { name: "t".into() }),
            CommandResult::UnknownTopic
        );
    }

    #[test]
    fn assignment_spreads_leaders() {
        let a = assign_replicas(&[1, 2, 3], 6, 2);
        assert_eq!(a[0], vec![1, 2]);
        assert_eq!(a[1], vec![2, 3]);
        assert_eq!(a[2], vec![3, 1]);
        let leaders: Vec<_> = a.iter().map(|r| r[0]).collect();
        assert_eq!(leaders, vec![1, 2, 3, 1, 2, 3]);
    }
}
