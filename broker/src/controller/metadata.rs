//! Cluster metadata: the commands appended to the Raft log and the state they build.
//!
//! Pure and deterministic: every broker applies the same commands in the same order and reaches
//! the same `MetadataState`. Validation that depends on the state (does the topic exist?) happens
//! here, at apply time, so two racing proposals cannot both succeed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::security::acl::{AclBinding, AclFilter};

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
    /// The active controller lost the broker's heartbeats: it leads nothing and leaves every ISR
    /// (except where it is the last member, so it can lead again when it returns).
    FenceBroker { node_id: NodeId },
    /// A partition leader changes its ISR. Applied only if `leader`, `leader_epoch` and
    /// `partition_epoch` are still current (a deposed leader cannot change anything).
    AlterPartition {
        topic: String,
        partition: u32,
        leader: NodeId,
        leader_epoch: u32,
        partition_epoch: u32,
        isr: Vec<NodeId>,
    },
    /// Moves leadership to each partition's preferred (first) replica where it is alive and in
    /// sync; `None` means every topic.
    ElectPreferredLeaders { topics: Option<Vec<String>> },
    /// Adds partitions to a topic; `assignments` lists the new partitions' replicas.
    CreatePartitions {
        name: String,
        assignments: Vec<Vec<NodeId>>,
    },
    /// A broker process announces itself: `incarnation` is new on every start. A new
    /// incarnation of a broker the metadata still counts as alive restarted without being
    /// fenced: it is fenced first (its leaderships move, it leaves the ISRs), because its
    /// in-memory replication state is gone and its log may have lost unflushed records.
    Register {
        node_id: NodeId,
        host: String,
        port: u16,
        incarnation: u64,
    },
    /// Names the cluster (once: the first name applied stays; another is `Invalid`). Proposed
    /// by the active controller when the first broker registers.
    InitCluster { cluster_id: String },
    /// Hands broker `node_id` the next `count` producer ids (a block it assigns to idempotent
    /// producers on its own): no two brokers ever get the same id, also across failovers.
    AllocateProducerIds { node_id: NodeId, count: u32 },
    /// A broker's other listeners by name (`"kafka"` -> host, port), replacing what it
    /// registered before. Proposed by the broker itself once registered, and again whenever
    /// the metadata shows other addresses than its own.
    RegisterListeners {
        node_id: NodeId,
        listeners: BTreeMap<String, (String, u16)>,
    },
    /// Creates or replaces `user`'s credential for a SCRAM mechanism (`SCRAM-SHA-256` or
    /// `SCRAM-SHA-512`): salt, iterations and the derived keys, never the password.
    UpsertScramCredential {
        user: String,
        mechanism: String,
        credential: StoredCredential,
    },
    /// Removes `user`'s credential for a mechanism (the user goes with its last one).
    DeleteScramCredential { user: String, mechanism: String },
    /// Adds ACLs (those already present stay once).
    CreateAcls { acls: Vec<AclBinding> },
    /// Removes every ACL each filter names; the result lists them per filter.
    DeleteAcls { filters: Vec<AclFilter> },
    /// Sets (`Some`) or removes (`None`) client quotas: per client id (`None`: the default of
    /// every client id), quota key (`QUOTA_KEYS`) -> bytes per second. All or nothing.
    AlterClientQuotas { entries: QuotaAlterations },
}

/// The quota keys a client id may have (Kafka's names).
pub const QUOTA_KEYS: [&str; 2] = ["producer_byte_rate", "consumer_byte_rate"];
/// Most client ids with quotas a cluster holds.
pub const CLIENT_QUOTAS_MAX: usize = 10_000;
/// Client quota changes: per client id (`None`: the default), quota key -> bytes per second
/// (`None`: remove it).
pub type QuotaAlterations = Vec<(Option<String>, Vec<(String, Option<u64>)>)>;
/// Dynamic client quotas: client id (`None`: every client id's default) -> key -> bytes/s.
pub type ClientQuotas = BTreeMap<Option<String>, BTreeMap<String, u64>>;

/// A SCRAM credential as the metadata keeps it (`rill_protocol::sasl::ScramCredential`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCredential {
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub iterations: u32,
}

/// Most ACLs a cluster holds (each is checked by a scan on every authorized request).
pub const ACLS_MAX: usize = 10_000;
/// Most users a cluster holds.
pub const USERS_MAX: usize = 100_000;

/// Outcome of applying a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResult {
    #[default]
    Ok,
    TopicAlreadyExists,
    UnknownTopic,
    Invalid(String),
    /// A conditional change whose condition no longer holds (stale leader or partition epoch).
    Stale(String),
    /// Outcome of [`Command::ElectPreferredLeaders`].
    Elected {
        elected: u32,
        not_preferred: u32,
    },
    /// Outcome of [`Command::AllocateProducerIds`]: ids `first..first + count`.
    ProducerIds {
        first: u64,
        count: u32,
    },
    /// A credential to delete that does not exist.
    UnknownUser,
    /// Outcome of [`Command::DeleteAcls`]: the ACLs each filter removed.
    AclsDeleted(Vec<Vec<AclBinding>>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub node_id: NodeId,
    pub host: String,
    pub port: u16,
    /// Missed its heartbeats: leads nothing until it registers again.
    pub fenced: bool,
    /// Identifies the broker process that registered last (new on every start).
    pub incarnation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub replicas: Vec<NodeId>,
    pub leader: Option<NodeId>,
    pub leader_epoch: u32,
    pub isr: Vec<NodeId>,
    /// Bumped by every change of leader or ISR; ISR changes must name the current one.
    pub partition_epoch: u32,
}

impl PartitionInfo {
    fn new(replicas: &[NodeId]) -> PartitionInfo {
        PartitionInfo {
            replicas: replicas.to_vec(),
            leader: replicas.first().copied(),
            leader_epoch: 0,
            isr: replicas.to_vec(),
            partition_epoch: 0,
        }
    }

    /// Makes `leader` the leader (bumping the leader epoch if it changed).
    fn set_leader(&mut self, leader: Option<NodeId>) {
        if self.leader != leader {
            self.leader = leader;
            self.leader_epoch += 1;
        }
        self.partition_epoch += 1;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
    pub configs: BTreeMap<String, String>,
    /// Identifies this incarnation of the topic (KIP-516): the metadata log index of the entry
    /// that created it, so a topic deleted and created again under the same name has another
    /// id on every voter, and a broker that missed the deletion can tell its old log apart.
    /// 0: unknown (topics created before ids existed).
    pub id: u64,
}

/// Everything the controller knows. Snapshots serialize it whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetadataState {
    pub brokers: BTreeMap<NodeId, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
    /// The cluster's name, chosen when its first broker registered (or pinned with
    /// `cluster_id`); every data directory of the cluster records it in `meta.properties`.
    pub cluster_id: Option<String>,
    /// The first producer id not handed out yet ([`Command::AllocateProducerIds`]).
    pub next_producer_id: u64,
    /// Each broker's listeners besides its Rill one, by name (`"kafka"`): the address clients
    /// of that protocol reach it at ([`Command::RegisterListeners`]).
    pub listeners: BTreeMap<NodeId, BTreeMap<String, (String, u16)>>,
    /// SCRAM credentials by user, then mechanism name ([`Command::UpsertScramCredential`]).
    pub users: BTreeMap<String, BTreeMap<String, StoredCredential>>,
    /// The ACLs ([`Command::CreateAcls`]).
    pub acls: BTreeSet<AclBinding>,
    /// Client quotas set at run time ([`Command::AlterClientQuotas`]); they win over the
    /// brokers' quota settings (docs/SECURITY.md "Quotas").
    pub client_quotas: ClientQuotas,
}

/// The second shape of [`MetadataState`] (V2 snapshots), before `users` and `acls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetadataStateV2 {
    pub brokers: BTreeMap<NodeId, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
    pub cluster_id: Option<String>,
    pub next_producer_id: u64,
    pub listeners: BTreeMap<NodeId, BTreeMap<String, (String, u16)>>,
}

impl From<MetadataStateV2> for MetadataState {
    fn from(v2: MetadataStateV2) -> MetadataState {
        MetadataState {
            brokers: v2.brokers,
            topics: v2.topics,
            cluster_id: v2.cluster_id,
            next_producer_id: v2.next_producer_id,
            listeners: v2.listeners,
            ..Default::default()
        }
    }
}

/// The first shape of [`MetadataState`] (data format 1 snapshots), before `listeners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetadataStateV1 {
    pub brokers: BTreeMap<NodeId, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
    pub cluster_id: Option<String>,
    pub next_producer_id: u64,
}

impl From<MetadataStateV1> for MetadataState {
    fn from(v1: MetadataStateV1) -> MetadataState {
        MetadataState {
            brokers: v1.brokers,
            topics: v1.topics,
            cluster_id: v1.cluster_id,
            next_producer_id: v1.next_producer_id,
            ..Default::default()
        }
    }
}

impl MetadataState {
    /// Applies one command; deterministic. Topics it creates get id 0 (unknown): the state
    /// machine uses [`MetadataState::apply_at`].
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        self.apply_at(command, 0)
    }

    /// Applies the command of metadata log entry `index`; deterministic.
    pub fn apply_at(&mut self, command: &Command, index: u64) -> CommandResult {
        match command {
            Command::RegisterBroker {
                node_id,
                host,
                port,
            } => self.register(*node_id, host, *port, 0),
            Command::Register {
                node_id,
                host,
                port,
                incarnation,
            } => self.register(*node_id, host, *port, *incarnation),
            Command::RegisterListeners { node_id, listeners } => {
                if !self.brokers.contains_key(node_id) {
                    return CommandResult::Invalid(format!("broker {node_id} is not registered"));
                }
                self.listeners.insert(*node_id, listeners.clone());
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
                let partitions = assignments.iter().map(|r| PartitionInfo::new(r)).collect();
                self.topics.insert(
                    name.clone(),
                    TopicInfo {
                        name: name.clone(),
                        partitions,
                        configs: configs.clone(),
                        id: index,
                    },
                );
                CommandResult::Ok
            }
            Command::UpsertScramCredential {
                user,
                mechanism,
                credential,
            } => {
                if user.is_empty() || user.len() > 255 {
                    return CommandResult::Invalid("user names are 1-255 bytes".into());
                }
                if !matches!(mechanism.as_str(), "SCRAM-SHA-256" | "SCRAM-SHA-512") {
                    return CommandResult::Invalid(format!("unknown SCRAM mechanism {mechanism}"));
                }
                if !self.users.contains_key(user) && self.users.len() >= USERS_MAX {
                    return CommandResult::Invalid(format!("the cluster holds {USERS_MAX} users"));
                }
                self.users
                    .entry(user.clone())
                    .or_default()
                    .insert(mechanism.clone(), credential.clone());
                CommandResult::Ok
            }
            Command::DeleteScramCredential { user, mechanism } => {
                let Some(credentials) = self.users.get_mut(user) else {
                    return CommandResult::UnknownUser;
                };
                if credentials.remove(mechanism).is_none() {
                    return CommandResult::UnknownUser;
                }
                if credentials.is_empty() {
                    self.users.remove(user);
                }
                CommandResult::Ok
            }
            Command::CreateAcls { acls } => {
                let new = acls.iter().filter(|a| !self.acls.contains(a)).count();
                if self.acls.len() + new > ACLS_MAX {
                    return CommandResult::Invalid(format!(
                        "the cluster holds {} ACLs; {new} more would pass {ACLS_MAX}",
                        self.acls.len()
                    ));
                }
                self.acls.extend(acls.iter().cloned());
                CommandResult::Ok
            }
            Command::AlterClientQuotas { entries } => {
                let mut quotas = self.client_quotas.clone();
                for (client, ops) in entries {
                    if let Some(id) = client {
                        if id.len() > 255 {
                            return CommandResult::Invalid(
                                "a client id has at most 255 bytes".into(),
                            );
                        }
                    }
                    let values = quotas.entry(client.clone()).or_default();
                    for (key, value) in ops {
                        if !QUOTA_KEYS.contains(&key.as_str()) {
                            return CommandResult::Invalid(format!(
                                "unknown quota {key:?}: expected one of {}",
                                QUOTA_KEYS.join(", ")
                            ));
                        }
                        match value {
                            Some(value) => values.insert(key.clone(), *value),
                            None => values.remove(key),
                        };
                    }
                    if values.is_empty() {
                        quotas.remove(client);
                    }
                }
                if quotas.len() > CLIENT_QUOTAS_MAX {
                    return CommandResult::Invalid(format!(
                        "the cluster holds quotas for at most {CLIENT_QUOTAS_MAX} client ids"
                    ));
                }
                self.client_quotas = quotas;
                CommandResult::Ok
            }
            Command::DeleteAcls { filters } => {
                let deleted = filters
                    .iter()
                    .map(|filter| {
                        let matched: Vec<AclBinding> = self
                            .acls
                            .iter()
                            .filter(|a| filter.matches(a))
                            .cloned()
                            .collect();
                        for acl in &matched {
                            self.acls.remove(acl);
                        }
                        matched
                    })
                    .collect();
                CommandResult::AclsDeleted(deleted)
            }
            Command::DeleteTopic { name } => match self.topics.remove(name) {
                Some(_) => CommandResult::Ok,
                None => CommandResult::UnknownTopic,
            },
            Command::FenceBroker { node_id } => self.fence(*node_id),
            Command::AlterPartition {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                let alive = self.alive();
                let Some(p) = self
                    .topics
                    .get_mut(topic)
                    .and_then(|t| t.partitions.get_mut(*partition as usize))
                else {
                    return CommandResult::UnknownTopic;
                };
                if p.leader != Some(*leader)
                    || p.leader_epoch != *leader_epoch
                    || p.partition_epoch != *partition_epoch
                {
                    return CommandResult::Stale(format!(
                        "partition is at leader {:?} epoch {} partition epoch {}",
                        p.leader, p.leader_epoch, p.partition_epoch
                    ));
                }
                if !isr.contains(leader) || isr.iter().any(|r| !p.replicas.contains(r)) {
                    return CommandResult::Invalid(
                        "the ISR must contain the leader and only replicas".into(),
                    );
                }
                if isr.iter().any(|r| !p.isr.contains(r) && !alive.contains(r)) {
                    return CommandResult::Invalid("a fenced broker cannot join the ISR".into());
                }
                p.isr = isr.clone();
                p.partition_epoch += 1;
                CommandResult::Ok
            }
            Command::ElectPreferredLeaders { topics } => {
                let alive = self.alive();
                let (mut elected, mut not_preferred) = (0, 0);
                for topic in self.topics.values_mut() {
                    if topics
                        .as_ref()
                        .is_some_and(|names| !names.contains(&topic.name))
                    {
                        continue;
                    }
                    for p in &mut topic.partitions {
                        let preferred = p.replicas[0];
                        if p.leader == Some(preferred) {
                            continue;
                        }
                        if p.isr.contains(&preferred) && alive.contains(&preferred) {
                            p.set_leader(Some(preferred));
                            elected += 1;
                        } else {
                            not_preferred += 1;
                        }
                    }
                }
                CommandResult::Elected {
                    elected,
                    not_preferred,
                }
            }
            Command::CreatePartitions { name, assignments } => {
                let Some(topic) = self.topics.get_mut(name) else {
                    return CommandResult::UnknownTopic;
                };
                if assignments.is_empty() || assignments.iter().any(Vec::is_empty) {
                    return CommandResult::Invalid(
                        "every new partition needs at least one replica".into(),
                    );
                }
                topic
                    .partitions
                    .extend(assignments.iter().map(|r| PartitionInfo::new(r)));
                CommandResult::Ok
            }
            Command::InitCluster { cluster_id } => match &self.cluster_id {
                None => {
                    self.cluster_id = Some(cluster_id.clone());
                    CommandResult::Ok
                }
                Some(current) if current == cluster_id => CommandResult::Ok,
                Some(current) => CommandResult::Invalid(format!("the cluster is {current}")),
            },
            Command::AllocateProducerIds { node_id, count } => {
                if !self.brokers.contains_key(node_id) || *count == 0 {
                    return CommandResult::Invalid(format!(
                        "broker {node_id} is not registered or asked for no ids"
                    ));
                }
                let first = self.next_producer_id;
                // Producer ids are non-negative i64s on the wire.
                if first + u64::from(*count) > i64::MAX as u64 {
                    return CommandResult::Invalid("producer ids are exhausted".into());
                }
                self.next_producer_id = first + u64::from(*count);
                CommandResult::ProducerIds {
                    first,
                    count: *count,
                }
            }
        }
    }

    /// Marks `node_id` fenced: it leaves every ISR where it is not the last member, and the
    /// partitions it led get a leader from the rest of their ISR (or none).
    fn fence(&mut self, node_id: NodeId) -> CommandResult {
        let node_id = &node_id;
        let Some(broker) = self.brokers.get_mut(node_id) else {
            return CommandResult::Invalid(format!("broker {node_id} is not registered"));
        };
        broker.fenced = true;
        let alive = self.alive();
        for topic in self.topics.values_mut() {
            let unclean = topic.unclean_election();
            for (index, p) in topic.partitions.iter_mut().enumerate() {
                if !p.replicas.contains(node_id) {
                    continue;
                }
                if p.isr.len() > 1 && p.isr.contains(node_id) {
                    p.isr.retain(|r| r != node_id);
                    p.partition_epoch += 1;
                }
                if p.leader == Some(*node_id) {
                    let chosen = choose_leader(p, &alive, unclean);
                    log_election(&topic.name, index, p, chosen);
                    apply_election(p, chosen);
                }
            }
        }
        CommandResult::Ok
    }

    fn register(
        &mut self,
        node_id: NodeId,
        host: &str,
        port: u16,
        incarnation: u64,
    ) -> CommandResult {
        let restarted = self
            .brokers
            .get(&node_id)
            .is_some_and(|b| !b.fenced && b.incarnation != incarnation);
        if restarted {
            tracing::warn!(
                node_id,
                "broker restarted without being fenced: fencing its previous incarnation first"
            );
            self.fence(node_id);
        }
        self.brokers.insert(
            node_id,
            BrokerInfo {
                node_id,
                host: host.to_string(),
                port,
                fenced: false,
                incarnation,
            },
        );
        self.elect_leaderless();
        CommandResult::Ok
    }

    /// Whether some partition is led by other than its preferred replica while the preferred
    /// one is alive and in sync.
    pub fn preferred_leader_available(&self) -> bool {
        let alive = self.alive();
        self.topics.values().flat_map(|t| &t.partitions).any(|p| {
            let preferred = p.replicas[0];
            p.leader != Some(preferred) && p.isr.contains(&preferred) && alive.contains(&preferred)
        })
    }

    /// Registered brokers that are not fenced.
    pub fn alive(&self) -> Vec<NodeId> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.node_id)
            .collect()
    }

    /// Gives a leader to every partition that has none, if an eligible replica is alive.
    fn elect_leaderless(&mut self) {
        let alive = self.alive();
        for topic in self.topics.values_mut() {
            let unclean = topic.unclean_election();
            for (index, p) in topic.partitions.iter_mut().enumerate() {
                if p.leader.is_none() {
                    let chosen = choose_leader(p, &alive, unclean);
                    if chosen.is_some() {
                        log_election(&topic.name, index, p, chosen);
                        apply_election(p, chosen);
                    }
                }
            }
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

impl TopicInfo {
    /// `unclean.leader.election.enable` of this topic.
    pub fn unclean_election(&self) -> bool {
        self.configs
            .get("unclean.leader.election.enable")
            .is_some_and(|v| v == "true")
    }
}

/// A new leader for `p` among `alive` brokers: the first replica (in preference order) that is in
/// the ISR; failing that, with `unclean`, the first alive replica (`true` = unclean).
fn choose_leader(p: &PartitionInfo, alive: &[NodeId], unclean: bool) -> Option<(NodeId, bool)> {
    let clean = p
        .replicas
        .iter()
        .find(|r| alive.contains(r) && p.isr.contains(r));
    match clean {
        Some(r) => Some((*r, false)),
        None if unclean => p
            .replicas
            .iter()
            .find(|r| alive.contains(r))
            .map(|r| (*r, true)),
        None => None,
    }
}

fn log_election(topic: &str, index: usize, p: &PartitionInfo, chosen: Option<(NodeId, bool)>) {
    match chosen {
        Some((leader, true)) => tracing::error!(
            topic, partition = index, leader, isr = ?p.isr,
            "UNCLEAN leader election: no in-sync replica is alive; electing an out-of-sync replica (acknowledged records may be lost)"
        ),
        Some((leader, false)) => {
            tracing::info!(topic, partition = index, leader, "partition leader elected")
        }
        None => tracing::warn!(
            topic, partition = index, isr = ?p.isr,
            "partition is offline: no in-sync replica is alive"
        ),
    }
}

fn apply_election(p: &mut PartitionInfo, chosen: Option<(NodeId, bool)>) {
    match chosen {
        Some((leader, unclean)) => {
            if unclean {
                p.isr = vec![leader];
            }
            p.set_leader(Some(leader));
        }
        None => p.set_leader(None),
    }
}

/// Places `partitions` x `replication_factor` replicas over `brokers` round-robin, rotating the
/// starting broker per partition (from `start`) so leaders (first replicas) spread evenly.
pub fn assign_replicas(
    brokers: &[NodeId],
    start: usize,
    partitions: u32,
    replication_factor: u16,
) -> Vec<Vec<NodeId>> {
    let n = brokers.len();
    (0..partitions as usize)
        .map(|p| {
            (0..replication_factor as usize)
                .map(|r| brokers[(start + p + r) % n])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cluster_is_named_once_and_producer_id_blocks_never_overlap() {
        let mut state = MetadataState::default();
        let name = |id: &str| Command::InitCluster {
            cluster_id: id.into(),
        };
        assert_eq!(state.apply(&name("a")), CommandResult::Ok);
        assert_eq!(state.apply(&name("a")), CommandResult::Ok);
        assert!(matches!(state.apply(&name("b")), CommandResult::Invalid(_)));
        assert_eq!(state.cluster_id.as_deref(), Some("a"));

        let allocate = |node_id| Command::AllocateProducerIds {
            node_id,
            count: 1000,
        };
        assert!(matches!(
            state.apply(&allocate(1)),
            CommandResult::Invalid(_)
        ));
        for node_id in [1, 2] {
            state.apply(&Command::Register {
                node_id,
                host: "h".into(),
                port: 1,
                incarnation: 1,
            });
        }
        assert_eq!(
            state.apply(&allocate(1)),
            CommandResult::ProducerIds {
                first: 0,
                count: 1000
            }
        );
        assert_eq!(
            state.apply(&allocate(2)),
            CommandResult::ProducerIds {
                first: 1000,
                count: 1000
            }
        );
    }

    #[test]
    fn a_topic_created_again_gets_another_id() {
        let mut state = MetadataState::default();
        let create = Command::CreateTopic {
            name: "t".into(),
            assignments: vec![vec![1]],
            configs: BTreeMap::new(),
        };
        assert_eq!(state.apply_at(&create, 10), CommandResult::Ok);
        assert_eq!(state.topics["t"].id, 10);
        state.apply_at(&Command::DeleteTopic { name: "t".into() }, 11);
        state.apply_at(&create, 12);
        assert_eq!(state.topics["t"].id, 12);
    }

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

    fn register(state: &mut MetadataState, node_id: NodeId) -> CommandResult {
        state.apply(&Command::RegisterBroker {
            node_id,
            host: "h".into(),
            port: 1,
        })
    }

    /// `leader` sets the ISR of t-0 at the current epochs.
    fn alter_isr(state: &mut MetadataState, leader: NodeId, isr: Vec<NodeId>) -> CommandResult {
        let p = state.topics["t"].partitions[0].clone();
        state.apply(&Command::AlterPartition {
            topic: "t".into(),
            partition: 0,
            leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr,
        })
    }

    fn three_brokers_one_partition() -> MetadataState {
        let mut state = MetadataState::default();
        for id in 1..=3 {
            register(&mut state, id);
        }
        state.apply(&Command::CreateTopic {
            name: "t".into(),
            assignments: vec![vec![1, 2, 3]],
            configs: BTreeMap::new(),
        });
        state
    }

    #[test]
    fn fencing_the_leader_elects_an_in_sync_replica_with_a_new_epoch() {
        let mut state = three_brokers_one_partition();
        state.apply(&Command::FenceBroker { node_id: 1 });
        let p = &state.topics["t"].partitions[0];
        assert_eq!(p.leader, Some(2));
        assert_eq!(p.leader_epoch, 1);
        assert_eq!(p.isr, vec![2, 3]);
        // The deposed leader can no longer change the ISR.
        let stale = Command::AlterPartition {
            topic: "t".into(),
            partition: 0,
            leader: 1,
            leader_epoch: 0,
            partition_epoch: 0,
            isr: vec![1],
        };
        assert!(matches!(state.apply(&stale), CommandResult::Stale(_)));
        // The new leader shrinks the ISR, then the last in-sync replica dies: offline, not unclean.
        assert_eq!(alter_isr(&mut state, 2, vec![2]), CommandResult::Ok);
        register(&mut state, 1);
        state.apply(&Command::FenceBroker { node_id: 2 });
        let p = &state.topics["t"].partitions[0];
        assert_eq!(p.leader, None, "no in-sync replica alive: offline");
        assert_eq!(p.isr, vec![2], "the last ISR member stays, to lead again");
        let epoch = p.leader_epoch;
        register(&mut state, 2);
        let p = &state.topics["t"].partitions[0];
        assert_eq!(p.leader, Some(2), "its return brings the partition back");
        assert_eq!(p.leader_epoch, epoch + 1);
    }

    #[test]
    fn unclean_election_only_when_the_topic_allows_it() {
        let mut state = three_brokers_one_partition();
        state
            .topics
            .get_mut("t")
            .unwrap()
            .configs
            .insert("unclean.leader.election.enable".into(), "true".into());
        alter_isr(&mut state, 1, vec![1]);
        state.apply(&Command::FenceBroker { node_id: 1 });
        let p = &state.topics["t"].partitions[0];
        assert_eq!(p.leader, Some(2));
        assert_eq!(p.isr, vec![2]);
    }

    #[test]
    fn preferred_leaders_come_back_when_in_sync() {
        let mut state = three_brokers_one_partition();
        state.apply(&Command::FenceBroker { node_id: 1 });
        assert_eq!(state.topics["t"].partitions[0].leader, Some(2));
        register(&mut state, 1);
        let elect = Command::ElectPreferredLeaders { topics: None };
        assert_eq!(
            state.apply(&elect),
            CommandResult::Elected {
                elected: 0,
                not_preferred: 1
            },
            "broker 1 is not back in the ISR yet"
        );
        alter_isr(&mut state, 2, vec![2, 3, 1]);
        assert_eq!(
            state.apply(&elect),
            CommandResult::Elected {
                elected: 1,
                not_preferred: 0
            }
        );
        assert_eq!(state.topics["t"].partitions[0].leader, Some(1));
        assert_eq!(state.topics["t"].partitions[0].leader_epoch, 2);
    }

    #[test]
    fn assignment_spreads_leaders() {
        let a = assign_replicas(&[1, 2, 3], 0, 6, 2);
        assert_eq!(a[0], vec![1, 2]);
        assert_eq!(a[1], vec![2, 3]);
        assert_eq!(a[2], vec![3, 1]);
        let leaders: Vec<_> = a.iter().map(|r| r[0]).collect();
        assert_eq!(leaders, vec![1, 2, 3, 1, 2, 3]);
    }
}
