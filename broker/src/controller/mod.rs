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
    /// Stops the Raft RPC server.
    shutdown: tokio_util::sync::CancellationToken,
}

impl Controller {
    /// Opens the Raft state under `raft_dir` and starts the node. `voters` maps every voter's
    /// node id to its Raft address; with more than one voter, `raft_listener` (bound to this
    /// node's address) serves Raft traffic from the others. A pristine quorum is initialized by
    /// its lowest voter id; the others wait to be contacted.
    pub async fn start(
        node_id: NodeId,
        raft_dir: &Path,
        voters: BTreeMap<NodeId, String>,
        raft_listener: Option<tokio::net::TcpListener>,
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
        let shutdown = tokio_util::sync::CancellationToken::new();
        if let Some(listener) = raft_listener {
            tokio::spawn(network::serve(listener, raft.clone(), shutdown.clone()));
        }
        let initializer = voters.keys().min().copied() == Some(node_id);
        if initializer
            && !raft
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
            shutdown,
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
        self.shutdown.cancel();
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
        let controller = Controller::start(1, dir.path(), voters(), None)
            .await
            .unwrap();
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

        let controller = Controller::start(1, dir.path(), voters(), None)
            .await
            .unwrap();
        assert!(controller.wait_ready(Duration::from_secs(10)).await);
        assert_eq!(
            controller.metadata().topics["orders"].partitions.len(),
            3,
            "metadata is rebuilt from the durable log"
        );
        controller.shutdown().await;
    }

    /// Polls `condition` every 20 ms until it holds, or panics after 30 s.
    async fn until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn create(name: &str) -> Command {
        Command::CreateTopic {
            name: name.into(),
            assignments: vec![vec![1]],
            configs: BTreeMap::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_voters_replicate_and_survive_the_loss_of_the_leader() {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut listeners = Vec::new();
        let mut voters = BTreeMap::new();
        for id in 1..=3u64 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            voters.insert(id, listener.local_addr().unwrap().to_string());
            listeners.push(listener);
        }
        let mut controllers = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            controllers.push(
                Controller::start(i as u64 + 1, dirs[i].path(), voters.clone(), Some(listener))
                    .await
                    .unwrap(),
            );
        }
        until("all voters to agree on a leader", || {
            let leaders: Vec<_> = controllers.iter().map(Controller::leader).collect();
            leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
        })
        .await;
        let leader_id = controllers[0].leader().unwrap();
        let leader = controllers
            .iter()
            .find(|c| c.node_id() == leader_id)
            .unwrap()
            .clone();
        assert_eq!(
            leader.propose(create("a")).await.unwrap(),
            CommandResult::Ok
        );
        let follower = controllers
            .iter()
            .find(|c| c.node_id() != leader_id)
            .unwrap();
        assert!(
            matches!(follower.propose(create("x")).await, Err(Error::NotController { leader: Some(l) }) if l == leader_id)
        );
        until("every voter to apply the topic", || {
            controllers
                .iter()
                .all(|c| c.metadata().topics.contains_key("a"))
        })
        .await;

        // The leader dies: the other two elect a new one and metadata changes continue.
        leader.shutdown().await;
        let survivors: Vec<Controller> = controllers
            .into_iter()
            .filter(|c| c.node_id() != leader_id)
            .collect();
        until("a new leader among the survivors", || {
            let leaders: Vec<_> = survivors.iter().map(Controller::leader).collect();
            leaders[0].is_some_and(|l| l != leader_id) && leaders.iter().all(|l| *l == leaders[0])
        })
        .await;
        let new_leader_id = survivors[0].leader().unwrap();
        let new_leader = survivors
            .iter()
            .find(|c| c.node_id() == new_leader_id)
            .unwrap();
        assert_eq!(
            new_leader.propose(create("b")).await.unwrap(),
            CommandResult::Ok
        );
        until("both survivors to apply the new topic", || {
            survivors
                .iter()
                .all(|c| c.metadata().topics.contains_key("b"))
        })
        .await;
        for c in survivors {
            c.shutdown().await;
        }
    }
}
