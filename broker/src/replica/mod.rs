//! Partition replication: each local partition's role (leader or follower), the leader's view
//! of its followers, the in-sync replica set (ISR) and the high watermark (HW).
//!
//! Followers pull: `fetcher` runs one task per leader broker that fetches every partition
//! followed there with its log end offset and last epoch, truncates a divergent tail when the
//! leader says so (KIP-320), and appends the leader's batches byte for byte
//! ([`crate::log::Log::append_replica`]).
//! The leader learns each follower's log end offset from its fetches, advances the HW to the
//! lowest log end offset in the ISR (including additions it has proposed), and changes the ISR
//! only through the controller (`AlterPartition`, conditional on its leader and partition
//! epochs), so ISR changes survive its death and a deposed leader cannot make any.
//!
//! Invariants: the HW never exceeds the leader's log end offset and never moves back while a
//! broker leads; a record below the HW is on every replica of the committed ISR (so any
//! leader the controller elects from the ISR has it); roles change only when the metadata says
//! so ([`ReplicaManager::apply_metadata`]), and every leadership change carries a new epoch.

mod fetcher;
pub mod lease;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rill_protocol::api::EpochEndOffset;
use rill_protocol::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::controller::{Command, CommandResult, Controller, MetadataState, NodeId, PartitionInfo};
use crate::log::{Locking, PartitionLog, TopicPartition};
pub use lease::Lease;

/// Settings of replication on this broker.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub node_id: NodeId,
    /// A follower not caught up for this long leaves the ISR.
    pub lag_max: Duration,
    /// Default `min.insync.replicas`.
    pub min_insync_replicas: u32,
    pub fetch_wait_max_ms: u32,
    pub fetch_max_bytes: u32,
    pub max_frame_bytes: usize,
    /// TLS towards leaders' inter-broker listeners (`None`: plain).
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// What the leader knows of one follower.
#[derive(Debug, Clone)]
struct Progress {
    /// The follower's log end offset (its last fetch offset).
    end_offset: u64,
    /// Last time the follower had everything the leader had (Kafka's lastCaughtUpTime).
    caught_up_at: Instant,
    last_fetch_at: Instant,
    /// The leader's log end offset when the follower last fetched.
    leader_end_at_last_fetch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Leader,
    /// Following `leader` (`None`: the partition has no leader right now).
    Follower(Option<NodeId>),
}

struct State {
    role: Role,
    leader_epoch: u32,
    partition_epoch: u32,
    replicas: Vec<NodeId>,
    /// The committed ISR (from the metadata).
    isr: Vec<NodeId>,
    /// An ISR change this leader proposed and the controller has not applied yet.
    pending_isr: Option<Vec<NodeId>>,
    /// ISR proposals that failed in a row (no quorum, stale epochs), and when to try again:
    /// exponential backoff up to 5 s, so a leader without a quorum does not flood it or the log.
    isr_failures: u32,
    isr_retry_at: Option<Instant>,
    followers: HashMap<NodeId, Progress>,
    /// Leader: the local log end offset when it became leader (at this epoch). A follower
    /// joins the ISR only once it has fetched past it: below it, this leader's HW may still
    /// lag what the previous leader committed (KAFKA-7128).
    leader_start_offset: u64,
    min_insync: usize,
    /// Stops this partition's fetcher (followers).
    fetcher: Option<CancellationToken>,
}

/// ISR members keeping up: the leader itself, and followers caught up within `lag_max`.
fn live_insync(state: &State, lag_max: Duration) -> usize {
    state
        .isr
        .iter()
        .filter(|r| {
            state
                .followers
                .get(r)
                .is_none_or(|p| p.caught_up_at.elapsed() <= lag_max)
        })
        .count()
}

impl State {
    /// No ISR change in flight and no backoff pending.
    fn may_propose_isr(&self) -> bool {
        self.pending_isr.is_none() && self.isr_retry_at.is_none_or(|at| at <= Instant::now())
    }
}

/// One local partition replica. See the module docs.
pub struct Replica {
    pub log: Arc<PartitionLog>,
    state: Mutex<State>,
    /// This broker's leadership lease: without it, the replica acts as no leader.
    lease: Arc<Lease>,
    /// The leader epoch this replica follows at (fetched data may be written only then), or
    /// `NOT_FOLLOWING`.
    following: std::sync::atomic::AtomicU64,
}

const NOT_FOLLOWING: u64 = u64::MAX;

/// Why a leader cannot take a request for a partition.
pub type LeaderCheck = Result<(), ErrorCode>;

impl Replica {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this replica follows its leader at `epoch` (the fetcher's right to write).
    fn following(&self, epoch: u32) -> bool {
        self.following.load(std::sync::atomic::Ordering::Acquire) == u64::from(epoch)
    }

    fn set_following(&self, epoch: Option<u32>) {
        self.following.store(
            epoch.map_or(NOT_FOLLOWING, u64::from),
            std::sync::atomic::Ordering::Release,
        );
    }

    /// `Ok` if this broker leads the partition (at `epoch`, when given) and holds its
    /// leadership lease (NOT_LEADER without it: clients look for the leader elsewhere).
    pub fn check_leader(&self, epoch: Option<u32>) -> LeaderCheck {
        self.check_role(epoch)?;
        if !self.lease.is_valid() {
            return Err(ErrorCode::NOT_LEADER);
        }
        Ok(())
    }

    /// [`Replica::check_leader`] without the lease: the leader role as the metadata gave it.
    fn check_role(&self, epoch: Option<u32>) -> LeaderCheck {
        let state = self.state();
        if let Some(epoch) = epoch {
            if epoch < state.leader_epoch {
                return Err(ErrorCode::FENCED_LEADER_EPOCH);
            }
            if epoch > state.leader_epoch {
                return Err(ErrorCode::UNKNOWN_LEADER_EPOCH);
            }
        }
        match state.role {
            Role::Leader => Ok(()),
            Role::Follower(Some(_)) => Err(ErrorCode::NOT_LEADER),
            Role::Follower(None) => Err(ErrorCode::LEADER_NOT_AVAILABLE),
        }
    }

    /// The leader epoch this broker leads at, or why it does not lead.
    pub fn leader_epoch(&self) -> Result<u32, ErrorCode> {
        self.admit_produce(false, Duration::ZERO)
    }

    /// Produce admission, under one lock: the leader epoch to append with if this broker leads
    /// the partition and, for acks=all (`all`), at least `min.insync.replicas` ISR members keep
    /// up ([`live_insync`]: a follower that stopped fetching counts as gone at once, even before
    /// the controller shrinks the ISR, so a leader cut off from its quorum refuses writes
    /// instead of timing them out).
    pub fn admit_produce(&self, all: bool, lag_max: Duration) -> Result<u32, ErrorCode> {
        let state = self.state();
        match state.role {
            Role::Leader if self.lease.is_valid() => {}
            Role::Leader | Role::Follower(Some(_)) => return Err(ErrorCode::NOT_LEADER),
            Role::Follower(None) => return Err(ErrorCode::LEADER_NOT_AVAILABLE),
        }
        if all && live_insync(&state, lag_max) < state.min_insync {
            return Err(ErrorCode::NOT_ENOUGH_REPLICAS);
        }
        Ok(state.leader_epoch)
    }

    /// After the HW reached an acks=all write: the ISR must still satisfy the minimum.
    fn isr_satisfies_min(&self) -> bool {
        let state = self.state();
        state.isr.len() >= state.min_insync
    }

    /// Waits until the HW passes `end_offset` (every in-sync replica has the records before it),
    /// the broker stops leading at `epoch`, or `timeout`.
    pub async fn wait_replicated(
        &self,
        end_offset: u64,
        epoch: u32,
        timeout: Duration,
    ) -> Result<(), ErrorCode> {
        let mut hw = self.log.subscribe_high_watermark();
        let wait = async {
            loop {
                if self.check_leader(Some(epoch)).is_err() {
                    return Err(ErrorCode::NOT_LEADER);
                }
                if *hw.borrow_and_update() >= end_offset {
                    return if self.isr_satisfies_min() {
                        Ok(())
                    } else {
                        Err(ErrorCode::NOT_ENOUGH_REPLICAS_AFTER_APPEND)
                    };
                }
                if hw.changed().await.is_err() {
                    return Err(ErrorCode::NOT_LEADER);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(ErrorCode::REQUEST_TIMED_OUT))
    }

    /// Recomputes the leader's HW: the lowest log end offset among the ISR and the replicas
    /// it proposed adding (never backwards, never past its own log end).
    fn advance_high_watermark(&self, state: &State, node_id: NodeId) {
        if state.role != Role::Leader {
            return;
        }
        let own_end = self.log.log_end_offset();
        let members = state.isr.iter().chain(state.pending_isr.iter().flatten());
        let mut hw = own_end;
        for member in members {
            if *member != node_id {
                hw = hw.min(state.followers.get(member).map_or(0, |p| p.end_offset));
            }
        }
        let current = self.log.high_watermark();
        if hw > current {
            self.log.set_high_watermark(hw.min(own_end));
        }
    }

    /// Follower: records the leader's HW (capped by the local log end).
    fn follower_high_watermark(&self, leader_hw: u64) {
        let hw = leader_hw.min(self.log.log_end_offset());
        if hw != self.log.high_watermark() {
            self.log.set_high_watermark(hw);
        }
    }
}

/// What a leader answers a follower's fetch with, before reading records.
pub enum FollowerFetch {
    /// Read from the fetch offset.
    Read,
    /// The follower's log diverges: it truncates to this and fetches again.
    Diverging(EpochEndOffset),
}

/// Every local partition replica, keyed by partition. See the module docs.
pub struct ReplicaManager {
    config: ReplicaConfig,
    controller: Controller,
    lease: Arc<Lease>,
    replicas: Mutex<BTreeMap<TopicPartition, Arc<Replica>>>,
    /// Followers' fetchers, one per leader broker.
    fetchers: fetcher::Pool,
    /// Broker shutdown: stops every fetcher.
    shutdown: CancellationToken,
}

impl ReplicaManager {
    pub fn new(
        config: ReplicaConfig,
        controller: Controller,
        lease: Arc<Lease>,
        shutdown: CancellationToken,
    ) -> Arc<ReplicaManager> {
        Arc::new(ReplicaManager {
            config,
            controller,
            lease,
            replicas: Mutex::default(),
            fetchers: fetcher::Pool::default(),
            shutdown,
        })
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    fn replicas(&self) -> std::sync::MutexGuard<'_, BTreeMap<TopicPartition, Arc<Replica>>> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The local replica of `tp`, if this broker hosts it.
    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<Replica>> {
        self.replicas().get(tp).cloned()
    }

    /// Brings every local replica in line with `metadata`: becomes leader or follower (starting
    /// or stopping fetchers) where the leader or epoch changed, takes the committed ISR, and
    /// forgets partitions no longer assigned here. `logs` are the local logs of the partitions
    /// `metadata` assigns to this broker.
    pub fn apply_metadata(
        self: &Arc<Self>,
        metadata: &MetadataState,
        logs: Vec<(TopicPartition, Arc<PartitionLog>)>,
    ) {
        // One application at a time (reconciles may race): a replica is created once, so a
        // partition never gets two fetchers.
        let mut replicas = self.replicas();
        let mut wanted = BTreeMap::new();
        for (tp, log) in logs {
            let Some(topic) = metadata.topics.get(&tp.topic) else {
                continue;
            };
            let Some(info) = topic.partitions.get(tp.partition as usize) else {
                continue;
            };
            let min_insync = topic
                .configs
                .get("min.insync.replicas")
                .and_then(|v| v.parse().ok())
                .unwrap_or(self.config.min_insync_replicas) as usize;
            // A replica whose log was replaced (an earlier topic of this name) starts anew.
            let current = replicas
                .get(&tp)
                .filter(|r| Arc::ptr_eq(&r.log, &log))
                .cloned();
            let replica = current.unwrap_or_else(|| {
                Arc::new(Replica {
                    log: log.clone(),
                    state: Mutex::new(State {
                        role: Role::Follower(None),
                        leader_epoch: 0,
                        partition_epoch: 0,
                        replicas: Vec::new(),
                        isr: Vec::new(),
                        pending_isr: None,
                        isr_failures: 0,
                        isr_retry_at: None,
                        followers: HashMap::new(),
                        leader_start_offset: 0,
                        min_insync,
                        fetcher: None,
                    }),
                    lease: self.lease.clone(),
                    following: std::sync::atomic::AtomicU64::new(NOT_FOLLOWING),
                })
            });
            self.update_replica(&tp, &replica, info, min_insync, metadata);
            wanted.insert(tp, replica);
        }
        let removed: Vec<Arc<Replica>> = replicas
            .iter()
            .filter(|(tp, r)| wanted.get(*tp).is_none_or(|w| !Arc::ptr_eq(w, r)))
            .map(|(_, r)| r.clone())
            .collect();
        *replicas = wanted;
        drop(replicas);
        for replica in removed {
            let mut state = replica.state();
            if let Some(fetcher) = state.fetcher.take() {
                fetcher.cancel();
            }
            state.role = Role::Follower(None);
            replica.set_following(None);
            replica.log.set_leader_epoch(None);
            drop(state);
            replica.log.set_high_watermark(replica.log.high_watermark());
        }
    }

    fn update_replica(
        self: &Arc<Self>,
        tp: &TopicPartition,
        replica: &Arc<Replica>,
        info: &PartitionInfo,
        min_insync: usize,
        metadata: &MetadataState,
    ) {
        let node_id = self.config.node_id;
        let mut state = replica.state();
        state.min_insync = min_insync;
        state.replicas = info.replicas.clone();
        if state.partition_epoch != info.partition_epoch || state.isr != info.isr {
            state.pending_isr = None;
            state.isr_failures = 0;
            state.isr_retry_at = None;
        }
        state.isr = info.isr.clone();
        state.partition_epoch = info.partition_epoch;
        let role = if info.leader == Some(node_id) {
            Role::Leader
        } else {
            Role::Follower(info.leader)
        };
        let changed = state.role != role || state.leader_epoch != info.leader_epoch;
        if changed {
            replica.set_following(None);
            if let Some(fetcher) = state.fetcher.take() {
                fetcher.cancel();
            }
            state.role = role;
            state.leader_epoch = info.leader_epoch;
            match role {
                Role::Leader => {
                    let now = Instant::now();
                    let end = replica.log.log_end_offset();
                    state.followers = info
                        .replicas
                        .iter()
                        .filter(|r| **r != node_id)
                        .map(|r| {
                            let progress = Progress {
                                end_offset: 0,
                                caught_up_at: now,
                                last_fetch_at: now,
                                leader_end_at_last_fetch: end,
                            };
                            (*r, progress)
                        })
                        .collect();
                    state.leader_start_offset = end;
                    replica.log.set_leader_epoch(Some(info.leader_epoch));
                    tracing::info!(partition = %tp, epoch = info.leader_epoch, isr = ?info.isr, end, "became leader");
                }
                Role::Follower(leader) => {
                    replica.log.set_leader_epoch(None);
                    state.followers.clear();
                    if let Some(leader) = leader.and_then(|l| metadata.brokers.get(&l)) {
                        let token = self.shutdown.child_token();
                        state.fetcher = Some(token.clone());
                        replica.set_following(Some(info.leader_epoch));
                        self.fetchers.follow(
                            self,
                            tp.clone(),
                            replica.clone(),
                            fetcher::Target {
                                node_id: leader.node_id,
                                address: format!("{}:{}", leader.host, leader.port),
                                epoch: info.leader_epoch,
                            },
                            token,
                        );
                    }
                    tracing::info!(partition = %tp, epoch = info.leader_epoch, ?leader, "became follower");
                }
            }
        }
        replica.advance_high_watermark(&state, node_id);
        drop(state);
        // Wake acks=all waiters so they notice a change of leadership.
        if changed {
            replica.log.set_high_watermark(replica.log.high_watermark());
        }
    }

    /// Leader side of a follower's fetch: checks epochs, detects divergence, records the
    /// follower's progress, advances the HW and proposes adding the follower to the ISR once it
    /// has caught up. Takes the log lock as `locking` says: `None` when it was held
    /// ([`Locking::IfFree`]), before anything was recorded.
    #[allow(clippy::too_many_arguments)]
    pub fn on_follower_fetch(
        self: &Arc<Self>,
        tp: &TopicPartition,
        replica: &Arc<Replica>,
        follower: NodeId,
        current_leader_epoch: Option<u32>,
        fetch_offset: u64,
        last_fetched_epoch: Option<u32>,
        locking: Locking,
    ) -> Option<Result<FollowerFetch, ErrorCode>> {
        // The role only, not the lease: a leader that lost its lease still serves its
        // followers until the metadata moves them, so that what it wrote before the lease
        // ended reaches them (it acknowledges nothing new meanwhile).
        if let Err(code) = replica.check_role(current_leader_epoch) {
            return Some(Err(code));
        }
        let positions = replica.log.with_log_as(locking, |log| {
            let end = log.log_end_offset();
            let diverging =
                last_fetched_epoch.and_then(|last| match log.end_offset_for_epoch(last) {
                    Some((epoch, end_offset)) if epoch == last && end_offset >= fetch_offset => {
                        None
                    }
                    Some((epoch, end_offset)) => Some(EpochEndOffset { epoch, end_offset }),
                    None => Some(EpochEndOffset {
                        epoch: last,
                        end_offset: log.log_start_offset(),
                    }),
                });
            Ok((end, diverging))
        })?;
        Some(self.follower_progress(tp, replica, follower, fetch_offset, positions))
    }

    /// The rest of [`Self::on_follower_fetch`], given the leader's log end and the
    /// follower's divergence as read under the log lock.
    fn follower_progress(
        self: &Arc<Self>,
        tp: &TopicPartition,
        replica: &Arc<Replica>,
        follower: NodeId,
        fetch_offset: u64,
        positions: crate::Result<(u64, Option<EpochEndOffset>)>,
    ) -> Result<FollowerFetch, ErrorCode> {
        let (leader_end, diverging) = positions.map_err(|e| e.error_code())?;
        if let Some(diverging) = diverging {
            return Ok(FollowerFetch::Diverging(diverging));
        }
        let node_id = self.config.node_id;
        let mut state = replica.state();
        if !state.replicas.contains(&follower) || follower == node_id {
            return Err(ErrorCode::INVALID_REQUEST);
        }
        let now = Instant::now();
        let progress = state.followers.entry(follower).or_insert(Progress {
            end_offset: 0,
            caught_up_at: now,
            last_fetch_at: now,
            leader_end_at_last_fetch: leader_end,
        });
        progress.end_offset = fetch_offset.min(leader_end);
        if fetch_offset >= leader_end {
            progress.caught_up_at = now;
        } else if fetch_offset >= progress.leader_end_at_last_fetch {
            progress.caught_up_at = progress.last_fetch_at;
        }
        progress.last_fetch_at = now;
        progress.leader_end_at_last_fetch = leader_end;
        replica.advance_high_watermark(&state, node_id);
        let hw = replica.log.high_watermark();
        let joins = !state.isr.contains(&follower)
            && state.may_propose_isr()
            && fetch_offset >= hw
            && fetch_offset >= state.leader_start_offset;
        if joins {
            let mut isr = state.isr.clone();
            isr.push(follower);
            if state.isr_failures == 0 {
                tracing::info!(partition = %tp, follower, ?isr, "follower caught up: expanding the ISR");
            }
            self.propose_isr(tp, replica, &mut state, isr);
        }
        Ok(FollowerFetch::Read)
    }

    /// Proposes `isr` through the controller (one change in flight per partition).
    fn propose_isr(
        self: &Arc<Self>,
        tp: &TopicPartition,
        replica: &Arc<Replica>,
        state: &mut State,
        isr: Vec<NodeId>,
    ) {
        state.pending_isr = Some(isr.clone());
        let command = Command::AlterPartition {
            topic: tp.topic.clone(),
            partition: tp.partition,
            leader: self.config.node_id,
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            isr,
        };
        let controller = self.controller.clone();
        let replica = replica.clone();
        let tp = tp.clone();
        tokio::spawn(async move {
            let outcome = controller.propose(command).await;
            let applied = matches!(outcome, Ok(CommandResult::Ok));
            if !applied {
                let mut state = replica.state();
                state.pending_isr = None;
                state.isr_failures += 1;
                let backoff = Duration::from_millis(100)
                    .saturating_mul(1 << state.isr_failures.min(6))
                    .min(Duration::from_secs(5));
                state.isr_retry_at = Some(Instant::now() + backoff);
                if state.isr_failures.is_power_of_two() {
                    tracing::info!(partition = %tp, ?outcome, failures = state.isr_failures, "ISR change not applied; retrying while still needed");
                }
            }
        });
    }

    /// After a leader append: advances the HW (immediately when the leader is the only
    /// in-sync replica).
    pub fn appended(&self, replica: &Replica) {
        let state = replica.state();
        replica.advance_high_watermark(&state, self.config.node_id);
    }

    /// Every local replica (of `topics`, or all), with whether it leads its partition now
    /// (the leader role and a valid lease) and its leader epoch.
    pub fn local_replicas(
        &self,
        topics: Option<&[String]>,
    ) -> Vec<(TopicPartition, Arc<Replica>, bool, u32)> {
        self.replicas()
            .iter()
            .filter(|(tp, _)| topics.is_none_or(|t| t.contains(&tp.topic)))
            .map(|(tp, replica)| {
                let epoch = replica.state().leader_epoch;
                let leads = replica.check_leader(None).is_ok();
                (tp.clone(), replica.clone(), leads, epoch)
            })
            .collect()
    }

    /// For each topic with a partition this broker leads, the largest lag (in records, leader
    /// log end minus the follower's fetch offset) of any of its followers; a follower that has
    /// not fetched since this broker took the lead counts from offset 0.
    pub fn follower_lag_by_topic(&self) -> BTreeMap<String, u64> {
        let mut lags: BTreeMap<String, u64> = BTreeMap::new();
        for (tp, replica) in self.replicas().iter() {
            let state = replica.state();
            if state.role != Role::Leader {
                continue;
            }
            let end = replica.log.log_end_offset();
            let lag = state
                .replicas
                .iter()
                .filter(|r| **r != self.config.node_id)
                .map(|r| end.saturating_sub(state.followers.get(r).map_or(0, |p| p.end_offset)))
                .max()
                .unwrap_or(0);
            let entry = lags.entry(tp.topic.clone()).or_insert(0);
            *entry = (*entry).max(lag);
        }
        lags
    }

    /// Whether, on every partition this broker leads with more than one in-sync replica, the
    /// high watermark has reached the log end (every in-sync follower has everything).
    pub fn led_partitions_replicated(&self) -> bool {
        self.replicas().values().all(|replica| {
            let state = replica.state();
            state.role != Role::Leader
                || state.isr.len() <= 1
                || replica.log.high_watermark() >= replica.log.log_end_offset()
        })
    }

    /// Leader duty, every tick: followers that have not caught up within `lag_max` leave the ISR.
    pub fn shrink_isrs(self: &Arc<Self>) {
        let replicas: Vec<(TopicPartition, Arc<Replica>)> = self
            .replicas()
            .iter()
            .map(|(tp, r)| (tp.clone(), r.clone()))
            .collect();
        for (tp, replica) in replicas {
            let mut state = replica.state();
            if state.role != Role::Leader || !state.may_propose_isr() {
                continue;
            }
            let laggards: Vec<NodeId> = state
                .isr
                .iter()
                .filter(|r| {
                    state
                        .followers
                        .get(r)
                        .is_some_and(|p| p.caught_up_at.elapsed() > self.config.lag_max)
                })
                .copied()
                .collect();
            if laggards.is_empty() {
                continue;
            }
            let isr: Vec<NodeId> = state
                .isr
                .iter()
                .filter(|r| !laggards.contains(r))
                .copied()
                .collect();
            if state.isr_failures == 0 {
                tracing::warn!(partition = %tp, ?laggards, ?isr, lag_max = ?self.config.lag_max, "followers fell behind: shrinking the ISR");
            }
            self.propose_isr(&tp, &replica, &mut state, isr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::metadata::{BrokerInfo, TopicInfo};
    use crate::controller::ControllerOptions;
    use crate::log::{LogConfig, LogManager};

    /// KAFKA-7128 (review #6): a new leader's HW may lag what the previous leader committed,
    /// so a follower fetching between that HW and the new leader's log end must not join the
    /// ISR yet (it could then be elected without the committed records).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lagging_follower_joins_the_isr_only_past_the_log_end_at_election() {
        let dir = tempfile::tempdir().unwrap();
        let voters = BTreeMap::from([(1, "127.0.0.1:0".to_string())]);
        let controller = Controller::start(
            1,
            &dir.path().join("raft"),
            voters,
            None,
            ControllerOptions::default(),
        )
        .await
        .unwrap();
        let logs = LogManager::open(&dir.path().join("data"), LogConfig::default()).unwrap();
        let tp = TopicPartition::new("t", 0);
        let log = logs.get_or_create(&tp, None, 0).unwrap();
        // Ten records written at epoch 0 (under the previous leader, say).
        let mut batch = rill_protocol::batch::RecordBatchBuilder::new();
        for _ in 0..10 {
            batch.append(0, None, Some(b"v"), &[]);
        }
        log.append(&batch.build(), 0).unwrap();
        let manager = ReplicaManager::new(
            ReplicaConfig {
                node_id: 1,
                lag_max: Duration::from_secs(10),
                min_insync_replicas: 1,
                fetch_wait_max_ms: 100,
                fetch_max_bytes: 1 << 20,
                max_frame_bytes: 1 << 20,
                tls: None,
            },
            controller,
            Arc::new(Lease::unlimited()),
            CancellationToken::new(),
        );
        let broker = |node_id| BrokerInfo {
            node_id,
            host: "127.0.0.1".into(),
            port: 1,
            fenced: false,
            incarnation: 1,
        };
        // This broker becomes leader at epoch 1; replica 3 is out of the ISR.
        let metadata = MetadataState {
            brokers: (1..=3).map(|n| (n, broker(n))).collect(),
            topics: BTreeMap::from([(
                "t".to_string(),
                TopicInfo {
                    name: "t".into(),
                    partitions: vec![PartitionInfo {
                        replicas: vec![1, 2, 3],
                        leader: Some(1),
                        leader_epoch: 1,
                        isr: vec![1, 2],
                        partition_epoch: 1,
                    }],
                    configs: BTreeMap::new(),
                    id: 0,
                },
            )]),
            ..MetadataState::default()
        };
        manager.apply_metadata(&metadata, vec![(tp.clone(), log.clone())]);
        let replica = manager.get(&tp).unwrap();
        assert_eq!(
            log.high_watermark(),
            0,
            "the new leader has learned nothing yet"
        );
        // Past the HW (0) but below the log end at election (10): not in sync.
        manager
            .on_follower_fetch(&tp, &replica, 3, Some(1), 5, Some(0), Locking::Wait)
            .unwrap()
            .unwrap();
        {
            let state = replica.state();
            assert!(
                state.pending_isr.is_none() && state.isr_failures == 0,
                "no ISR expansion proposed for a follower below the election's log end"
            );
        }
        // At the log end at election: it joins (a proposal is made).
        manager
            .on_follower_fetch(&tp, &replica, 3, Some(1), 10, Some(0), Locking::Wait)
            .unwrap()
            .unwrap();
        let state = replica.state();
        assert!(
            state.pending_isr.is_some() || state.isr_failures > 0,
            "an ISR expansion is proposed once the follower reached the election's log end"
        );
    }
}
