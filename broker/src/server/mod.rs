//! The network server and the running broker.
//!
//! [`Broker::start`] opens the data directory (`LogManager`), starts the metadata controller,
//! binds the client listener, and runs the background tasks: broker registration, metadata
//! reconciliation (create/delete local partition logs to match the metadata), and the storage
//! tick. [`Broker::shutdown`] stops accepting, lets connections finish their in-flight
//! requests, closes the logs (flush + checkpoint) and stops the controller.
//!
//! `listener` accepts connections within `max_connections` (on both listeners: this one and
//! the Kafka one, `crate::kafka`); `connection` runs one connection (ordered, pipelined
//! responses; vectored writes); `handlers/` is the native protocol's door over `crate::ops`.

pub(crate) mod connection;
pub mod handlers;
pub mod limits;
pub(crate) mod listener;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{topic_log_config, BrokerConfig};
use crate::controller::{
    metadata::assign_replicas, Command, Controller, ControllerOptions, MetadataState, NodeId,
};
use crate::error::{Error, Result};
use crate::group::coordinator::{Coordinator, OFFSETS_PARTITIONS, OFFSETS_TOPIC};
use crate::log::{monotonic_ms, now_ms, LogManager, TopicPartition};
use crate::replica::{Lease, ReplicaConfig, ReplicaManager};

/// The name of the inter-broker listener in the metadata's `listeners` (followers fetch there).
pub const REPLICATION_LISTENER: &str = "replication";

/// What every request handler can reach. Split by owner: logs, metadata, config.
pub struct BrokerState {
    pub config: BrokerConfig,
    pub node_id: NodeId,
    /// Host and port clients are told to connect to.
    pub advertised: (String, u16),
    /// Host and port Kafka clients are told to connect to (`None`: no Kafka listener).
    pub kafka_advertised: Option<(String, u16)>,
    /// Host and port other brokers replicate from (the inter-broker listener).
    pub replication_advertised: (String, u16),
    pub logs: Arc<LogManager>,
    pub controller: Controller,
    /// Identifies this broker process (new on every start): the controller fences an earlier
    /// incarnation that never was, and this one acts only once registered under it.
    pub incarnation: u64,
    /// Set once this broker has registered under its incarnation (its metadata caught up).
    pub ready: std::sync::atomic::AtomicBool,
    /// Prometheus metrics (`crate::metrics`), served by the admin listener.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Roles, ISR and high watermarks of the local partition replicas.
    pub replicas: Arc<ReplicaManager>,
    /// Consumer groups coordinated here.
    pub groups: Coordinator,
    /// The leadership lease (renewed by accepted heartbeats): without it this broker leads
    /// no partition and coordinates no group.
    pub lease: Arc<Lease>,
    /// Metadata log index the local replica roles were last reconciled with.
    pub reconciled: tokio::sync::watch::Sender<u64>,
    /// Asks the reconcile loop for a pass without a metadata change (a heartbeat waiting for
    /// roles to catch up with an index the loop already passed without noticing).
    pub reconcile_nudge: tokio::sync::Notify,
    pub shutdown: CancellationToken,
    /// Why this broker cannot go on (set once; the process should exit): its data directory
    /// belongs to another cluster than its controller quorum, or its logs failed to open.
    pub fatal: tokio::sync::watch::Sender<Option<String>>,
    /// This broker's unused producer ids (a block from the controller).
    pub producer_ids: tokio::sync::Mutex<std::ops::Range<u64>>,
    /// Connections per address and request memory of the client listeners (native and Kafka).
    pub client_limits: Arc<limits::Limits>,
    /// The same, of the inter-broker listener (its own: a client flood cannot starve it).
    pub inter_broker_limits: Arc<limits::Limits>,
    /// Connections per address of the admin HTTP listener (its own count).
    pub admin_limits: Arc<limits::Limits>,
    /// TLS of the listeners and of connections to other brokers (`None`: all plain).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// SASL, ACL and principal settings (docs/SECURITY.md).
    pub security: crate::security::Security,
    /// Client id byte-rate quotas and their accounting (`crate::quota`).
    pub quotas: crate::quota::Quotas,
}

impl BrokerState {
    /// Creates the local logs `metadata` assigns to this broker, and deletes the local logs of
    /// `deleted_topics` (topics this broker saw being deleted). A local log of a topic the metadata
    /// does not know, and that was not seen deleted, is a stray: it is kept, not served, and
    /// reported, never silently destroyed. Blocking.
    fn reconcile_blocking(
        &self,
        metadata: &MetadataState,
        deleted_topics: &BTreeSet<String>,
    ) -> Result<Vec<(TopicPartition, Arc<crate::log::PartitionLog>)>> {
        let base = self.logs.default_config().clone();
        let mut wanted = BTreeSet::new();
        let mut local = Vec::new();
        for (topic, partition, _) in metadata.partitions_of(self.node_id) {
            let tp = TopicPartition::new(topic, partition);
            let configs = metadata
                .topics
                .get(topic)
                .map(|t| t.configs.clone())
                .unwrap_or_default();
            let topic_id = metadata.topics.get(topic).map_or(0, |t| t.id);
            let mut config = topic_log_config(&base, &configs).unwrap_or_else(|e| {
                tracing::warn!(%tp, "topic config rejected, using broker defaults: {e}");
                base.clone()
            });
            if topic == OFFSETS_TOPIC {
                // Committed offsets are compacted, never deleted by size or age (also for an
                // offsets topic created before these rules, whatever its stored configs say).
                config.cleanup_policy = crate::log::CleanupPolicy::COMPACT;
                config.retention_bytes = None;
                config.retention_ms = None;
                config.segment_bytes = self.config.offsets_topic_segment_bytes;
                if let Err(e) = config.validate() {
                    tracing::warn!(%tp, "offsets_topic_segment_bytes rejected, using the broker default: {e}");
                    config.segment_bytes = base.segment_bytes;
                }
            }
            // One partition's failure (a full disk, no file descriptors) must not keep the
            // others from following the metadata: it is logged and retried on the next pass.
            match self.logs.get_or_create(&tp, Some(config), topic_id) {
                Ok(log) => local.push((tp.clone(), log)),
                Err(e) => {
                    tracing::error!(partition = %tp, "opening the local log failed; the replica stays offline here until it can be opened: {e}")
                }
            }
            wanted.insert(tp);
        }
        for tp in self.logs.partitions() {
            if wanted.contains(&tp) {
                continue;
            }
            if deleted_topics.contains(&tp.topic) && !metadata.topics.contains_key(&tp.topic) {
                if let Err(e) = self.logs.delete(&tp) {
                    tracing::error!(partition = %tp, "deleting the log of a deleted topic failed: {e}");
                }
            } else if deleted_topics.is_empty() {
                tracing::warn!(partition = %tp, "stray partition log: its topic is not in the cluster metadata; it is kept but not served");
            }
        }
        Ok(local)
    }

    /// Whether `metadata` shows this broker process registered and unfenced.
    pub fn is_registered(&self, metadata: &MetadataState) -> bool {
        metadata
            .brokers
            .get(&self.node_id)
            .is_some_and(|b| b.incarnation == self.incarnation && !b.fenced)
    }

    /// [`BrokerState::reconcile_blocking`] on a blocking thread, against the current metadata.
    pub async fn reconcile(self: &Arc<Self>, deleted_topics: BTreeSet<String>) -> Result<()> {
        let state = self.clone();
        // Read before the metadata: what is applied below is at least this new.
        let index = self.controller.applied_index();
        let metadata = self.controller.metadata();
        let snapshot = metadata.clone();
        let local = tokio::task::spawn_blocking(move || {
            state.reconcile_blocking(&snapshot, &deleted_topics)
        })
        .await
        .map_err(|e| Error::Controller(format!("reconcile task failed: {e}")))??;
        self.replicas.apply_metadata(&metadata, local);
        for partition in 0..OFFSETS_PARTITIONS {
            let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
            let leads = self
                .replicas
                .get(&tp)
                .is_some_and(|r| r.check_leader(None).is_ok());
            if !leads {
                self.groups.unload(partition);
            }
        }
        self.reconciled.send_if_modified(|current| {
            let newer = index > *current;
            if newer {
                *current = index;
            }
            newer
        });
        Ok(())
    }

    /// Waits until the local replica roles reflect the metadata up to `index`, at most
    /// `timeout`.
    async fn wait_reconciled(&self, index: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        if !self.controller.wait_applied(index, timeout).await {
            return false;
        }
        let mut reconciled = self.reconciled.subscribe();
        loop {
            if *reconciled.borrow_and_update() >= index {
                return true;
            }
            self.reconcile_nudge.notify_one();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return false,
                changed = reconciled.changed() => if changed.is_err() { return false },
            }
        }
    }
}

/// A running broker.
pub struct Broker {
    state: Arc<BrokerState>,
    local_addr: SocketAddr,
    tracker: TaskTracker,
}

impl Broker {
    /// Starts a broker: see the module docs.
    pub async fn start(config: BrokerConfig) -> Result<Broker> {
        let log_config = config.log_config()?;
        // TLS files are read (and refused, naming the file) before anything else starts.
        let tls = crate::tls::Tls::from_config(&config)?;
        let security = crate::security::Security::from_config(&config)?;
        let data_dir = config.data_dir.clone();
        let (node_id, cluster_id) = (config.node_id, config.cluster_id.clone());
        // The directory is locked and its meta.properties checked now; its logs are opened
        // only once the controller quorum confirmed the cluster (`register_and_reconcile`), so
        // a directory of another cluster is refused untouched.
        let logs = tokio::task::spawn_blocking(move || {
            LogManager::open_unloaded(&data_dir, log_config, node_id, cluster_id.as_deref())
        })
        .await
        .map_err(|e| Error::Controller(format!("opening the data directory failed: {e}")))??;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::io("bind client listener on", config.listen.to_string(), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("read listener address", config.listen.to_string(), e))?;
        let advertised = advertised_at(
            "advertised_address",
            config.advertised_address.as_deref(),
            local_addr,
        )?;
        // The Kafka listener: a port in use is one clear error naming the setting.
        let kafka_listener = bind_optional(
            config.kafka_listen_address()?,
            "bind the Kafka listener (kafka_listen, --kafka-listen; off disables it) on",
        )
        .await?;
        // The admin HTTP listener, likewise.
        let admin_listener = bind_optional(
            config.admin_listen_address()?,
            "bind the admin listener (admin_listen, --admin-listen; off disables it) on",
        )
        .await?;
        // The inter-broker listener: follower fetches are served there and nowhere else.
        let replication_address = config.replication_listen_address();
        let replication_listener = TcpListener::bind(replication_address).await.map_err(|e| {
            Error::io(
                "bind the inter-broker listener (replication_listen, --replication-listen) on",
                replication_address.to_string(),
                e,
            )
        })?;
        let replication_local = replication_listener
            .local_addr()
            .map_err(|e| Error::io("read listener address", replication_address.to_string(), e))?;
        let replication_advertised = match config.replication_advertised_address.as_deref() {
            Some(address) => advertised_at(
                "replication_advertised_address",
                Some(address),
                replication_local,
            )?,
            // Other brokers reach this one where clients do, on the inter-broker port.
            None if replication_local.ip().is_unspecified()
                || config.advertised_address.is_some() =>
            {
                (advertised.0.clone(), replication_local.port())
            }
            None => advertised_at("replication_advertised_address", None, replication_local)?,
        };
        let kafka_advertised = kafka_listener
            .as_ref()
            .map(|(_, local)| {
                advertised_at(
                    "kafka_advertised_address",
                    config.kafka_advertised_address.as_deref(),
                    *local,
                )
            })
            .transpose()?;
        let mut voters = config.voters()?;
        let mut raft_listener = None;
        if voters.is_empty() {
            voters.insert(config.node_id, format!("{}:{}", advertised.0, advertised.1));
        } else if let Some(address) = voters.get(&config.node_id) {
            let listener = TcpListener::bind(address)
                .await
                .map_err(|e| Error::io("bind controller listener on", address.clone(), e))?;
            raft_listener = Some(listener);
        }
        let options = ControllerOptions {
            heartbeat_interval: Duration::from_millis(config.broker_heartbeat_interval_ms),
            session_timeout: Duration::from_millis(config.broker_session_timeout_ms),
            leader_rebalance_interval: config
                .auto_leader_rebalance
                .then(|| Duration::from_millis(config.leader_rebalance_interval_ms.max(100))),
            port: limits::PortLimits::from_config(
                &config,
                crate::controller::network::RAFT_FRAME_BYTES_MAX,
            ),
            tls: tls.clone(),
        };
        let controller = Controller::start(
            config.node_id,
            &config.data_dir.join("raft"),
            voters,
            raft_listener,
            options,
        )
        .await?;
        let logs = Arc::new(logs);
        let groups = Coordinator::new(logs.clone(), 500)
            .with_offsets_retention_ms(config.offsets_retention_ms);
        let shutdown = CancellationToken::new();
        let lease_ms = config
            .broker_session_timeout_ms
            .saturating_sub(config.broker_heartbeat_interval_ms)
            .max(1);
        let lease = Arc::new(Lease::new(Duration::from_millis(lease_ms)));
        let replicas = ReplicaManager::new(
            ReplicaConfig {
                node_id: config.node_id,
                lag_max: Duration::from_millis(config.replica_lag_max_ms),
                min_insync_replicas: config.min_insync_replicas,
                fetch_wait_max_ms: config.replica_fetch_wait_max_ms.min(u64::from(u32::MAX)) as u32,
                fetch_max_bytes: config.replica_fetch_max_bytes,
                max_frame_bytes: config.max_frame_bytes,
                tls: tls.clone(),
            },
            controller.clone(),
            lease.clone(),
            shutdown.clone(),
        );
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32)
            | 1;
        let overrides = config.connection_overrides()?;
        let limits = || {
            limits::Limits::new(
                config.request_memory_bytes,
                config.request_memory_per_ip_bytes,
                config.max_connections_per_ip,
                overrides.clone(),
            )
        };
        let (client_limits, inter_broker_limits, admin_limits) = (limits(), limits(), limits());
        let quotas = config.quotas()?;
        let state = Arc::new(BrokerState {
            tls,
            security,
            quotas,
            client_limits,
            inter_broker_limits,
            admin_limits,
            incarnation,
            ready: std::sync::atomic::AtomicBool::new(false),
            metrics: Arc::new(crate::metrics::Metrics::new(
                config.metrics_per_topic,
                config.metrics_per_partition,
            )),
            node_id: config.node_id,
            advertised,
            kafka_advertised,
            replication_advertised,
            logs,
            controller,
            replicas,
            groups,
            lease,
            reconciled: tokio::sync::watch::Sender::new(0),
            reconcile_nudge: tokio::sync::Notify::new(),
            shutdown,
            fatal: tokio::sync::watch::Sender::new(None),
            producer_ids: tokio::sync::Mutex::new(0..0),
            config,
        });
        let tracker = TaskTracker::new();
        tracker.spawn(heartbeat_loop(state.clone()));
        tracker.spawn(register_and_reconcile(state.clone()));
        tracker.spawn(register_listeners(state.clone()));
        tracker.spawn(crate::security::bootstrap_user(state.clone()));
        tracker.spawn(storage_tick(state.clone()));
        tracker.spawn(cleaner_loop(state.clone()));
        tracker.spawn(replica_tick(state.clone()));
        tracker.spawn(watch_raft(state.clone()));
        let slots = Arc::new(tokio::sync::Semaphore::new(state.config.max_connections));
        tracker.spawn(listener::accept_loop(
            state.clone(),
            listener,
            tracker.clone(),
            slots.clone(),
            state.client_limits.clone(),
            crate::tls::Listener::Client,
            |state, socket, peer, slot| Box::pin(connection::serve(state, socket, peer, slot)),
        ));
        // Its own connection slots: a flood of client connections cannot cut replication.
        tracing::info!(listen = %replication_local, "rill-broker inter-broker listener on {replication_local}");
        tracker.spawn(listener::accept_loop(
            state.clone(),
            replication_listener,
            tracker.clone(),
            Arc::new(tokio::sync::Semaphore::new(state.config.max_connections)),
            state.inter_broker_limits.clone(),
            crate::tls::Listener::Replication,
            |state, socket, peer, slot| {
                Box::pin(connection::serve_inter_broker(state, socket, peer, slot))
            },
        ));
        if let Some((listener, local)) = kafka_listener {
            tracing::info!(listen = %local, "rill-broker kafka listener on {local}");
            let (state, tracker_) = (state.clone(), tracker.clone());
            tracker.spawn(async move {
                // As Kafka brokers do, requests are taken only once this broker has registered
                // and holds its lease: Kafka clients do not all retry a "not ready" answer
                // (the native client does). Until then connections wait in the backlog.
                while !(state.ready.load(std::sync::atomic::Ordering::Acquire)
                    && state.lease.is_valid())
                {
                    tokio::select! {
                        _ = state.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
                let limits = state.client_limits.clone();
                listener::accept_loop(
                    state,
                    listener,
                    tracker_,
                    slots,
                    limits,
                    crate::tls::Listener::Kafka,
                    |state, socket, peer, slot| {
                        Box::pin(crate::kafka::serve(state, socket, peer, slot))
                    },
                )
                .await
            });
        }
        if let Some((listener, local)) = admin_listener {
            tracing::info!(listen = %local, "rill-broker admin listener on {local}");
            tracker.spawn(crate::admin::serve(state.clone(), listener));
        }
        tracing::info!(node_id = state.node_id, listen = %local_addr, advertised = %format!("{}:{}", state.advertised.0, state.advertised.1), data_dir = %state.config.data_dir.display(), "rill-broker listening on {local_addr}");
        Ok(Broker {
            state,
            local_addr,
            tracker,
        })
    }

    /// Waits (at most `timeout`) until the in-sync followers of every partition this broker
    /// leads have fetched its whole log, so acks=1 records written just before a SIGTERM are
    /// not lost when another replica takes over.
    async fn drain_to_followers(&self, timeout: Duration) {
        let metadata = self.state.controller.metadata();
        if metadata.alive().iter().all(|b| *b == self.state.node_id) {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let replicas = self.state.replicas.clone();
        while tokio::time::Instant::now() < deadline {
            if replicas.led_partitions_replicated() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(?timeout, "controlled shutdown: followers did not catch up in time; the last acks=1 records may be lost");
    }

    /// Controlled shutdown: asks the controller to fence this broker now, so the partitions it
    /// leads get new leaders at once instead of after the session timeout. Skipped when this
    /// broker is the only one (nothing could take over) or no quorum answers within 5 s.
    async fn controlled_shutdown(&self) {
        let metadata = self.state.controller.metadata();
        if metadata.alive().iter().all(|b| *b == self.state.node_id) {
            return;
        }
        let command = Command::FenceBroker {
            node_id: self.state.node_id,
        };
        match tokio::time::timeout(
            Duration::from_secs(5),
            self.state.controller.propose(command),
        )
        .await
        {
            Ok(Ok(_)) => tracing::info!("controlled shutdown: leadership moved to other brokers"),
            Ok(Err(e)) => tracing::warn!("controlled shutdown failed: {e}"),
            Err(_) => tracing::warn!("controlled shutdown: the controller did not answer in 5 s"),
        }
    }

    /// Resolves when the broker cannot go on, with the reason (then call
    /// [`Broker::shutdown_after_failure`] and exit non-zero).
    pub async fn failed(&self) -> String {
        let mut fatal = self.state.fatal.subscribe();
        let reason = match fatal.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the broker state was dropped".into(),
        };
        reason
    }

    /// Stops after a fatal error: no controlled shutdown (the controller may be another
    /// cluster's), no waiting for followers; stops serving and closes whatever logs are open.
    pub async fn shutdown_after_failure(self) -> Result<()> {
        self.state.lease.revoke();
        self.state.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        self.close_logs_and_controller().await
    }

    /// Closes every log, then stops the controller.
    async fn close_logs_and_controller(self) -> Result<()> {
        let logs = self.state.logs.clone();
        let closed = tokio::task::spawn_blocking(move || logs.close())
            .await
            .map_err(|e| Error::Controller(format!("close task failed: {e}")))?;
        self.state.controller.shutdown().await;
        closed
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// Graceful shutdown: stop accepting, finish in-flight requests (at most `grace`), flush and
    /// close every log, stop the controller.
    pub async fn shutdown(self, grace: Duration) -> Result<()> {
        // Hand leadership over while still serving: stop acknowledging anything new (the
        // lease), let followers fetch what is already written, then fence this broker so new
        // leaders are elected at once; only then stop serving.
        self.state.lease.revoke();
        self.drain_to_followers(Duration::from_secs(5)).await;
        self.controlled_shutdown().await;
        self.state.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "connections still busy after the grace period; closing logs anyway"
            );
        }
        self.close_logs_and_controller().await
    }
}

/// The `host:port` a listener is advertised at: `setting`'s value, else its bound address.
fn advertised_at(
    setting: &str,
    address: Option<&str>,
    local_addr: SocketAddr,
) -> Result<(String, u16)> {
    let Some(address) = address else {
        return Ok((local_addr.ip().to_string(), local_addr.port()));
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| Error::InvalidConfig(format!("{setting} {address:?} must be host:port")))?;
    let port = port
        .parse()
        .map_err(|_| Error::InvalidConfig(format!("{setting} {address:?}: bad port")))?;
    Ok((host.to_string(), port))
}

/// Heartbeats to the active controller until shutdown; the first one registers this broker,
/// one after fencing unfences it. Each accepted heartbeat renews the leadership lease from the
/// time it was sent; a lapsed lease only once the local replica roles caught up with the
/// controller's metadata as of that heartbeat (see `replica::lease`).
async fn heartbeat_loop(state: Arc<BrokerState>) {
    let interval = Duration::from_millis(state.config.broker_heartbeat_interval_ms);
    let mut failing_since: Option<std::time::Instant> = None;
    // When the controller refused this broker's node id last said so at ERROR.
    let mut refused_reported: Option<std::time::Instant> = None;
    let mut leading = false;
    loop {
        let (host, port) = state.advertised.clone();
        let sent_at = std::time::Instant::now();
        let outcome = match state
            .controller
            .heartbeat(&host, port, state.incarnation, state.logs.cluster_id())
            .await
        {
            // Holding the lease, this broker cannot have been fenced (the controller fences
            // only after a session without heartbeats, longer than the lease): its roles are
            // as current as metadata propagation makes them, and the lease just extends. Once
            // it lapsed, the broker may have been fenced and replaced: it leads again only
            // after its replica roles caught up with the controller's metadata as of this
            // heartbeat (however long reconciling takes, e.g. creating many partitions).
            Ok(_) if state.lease.is_valid() => Ok(()),
            Ok((index, _)) => {
                if state
                    .wait_reconciled(index, interval.max(Duration::from_millis(100)))
                    .await
                {
                    Ok(())
                } else {
                    Err(format!(
                        "accepted, but local replica roles have not caught up with metadata index {index} yet"
                    ))
                }
            }
            Err(Error::InconsistentClusterId(reason)) => {
                // rill-broker prints it as its exit error.
                state.fatal.send_replace(Some(reason));
                return;
            }
            Err(Error::DuplicateNodeId(reason)) => {
                // Kept trying (the holder may be a process that just died at another address,
                // whose session has yet to expire), loudly: this broker serves nothing meanwhile.
                if refused_reported.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
                    tracing::error!("the controller refused this broker: {reason}");
                    refused_reported = Some(std::time::Instant::now());
                }
                Err(reason)
            }
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => {
                state.lease.renew(sent_at);
                if let Some(since) = failing_since.take() {
                    tracing::info!(after = ?since.elapsed(), "heartbeats reach the active controller again");
                }
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(5) {
                    tracing::warn!(
                        "heartbeat to the controller failed for {:?}: {e}",
                        since.elapsed()
                    );
                    failing_since = Some(std::time::Instant::now());
                }
            }
        }
        let valid = state.lease.is_valid();
        if valid != leading {
            if valid {
                tracing::info!(lease = ?state.lease.duration(), "leadership lease granted: leading the partitions and groups the metadata gives this broker");
            } else if state.lease.is_revoked() {
                tracing::info!("shutting down: leading nothing any more");
            } else if state.ready.load(std::sync::atomic::Ordering::Acquire) {
                tracing::warn!(lease = ?state.lease.duration(), "leadership lease EXPIRED: no heartbeat accepted by the controller in time; this broker stops leading partitions and coordinating groups until it re-registers");
            }
            leading = valid;
        }
        // Wake at the next heartbeat, or when the lease runs out (to log it at once).
        let wait = state.lease.remaining().map_or(interval, |left| {
            left.min(interval) + Duration::from_millis(1)
        });
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A broker whose metadata Raft node stopped for good can never follow the metadata again (it
/// would heartbeat on, be kept as a leader, and lead nothing): it stops, saying what to do.
async fn watch_raft(state: Arc<BrokerState>) {
    let reason = tokio::select! {
        _ = state.shutdown.cancelled() => return,
        reason = state.controller.raft_failed() => reason,
    };
    state.fatal.send_replace(Some(format!(
        "the metadata quorum's Raft node on this broker stopped: {reason}. If the disk is full, free space in {} and restart the broker; its partition logs are intact",
        state.config.data_dir.display()
    )));
}

/// Leader duties every quarter of `replica_lag_max_ms` (at most 250 ms): shrink ISRs.
async fn replica_tick(state: Arc<BrokerState>) {
    let period = Duration::from_millis((state.config.replica_lag_max_ms / 4).clamp(10, 250));
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        state.replicas.shrink_isrs();
    }
}

/// Keeps this broker's other listeners (its Kafka address) in the metadata: once registered,
/// and whenever the metadata shows other addresses (a restart on another port, a broker that
/// turned its Kafka listener off). A failed proposal is retried after a second.
async fn register_listeners(state: Arc<BrokerState>) {
    let mut wanted: BTreeMap<String, (String, u16)> = state
        .kafka_advertised
        .iter()
        .map(|address| ("kafka".to_string(), address.clone()))
        .collect();
    wanted.insert(
        REPLICATION_LISTENER.to_string(),
        state.replication_advertised.clone(),
    );
    let mut metadata = state.controller.subscribe();
    loop {
        let current = metadata
            .borrow_and_update()
            .listeners
            .get(&state.node_id)
            .cloned()
            .unwrap_or_default();
        let registered = state.is_registered(&state.controller.metadata());
        if registered && current != wanted {
            let command = Command::RegisterListeners {
                node_id: state.node_id,
                listeners: wanted.clone(),
            };
            match state.controller.propose(command).await {
                Ok(_) => tracing::info!(listeners = ?wanted, "registered this broker's listeners"),
                Err(e) => {
                    tracing::warn!("registering this broker's listeners failed, retrying: {e}")
                }
            }
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            changed = metadata.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Waits until the metadata this broker follows shows it registered under its incarnation and
/// unfenced (so it has caught up with the metadata log: it never acts on leaderships it held
/// before a restart), then keeps local logs and replica roles in step with the metadata until
/// shutdown.
async fn register_and_reconcile(state: Arc<BrokerState>) {
    let mut metadata = state.controller.subscribe();
    // The logs are opened once the metadata this broker follows names the cluster its data
    // directory belongs to (a directory that has no name yet holds no logs: it records the
    // quorum's name first). A directory of another cluster is never opened.
    loop {
        let quorum = metadata.borrow_and_update().cluster_id.clone();
        match (state.logs.cluster_id(), quorum) {
            (Some(ours), Some(theirs)) if ours != theirs => {
                state.fatal.send_replace(Some(format!(
                    "the controller quorum belongs to cluster {theirs}, but this broker's data directory belongs to cluster {ours}: refusing to join (check --controller-voters and --data-dir)"
                )));
                return;
            }
            (_, Some(theirs)) => {
                if let Err(reason) = open_logs(&state, theirs).await {
                    state.fatal.send_replace(Some(reason));
                    return;
                }
                break;
            }
            (_, None) => {}
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            changed = metadata.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                tracing::info!("waiting for the metadata quorum");
            }
        }
    }
    loop {
        if state.is_registered(&metadata.borrow_and_update()) {
            break;
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            changed = metadata.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                tracing::info!("waiting for the metadata quorum and this broker's registration");
            }
        }
    }
    tracing::info!(node_id = state.node_id, cluster_id = ?state.logs.cluster_id(), "registered with the controller");
    state
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    let mut previous = metadata.borrow_and_update().clone();
    let mut deleted = BTreeSet::new();
    loop {
        ensure_offsets_topic(&state).await;
        if let Err(e) = state.reconcile(deleted).await {
            tracing::error!("reconciling local logs with metadata failed: {e}");
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            changed = metadata.changed() => if changed.is_err() { return },
            _ = state.reconcile_nudge.notified() => {}
        }
        let current = metadata.borrow_and_update().clone();
        state
            .metrics
            .metadata_changed(state.node_id, &previous, &current);
        deleted = previous
            .topics
            .keys()
            .filter(|t| !current.topics.contains_key(*t))
            .cloned()
            .collect();
        previous = current;
    }
}

/// Binds a listener that may be `off` (`None`); a failure (a port in use) is one error naming
/// the setting (`what`) and the address.
async fn bind_optional(
    address: Option<SocketAddr>,
    what: &str,
) -> Result<Option<(TcpListener, SocketAddr)>> {
    let Some(address) = address else {
        return Ok(None);
    };
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| Error::io(what, address.to_string(), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("read listener address", address.to_string(), e))?;
    Ok(Some((listener, local)))
}

/// Records the cluster's id in the data directory (it has no other) and opens, recovering, its partition logs.
async fn open_logs(state: &Arc<BrokerState>, cluster: String) -> Result<(), String> {
    let logs = state.logs.clone();
    tokio::task::spawn_blocking(move || {
        logs.record_cluster_id(&cluster)?;
        logs.load()
    })
    .await
    .map_err(|e| format!("opening the partition logs failed: {e}"))?
    .map_err(|e| format!("opening the partition logs failed: {e}"))
}

/// Creates `__consumer_offsets` if the cluster does not have it yet, once enough brokers are
/// alive for its replication factor (`offsets_topic_replication_factor`, capped by the number
/// of voters). Retained forever: it holds committed offsets; compaction will bound it.
async fn ensure_offsets_topic(state: &Arc<BrokerState>) {
    let metadata = state.controller.metadata();
    if metadata.topics.contains_key(OFFSETS_TOPIC) {
        return;
    }
    let brokers: Vec<NodeId> = metadata.alive();
    let rf = state
        .config
        .offsets_topic_replication_factor
        .clamp(1, state.controller.voters().len().max(1) as u16);
    if brokers.len() < rf as usize {
        tracing::info!(
            alive = brokers.len(),
            rf,
            "{OFFSETS_TOPIC} waits for enough brokers to register"
        );
        return;
    }
    let command = Command::CreateTopic {
        name: OFFSETS_TOPIC.to_string(),
        assignments: assign_replicas(&brokers, 0, OFFSETS_PARTITIONS, rf),
        configs: std::collections::BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("retention.ms".to_string(), "0".to_string()),
            ("retention.bytes".to_string(), "0".to_string()),
            ("min.insync.replicas".to_string(), rf.min(2).to_string()),
        ]),
    };
    match state.controller.propose(command).await {
        Ok(_) => tracing::info!("created {OFFSETS_TOPIC} ({OFFSETS_PARTITIONS} partitions)"),
        Err(e) => tracing::warn!(
            "creating {OFFSETS_TOPIC} failed (groups will be unavailable until it exists): {e}"
        ),
    }
}

/// Compaction: a round over the compacted partitions every `log_cleaner_backoff_ms`, on a
/// blocking thread (one cleaner, as Kafka's default). Shutdown stops a pass between batches.
async fn cleaner_loop(state: Arc<BrokerState>) {
    let cleaner = match state.config.cleaner_config() {
        Ok(cleaner) => Arc::new(cleaner),
        Err(e) => {
            tracing::error!("log cleaner not started: {e}");
            return;
        }
    };
    let backoff = Duration::from_millis(state.config.log_cleaner_backoff_ms);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        let (logs, cleaner, flag) = (state.logs.clone(), cleaner.clone(), stop.clone());
        let mut round = tokio::task::spawn_blocking(move || logs.clean(&cleaner, &flag, now_ms()));
        let result = tokio::select! {
            result = &mut round => result,
            _ = state.shutdown.cancelled() => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = round.await;
                return;
            }
        };
        match result {
            Ok(failures) => {
                for (tp, e) in failures {
                    tracing::error!(partition = %tp, "compaction failed (retried next round; the log is unchanged where the pass did not finish): {e}");
                }
            }
            Err(e) => tracing::error!("log cleaner task failed: {e}"),
        }
    }
}

/// Interval flushes, age-based rolls and retention, every `tick_ms`.
async fn storage_tick(state: Arc<BrokerState>) {
    let mut interval = tokio::time::interval(Duration::from_millis(state.config.tick_ms.max(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Group expiry scans every group: a tenth of the retention, at most once a minute.
    let retention = Duration::from_millis(state.config.offsets_retention_ms);
    let expiry_every = (retention / 10).min(Duration::from_secs(60));
    let mut expiry_checked = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        for tick in state.groups.tick(monotonic_ms()) {
            for member in &tick.expired {
                tracing::info!(group = %tick.group, %member, "group member removed (session expired, revocation stuck or no rejoin in time); rebalancing");
            }
            crate::ops::groups::persist(&state, &tick.group).await;
            tick.replies.deliver();
        }
        if !retention.is_zero() && expiry_checked.elapsed() >= expiry_every {
            expiry_checked = tokio::time::Instant::now();
            crate::ops::groups::expire(&state).await;
        }
        let logs = state.logs.clone();
        match tokio::task::spawn_blocking(move || logs.tick(now_ms())).await {
            Ok(failures) => {
                for (tp, e) in failures {
                    tracing::error!(partition = %tp, "storage tick failed (flush, roll or retention; other partitions unaffected): {e}");
                }
            }
            Err(e) => tracing::error!("storage tick task failed: {e}"),
        }
    }
}
