//! One group of Kafka's *classic* protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup), server
//! side: the coordinator runs membership and generations, the clients assign partitions (the
//! group leader's SyncGroup carries every member's assignment, opaque bytes to the broker).
//!
//! States as Kafka's: `Empty` (no members) -> `PreparingRebalance` (waiting for every known
//! member to send JoinGroup, at most the largest rebalance timeout; for a group that was empty,
//! at least `initial_delay_ms` so a fleet starting together joins one generation) ->
//! `CompletingRebalance` (generation advanced, leader chosen, join answers sent; waiting for the
//! leader's SyncGroup) -> `Stable`. A member's session expires without a heartbeat (a member
//! whose JoinGroup or SyncGroup is parked is alive); that, a leave, a new member or a changed
//! subscription starts a rebalance. Commits are accepted from members of the current
//! generation, except while `CompletingRebalance` (assignments are about to change).
//!
//! Answers to parked JoinGroup and SyncGroup requests are not sent by this module: every change
//! returns them as [`Replies`], which the caller delivers after it persisted the group, so a
//! restarted coordinator knows every generation a member was told of. Pure apart from minting
//! member ids; time is passed in (monotonic).

use std::collections::{BTreeMap, BTreeSet};

use rill_protocol::ErrorCode;
use tokio::sync::oneshot;

use crate::log::TopicPartition;

/// Most members a classic group accepts (as native groups, `state::MEMBERS_MAX`).
pub const MEMBERS_MAX: usize = crate::group::state::MEMBERS_MAX;
/// Session timeouts a member may ask for (Kafka's `group.min/max.session.timeout.ms`, with a
/// lower minimum so tests and latency-sensitive users can detect failures quickly).
pub const SESSION_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=1_800_000;
/// Longest rebalance timeout honoured.
pub const REBALANCE_TIMEOUT_MS_MAX: u64 = 1_800_000;
/// Most protocols (assignors) one member may offer, and bytes of metadata per protocol.
pub const PROTOCOLS_MAX: usize = 16;
pub const PROTOCOL_METADATA_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ClassicState {
    #[default]
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl ClassicState {
    pub fn name(self) -> &'static str {
        match self {
            ClassicState::Empty => "Empty",
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
        }
    }
}

/// A JoinGroup request, as the coordinator sees it.
#[derive(Debug, Clone, Default)]
pub struct Join {
    /// Empty for a new member.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocol_type: String,
    /// (name, metadata), most preferred first.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// KIP-394 (JoinGroup v4+): a new member first gets its id with MEMBER_ID_REQUIRED and
    /// joins again with it.
    pub require_known_member_id: bool,
}

/// The answer to a JoinGroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Joined {
    pub error_code: ErrorCode,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// For the leader only: every member (id, instance id, metadata for the chosen protocol).
    pub members: Vec<(String, Option<String>, Vec<u8>)>,
}

/// A SyncGroup request.
#[derive(Debug, Clone, Default)]
pub struct Sync {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    /// From the leader: each member's assignment.
    pub assignments: Vec<(String, Vec<u8>)>,
}

/// The answer to a SyncGroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    pub error_code: ErrorCode,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Vec<u8>,
}

/// Answers to parked requests, to send once the group is persisted.
#[derive(Debug, Default)]
pub struct Replies {
    joins: Vec<(oneshot::Sender<Joined>, Joined)>,
    syncs: Vec<(oneshot::Sender<Synced>, Synced)>,
}

impl Replies {
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.syncs.is_empty()
    }

    pub fn extend(&mut self, other: Replies) {
        self.joins.extend(other.joins);
        self.syncs.extend(other.syncs);
    }

    /// Sends every answer (a member that went away meanwhile is skipped).
    pub fn deliver(self) {
        for (tx, joined) in self.joins {
            let _ = tx.send(joined);
        }
        for (tx, synced) in self.syncs {
            let _ = tx.send(synced);
        }
    }
}

/// Where a parked request's answer goes: neither persisted nor copied (a snapshot of the group
/// carries no waiting requests).
#[derive(Debug)]
struct Waiter<T>(Option<oneshot::Sender<T>>);

impl<T> Default for Waiter<T> {
    fn default() -> Self {
        Waiter(None)
    }
}

impl<T> Clone for Waiter<T> {
    fn clone(&self) -> Self {
        Waiter(None)
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ClassicMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocol_type: String,
    pub protocols: Vec<(String, Vec<u8>)>,
    /// What the leader assigned it in the current generation.
    pub assignment: Vec<u8>,
    pub last_seen_ms: i64,
    #[serde(skip)]
    join_waiter: Waiter<Joined>,
    #[serde(skip)]
    sync_waiter: Waiter<Synced>,
}

impl ClassicMember {
    /// The metadata it sent for `protocol`.
    pub fn metadata(&self, protocol: &str) -> &[u8] {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.as_slice())
            .unwrap_or_default()
    }
}

/// One classic group. See the module docs. Serialized into `__consumer_offsets` whenever it
/// becomes `Stable` or `Empty` ([`ClassicGroup::version`]).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ClassicGroup {
    pub group_id: String,
    pub generation: i32,
    pub state: ClassicState,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, ClassicMember>,
    next_member: u64,
    /// Bumped whenever the group becomes Stable or Empty (worth persisting).
    pub version: u64,
    /// Member ids handed out with MEMBER_ID_REQUIRED, and until when they may join with them.
    #[serde(skip)]
    pending: BTreeMap<String, i64>,
    /// Members that sent JoinGroup in the rebalance under way.
    #[serde(skip)]
    joined: BTreeSet<String>,
    /// When the rebalance under way completes at the latest.
    #[serde(skip)]
    deadline_ms: i64,
    /// Whether it started from an empty group (then it waits its whole initial delay).
    #[serde(skip)]
    initial: bool,
}

impl ClassicGroup {
    pub fn new(group_id: impl Into<String>) -> ClassicGroup {
        ClassicGroup {
            group_id: group_id.into(),
            ..ClassicGroup::default()
        }
    }

    /// Whether it has members or members about to join (a group of one protocol at a time: a
    /// native heartbeat is refused while this is true).
    pub fn is_live(&self) -> bool {
        !self.members.is_empty() || !self.pending.is_empty()
    }

    /// After a coordinator restart: a persisted group is Stable (or Empty), and every member gets
    /// a full session from `now_ms` to reach the new coordinator.
    pub fn restored(mut self, now_ms: i64) -> ClassicGroup {
        for member in self.members.values_mut() {
            member.last_seen_ms = now_ms;
        }
        self.state = if self.members.is_empty() {
            ClassicState::Empty
        } else {
            ClassicState::Stable
        };
        self
    }

    fn mint_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let client: String = client_id.chars().take(64).collect();
        format!(
            "{client}-{:x}{:08x}-{}",
            wall.as_millis(),
            wall.subsec_nanos(),
            self.next_member
        )
    }

    fn refuse(member_id: &str, code: ErrorCode) -> Joined {
        Joined {
            error_code: code,
            generation: -1,
            member_id: member_id.to_string(),
            ..Joined::default()
        }
    }

    /// The protocols every member (and `join`, if given) supports.
    fn candidates(&self, join: Option<&Join>) -> BTreeSet<String> {
        let mut sets = self
            .members
            .values()
            .filter(|m| join.is_none_or(|j| j.member_id != m.member_id))
            .map(|m| {
                m.protocols
                    .iter()
                    .map(|(n, _)| n.clone())
                    .collect::<BTreeSet<_>>()
            })
            .chain(join.map(|j| j.protocols.iter().map(|(n, _)| n.clone()).collect()));
        let Some(first) = sets.next() else {
            return BTreeSet::new();
        };
        sets.fold(first, |acc, set| acc.intersection(&set).cloned().collect())
    }

    /// Handles a JoinGroup. The answer comes on the returned receiver: at once for a refusal or
    /// a member that already has the current generation, else when the rebalance completes
    /// (through [`Replies`] of this or a later call).
    pub fn join(
        &mut self,
        request: Join,
        now_ms: i64,
        initial_delay_ms: u64,
    ) -> (oneshot::Receiver<Joined>, Replies) {
        let (tx, rx) = oneshot::channel();
        let mut replies = Replies::default();
        match self.admit(request, now_ms, initial_delay_ms, tx, &mut replies) {
            Ok(()) => {}
            Err((tx, joined)) => replies.joins.push((tx, joined)),
        }
        replies.extend(self.tick(now_ms).1);
        (rx, replies)
    }

    #[allow(clippy::result_large_err)]
    fn admit(
        &mut self,
        mut request: Join,
        now_ms: i64,
        initial_delay_ms: u64,
        tx: oneshot::Sender<Joined>,
        replies: &mut Replies,
    ) -> Result<(), (oneshot::Sender<Joined>, Joined)> {
        let refuse = |tx, code| Err((tx, Self::refuse(&request.member_id, code)));
        if !SESSION_TIMEOUT_MS.contains(&request.session_timeout_ms) {
            return refuse(tx, ErrorCode::INVALID_SESSION_TIMEOUT);
        }
        request.rebalance_timeout_ms = request
            .rebalance_timeout_ms
            .clamp(1, REBALANCE_TIMEOUT_MS_MAX);
        if request.protocol_type.is_empty()
            || request.protocols.is_empty()
            || request.protocols.len() > PROTOCOLS_MAX
            || request
                .protocols
                .iter()
                .any(|(_, m)| m.len() > PROTOCOL_METADATA_BYTES_MAX)
        {
            return refuse(tx, ErrorCode::INCONSISTENT_GROUP_PROTOCOL);
        }
        if !self.members.is_empty() {
            let same_type = self.protocol_type.as_deref() == Some(request.protocol_type.as_str());
            if !same_type || self.candidates(Some(&request)).is_empty() {
                return refuse(tx, ErrorCode::INCONSISTENT_GROUP_PROTOCOL);
            }
        }
        self.pending.retain(|_, until| *until > now_ms);
        if request.member_id.is_empty() {
            // Static membership: a restarted instance takes over its slot; the old id is fenced.
            let previous = request.instance_id.as_ref().and_then(|instance| {
                self.members
                    .values()
                    .find(|m| m.instance_id.as_ref() == Some(instance))
                    .map(|m| m.member_id.clone())
            });
            let new_id = self.mint_member_id(&request.client_id);
            if let Some(old_id) = previous {
                if let Some(mut old) = self.members.remove(&old_id) {
                    if let Some(waiter) = old.join_waiter.0.take() {
                        replies
                            .joins
                            .push((waiter, Self::refuse(&old_id, ErrorCode::FENCED_INSTANCE_ID)));
                    }
                    if let Some(waiter) = old.sync_waiter.0.take() {
                        replies.syncs.push((
                            waiter,
                            Synced {
                                error_code: ErrorCode::FENCED_INSTANCE_ID,
                                ..Synced::default()
                            },
                        ));
                    }
                    if self.leader.as_deref() == Some(old_id.as_str()) {
                        self.leader = Some(new_id.clone());
                    }
                    self.joined.remove(&old_id);
                    let unchanged = old.protocols == request.protocols;
                    old.member_id = new_id.clone();
                    self.members.insert(new_id.clone(), old);
                    request.member_id = new_id.clone();
                    if unchanged && self.state == ClassicState::Stable {
                        // Same subscription: no rebalance; it gets the current generation and
                        // its assignment with its next SyncGroup.
                        self.update_member(&request, now_ms);
                        let joined = self.answer(&new_id, false);
                        return Err((tx, joined));
                    }
                    return self.park_join(request, now_ms, initial_delay_ms, tx, replies);
                }
            }
            if self.members.len() + self.pending.len() >= MEMBERS_MAX {
                return refuse(tx, ErrorCode::GROUP_MAX_SIZE_REACHED);
            }
            if request.require_known_member_id && request.instance_id.is_none() {
                self.pending
                    .insert(new_id.clone(), now_ms + request.session_timeout_ms as i64);
                return Err((tx, Self::refuse(&new_id, ErrorCode::MEMBER_ID_REQUIRED)));
            }
            request.member_id = new_id;
            return self.park_join(request, now_ms, initial_delay_ms, tx, replies);
        }
        if self.pending.remove(&request.member_id).is_some() {
            return self.park_join(request, now_ms, initial_delay_ms, tx, replies);
        }
        let Some(member) = self.members.get(&request.member_id) else {
            return refuse(tx, ErrorCode::UNKNOWN_MEMBER_ID);
        };
        if request.instance_id.is_some() && member.instance_id != request.instance_id {
            return refuse(tx, ErrorCode::FENCED_INSTANCE_ID);
        }
        let unchanged = member.protocols == request.protocols;
        let is_leader = self.leader.as_deref() == Some(request.member_id.as_str());
        match self.state {
            ClassicState::CompletingRebalance if unchanged => {
                // Its JoinGroup answer was lost: the same answer again.
                self.update_member(&request, now_ms);
                let joined = self.answer(&request.member_id, is_leader);
                Err((tx, joined))
            }
            ClassicState::Stable if unchanged && !is_leader => {
                self.update_member(&request, now_ms);
                let joined = self.answer(&request.member_id, false);
                Err((tx, joined))
            }
            _ => self.park_join(request, now_ms, initial_delay_ms, tx, replies),
        }
    }

    fn update_member(&mut self, request: &Join, now_ms: i64) {
        let member = self
            .members
            .entry(request.member_id.clone())
            .or_insert_with(|| ClassicMember {
                member_id: request.member_id.clone(),
                instance_id: request.instance_id.clone(),
                ..ClassicMember::default()
            });
        member.client_id.clone_from(&request.client_id);
        member.client_host.clone_from(&request.client_host);
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.protocol_type.clone_from(&request.protocol_type);
        member.protocols.clone_from(&request.protocols);
        member.last_seen_ms = now_ms;
    }

    #[allow(clippy::result_large_err)]
    fn park_join(
        &mut self,
        request: Join,
        now_ms: i64,
        initial_delay_ms: u64,
        tx: oneshot::Sender<Joined>,
        replies: &mut Replies,
    ) -> Result<(), (oneshot::Sender<Joined>, Joined)> {
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        self.update_member(&request, now_ms);
        if let Some(member) = self.members.get_mut(&request.member_id) {
            if let Some(old) = member.join_waiter.0.replace(tx) {
                // A second JoinGroup while the first is parked: the first is answered as a retry.
                replies.joins.push((
                    old,
                    Self::refuse(&request.member_id, ErrorCode::REBALANCE_IN_PROGRESS),
                ));
            }
        }
        self.joined.insert(request.member_id.clone());
        if self.state != ClassicState::PreparingRebalance {
            self.prepare_rebalance(now_ms, initial_delay_ms, replies);
        } else if self.initial {
            // Each member joining the initial rebalance extends it, up to the rebalance timeout.
            let cap = self.deadline_cap();
            self.deadline_ms = (now_ms + initial_delay_ms as i64)
                .min(cap)
                .max(self.deadline_ms);
        }
        Ok(())
    }

    /// The latest a rebalance may last from now: the largest rebalance timeout of its members.
    fn deadline_cap(&self) -> i64 {
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        self.deadline_start() + timeout as i64
    }

    fn deadline_start(&self) -> i64 {
        self.members
            .values()
            .map(|m| m.last_seen_ms)
            .max()
            .unwrap_or(0)
    }

    fn prepare_rebalance(&mut self, now_ms: i64, initial_delay_ms: u64, replies: &mut Replies) {
        if self.state == ClassicState::CompletingRebalance {
            // The assignment being synced is void: parked SyncGroups retry with a rejoin.
            for member in self.members.values_mut() {
                member.assignment.clear();
                if let Some(waiter) = member.sync_waiter.0.take() {
                    replies.syncs.push((
                        waiter,
                        Synced {
                            error_code: ErrorCode::REBALANCE_IN_PROGRESS,
                            ..Synced::default()
                        },
                    ));
                }
            }
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0) as i64;
        self.initial = self.state == ClassicState::Empty;
        self.deadline_ms = if self.initial {
            now_ms + (initial_delay_ms as i64).min(timeout)
        } else {
            now_ms + timeout
        };
        self.state = ClassicState::PreparingRebalance;
    }

    /// The JoinGroup answer for `member_id` in the current generation.
    fn answer(&self, member_id: &str, with_members: bool) -> Joined {
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if with_members {
            self.members
                .values()
                .map(|m| {
                    (
                        m.member_id.clone(),
                        m.instance_id.clone(),
                        m.metadata(&protocol).to_vec(),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        Joined {
            error_code: ErrorCode::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members,
        }
    }

    /// Completes the rebalance under way if every member joined (and an initial delay passed)
    /// or its deadline passed, and removes members whose session expired. Returns the ids of
    /// removed members and the answers to deliver.
    pub fn tick(&mut self, now_ms: i64) -> (Vec<String>, Replies) {
        let mut replies = Replies::default();
        self.pending.retain(|_, until| *until > now_ms);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.0.is_none() && m.sync_waiter.0.is_none())
            .filter(|m| now_ms - m.last_seen_ms > m.session_timeout_ms as i64)
            .map(|m| m.member_id.clone())
            .collect();
        for id in &expired {
            self.remove(id, now_ms, &mut replies);
        }
        if self.state == ClassicState::PreparingRebalance {
            let all_joined = self.members.keys().all(|id| self.joined.contains(id));
            let due = now_ms >= self.deadline_ms;
            if due || (all_joined && !self.initial) {
                self.complete_join(&mut replies);
            }
        }
        (expired, replies)
    }

    fn remove(&mut self, member_id: &str, now_ms: i64, replies: &mut Replies) -> bool {
        let Some(mut member) = self.members.remove(member_id) else {
            return self.pending.remove(member_id).is_some();
        };
        self.joined.remove(member_id);
        if let Some(waiter) = member.join_waiter.0.take() {
            replies.joins.push((
                waiter,
                Self::refuse(member_id, ErrorCode::UNKNOWN_MEMBER_ID),
            ));
        }
        if let Some(waiter) = member.sync_waiter.0.take() {
            replies.syncs.push((
                waiter,
                Synced {
                    error_code: ErrorCode::UNKNOWN_MEMBER_ID,
                    ..Synced::default()
                },
            ));
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
        match self.state {
            ClassicState::PreparingRebalance => {}
            _ if self.members.is_empty() => self.become_empty(),
            _ => self.prepare_rebalance(now_ms, 0, replies),
        }
        true
    }

    fn become_empty(&mut self) {
        self.state = ClassicState::Empty;
        self.generation += 1;
        self.protocol = None;
        self.protocol_type = None;
        self.leader = None;
        self.joined.clear();
        self.version += 1;
    }

    fn complete_join(&mut self, replies: &mut Replies) {
        // Members that did not rejoin in time are out.
        let absent: Vec<String> = self
            .members
            .keys()
            .filter(|id| !self.joined.contains(*id))
            .cloned()
            .collect();
        for id in absent {
            if let Some(mut member) = self.members.remove(&id) {
                if let Some(waiter) = member.sync_waiter.0.take() {
                    replies.syncs.push((
                        waiter,
                        Synced {
                            error_code: ErrorCode::UNKNOWN_MEMBER_ID,
                            ..Synced::default()
                        },
                    ));
                }
            }
        }
        self.joined.clear();
        if self.members.is_empty() {
            self.become_empty();
            return;
        }
        self.generation += 1;
        // The protocol every member supports that most members prefer (Kafka's vote).
        let candidates = self.candidates(None);
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(name, _)| candidates.contains(name))
            {
                *votes.entry(name).or_default() += 1;
            }
        }
        self.protocol = votes
            .iter()
            .max_by_key(|(name, count)| (**count, std::cmp::Reverse(**name)))
            .map(|(name, _)| name.to_string());
        if self
            .leader
            .as_ref()
            .is_none_or(|leader| !self.members.contains_key(leader))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = ClassicState::CompletingRebalance;
        let leader = self.leader.clone().unwrap_or_default();
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let joined = self.answer(&id, id == leader);
            if let Some(waiter) = self
                .members
                .get_mut(&id)
                .and_then(|m| m.join_waiter.0.take())
            {
                replies.joins.push((waiter, joined));
            }
        }
    }

    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ErrorCode> {
        let member = self
            .members
            .get(member_id)
            .ok_or(ErrorCode::UNKNOWN_MEMBER_ID)?;
        if instance_id.is_some() && member.instance_id.as_deref() != instance_id {
            return Err(ErrorCode::FENCED_INSTANCE_ID);
        }
        if generation != self.generation {
            return Err(ErrorCode::ILLEGAL_GENERATION);
        }
        Ok(())
    }

    /// Handles a SyncGroup: the leader's carries the assignment and completes the rebalance.
    pub fn sync(&mut self, request: Sync, now_ms: i64) -> (oneshot::Receiver<Synced>, Replies) {
        let (tx, rx) = oneshot::channel();
        let mut replies = Replies::default();
        let refuse = |code| Synced {
            error_code: code,
            ..Synced::default()
        };
        let checked = self
            .check_member(
                &request.member_id,
                request.instance_id.as_deref(),
                request.generation,
            )
            .and_then(|()| {
                let type_matches = request
                    .protocol_type
                    .as_ref()
                    .is_none_or(|t| self.protocol_type.as_ref() == Some(t));
                let protocol_matches = request
                    .protocol
                    .as_ref()
                    .is_none_or(|p| self.protocol.as_ref() == Some(p));
                if type_matches && protocol_matches {
                    Ok(())
                } else {
                    Err(ErrorCode::INCONSISTENT_GROUP_PROTOCOL)
                }
            });
        if let Err(code) = checked {
            replies.syncs.push((tx, refuse(code)));
            return (rx, replies);
        }
        let answer = |member: &ClassicMember, group: &ClassicGroup| Synced {
            error_code: ErrorCode::NONE,
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone(),
            assignment: member.assignment.clone(),
        };
        match self.state {
            ClassicState::PreparingRebalance => {
                replies
                    .syncs
                    .push((tx, refuse(ErrorCode::REBALANCE_IN_PROGRESS)));
            }
            ClassicState::Empty => replies
                .syncs
                .push((tx, refuse(ErrorCode::UNKNOWN_MEMBER_ID))),
            ClassicState::Stable => {
                if let Some(member) = self.members.get_mut(&request.member_id) {
                    member.last_seen_ms = now_ms;
                }
                if let Some(member) = self.members.get(&request.member_id) {
                    replies.syncs.push((tx, answer(member, self)));
                }
            }
            ClassicState::CompletingRebalance => {
                if let Some(member) = self.members.get_mut(&request.member_id) {
                    member.last_seen_ms = now_ms;
                    member.sync_waiter = Waiter(Some(tx));
                }
                if self.leader.as_deref() == Some(request.member_id.as_str()) {
                    let mut assignments: BTreeMap<String, Vec<u8>> =
                        request.assignments.into_iter().collect();
                    for member in self.members.values_mut() {
                        member.assignment =
                            assignments.remove(&member.member_id).unwrap_or_default();
                    }
                    self.state = ClassicState::Stable;
                    self.version += 1;
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        let Some(member) = self.members.get(&id) else {
                            continue;
                        };
                        let synced = answer(member, self);
                        if let Some(waiter) = self
                            .members
                            .get_mut(&id)
                            .and_then(|m| m.sync_waiter.0.take())
                        {
                            replies.syncs.push((waiter, synced));
                        }
                    }
                }
            }
        }
        (rx, replies)
    }

    /// Handles a Heartbeat.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: i64,
    ) -> ErrorCode {
        if let Err(code) = self.check_member(member_id, instance_id, generation) {
            return code;
        }
        if let Some(member) = self.members.get_mut(member_id) {
            member.last_seen_ms = now_ms;
        }
        match self.state {
            ClassicState::PreparingRebalance => ErrorCode::REBALANCE_IN_PROGRESS,
            _ => ErrorCode::NONE,
        }
    }

    /// Handles one member of a LeaveGroup (by member id, or by instance id alone).
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now_ms: i64,
    ) -> (ErrorCode, Replies) {
        let mut replies = Replies::default();
        let id = match (member_id.is_empty(), instance_id) {
            (true, Some(instance)) => self
                .members
                .values()
                .find(|m| m.instance_id.as_deref() == Some(instance))
                .map(|m| m.member_id.clone()),
            _ => {
                let member = self.members.get(member_id);
                if instance_id.is_some()
                    && member.is_some_and(|m| m.instance_id.as_deref() != instance_id)
                {
                    return (ErrorCode::FENCED_INSTANCE_ID, replies);
                }
                Some(member_id.to_string())
            }
        };
        let removed = id.is_some_and(|id| self.remove(&id, now_ms, &mut replies));
        if !removed {
            return (ErrorCode::UNKNOWN_MEMBER_ID, replies);
        }
        replies.extend(self.tick(now_ms).1);
        (ErrorCode::NONE, replies)
    }

    /// Checks an offset commit: a member of the current generation (not while the group
    /// completes a rebalance), or, with no member id and a negative generation, a group with no
    /// members (a consumer that assigns itself partitions and only stores offsets here).
    pub fn validate_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ErrorCode> {
        if member_id.is_empty() && generation < 0 {
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(ErrorCode::UNKNOWN_MEMBER_ID)
            };
        }
        self.check_member(member_id, instance_id, generation)?;
        if self.state == ClassicState::CompletingRebalance {
            return Err(ErrorCode::REBALANCE_IN_PROGRESS);
        }
        Ok(())
    }

    /// The partitions a member was assigned, when the group uses Kafka's consumer protocol
    /// (its assignment bytes are a `ConsumerProtocolAssignment`).
    pub fn assigned_partitions(&self, member: &ClassicMember) -> BTreeSet<TopicPartition> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return BTreeSet::new();
        }
        consumer_protocol::assignment(&member.assignment)
    }

    /// The topics a member subscribed to, under the consumer protocol.
    pub fn subscribed_topics(&self, member: &ClassicMember) -> Vec<String> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return Vec::new();
        }
        let protocol = self.protocol.clone().unwrap_or_default();
        let metadata = match member.metadata(&protocol) {
            [] => member
                .protocols
                .first()
                .map(|(_, m)| m.as_slice())
                .unwrap_or_default(),
            m => m,
        };
        consumer_protocol::subscription(metadata)
    }
}

/// Kafka's embedded consumer protocol (what `consumer` groups put in their metadata and
/// assignment bytes), decoded only to show groups to operators.
mod consumer_protocol {
    use std::collections::BTreeSet;

    use bytes::{Buf, Bytes};
    use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
    use kafka_protocol::protocol::Decodable;

    use crate::log::TopicPartition;

    /// A version-prefixed embedded message (an unknown version or garbage decodes as nothing).
    fn decode<T: Decodable>(bytes: &[u8]) -> Option<T> {
        let mut buf = Bytes::copy_from_slice(bytes);
        if buf.remaining() < 2 {
            return None;
        }
        let version = buf.get_i16();
        T::decode(&mut buf, version.clamp(0, 3)).ok()
    }

    pub fn assignment(bytes: &[u8]) -> BTreeSet<TopicPartition> {
        let Some(assignment) = decode::<ConsumerProtocolAssignment>(bytes) else {
            return BTreeSet::new();
        };
        assignment
            .assigned_partitions
            .iter()
            .flat_map(|t| {
                t.partitions.iter().filter_map(|p| {
                    Some(TopicPartition::new(
                        t.topic.0.as_str(),
                        u32::try_from(*p).ok()?,
                    ))
                })
            })
            .collect()
    }

    pub fn subscription(bytes: &[u8]) -> Vec<String> {
        decode::<ConsumerProtocolSubscription>(bytes)
            .map(|s| s.topics.iter().map(|t| t.as_str().to_string()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_request(member_id: &str, metadata: &[u8]) -> Join {
        Join {
            member_id: member_id.to_string(),
            client_id: "test".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), metadata.to_vec())],
            require_known_member_id: true,
            ..Join::default()
        }
    }

    fn answer<T>(mut rx: oneshot::Receiver<T>) -> Option<T> {
        rx.try_recv().ok()
    }

    /// Joins a new member (two rounds: MEMBER_ID_REQUIRED, then with the id).
    fn new_member(
        group: &mut ClassicGroup,
        now: i64,
        delay: u64,
    ) -> (String, oneshot::Receiver<Joined>) {
        let (rx, replies) = group.join(join_request("", b"m"), now, delay);
        replies.deliver();
        let first = answer(rx).expect("answered at once");
        assert_eq!(first.error_code, ErrorCode::MEMBER_ID_REQUIRED);
        let (rx, replies) = group.join(join_request(&first.member_id, b"m"), now, delay);
        replies.deliver();
        (first.member_id, rx)
    }

    #[test]
    fn an_initial_rebalance_waits_its_delay_then_the_leader_assigns_and_everyone_syncs() {
        let mut group = ClassicGroup::new("g");
        let (a, mut a_rx) = new_member(&mut group, 0, 1000);
        let (b, mut b_rx) = new_member(&mut group, 500, 1000);
        group.tick(1000).1.deliver();
        assert!(a_rx.try_recv().is_err(), "extended by b's join");
        group.tick(1500).1.deliver();
        let a_joined = a_rx.try_recv().unwrap();
        let b_joined = b_rx.try_recv().unwrap();
        assert_eq!(a_joined.generation, 1);
        assert_eq!(a_joined.protocol.as_deref(), Some("range"));
        assert_eq!(a_joined.leader, a, "first member leads");
        assert_eq!(a_joined.members.len(), 2);
        assert!(b_joined.members.is_empty(), "only the leader sees members");
        assert_eq!(group.state, ClassicState::CompletingRebalance);

        let sync = |member: &str, assignments: Vec<(String, Vec<u8>)>| Sync {
            member_id: member.to_string(),
            generation: 1,
            assignments,
            ..Sync::default()
        };
        let (b_sync, replies) = group.sync(sync(&b, vec![]), 1600);
        replies.deliver();
        assert_eq!(
            group.validate_commit(&b, None, 1),
            Err(ErrorCode::REBALANCE_IN_PROGRESS)
        );
        let (a_sync, replies) = group.sync(
            sync(
                &a,
                vec![(a.clone(), b"A".to_vec()), (b.clone(), b"B".to_vec())],
            ),
            1700,
        );
        let version = group.version;
        assert_eq!(group.state, ClassicState::Stable);
        replies.deliver();
        assert_eq!(answer(a_sync).unwrap().assignment, b"A");
        assert_eq!(answer(b_sync).unwrap().assignment, b"B");
        assert!(version > 0, "a stable group is persisted");
        assert_eq!(group.heartbeat(&a, None, 1, 1800), ErrorCode::NONE);
        assert_eq!(
            group.heartbeat(&a, None, 0, 1800),
            ErrorCode::ILLEGAL_GENERATION
        );
        assert_eq!(group.validate_commit(&b, None, 1), Ok(()));
        assert_eq!(
            group.validate_commit("", None, -1),
            Err(ErrorCode::UNKNOWN_MEMBER_ID),
            "no anonymous commits while members consume"
        );
    }

    fn stable_pair(group: &mut ClassicGroup) -> (String, String) {
        // An initial delay gathers both into the first generation.
        let (a, a_rx) = new_member(group, 0, 100);
        let (b, b_rx) = new_member(group, 0, 100);
        group.tick(99).1.deliver();
        assert_eq!(group.state, ClassicState::PreparingRebalance);
        group.tick(100).1.deliver();
        let generation = answer(a_rx).unwrap().generation;
        answer(b_rx).unwrap();
        let leader = group.leader.clone().unwrap();
        let (_, replies) = group.sync(
            Sync {
                member_id: leader,
                generation,
                assignments: vec![(a.clone(), b"A".to_vec()), (b.clone(), b"B".to_vec())],
                ..Sync::default()
            },
            101,
        );
        replies.deliver();
        assert_eq!(group.state, ClassicState::Stable);
        (a, b)
    }

    #[test]
    fn a_new_member_rebalances_and_completes_once_everyone_rejoined() {
        let mut group = ClassicGroup::new("g");
        let (a, b) = stable_pair(&mut group);
        let generation = group.generation;
        let (_c, mut c_rx) = new_member(&mut group, 10, 0);
        assert_eq!(group.state, ClassicState::PreparingRebalance);
        assert_eq!(
            group.heartbeat(&a, None, generation, 11),
            ErrorCode::REBALANCE_IN_PROGRESS,
            "heartbeats tell members to rejoin"
        );
        assert_eq!(
            group.validate_commit(&a, None, generation),
            Ok(()),
            "members may commit before they rejoin"
        );
        let (a_rx, replies) = group.join(join_request(&a, b"m"), 12, 0);
        replies.deliver();
        assert!(c_rx.try_recv().is_err(), "b has not rejoined yet");
        let (b_rx, replies) = group.join(join_request(&b, b"m"), 13, 0);
        replies.deliver();
        let joined = [
            answer(a_rx).unwrap(),
            answer(b_rx).unwrap(),
            c_rx.try_recv().unwrap(),
        ];
        assert!(joined.iter().all(|j| j.generation == generation + 1));
        assert_eq!(
            joined.iter().filter(|j| !j.members.is_empty()).count(),
            1,
            "one leader"
        );
    }

    #[test]
    fn a_silent_member_expires_and_one_that_does_not_rejoin_is_dropped() {
        let mut group = ClassicGroup::new("g");
        let (a, b) = stable_pair(&mut group);
        assert_eq!(
            group.heartbeat(&a, None, group.generation, 9_000),
            ErrorCode::NONE
        );
        let (expired, replies) = group.tick(10_500);
        replies.deliver();
        assert_eq!(expired, vec![b.clone()], "b sent nothing for 10 s");
        assert_eq!(group.state, ClassicState::PreparingRebalance);
        let (a_rx, replies) = group.join(join_request(&a, b"m"), 10_600, 0);
        replies.deliver();
        let joined = answer(a_rx).expect("a is the only member left");
        assert_eq!(joined.members.len(), 1);

        // Now a member that never rejoins a rebalance is dropped at the rebalance timeout.
        let mut group = ClassicGroup::new("g");
        let (a, _b) = stable_pair(&mut group);
        let (_c, mut c_rx) = new_member(&mut group, 100, 0);
        let (mut a_rx, replies) = group.join(join_request(&a, b"m"), 100, 0);
        replies.deliver();
        // b keeps heartbeating but never rejoins.
        for t in (1_000..30_000).step_by(1_000) {
            group.heartbeat(&_b, None, group.generation, t);
            group.tick(t).1.deliver();
        }
        assert!(a_rx.try_recv().is_err());
        group.tick(30_200).1.deliver();
        let joined = a_rx.try_recv().unwrap();
        assert_eq!(
            joined.members.len() + c_rx.try_recv().unwrap().members.len(),
            2
        );
    }

    #[test]
    fn leaving_and_protocol_mismatches() {
        let mut group = ClassicGroup::new("g");
        let (a, b) = stable_pair(&mut group);
        let mut other = join_request("", b"m");
        other.protocols = vec![("roundrobin".into(), vec![])];
        let (rx, replies) = group.join(other, 5, 0);
        replies.deliver();
        assert_eq!(
            answer(rx).unwrap().error_code,
            ErrorCode::INCONSISTENT_GROUP_PROTOCOL
        );
        assert_eq!(group.leave(&b, None, 6).0, ErrorCode::NONE);
        assert_eq!(group.leave(&b, None, 6).0, ErrorCode::UNKNOWN_MEMBER_ID);
        assert_eq!(group.state, ClassicState::PreparingRebalance);
        assert_eq!(group.leave(&a, None, 7).0, ErrorCode::NONE);
        assert_eq!(group.state, ClassicState::Empty);
        assert!(!group.is_live());
        assert_eq!(group.validate_commit("", None, -1), Ok(()));
        let mut bad = join_request("", b"m");
        bad.session_timeout_ms = 10;
        let (rx, replies) = group.join(bad, 8, 0);
        replies.deliver();
        assert_eq!(
            answer(rx).unwrap().error_code,
            ErrorCode::INVALID_SESSION_TIMEOUT
        );
    }

    #[test]
    fn a_restored_group_is_stable_at_its_generation() {
        let mut group = ClassicGroup::new("g");
        let (a, _) = stable_pair(&mut group);
        let bytes = postcard::to_allocvec(&group).unwrap();
        let restored: ClassicGroup = postcard::from_bytes(&bytes).unwrap();
        let mut restored = restored.restored(50_000);
        assert_eq!(restored.state, ClassicState::Stable);
        assert_eq!(
            restored.heartbeat(&a, None, group.generation, 50_001),
            ErrorCode::NONE
        );
        let (rx, replies) = restored.sync(
            Sync {
                member_id: a.clone(),
                generation: group.generation,
                ..Sync::default()
            },
            50_002,
        );
        replies.deliver();
        assert_eq!(answer(rx).unwrap().assignment, b"A");
    }
}
