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

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use tokio::sync::watch;

pub use metadata::{
    BrokerInfo, Command, CommandResult, MetadataState, NodeId, PartitionInfo, TopicInfo,
};

use crate::error::{Error, Result};
use network::{ForwardError, PeerClient, RaftRequest, RaftResponse};

openraft::declare_raft_types!(
    /// openraft type configuration of the metadata quorum.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
);

/// Liveness settings the active controller enforces.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// How often brokers heartbeat (and the controller checks sessions).
    pub heartbeat_interval: Duration,
    /// A broker silent this long is fenced.
    pub session_timeout: Duration,
    /// Preferred-leader election period; `None` disables it.
    pub leader_rebalance_interval: Option<Duration>,
    /// Connections and request memory of the controller port.
    pub port: crate::server::limits::PortLimits,
    /// TLS of the controller port and of connections to other voters' (`None`: plain).
    pub tls: Option<Arc<crate::tls::Tls>>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            heartbeat_interval: Duration::from_millis(500),
            session_timeout: Duration::from_millis(3000),
            leader_rebalance_interval: Some(Duration::from_secs(30)),
            port: crate::server::limits::PortLimits::default(),
            tls: None,
        }
    }
}

/// Handle to this broker's controller: a Raft voter, or an observer that follows the metadata
/// of the voters. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    /// `None` on observers (brokers that are not voters).
    raft: Option<Raft<TypeConfig>>,
    voters: BTreeMap<NodeId, String>,
    metadata: watch::Receiver<Arc<MetadataState>>,
    /// Observers: the active controller as last reported by a voter.
    observed_leader: Mutex<Option<NodeId>>,
    /// Observers: the log index of the metadata last received.
    observed_applied: watch::Sender<u64>,

    /// Connections to the voters' controller ports, for forwarded requests.
    peers: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<PeerClient>>>>,
    /// Connections for this broker's heartbeats only: a burst of proposals (ISR changes of
    /// hundreds of partitions) queued on `peers` must not delay them past the session timeout.
    heartbeat_peers: tokio::sync::Mutex<HashMap<NodeId, PeerClient>>,
    /// Active controller only: when each broker last heartbeated.
    last_heartbeat: Mutex<HashMap<NodeId, Instant>>,
    /// Serializes taking a heartbeat with deciding to fence: a heartbeat is answered either
    /// before the session check that would fence its broker, or after that fence is applied
    /// (and then it re-registers), never in between (its broker would renew its lease while
    /// the fence moves its leaderships).
    sessions: tokio::sync::Mutex<()>,
    options: ControllerOptions,
    /// Stops the controller port and background tasks.
    shutdown: tokio_util::sync::CancellationToken,
}

impl Controller {
    /// Starts this broker's part of the metadata quorum. A broker listed in `voters` (node id ->
    /// controller address) opens the Raft state under `raft_dir` and runs a voter; with more than
    /// one voter, `raft_listener` (bound to its address) serves the controller port. A pristine
    /// quorum is initialized by its lowest voter id; the others wait to be contacted. A broker
    /// not listed is an observer: it polls the voters for metadata and forwards changes.
    pub async fn start(
        node_id: NodeId,
        raft_dir: &Path,
        voters: BTreeMap<NodeId, String>,
        raft_listener: Option<tokio::net::TcpListener>,
        options: ControllerOptions,
    ) -> Result<Controller> {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (publisher, metadata) = watch::channel(Arc::new(MetadataState::default()));
        if !voters.contains_key(&node_id) {
            let controller = Controller::new(node_id, None, voters, metadata, options, shutdown);
            tokio::spawn(controller.clone().observe(publisher));
            return Ok(controller);
        }
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
        let state_machine = state_machine::StateMachine::open(raft_dir, publisher)
            .map_err(|e| Error::io("open metadata state machine in", raft_dir, e))?;
        let network = network::Network {
            tls: options.tls.clone(),
        };
        let raft = Raft::new(node_id, config, network, log_store, state_machine)
            .await
            .map_err(|e| Error::Controller(e.to_string()))?;
        let controller = Controller::new(
            node_id,
            Some(raft.clone()),
            voters.clone(),
            metadata,
            options,
            shutdown.clone(),
        );
        if let Some(listener) = raft_listener {
            tokio::spawn(network::serve(
                listener,
                raft.clone(),
                controller.clone(),
                shutdown.clone(),
                controller.inner.options.port.clone(),
                controller.inner.options.tls.clone(),
            ));
        }
        tokio::spawn(controller.clone().liveness());
        let initializer = voters.keys().min().copied() == Some(node_id);
        if initializer
            && !raft
                .is_initialized()
                .await
                .map_err(|e| Error::Controller(e.to_string()))?
            && !controller.quorum_exists().await
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
        Ok(controller)
    }

    /// Whether another voter already belongs to a formed quorum (it knows a leader or has
    /// applied entries). A lowest-id voter that lost its Raft state must join that quorum (its
    /// leader sends it the log), not initialize a second one.
    async fn quorum_exists(&self) -> bool {
        for &id in self.inner.voters.keys() {
            if id == self.inner.node_id {
                continue;
            }
            let answer = self
                .call(
                    id,
                    RaftRequest::GetMetadata {
                        known: u64::MAX,
                        wait_ms: 0,
                    },
                    Duration::from_secs(1),
                )
                .await;
            if let Some(RaftResponse::Metadata {
                leader, applied, ..
            }) = answer
            {
                if leader.is_some() || applied > 0 {
                    tracing::warn!(
                        voter = id,
                        "this voter has no metadata state but the quorum exists: joining it"
                    );
                    return true;
                }
            }
        }
        false
    }

    fn new(
        node_id: NodeId,
        raft: Option<Raft<TypeConfig>>,
        voters: BTreeMap<NodeId, String>,
        metadata: watch::Receiver<Arc<MetadataState>>,
        options: ControllerOptions,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Controller {
        Controller {
            inner: Arc::new(Inner {
                node_id,
                raft,
                voters,
                metadata,
                observed_leader: Mutex::new(None),
                observed_applied: watch::channel(0).0,

                peers: Mutex::default(),
                last_heartbeat: Mutex::default(),
                sessions: tokio::sync::Mutex::default(),
                heartbeat_peers: tokio::sync::Mutex::default(),
                options,
                shutdown,
            }),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Node ids of the quorum's voters.
    pub fn voters(&self) -> Vec<NodeId> {
        self.inner.voters.keys().copied().collect()
    }

    /// The current metadata (as applied on this broker).
    pub fn metadata(&self) -> Arc<MetadataState> {
        self.inner.metadata.borrow().clone()
    }

    /// A receiver that changes whenever applied metadata changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataState>> {
        self.inner.metadata.clone()
    }

    /// The active controller (Raft leader), if one is elected (as far as this broker knows).
    pub fn leader(&self) -> Option<NodeId> {
        match &self.inner.raft {
            Some(raft) => raft.metrics().borrow().current_leader,
            None => *lock(&self.inner.observed_leader),
        }
    }

    /// Resolves, with why, if this broker's Raft node stops for good while running: a storage
    /// error openraft cannot go on after (a metadata log write failed even with the reserve
    /// released) or a panic. Never on an observer, nor for a normal stop.
    pub async fn raft_failed(&self) -> String {
        let Some(raft) = &self.inner.raft else {
            return std::future::pending().await;
        };
        let mut metrics = raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                if !matches!(fatal, openraft::error::Fatal::Stopped) {
                    return fatal.to_string();
                }
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The quorum's Raft term as this broker knows it (`None` on an observer, which is not in
    /// the quorum).
    pub fn raft_term(&self) -> Option<u64> {
        self.inner
            .raft
            .as_ref()
            .map(|raft| raft.metrics().borrow().current_term)
    }

    /// The metadata log's last index and commit index as this broker knows them (`None` on an
    /// observer). The leader's commit index is the highest index a majority of voters has
    /// (from its replication progress); a follower learns commits only by applying them, so it
    /// reports its applied index.
    pub fn raft_indexes(&self) -> Option<(u64, u64)> {
        let raft = self.inner.raft.as_ref()?;
        let metrics = raft.metrics().borrow().clone();
        let last = metrics.last_log_index.unwrap_or(0);
        let applied = metrics.last_applied.map_or(0, |log_id| log_id.index);
        let committed = match &metrics.replication {
            Some(progress) if !progress.is_empty() => {
                let voters: Vec<NodeId> =
                    metrics.membership_config.membership().voter_ids().collect();
                let mut matched: Vec<u64> = voters
                    .iter()
                    .map(|v| {
                        if *v == metrics.id {
                            last
                        } else {
                            progress
                                .get(v)
                                .and_then(|m| m.as_ref())
                                .map_or(0, |log_id| log_id.index)
                        }
                    })
                    .collect();
                matched.sort_unstable_by(|a, b| b.cmp(a));
                matched
                    .get(voters.len() / 2)
                    .copied()
                    .unwrap_or(applied)
                    .max(applied)
            }
            _ => applied,
        };
        Some((last, committed))
    }

    /// Waits until a leader is elected and its first entry applied here, or `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let Some(raft) = &self.inner.raft else {
            let deadline = Instant::now() + timeout;
            while self.leader().is_none() {
                if Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return true;
        };
        let mut metrics = raft.metrics();
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

    /// Appends `command` to the metadata log (through the active controller, wherever it is)
    /// and returns its outcome.
    pub async fn propose(&self, command: Command) -> Result<CommandResult> {
        let leader = match &self.inner.raft {
            Some(raft) => match raft.client_write(command.clone()).await {
                Ok(response) => return Ok(response.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    forward.leader_id.ok_or(Error::ClusterNotReady)?
                }
                Err(e) => return Err(Error::Controller(e.to_string())),
            },
            None => self.leader().ok_or(Error::ClusterNotReady)?,
        };
        match self
            .call(
                leader,
                RaftRequest::Propose(command),
                Duration::from_secs(10),
            )
            .await
        {
            Some(RaftResponse::Propose(Ok((result, index)))) => {
                // Read-your-writes: the caller sees the change in this broker's metadata.
                match &self.inner.raft {
                    Some(raft) => {
                        let _ = raft
                            .wait(Some(Duration::from_secs(5)))
                            .applied_index_at_least(Some(index), "forwarded proposal applied")
                            .await;
                    }
                    None => {
                        let mut applied = self.inner.observed_applied.subscribe();

                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            applied.wait_for(|applied| *applied >= index),
                        )
                        .await;
                    }
                }
                Ok(result)
            }
            Some(RaftResponse::Propose(Err(ForwardError::NotLeader(leader)))) => {
                Err(Error::NotController { leader })
            }
            Some(RaftResponse::Propose(Err(ForwardError::Failed(e)))) => Err(Error::Controller(e)),
            Some(RaftResponse::Propose(Err(ForwardError::InconsistentClusterId(e)))) => {
                Err(Error::InconsistentClusterId(e))
            }
            Some(RaftResponse::Propose(Err(ForwardError::DuplicateNodeId(e)))) => {
                Err(Error::DuplicateNodeId(e))
            }
            _ => Err(Error::ClusterNotReady),
        }
    }

    /// Proposes on this voter's Raft node, which must be the leader (controller port handler).
    async fn propose_local(&self, command: Command) -> Result<(CommandResult, u64), ForwardError> {
        let raft = self
            .inner
            .raft
            .as_ref()
            .ok_or(ForwardError::NotLeader(None))?;
        match raft.client_write(command).await {
            Ok(response) => Ok((response.data, response.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(ForwardError::NotLeader(forward.leader_id))
            }
            Err(e) => Err(ForwardError::Failed(e.to_string())),
        }
    }

    /// Tells the active controller this broker is alive and where clients reach it. The first
    /// heartbeat registers the broker; one after fencing unfences it. Returns the index of the
    /// metadata the controller had applied when it accepted the heartbeat (see
    /// [`Controller::wait_applied`]) and the cluster's id. A broker whose data directory
    /// belongs to `cluster_id` is refused by the controller of another cluster
    /// ([`Error::InconsistentClusterId`]). Heartbeats use their own connection to the
    /// controller.
    pub async fn heartbeat(
        &self,
        host: &str,
        port: u16,
        incarnation: u64,
        cluster_id: Option<String>,
    ) -> Result<(u64, String)> {
        let leader = self.leader().ok_or(Error::ClusterNotReady)?;
        let node_id = self.inner.node_id;
        let outcome = if leader == node_id && self.inner.raft.is_some() {
            self.on_heartbeat(node_id, host.to_string(), port, incarnation, cluster_id)
                .await
        } else {
            let request = RaftRequest::Heartbeat {
                node_id,
                host: host.to_string(),
                port,
                incarnation,
                cluster_id,
            };
            let timeout = self.inner.options.heartbeat_interval * 2;
            let address = self
                .inner
                .voters
                .get(&leader)
                .cloned()
                .ok_or(Error::ClusterNotReady)?;
            let mut peers = self.inner.heartbeat_peers.lock().await;
            let peer = peers.entry(leader).or_insert_with(|| {
                PeerClient::new(leader, address, self.inner.options.tls.clone())
            });
            match peer.call(request, timeout).await {
                Ok(RaftResponse::Heartbeat(outcome)) => outcome,
                Ok(_) => return Err(Error::ClusterNotReady),
                Err(e) => {
                    tracing::debug!(leader, "heartbeat failed: {e}");
                    return Err(Error::ClusterNotReady);
                }
            }
        };
        match outcome {
            Ok(accepted) => Ok(accepted),
            Err(ForwardError::NotLeader(leader)) => Err(Error::NotController { leader }),
            Err(ForwardError::Failed(e)) => Err(Error::Controller(e)),
            Err(ForwardError::InconsistentClusterId(e)) => Err(Error::InconsistentClusterId(e)),
            Err(ForwardError::DuplicateNodeId(e)) => Err(Error::DuplicateNodeId(e)),
        }
    }

    /// Index of the last metadata log entry applied on this broker. The metadata returned by
    /// [`Controller::metadata`] after reading this is at least as new.
    pub fn applied_index(&self) -> u64 {
        match &self.inner.raft {
            Some(raft) => raft
                .metrics()
                .borrow()
                .last_applied
                .map_or(0, |log_id| log_id.index),
            None => *self.inner.observed_applied.borrow(),
        }
    }

    /// Waits until this broker has applied the metadata log up to `index`, at most `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        match &self.inner.raft {
            Some(raft) => raft
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), "metadata caught up")
                .await
                .is_ok(),
            None => {
                let mut applied = self.inner.observed_applied.subscribe();
                tokio::time::timeout(timeout, applied.wait_for(|applied| *applied >= index))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }
        }
    }

    /// Active controller: names the cluster if it has no name yet (after the broker's data
    /// directory, or a new UUID); refuses a broker of another cluster; records the heartbeat;
    /// (re-)registers the broker if it is unknown, fenced, moved, or a new process
    /// (incarnation).
    async fn on_heartbeat(
        &self,
        node_id: NodeId,
        host: String,
        port: u16,
        incarnation: u64,
        cluster_id: Option<String>,
    ) -> Result<(u64, String), ForwardError> {
        let leader = self.leader();
        if leader != Some(self.inner.node_id) {
            return Err(ForwardError::NotLeader(leader));
        }
        let _sessions = self.inner.sessions.lock().await;
        let cluster = match self.metadata().cluster_id.clone() {
            Some(cluster) => cluster,
            None => {
                let name = cluster_id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                self.propose_local(Command::InitCluster {
                    cluster_id: name.clone(),
                })
                .await?;
                match self.metadata().cluster_id.clone() {
                    Some(cluster) => cluster,
                    None => return Err(ForwardError::Failed("naming the cluster failed".into())),
                }
            }
        };
        if let Some(theirs) = cluster_id.filter(|theirs| *theirs != cluster) {
            tracing::error!(node_id, %host, port, their_cluster = %theirs, cluster = %cluster, "refused a broker of another cluster (its data directory belongs to {theirs})");
            return Err(ForwardError::InconsistentClusterId(format!(
                "the controller quorum at this address belongs to cluster {cluster}, but this broker's data directory belongs to cluster {theirs}: refusing to join (check --controller-voters and --data-dir)"
            )));
        }
        // Two processes with one node id: a new incarnation at another address while the
        // registered one still heartbeats is refused (a restart at the same address, or after
        // the old session expired, replaces the old incarnation as before).
        if let Some(held) = self.metadata().brokers.get(&node_id) {
            let elsewhere = !held.fenced
                && held.incarnation != incarnation
                && (held.host != host || held.port != port);
            let alive = lock(&self.inner.last_heartbeat)
                .get(&node_id)
                .is_some_and(|at| at.elapsed() < self.inner.options.session_timeout);
            if elsewhere && alive {
                let reason = format!(
                    "node id {node_id} is held by a live broker at {}:{}; this broker ({host}:{port}) is refused: give it another --node-id",
                    held.host, held.port
                );
                tracing::error!(node_id, %host, port, "refused a broker registration: {reason}");
                return Err(ForwardError::DuplicateNodeId(reason));
            }
        }
        lock(&self.inner.last_heartbeat).insert(node_id, Instant::now());
        let stale = match self.metadata().brokers.get(&node_id) {
            None => true,
            Some(b) => b.fenced || b.host != host || b.port != port || b.incarnation != incarnation,
        };
        if stale {
            let (_, index) = self
                .propose_local(Command::Register {
                    node_id,
                    host: host.clone(),
                    port,
                    incarnation,
                })
                .await?;
            tracing::info!(node_id, %host, port, "broker registered (alive, unfenced)");
            return Ok((index.max(self.applied_index()), cluster));
        }
        Ok((self.applied_index(), cluster))
    }

    /// Active controller duties, on every voter (idle unless it is the leader): fence brokers
    /// whose session expired; periodically move leaders back to preferred replicas.
    async fn liveness(self) {
        let options = self.inner.options.clone();
        let mut tick = tokio::time::interval(options.heartbeat_interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When this broker became the active controller, and in which Raft term.
        let mut leader_since: Option<(Instant, u64)> = None;
        let mut last_rebalance = Instant::now();
        let mut known_leader = None;
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let leader = self.leader();
            if leader != known_leader {
                match leader {
                    Some(id) if id == self.inner.node_id => {
                        tracing::info!("this broker is now the active controller")
                    }
                    Some(id) => tracing::info!(controller = id, "active controller changed"),
                    None => tracing::warn!("no active controller: the metadata quorum is electing one (or lost its majority)"),
                }
                known_leader = leader;
            }
            if self.leader() != Some(self.inner.node_id) {
                leader_since = None;
                continue;
            }
            // A new active controller gives every broker a full session from its election. By
            // term, not by the first tick that saw this broker lead: a leader restarted by
            // openraft in its old term (it resumes as leader at once) then loses that term to a
            // voter that moved on, and wins a later one, maybe between two ticks. Timed from
            // its start, it fenced every live broker whose heartbeats had gone elsewhere
            // meanwhile, moving their leaderships (to brokers that might be down).
            let term = self.raft_term().unwrap_or_default();
            let since = match leader_since {
                Some((since, in_term)) if in_term == term => since,
                _ => {
                    let now = Instant::now();
                    leader_since = Some((now, term));
                    now
                }
            };
            let sessions = self.inner.sessions.lock().await;
            let metadata = self.metadata();
            let expired: Vec<NodeId> = {
                let seen = lock(&self.inner.last_heartbeat);
                metadata
                    .brokers
                    .values()
                    .filter(|b| !b.fenced)
                    .filter(|b| {
                        let last = seen.get(&b.node_id).copied().unwrap_or(since).max(since);
                        last.elapsed() > options.session_timeout
                    })
                    .map(|b| b.node_id)
                    .collect()
            };
            for node_id in expired {
                tracing::warn!(node_id, timeout = ?options.session_timeout, "fencing broker: no heartbeat within the session timeout; moving its leaderships");
                if let Err(e) = self.propose_local(Command::FenceBroker { node_id }).await {
                    tracing::warn!(node_id, "fencing failed: {e:?}");
                }
            }
            drop(sessions);
            if let Some(interval) = options.leader_rebalance_interval {
                if last_rebalance.elapsed() >= interval {
                    last_rebalance = Instant::now();
                    if metadata.preferred_leader_available() {
                        let command = Command::ElectPreferredLeaders { topics: None };
                        match self.propose_local(command).await {
                            Ok(result) => tracing::info!(?result, "preferred leader election"),
                            Err(e) => tracing::warn!("preferred leader election failed: {e:?}"),
                        }
                    }
                }
            }
        }
    }

    /// Observers: long-polls a voter (its own connections) for metadata newer than what it has, and the active controller's id.
    async fn observe(self, publisher: watch::Sender<Arc<MetadataState>>) {
        let ids: Vec<NodeId> = self.inner.voters.keys().copied().collect();
        let mut next = 0;
        // Own connections: a long poll must not hold up this broker's heartbeats and proposals.
        let mut polls: HashMap<NodeId, PeerClient> = HashMap::new();
        loop {
            let target = self.leader().unwrap_or(ids[next % ids.len()]);
            let known = *self.inner.observed_applied.borrow();
            let request = RaftRequest::GetMetadata {
                known,
                wait_ms: 1_000,
            };
            let Some(address) = self.inner.voters.get(&target).cloned() else {
                return;
            };
            let poll = polls.entry(target).or_insert_with(|| {
                PeerClient::new(target, address, self.inner.options.tls.clone())
            });
            let response = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                response = poll.call(request, Duration::from_secs(3)) => response.ok(),
            };
            let answered = response.is_some();
            match response {
                Some(RaftResponse::Metadata {
                    leader,
                    state,
                    applied,
                }) => {
                    *lock(&self.inner.observed_leader) = leader;
                    if leader.is_none() {
                        next += 1;
                    }
                    // Never go back in time (a lagging voter may answer).
                    let fresh = applied >= *self.inner.observed_applied.borrow();
                    if let Some(state) = state.filter(|_| fresh) {
                        publisher.send_if_modified(|current| {
                            let changed = **current != state;
                            if changed {
                                *current = Arc::new(state);
                            }
                            changed
                        });
                    }
                    self.inner.observed_applied.send_if_modified(|current| {
                        let newer = applied > *current;
                        if newer {
                            *current = applied;
                        }
                        newer
                    });
                }
                _ => {
                    *lock(&self.inner.observed_leader) = None;
                    next += 1;
                }
            }
            if !answered {
                tokio::select! {
                    _ = self.inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }

    /// One request to voter `target`'s controller port; `None` if it could not be answered.
    async fn call(
        &self,
        target: NodeId,
        request: RaftRequest,
        timeout: Duration,
    ) -> Option<RaftResponse> {
        let address = self.inner.voters.get(&target)?.clone();
        let peer = lock(&self.inner.peers)
            .entry(target)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(PeerClient::new(
                    target,
                    address,
                    self.inner.options.tls.clone(),
                )))
            })
            .clone();
        let mut peer = peer.lock().await;
        match peer.call(request, timeout).await {
            Ok(response) => Some(response),
            Err(e) => {
                tracing::debug!(target, "controller request failed: {e}");
                None
            }
        }
    }

    /// Stops the Raft node (or the observer) and the controller port.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        if let Some(raft) = &self.inner.raft {
            if let Err(e) = raft.shutdown().await {
                tracing::warn!("metadata Raft shutdown: {e}");
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
        let controller =
            Controller::start(1, dir.path(), voters(), None, ControllerOptions::default())
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

        let controller =
            Controller::start(1, dir.path(), voters(), None, ControllerOptions::default())
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
                Controller::start(
                    i as u64 + 1,
                    dirs[i].path(),
                    voters.clone(),
                    Some(listener),
                    ControllerOptions::default(),
                )
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
        assert_eq!(
            follower.propose(create("x")).await.unwrap(),
            CommandResult::Ok,
            "a follower forwards proposals to the active controller"
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
