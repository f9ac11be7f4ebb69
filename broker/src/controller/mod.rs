//! The metadata controller: cluster metadata (brokers, topics, partition assignments, leaders,
//! epochs) as a replicated state machine on an openraft quorum of controller voters.
//!
//! Metadata changes are [`Command`]s proposed through [`Controller::propose`], appended to the
//! Raft log (`log_store`, fsynced), and applied by every broker's `state_machine`, which
//! publishes each new [`MetadataState`] on a watch channel. A single-node broker is a one-voter
//! quorum running exactly this code. Invariant: no metadata changes except through the log.

pub mod log_store;
pub mod metadata;
pub mod network;
pub mod state_machine;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use tokio::sync::watch;

pub use metadata::{
    BrokerInfo, Command, CommandResult, MetadataState, NodeId, PartitionInfo, TopicInfo,
};

use crate::error::{Error, Result};

openraft::declare_raft_types!(
    /// openraft type configuration of the metadata quorum.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
);

/// Handle to this broker's controller (voter). Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    metadata: watch::Receiver<Arc<MetadataState>>,
}

impl Controller {
    /// Opens the Raft state under `raft_dir` and starts the node; a pristine node initializes the
    /// quorum from `voters` (node id -> controller address).
    pub async fn start(
        node_id: NodeId,
        raft_dir: &Path,
        voters: BTreeMap<NodeId, String>,
    ) -> Result<Controller> {
        let config = openraft::Config {
            cluster_name: "rill".into(),
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| Error::InvalidConfig(format!("raft: {e}")))?,
        );
        let log_store = log_store::LogStore::open(raft_dir)
            .map_err(|e| Error::io("open metadata Raft log in", raft_dir, e))?;
        let (publisher, metadata) = watch::channel(Arc::new(MetadataState::default()));
        let state_machine = state_machine::StateMachine::open(raft_dir, publisher)
            .map_err(|e| Error::io("open metadata state machine in", raft_dir, e))?;
        let raft = Raft::new(node_id, config, network::Network, log_store, state_machine)
            .await
            .map_err(|e| Error::Controller(e.to_string()))?;
        if !raft
            .is_initialized()
            .await
            .map_err(|e| Error::Controller(e.to_string()))?
        {
            let members: BTreeMap<NodeId, BasicNode> = voters
                .into_iter()
                .map(|(id, addr)| (id, BasicNode { addr }))
                .collect();
            tracing::info!(?members, "initializing the metadata quorum");
            raft.initialize(members)
                .await
                .map_err(|e| Error::Controller(e.to_string()))?;
        }
        Ok(Controller {
            node_id,
            raft,
            metadata,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The current metadata (as applied on this broker).
    pub fn metadata(&self) -> Arc<MetadataState> {
        self.metadata.borrow().clone()
    }

    /// A receiver that changes whenever applied metadata changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataState>> {
        self.metadata.clone()
    }

    /// The active controller (Raft leader), if one is elected.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Waits until a leader is elected and its first entry applied here, or `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut metrics = self.raft.metrics();
        let ready = async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let applied = m.last_applied.map(|log_id| log_id.index);
                    if m.current_leader.is_some()
                        && applied.is_some()
                        && applied >= m.last_log_index
                    {
                        return true;
                    }
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, ready).await.unwrap_or(false)
    }

    /// Appends `command` to the metadata log and returns its outcome once applied here.
    pub async fn propose(&self, command: Command) -> Result<CommandResult> {
        match self.raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                match forward.leader_id {
                    Some(leader) => Err(Error::NotController {
                        leader: Some(leader),
                    }),
                    None => Err(Error::ClusterNotReady),
                }
            }
            Err(e) => Err(Error::Controller(e.to_string())),
        }
    }

    /// Stops the Raft node.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("metadata Raft shutdown: {e}");
        }
    }
}

// `Cursor` is named by `declare_raft_types!` (the default snapshot data type).
#[allow(unused)]
type SnapshotData = Cursor<Vec<u8>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn voters() -> BTreeMap<NodeId, String> {
        BTreeMap::from([(1, "127.0.0.1:0".to_string())])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn single_voter_quorum_applies_commands_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let controller = Controller::start(1, dir.path(), voters()).await.unwrap();
        assert!(
            controller.wait_ready(Duration::from_secs(10)).await,
            "a single voter elects itself"
        );
        assert_eq!(controller.leader(), Some(1));
        let create = Command::CreateTopic {
            name: "orders".into(),
            assignments: vec![vec![1]; 3],
            configs: BTreeMap::new(),
        };
        assert_eq!(
            controller.propose(create.clone()).await.unwrap(),
            CommandResult::Ok
        );
        assert_eq!(
            controller.propose(create).await.unwrap(),
            CommandResult::TopicAlreadyExists
        );
        assert_eq!(controller.metadata().topics["orders"].partitions.len(), 3);
        controller.shutdown().await;
        drop(controller);

        let controller = Controller::start(1, dir.path(), voters()).await.unwrap();
        assert!(controller.wait_ready(Duration::from_secs(10)).await);
        assert_eq!(
            controller.metadata().topics["orders"].partitions.len(),
            3,
            "metadata is rebuilt from the durable log"
        );
        controller.shutdown().await;
    }
}
