//! The group coordinator: hosts every group whose id hashes to a partition of
//! `__consumer_offsets` that this broker leads, runs their membership (`state::Group`), and
//! stores committed offsets as records in that partition, so they live in the same replicated
//! log engine as any data. On first use of a partition the coordinator rebuilds its groups'
//! offsets by reading the partition from the start.
//!
//! A group speaks one protocol at a time: Rill's native heartbeat protocol (`state::Group`) or
//! Kafka's classic JoinGroup/SyncGroup protocol (`classic::ClassicGroup`), as Kafka 4 holds
//! consumer and classic groups; a group with live members of one refuses the other with
//! INCONSISTENT_GROUP_PROTOCOL. Offsets are shared.
//!
//! Record format (docs/GROUPS.md): key = postcard(`RecordKey`), value = postcard(`OffsetValue`)
//! for offsets, `GroupValue` for membership snapshots (native or classic), none for a tombstone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rill_protocol::batch::{batches, RecordBatchBuilder};
use rill_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::group::classic::{ClassicGroup, Replies};
use crate::group::state::{Group, GroupError};
use crate::log::{monotonic_ms, now_ms, LogManager, TopicPartition};

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Its partition count (fixed: changing it would move every group).
pub const OFFSETS_PARTITIONS: u32 = 8;
/// Longest group id, member id or instance id, in bytes.
pub const GROUP_ID_BYTES_MAX: usize = 255;

/// The offsets partition that coordinates `group_id`: FNV-1a (32-bit) of the id, modulo
/// [`OFFSETS_PARTITIONS`]. Stable forever.
pub fn partition_for(group_id: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in group_id.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % OFFSETS_PARTITIONS
}

/// Key of a record in the offsets topic. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordKey {
    /// A committed offset; the latest record for a key wins.
    Offset {
        group: String,
        topic: String,
        partition: u32,
    },
    /// The group was deleted: forget every earlier record of it.
    GroupDeleted { group: String },
    /// A snapshot of the group's membership and target assignment (`GroupValue`); the latest wins.
    GroupMetadata { group: String },
}

/// Value of a group metadata record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GroupValue {
    V1(Group),
    /// A Kafka classic group (its native side is empty).
    Classic(ClassicGroup),
}

/// Value of an offset record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetValue {
    V1 {
        offset: u64,
        metadata: Option<String>,
        commit_timestamp_ms: i64,
    },
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: u64,
    pub metadata: Option<String>,
}

/// A group and its committed offsets.
pub struct GroupEntry {
    pub group: Group,
    pub classic: ClassicGroup,
    pub offsets: BTreeMap<TopicPartition, Committed>,
    /// Wall-clock ms of the group's latest offset commit or membership change (replayed from
    /// its records' timestamps): an empty group expires `offsets_retention_ms` after it.
    pub active_ms: i64,
}

impl GroupEntry {
    /// Whether the group is empty (no member of either protocol, nothing pending) and was
    /// last active `retention_ms` or longer before `now_ms`.
    fn expired(&self, now_ms: i64, retention_ms: i64) -> bool {
        self.group.members.is_empty()
            && !self.classic.is_live()
            && now_ms.saturating_sub(self.active_ms) >= retention_ms
    }

    /// Whether the group exists: has members (of either protocol) or committed offsets.
    pub fn exists(&self) -> bool {
        !self.group.members.is_empty() || self.classic.is_live() || !self.offsets.is_empty()
    }

    /// Whether Kafka's classic protocol runs it (else the native one, or nobody yet).
    pub fn is_classic(&self) -> bool {
        self.classic.is_live()
    }

    /// The version of what is persisted: both sides' versions only grow.
    fn version(&self) -> u64 {
        self.group.version + self.classic.version
    }

    /// The membership snapshot to persist: the classic group once it was used and while no
    /// native member is in, else the native one.
    fn snapshot(&self) -> GroupValue {
        if self.classic.version > 0 && self.group.members.is_empty() {
            GroupValue::Classic(self.classic.clone())
        } else {
            GroupValue::V1(self.group.clone())
        }
    }
}

/// What a coordinator tick changed in one group.
pub struct GroupTick {
    pub group: String,
    /// Members removed (session expired, or did not rejoin a rebalance in time).
    pub expired: Vec<String>,
    /// Classic answers to deliver once the group is persisted.
    pub replies: Replies,
}

/// See the module docs.
pub struct Coordinator {
    logs: Arc<LogManager>,
    heartbeat_interval_ms: u32,
    groups: Mutex<HashMap<String, GroupEntry>>,
    /// Offsets partitions whose records are in the cache, and the leader epoch they were
    /// loaded under: leadership that went away and came back (X -> Y -> X between two
    /// reconciles) is a new epoch, and the cache is reloaded instead of serving what Y never saw.
    loaded: Mutex<HashMap<u32, u32>>,
    /// Group version last written to the offsets topic, per group.
    persisted: Mutex<HashMap<String, u64>>,
    /// How long an empty group keeps its offsets (Kafka's `offsets.retention.minutes`); 0:
    /// forever.
    offsets_retention_ms: i64,
}

/// Most groups expired in one tick (each is one append).
const EXPIRIES_PER_TICK: usize = 100;

/// Maps a group error to its protocol code.
pub fn error_code(error: &GroupError) -> ErrorCode {
    match error {
        GroupError::UnknownMember(_) => ErrorCode::UNKNOWN_MEMBER_ID,
        GroupError::FencedMemberEpoch { .. } => ErrorCode::FENCED_MEMBER_EPOCH,
        GroupError::UnsupportedAssignor(_) => ErrorCode::UNSUPPORTED_ASSIGNOR,
        GroupError::GroupFull(_) => ErrorCode::GROUP_MAX_SIZE_REACHED,
        GroupError::NonEmptyGroup => ErrorCode::NON_EMPTY_GROUP,
        GroupError::NotAssigned(_) => ErrorCode::PARTITION_NOT_ASSIGNED,
    }
}

impl Coordinator {
    pub fn new(logs: Arc<LogManager>, heartbeat_interval_ms: u32) -> Coordinator {
        Coordinator {
            logs,
            heartbeat_interval_ms,
            groups: Mutex::default(),
            loaded: Mutex::default(),
            persisted: Mutex::default(),
            offsets_retention_ms: 0,
        }
    }

    /// Empty groups expire `ms` after they were last active (0: never).
    pub fn with_offsets_retention_ms(mut self, ms: u64) -> Coordinator {
        self.offsets_retention_ms = i64::try_from(ms).unwrap_or(i64::MAX);
        self
    }

    /// Runs `f` on the group (created empty if unknown).
    pub fn with_group<T>(&self, group_id: &str, f: impl FnOnce(&mut GroupEntry) -> T) -> T {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let entry = groups
            .entry(group_id.to_string())
            .or_insert_with(|| GroupEntry {
                group: Group::new(group_id, self.heartbeat_interval_ms),
                classic: ClassicGroup::new(group_id),
                offsets: BTreeMap::new(),
                active_ms: now_ms(),
            });
        f(entry)
    }

    /// Runs `f` on the group if it exists (has members or offsets).
    pub fn with_existing<T>(
        &self,
        group_id: &str,
        f: impl FnOnce(&mut GroupEntry) -> T,
    ) -> Option<T> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.get_mut(group_id).filter(|e| e.exists()).map(f)
    }

    /// Ids of the groups hosted here that have members or offsets.
    pub fn group_ids(&self) -> Vec<String> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<String> = groups
            .iter()
            .filter(|(_, e)| e.exists())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Removes members whose session expired and completes classic rebalances that are due,
    /// in every group. Returns the groups where something changed. Then forgets the groups
    /// that do not exist (no members, nothing pending, no offsets) and have nothing left to
    /// persist: a client naming ever new group ids (a heartbeat or offset fetch for an unknown
    /// group creates an entry) cannot grow the coordinator's memory without bound.
    pub fn tick(&self, now_ms: i64) -> Vec<GroupTick> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let ticks = groups
            .iter_mut()
            .filter_map(|(id, entry)| {
                let mut expired = entry.group.expire(now_ms);
                let (classic_expired, replies) = entry.classic.tick(now_ms);
                expired.extend(classic_expired);
                (!expired.is_empty() || !replies.is_empty()).then(|| GroupTick {
                    group: id.clone(),
                    expired,
                    replies,
                })
            })
            .collect::<Vec<_>>();
        let changed: std::collections::HashSet<&str> =
            ticks.iter().map(|t| t.group.as_str()).collect();
        let mut persisted = self.persisted.lock().unwrap_or_else(|e| e.into_inner());
        groups.retain(|id, entry| {
            let settled = entry.version() == 0 || persisted.get(id) == Some(&entry.version());
            let keep = entry.exists() || !settled || changed.contains(id.as_str());
            if !keep {
                persisted.remove(id);
            }
            keep
        });
        ticks
    }

    /// Groups held in memory (existing or not yet forgotten).
    pub fn held(&self) -> usize {
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Forgets the groups of an offsets partition this broker no longer leads: if it leads it
    /// again later, it reloads them from the (replicated) log, never from a stale cache.
    pub fn unload(&self, partition: u32) {
        let was_loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&partition);
        if was_loaded.is_none() {
            return;
        }
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|group, _| partition_for(group) != partition);
        self.persisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|group, _| partition_for(group) != partition);
        tracing::info!(
            partition,
            "no longer coordinator of offsets partition: unloaded its groups"
        );
    }

    /// Loads the offsets stored in an offsets partition (once per leader epoch). Blocking:
    /// reads the log.
    pub fn ensure_loaded(&self, partition: u32, leader_epoch: u32) -> crate::Result<()> {
        let loaded_at = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .copied();
        match loaded_at {
            Some(epoch) if epoch == leader_epoch => return Ok(()),
            Some(_) => self.unload(partition),
            None => {}
        }
        let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
        let Some(log) = self.logs.get(&tp) else {
            return Ok(());
        };
        let mut records = 0;
        log.with_log(|log| {
            let mut offset = log.log_start_offset();
            while offset < log.log_end_offset() {
                let chunk = log.read(offset, 1 << 20)?;
                if chunk.is_empty() {
                    break;
                }
                for batch in batches(chunk) {
                    let batch = batch?;
                    offset = batch.last_offset() as u64 + 1;
                    for record in batch.records()? {
                        let record = record?;
                        records += 1;
                        self.apply_record(
                            record.key.as_deref(),
                            record.value.as_deref(),
                            record.timestamp,
                        );
                    }
                }
            }
            Ok(())
        })?;
        tracing::info!(partition, records, "loaded consumer group offsets");
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition, leader_epoch);
        Ok(())
    }

    fn apply_record(&self, key: Option<&[u8]>, value: Option<&[u8]>, timestamp_ms: i64) {
        let Some(Ok(key)) = key.map(postcard::from_bytes::<RecordKey>) else {
            tracing::warn!("skipping an undecodable record in {OFFSETS_TOPIC}");
            return;
        };
        match key {
            RecordKey::Offset {
                group,
                topic,
                partition,
            } => {
                let Some(Ok(OffsetValue::V1 {
                    offset, metadata, ..
                })) = value.map(postcard::from_bytes::<OffsetValue>)
                else {
                    // A tombstone (the group was deleted): the offset is gone.
                    if value.is_none() {
                        if let Some(entry) = self
                            .groups
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_mut(&group)
                        {
                            entry.offsets.remove(&TopicPartition::new(topic, partition));
                        }
                    }
                    return;
                };
                self.with_group(&group, |entry| {
                    entry.active_ms = timestamp_ms;
                    entry.offsets.insert(
                        TopicPartition::new(topic, partition),
                        Committed { offset, metadata },
                    )
                });
            }
            RecordKey::GroupDeleted { group } => {
                self.groups
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&group);
                self.persisted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&group);
            }
            RecordKey::GroupMetadata { group } => {
                let Some(Ok(stored)) = value.map(postcard::from_bytes::<GroupValue>) else {
                    return;
                };
                // Members get a full session from now to reach the restarted coordinator. The
                // other protocol's side starts empty (one protocol per group).
                let now = monotonic_ms();
                let heartbeat_interval_ms = self.heartbeat_interval_ms;
                let version = self.with_group(&group, |entry| {
                    entry.active_ms = timestamp_ms;
                    match stored {
                        GroupValue::V1(native) => {
                            entry.group = native.restored(now);
                            entry.classic = ClassicGroup::new(group.clone());
                        }
                        GroupValue::Classic(classic) => {
                            entry.classic = classic.restored(now);
                            entry.group = Group::new(group.clone(), heartbeat_interval_ms);
                        }
                    }
                    entry.version()
                });
                self.persisted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(group, version);
            }
        }
    }

    /// Appends offset records for `group` to its offsets partition, then updates the cache.
    /// Blocking (file I/O).
    pub fn store_offsets(
        &self,
        group: &str,
        offsets: &[(TopicPartition, Committed)],
    ) -> crate::Result<Option<(u32, u64)>> {
        if offsets.is_empty() {
            return Ok(None);
        }
        let now = now_ms();
        let mut builder = RecordBatchBuilder::new();
        for (tp, committed) in offsets {
            let key = RecordKey::Offset {
                group: group.to_string(),
                topic: tp.topic.clone(),
                partition: tp.partition,
            };
            let value = OffsetValue::V1 {
                offset: committed.offset,
                metadata: committed.metadata.clone(),
                commit_timestamp_ms: now,
            };
            builder.append(now, Some(&encode(&key)?), Some(&encode(&value)?), &[]);
        }
        // Active before the records are written: an expiry that looks at the group after
        // this sees it active, and one before it is written before these records.
        self.with_group(group, |entry| entry.active_ms = now);
        let appended = self.append(group, builder)?;
        self.with_group(group, |entry| {
            for (tp, committed) in offsets {
                entry.offsets.insert(tp.clone(), committed.clone());
            }
        });
        Ok(Some(appended))
    }

    /// Writes a snapshot of the group's membership if it changed since the last one. Blocking.
    pub fn persist_if_changed(&self, group_id: &str) -> crate::Result<()> {
        let snapshot = {
            let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            let persisted = self.persisted.lock().unwrap_or_else(|e| e.into_inner());
            match groups.get(group_id) {
                Some(entry) if persisted.get(group_id) != Some(&entry.version()) => {
                    (entry.version(), entry.snapshot())
                }
                _ => return Ok(()),
            }
        };
        let (version, snapshot) = snapshot;
        let mut builder = RecordBatchBuilder::new();
        let key = RecordKey::GroupMetadata {
            group: group_id.to_string(),
        };
        builder.append(
            now_ms(),
            Some(&encode(&key)?),
            Some(&encode(&snapshot)?),
            &[],
        );
        self.append(group_id, builder)?;
        if let Some(entry) = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(group_id)
        {
            entry.active_ms = now_ms();
        }
        let mut persisted = self.persisted.lock().unwrap_or_else(|e| e.into_inner());
        let entry = persisted.entry(group_id.to_string()).or_insert(0);
        *entry = (*entry).max(version);
        Ok(())
    }

    /// Appends tombstones for `group` and forgets it: one per committed offset and one for its
    /// membership (so compaction removes every record of the group), then the group's own
    /// deletion record (a tombstone too). Blocking.
    pub fn delete_group(&self, group: &str) -> crate::Result<()> {
        let committed: Vec<TopicPartition> = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(group)
            .map(|entry| entry.offsets.keys().cloned().collect())
            .unwrap_or_default();
        self.append(group, deletion(group, committed)?)?;
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(group);
        Ok(())
    }

    /// Deletes (as [`Coordinator::delete_group`]) the empty groups whose last commit or
    /// membership change is `offsets_retention_ms` old, at most `EXPIRIES_PER_TICK` at a
    /// time; returns the ones deleted. Each is checked and deleted under the groups lock, so
    /// a commit or join either comes first (and the group stays) or after (on a new group).
    /// Blocking (appends).
    pub fn expire(&self, now_ms: i64) -> Vec<String> {
        if self.offsets_retention_ms <= 0 {
            return Vec::new();
        }
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let due: Vec<String> = groups
            .iter()
            .filter(|(_, entry)| !entry.offsets.is_empty())
            .filter(|(_, entry)| entry.expired(now_ms, self.offsets_retention_ms))
            .map(|(id, _)| id.clone())
            .take(EXPIRIES_PER_TICK)
            .collect();
        let mut expired = Vec::new();
        for id in due {
            let committed = groups
                .get(&id)
                .map(|entry| entry.offsets.keys().cloned().collect())
                .unwrap_or_default();
            match deletion(&id, committed).and_then(|batch| self.append(&id, batch)) {
                Ok(_) => {
                    groups.remove(&id);
                    self.persisted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    expired.push(id);
                }
                Err(e) => {
                    tracing::warn!(group = %id, "expiring an empty group failed (retried next tick): {e}");
                }
            }
        }
        expired
    }

    /// Appends to the group's offsets partition as its leader; returns the leader epoch it was
    /// written at and the log end offset after it (what must be replicated before it counts).
    fn append(&self, group: &str, builder: RecordBatchBuilder) -> crate::Result<(u32, u64)> {
        let tp = TopicPartition::new(OFFSETS_TOPIC, partition_for(group));
        let log = self.logs.get(&tp).ok_or_else(|| {
            crate::Error::InvalidConfig(format!("{tp} is not hosted on this broker"))
        })?;
        let epoch = log.leader_epoch().ok_or_else(|| crate::Error::NotLeader {
            partition: tp.to_string(),
            epoch: 0,
        })?;
        log.append(&builder.build(), epoch)
            .map(|info| (epoch, info.last_offset + 1))
    }
}

/// The records that delete `group`: a tombstone per committed offset (`committed`) and for its
/// membership (so compaction removes every record of the group), then the group's own
/// deletion record (a tombstone too).
fn deletion(group: &str, committed: Vec<TopicPartition>) -> crate::Result<RecordBatchBuilder> {
    let mut builder = RecordBatchBuilder::new();
    let now = now_ms();
    for tp in committed {
        let key = RecordKey::Offset {
            group: group.to_string(),
            topic: tp.topic,
            partition: tp.partition,
        };
        builder.append(now, Some(&encode(&key)?), None, &[]);
    }
    let metadata = RecordKey::GroupMetadata {
        group: group.to_string(),
    };
    builder.append(now, Some(&encode(&metadata)?), None, &[]);
    builder.append(
        now,
        Some(&encode(&RecordKey::GroupDeleted {
            group: group.to_string(),
        })?),
        None,
        &[],
    );
    Ok(builder)
}

fn encode<T: Serialize>(value: &T) -> crate::Result<Vec<u8>> {
    postcard::to_allocvec(value)
        .map_err(|e| crate::Error::Controller(format!("encoding an offsets record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogConfig;

    /// A log manager holding every `__consumer_offsets` partition.
    fn offsets_logs(dir: &std::path::Path) -> Arc<LogManager> {
        let logs = Arc::new(LogManager::open(dir, LogConfig::default()).unwrap());
        for p in 0..OFFSETS_PARTITIONS {
            logs.get_or_create(&TopicPartition::new(OFFSETS_TOPIC, p), None, 0)
                .unwrap();
        }
        logs
    }

    #[test]
    fn offsets_survive_a_reload_and_deletion_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let logs = offsets_logs(dir.path());
        let coordinator = Coordinator::new(logs.clone(), 500);
        let tp = TopicPartition::new("orders", 3);
        coordinator
            .store_offsets(
                "g1",
                &[(
                    tp.clone(),
                    Committed {
                        offset: 42,
                        metadata: Some("m".into()),
                    },
                )],
            )
            .unwrap();
        coordinator
            .store_offsets(
                "g1",
                &[(
                    tp.clone(),
                    Committed {
                        offset: 43,
                        metadata: None,
                    },
                )],
            )
            .unwrap();
        coordinator
            .store_offsets(
                "g2",
                &[(
                    tp.clone(),
                    Committed {
                        offset: 7,
                        metadata: None,
                    },
                )],
            )
            .unwrap();
        coordinator.delete_group("g2").unwrap();

        let reloaded = Coordinator::new(logs, 500);
        for p in 0..OFFSETS_PARTITIONS {
            reloaded.ensure_loaded(p, 0).unwrap();
        }
        assert_eq!(
            reloaded.with_existing("g1", |e| e.offsets[&tp].clone()),
            Some(Committed {
                offset: 43,
                metadata: None
            })
        );
        assert!(
            reloaded.with_existing("g2", |_| ()).is_none(),
            "a deleted group stays deleted"
        );
        assert_eq!(reloaded.group_ids(), vec!["g1".to_string()]);
    }

    #[test]
    fn empty_groups_expire_after_the_retention_and_stay_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let logs = offsets_logs(dir.path());
        let coordinator = Coordinator::new(logs.clone(), 500).with_offsets_retention_ms(60_000);
        let tp = TopicPartition::new("orders", 0);
        let commit = |group: &str| {
            let committed = Committed {
                offset: 5,
                metadata: None,
            };
            coordinator
                .store_offsets(group, &[(tp.clone(), committed)])
                .unwrap();
        };
        for group in ["old", "new", "busy"] {
            commit(group);
        }
        // "busy" has a member: it never expires, however old its last commit.
        let topics = std::collections::BTreeMap::from([("orders".to_string(), 1)]);
        let join = crate::group::state::Heartbeat {
            subscriptions: Some(["orders".to_string()].into()),
            session_timeout_ms: 10_000,
            ..Default::default()
        };
        coordinator
            .with_group("busy", |e| e.group.heartbeat(join, 0, &topics))
            .unwrap();
        let now = now_ms();
        assert!(coordinator.expire(now).is_empty(), "nothing is due yet");
        for group in ["old", "busy"] {
            coordinator.with_group(group, |e| e.active_ms = now - 61_000);
        }
        assert_eq!(coordinator.expire(now), vec!["old".to_string()]);
        assert!(coordinator.with_existing("old", |_| ()).is_none());

        // Replayed, the deletion holds, and the others' activity comes from their records'
        // timestamps: a minute later "new" is due too.
        let reloaded = Coordinator::new(logs, 500).with_offsets_retention_ms(60_000);
        for p in 0..OFFSETS_PARTITIONS {
            reloaded.ensure_loaded(p, 0).unwrap();
        }
        assert!(reloaded.with_existing("old", |_| ()).is_none());
        assert!(reloaded.expire(now).is_empty());
        let mut later = reloaded.expire(now + 61_000);
        later.sort();
        assert_eq!(later, vec!["busy".to_string(), "new".to_string()]);
        assert!(reloaded.group_ids().is_empty());
    }

    #[test]
    fn membership_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let logs = offsets_logs(dir.path());
        let coordinator = Coordinator::new(logs.clone(), 500);
        let topics = std::collections::BTreeMap::from([("t".to_string(), 4)]);
        let join = crate::group::state::Heartbeat {
            subscriptions: Some(["t".to_string()].into()),
            session_timeout_ms: 10_000,
            ..Default::default()
        };
        let reply = coordinator
            .with_group("g", |e| e.group.heartbeat(join, 0, &topics))
            .unwrap();
        coordinator.persist_if_changed("g").unwrap();
        let epoch = coordinator.with_group("g", |e| e.group.epoch);

        let reloaded = Coordinator::new(logs, 500);
        reloaded.ensure_loaded(partition_for("g"), 0).unwrap();
        let (members, reloaded_epoch) = reloaded.with_group("g", |e| {
            (
                e.group.members.keys().cloned().collect::<Vec<_>>(),
                e.group.epoch,
            )
        });
        assert_eq!(members, vec![reply.member_id.clone()]);
        assert_eq!(reloaded_epoch, epoch);
        // The member carries on with its id and epoch, without rejoining.
        let beat = crate::group::state::Heartbeat {
            member_id: reply.member_id.clone(),
            member_epoch: reply.member_epoch,
            session_timeout_ms: 10_000,
            ..Default::default()
        };
        let again = reloaded
            .with_group("g", |e| e.group.heartbeat(beat, 100_000_000, &topics))
            .unwrap();
        assert_eq!(again.assignment, reply.assignment);
    }

    #[test]
    fn a_classic_group_survives_a_reload_at_its_generation() {
        use crate::group::classic::{ClassicState, Join, Sync};
        let dir = tempfile::tempdir().unwrap();
        let logs = offsets_logs(dir.path());
        let coordinator = Coordinator::new(logs.clone(), 500);
        let join = Join {
            client_id: "c".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), b"meta".to_vec())],
            ..Join::default()
        };
        let (mut rx, replies) = coordinator.with_group("k", |e| e.classic.join(join, 0, 0));
        replies.deliver();
        let joined = rx
            .try_recv()
            .expect("the only member completes the join at once");
        let (mut rx, replies) = coordinator.with_group("k", |e| {
            e.classic.sync(
                Sync {
                    member_id: joined.member_id.clone(),
                    generation: joined.generation,
                    assignments: vec![(joined.member_id.clone(), b"mine".to_vec())],
                    ..Sync::default()
                },
                1,
            )
        });
        coordinator.persist_if_changed("k").unwrap();
        replies.deliver();
        assert_eq!(rx.try_recv().unwrap().assignment, b"mine");
        assert!(coordinator.with_group("k", |e| e.is_classic()));

        let reloaded = Coordinator::new(logs, 500);
        reloaded.ensure_loaded(partition_for("k"), 0).unwrap();
        reloaded.with_group("k", |e| {
            assert!(e.is_classic() && e.group.members.is_empty());
            assert_eq!(e.classic.state, ClassicState::Stable);
            assert_eq!(e.classic.generation, joined.generation);
            assert_eq!(
                e.classic
                    .heartbeat(&joined.member_id, None, joined.generation, 5),
                ErrorCode::NONE,
                "the member carries on without a rebalance"
            );
        });
        assert_eq!(reloaded.group_ids(), vec!["k".to_string()]);
    }

    #[test]
    fn groups_that_do_not_exist_are_forgotten_at_the_next_tick() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = Coordinator::new(offsets_logs(dir.path()), 500);
        // Looking up unknown groups creates entries; none of them exists.
        for i in 0..1000 {
            coordinator.with_group(&format!("probe-{i}"), |entry| assert!(!entry.exists()));
        }
        coordinator
            .store_offsets(
                "kept",
                &[(
                    TopicPartition::new("orders", 0),
                    Committed {
                        offset: 1,
                        metadata: None,
                    },
                )],
            )
            .unwrap();
        assert_eq!(coordinator.held(), 1001);
        coordinator.tick(now_ms());
        assert_eq!(coordinator.held(), 1, "only the group with offsets is held");
        assert_eq!(coordinator.group_ids(), vec!["kept".to_string()]);
    }

    #[test]
    fn the_partition_for_a_group_is_stable() {
        assert_eq!(
            partition_for("orders-service"),
            partition_for("orders-service")
        );
        let used: std::collections::HashSet<u32> = (0..100)
            .map(|i| partition_for(&format!("group-{i}")))
            .collect();
        assert_eq!(used.len(), OFFSETS_PARTITIONS as usize);
    }
}
