//! `LogManager`: the broker's data directory and every partition log in it.
//!
//! Layout: `<data_dir>/<topic>-<partition>/` per partition (topic names never contain `/`, and the
//! partition number is the text after the last `-`), plus `<data_dir>/.lock`, held with an
//! exclusive `flock` for the manager's lifetime so two brokers can never write the same logs,
//! and `<data_dir>/meta.properties` (see `meta`), checked before any log is opened.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use crate::error::{Error, IoContext, Result};
use crate::log::cleaner::CleanerConfig;
use crate::log::meta::{self, DirMeta};
use crate::log::{Log, LogConfig};

/// Identifies a partition.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    /// The directory name, `<topic>-<partition>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    /// Parses a directory name; `None` if it is not one.
    pub fn from_dir_name(name: &str) -> Option<TopicPartition> {
        let (topic, partition) = name.rsplit_once('-')?;
        if topic.is_empty() || topic.starts_with('.') {
            return None;
        }
        Some(TopicPartition::new(topic, partition.parse().ok()?))
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// One partition's log behind its own lock, plus watches of its log end offset (follower
/// fetches wait on it) and high watermark (consumer fetches and acks=all produces wait on it),
/// and the leader epoch this broker appends with while it leads the partition.
pub struct PartitionLog {
    tp: TopicPartition,
    log: Mutex<Log>,
    end_offset: watch::Sender<u64>,
    /// [`Log::recent_from`] as of the last time the lock was released.
    recent_from: std::sync::atomic::AtomicU64,
    /// Set by the replica manager; also notified (unchanged) when leadership changes, so
    /// waiters re-check their conditions.
    high_watermark: watch::Sender<u64>,
    /// The leader epoch this broker appends with, or `NOT_LEADING`. Checked under the log
    /// lock by every leader append, so a write admitted just before this broker stopped
    /// leading (or moved to a newer epoch) is refused instead of landing with a stale epoch.
    leading_epoch: std::sync::atomic::AtomicU64,
    /// Whether the log has its topic's config. Logs found on disk at start get the broker
    /// defaults until the metadata gives theirs (`get_or_create`); until then the tick rolls
    /// and deletes nothing (a topic that keeps data longer than the broker default, like
    /// `__consumer_offsets`, would lose it to the default's retention at every start).
    configured: std::sync::atomic::AtomicBool,
    /// The id of the topic incarnation this log belongs to (`topic-id` in its directory; 0:
    /// unknown, a log from before topic ids).
    topic_id: std::sync::atomic::AtomicU64,
}

/// How a caller takes a partition's log lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locking {
    /// Waits for it: blocking, so from a blocking thread.
    Wait,
    /// Only if it is free now; the caller gives up (`None`) when it is held. From an async
    /// task, for work that touches only memory or pages just written.
    IfFree,
}

/// File in a partition directory naming the topic id the log belongs to.
pub const TOPIC_ID_FILE: &str = "topic-id";

fn read_topic_id(dir: &Path) -> u64 {
    meta::read_numbered(dir, TOPIC_ID_FILE)
}

fn write_topic_id(dir: &Path, id: u64) -> Result<()> {
    meta::write_durably(dir, TOPIC_ID_FILE, format!("1 {id}\n").as_bytes())
}

const NOT_LEADING: u64 = u64::MAX;

impl PartitionLog {
    pub(crate) fn new(tp: TopicPartition, log: Log) -> Arc<PartitionLog> {
        let (end_offset, _) = watch::channel(log.log_end_offset());
        let (high_watermark, _) = watch::channel(0);
        let epoch = log.last_epoch().unwrap_or(0);
        let recent_from = std::sync::atomic::AtomicU64::new(log.recent_from());
        Arc::new(PartitionLog {
            tp,
            log: Mutex::new(log),
            end_offset,
            recent_from,
            high_watermark,
            leading_epoch: std::sync::atomic::AtomicU64::new(u64::from(epoch)),
            configured: std::sync::atomic::AtomicBool::new(false),
            topic_id: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The high watermark: every offset below it is on every in-sync replica.
    pub fn high_watermark(&self) -> u64 {
        *self.high_watermark.borrow()
    }

    /// Sets the high watermark and wakes its waiters (even if unchanged).
    pub fn set_high_watermark(&self, hw: u64) {
        self.high_watermark.send_modify(|current| *current = hw);
    }

    /// A receiver that changes whenever the high watermark does (or leadership changes).
    pub fn subscribe_high_watermark(&self) -> watch::Receiver<u64> {
        self.high_watermark.subscribe()
    }

    /// The epoch this broker stamps on records it appends as leader, or `None` while it
    /// does not lead. A log not yet given a role (no replication; unit tests) leads at its
    /// last epoch.
    pub fn leader_epoch(&self) -> Option<u32> {
        let epoch = self
            .leading_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        u32::try_from(epoch).ok()
    }

    /// Leading at `epoch`, or not leading (`None`): set by the replica manager on every role
    /// change.
    pub fn set_leader_epoch(&self, epoch: Option<u32>) {
        self.leading_epoch.store(
            epoch.map_or(NOT_LEADING, u64::from),
            std::sync::atomic::Ordering::Release,
        );
    }

    /// The topic id this log belongs to (0: unknown).
    pub fn topic_id(&self) -> u64 {
        self.topic_id.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn topic_partition(&self) -> &TopicPartition {
        &self.tp
    }

    /// Runs `f` with the log locked. Blocking (file I/O): call from a blocking thread.
    pub fn with_log<T>(&self, f: impl FnOnce(&mut Log) -> Result<T>) -> Result<T> {
        self.locked(self.log.lock().unwrap_or_else(|e| e.into_inner()), f)
    }

    /// Runs `f` under `log`'s guard, then publishes the log end if it moved (and where its
    /// recent appends begin).
    fn locked<T>(
        &self,
        mut log: std::sync::MutexGuard<'_, Log>,
        f: impl FnOnce(&mut Log) -> Result<T>,
    ) -> Result<T> {
        let result = f(&mut log);
        self.recent_from
            .store(log.recent_from(), std::sync::atomic::Ordering::Release);
        self.end_offset
            .send_if_modified(|end| std::mem::replace(end, log.log_end_offset()) != *end);
        result
    }

    /// [`Self::with_log`] or [`Self::try_with_log`], as `locking` says (`None` only from the
    /// latter, when the lock is held).
    pub fn with_log_as<T>(
        &self,
        locking: Locking,
        f: impl FnOnce(&mut Log) -> Result<T>,
    ) -> Option<Result<T>> {
        match locking {
            Locking::Wait => Some(self.with_log(f)),
            Locking::IfFree => self.try_with_log(f),
        }
    }

    /// [`Self::with_log`] if the lock is free now, `None` if someone holds it (an append, maybe
    /// across an fdatasync). For short reads of in-memory state from an async task: the
    /// caller falls back to [`Self::with_log`] on the blocking pool, and when the lock is free
    /// saves that thread hop (a wake-up and a context switch each way).
    pub fn try_with_log<T>(&self, f: impl FnOnce(&mut Log) -> Result<T>) -> Option<Result<T>> {
        let log = match self.log.try_lock() {
            Ok(log) => log,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(self.locked(log, f))
    }

    /// Appends as leader at `leader_epoch` (see [`Log::append`]) and wakes fetchers waiting
    /// for new data. Refused with [`crate::Error::NotLeader`] unless this broker still leads
    /// at that epoch (checked under the log lock).
    pub fn append(
        &self,
        batches: &bytes::Bytes,
        leader_epoch: u32,
    ) -> Result<crate::log::AppendInfo> {
        self.with_log(|log| {
            if self.leader_epoch() != Some(leader_epoch) {
                return Err(crate::Error::NotLeader {
                    partition: self.tp.to_string(),
                    epoch: leader_epoch,
                });
            }
            log.append(batches, leader_epoch as i32)
        })
    }

    /// [`Self::append`] on the caller's thread, when it costs no wait: the lock is free and
    /// the append only writes into the page cache ([`Log::append_in_page_cache`]); with the
    /// log start offset after it. `None` (nothing written) otherwise: the caller appends on
    /// the blocking pool. Saves a produce request the trip there and back (a futex wake-up and
    /// a context switch each way).
    pub fn try_append_in_page_cache(
        &self,
        batches: &bytes::Bytes,
        leader_epoch: u32,
    ) -> Option<Result<(crate::log::AppendInfo, u64)>> {
        self.try_with_log(|log| {
            if self.leader_epoch() != Some(leader_epoch) {
                return Err(crate::Error::NotLeader {
                    partition: self.tp.to_string(),
                    epoch: leader_epoch,
                });
            }
            Ok(log
                .append_in_page_cache(batches, leader_epoch as i32)?
                .map(|info| (info, log.log_start_offset())))
        })
        .and_then(Result::transpose)
    }

    /// The log end offset as last published (cheap, no lock).
    pub fn log_end_offset(&self) -> u64 {
        *self.end_offset.borrow()
    }

    /// [`Log::recent_from`] as last published (cheap, no lock): reading from here on touches
    /// only pages this process wrote lately. A hint for where a read may run, not a bound:
    /// a value read while the lock is held is one operation old, and what it names was
    /// still written lately.
    pub fn recent_from(&self) -> u64 {
        self.recent_from.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A receiver that changes whenever the log end offset does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.end_offset.subscribe()
    }
}

/// One partition log's figures for metrics ([`LogManager::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    pub size_bytes: u64,
    pub segments: usize,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub log_end_offset: u64,
    /// Invalid tails cut when the log was last opened, and their bytes.
    pub recovery_truncations: usize,
    pub recovery_truncated_bytes: u64,
}

/// Owns the data directory lock and the open logs. Cheap to share (`Arc`); each partition has
/// its own lock, so partitions never wait on each other.
pub struct LogManager {
    data_dir: PathBuf,
    default_config: LogConfig,
    logs: RwLock<BTreeMap<TopicPartition, Arc<PartitionLog>>>,
    meta: Mutex<DirMeta>,
    _lock: fs::File,
}

impl LogManager {
    /// Locks `data_dir` (creating it) for node 1 and opens, recovering, every partition log
    /// found in it.
    pub fn open(data_dir: &Path, default_config: LogConfig) -> Result<LogManager> {
        let manager = LogManager::open_unloaded(data_dir, default_config, 1, None)?;
        manager.load()?;
        Ok(manager)
    }

    /// Locks `data_dir` (creating it) and checks its metadata for node `node_id` (and cluster
    /// `cluster_id`, when given), without opening any log: [`LogManager::load`] does that.
    pub fn open_unloaded(
        data_dir: &Path,
        default_config: LogConfig,
        node_id: u64,
        cluster_id: Option<&str>,
    ) -> Result<LogManager> {
        default_config.validate()?;
        fs::create_dir_all(data_dir).context("create data directory", data_dir)?;
        // Refusals write nothing, not even the lock file; initializing happens under the lock.
        meta::inspect(data_dir, node_id, cluster_id)?;
        let lock_path = data_dir.join(".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .context("open lock file", &lock_path)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                Error::io(
                    "cannot lock the data directory (is another rill-broker using it?): lock file",
                    &lock_path,
                    e.into(),
                )
            },
        )?;
        let meta = meta::check_or_init(data_dir, node_id, cluster_id)?;
        Ok(LogManager {
            data_dir: data_dir.to_owned(),
            default_config,
            logs: RwLock::new(BTreeMap::new()),
            meta: Mutex::new(meta),
            _lock: lock,
        })
    }

    /// The cluster this directory belongs to, once known.
    pub fn cluster_id(&self) -> Option<String> {
        self.meta
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cluster_id
            .clone()
    }

    /// Records that this directory belongs to `cluster_id`: refused if it belongs to another.
    pub fn record_cluster_id(&self, cluster_id: &str) -> Result<()> {
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        match &meta.cluster_id {
            Some(stored) if stored == cluster_id => Ok(()),
            Some(stored) => Err(Error::DataDirectory {
                path: self.data_dir.clone(),
                reason: meta::other_cluster(stored, cluster_id),
            }),
            None => meta::record_cluster_id(&self.data_dir, &mut meta, cluster_id),
        }
    }

    /// Opens, recovering, every partition log in the directory that is not open yet.
    pub fn load(&self) -> Result<()> {
        let data_dir = self.data_dir.as_path();
        let default_config = &self.default_config;
        let mut logs = BTreeMap::new();
        for entry in fs::read_dir(data_dir).context("list data directory", data_dir)? {
            let entry = entry.context("list data directory", data_dir)?;
            let is_dir = entry.file_type().context("stat", &entry.path())?.is_dir();
            let Some(tp) = entry
                .file_name()
                .to_str()
                .and_then(TopicPartition::from_dir_name)
            else {
                continue;
            };
            if !is_dir || self.get(&tp).is_some() {
                continue;
            }
            let log = Log::open(&entry.path(), default_config.clone())?;
            let topic_id = read_topic_id(&entry.path());
            tracing::info!(partition = %tp, topic_id, start = log.log_start_offset(), end = log.log_end_offset(), segments = log.segment_count(), "opened partition log");
            let partition = PartitionLog::new(tp.clone(), log);
            partition
                .topic_id
                .store(topic_id, std::sync::atomic::Ordering::Release);
            logs.insert(tp, partition);
        }
        let mut open = self.write_logs();
        for (tp, partition) in logs {
            open.entry(tp).or_insert(partition);
        }
        Ok(())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn default_config(&self) -> &LogConfig {
        &self.default_config
    }

    fn read_logs(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<TopicPartition, Arc<PartitionLog>>> {
        self.logs.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_logs(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<TopicPartition, Arc<PartitionLog>>> {
        self.logs.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Each partition log here with its size on disk (segments and their indexes), segment
    /// count, offsets and what its last open repaired. Takes each log's lock in turn: blocking.
    pub fn stats(&self) -> Vec<(TopicPartition, LogStats)> {
        let logs: Vec<(TopicPartition, Arc<PartitionLog>)> = self
            .read_logs()
            .iter()
            .map(|(tp, log)| (tp.clone(), log.clone()))
            .collect();
        logs.into_iter()
            .map(|(tp, log)| {
                let (size_bytes, segments, log_start_offset, truncations, truncated_bytes) = log
                    .with_log(|l| {
                        let report = l.recovery_report();
                        Ok((
                            l.size_bytes(),
                            l.segment_count(),
                            l.log_start_offset(),
                            report.truncations.len(),
                            report.truncated_bytes,
                        ))
                    })
                    .unwrap_or_default();
                let stats = LogStats {
                    size_bytes,
                    segments,
                    log_start_offset,
                    high_watermark: log.high_watermark(),
                    log_end_offset: log.log_end_offset(),
                    recovery_truncations: truncations,
                    recovery_truncated_bytes: truncated_bytes,
                };
                (tp, stats)
            })
            .collect()
    }

    /// Partitions with a log, in order.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        self.read_logs().keys().cloned().collect()
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<PartitionLog>> {
        self.read_logs().get(tp).cloned()
    }

    /// Opens (creating if needed) the log of `tp` with `config` (or the default); an existing
    /// log gets `config` applied. With a `topic_id` (not 0), a local log of another incarnation
    /// of the topic (deleted and created again while this broker did not see it) is deleted
    /// and a new one created: an old log is never served as the new topic's. A log without an
    /// id (older versions) takes the id. Blocking (file I/O).
    pub fn get_or_create(
        &self,
        tp: &TopicPartition,
        config: Option<LogConfig>,
        topic_id: u64,
    ) -> Result<Arc<PartitionLog>> {
        if let Some(existing) = self.get(tp) {
            let stored = existing.topic_id();
            if topic_id != 0 && stored != 0 && stored != topic_id {
                tracing::warn!(partition = %tp, old_topic_id = stored, topic_id, "the local log belongs to an earlier topic of this name (deleted while this broker did not see it): deleting it and starting the new topic's log empty");
                self.delete(tp)?;
                return self.get_or_create(tp, config, topic_id);
            }
            if topic_id != 0 && stored == 0 {
                write_topic_id(&self.data_dir.join(tp.dir_name()), topic_id)?;
                existing
                    .topic_id
                    .store(topic_id, std::sync::atomic::Ordering::Release);
            }
            if let Some(config) = config {
                existing.with_log(|log| {
                    if *log.config() != config {
                        log.set_config(config)
                    } else {
                        Ok(())
                    }
                })?;
                existing
                    .configured
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            return Ok(existing);
        }
        if tp.topic.contains('/')
            || TopicPartition::from_dir_name(&tp.dir_name()).as_ref() != Some(tp)
        {
            return Err(Error::InvalidConfig(format!(
                "{tp} cannot be a partition directory name"
            )));
        }
        let mut logs = self.write_logs();
        if let Some(existing) = logs.get(tp) {
            return Ok(existing.clone());
        }
        let log = Log::open(
            &self.data_dir.join(tp.dir_name()),
            config.unwrap_or_else(|| self.default_config.clone()),
        )?;
        if topic_id != 0 {
            write_topic_id(&self.data_dir.join(tp.dir_name()), topic_id)?;
        }
        let partition = PartitionLog::new(tp.clone(), log);
        partition
            .configured
            .store(true, std::sync::atomic::Ordering::Release);
        partition
            .topic_id
            .store(topic_id, std::sync::atomic::Ordering::Release);
        logs.insert(tp.clone(), partition.clone());
        tracing::info!(partition = %tp, "created partition log");
        Ok(partition)
    }

    /// Deletes a partition's log and its directory. Blocking (file I/O).
    pub fn delete(&self, tp: &TopicPartition) -> Result<bool> {
        let Some(partition) = self.write_logs().remove(tp) else {
            return Ok(false);
        };
        let dir = self.data_dir.join(tp.dir_name());
        // Readers may still hold the Arc; the files go now, their mappings stay valid.
        drop(partition);
        fs::remove_dir_all(&dir).context("delete partition directory", &dir)?;
        tracing::info!(partition = %tp, "deleted partition log");
        Ok(true)
    }

    /// Flushes every log whose interval flush is due (the fdatasync runs with the partition
    /// unlocked, so appends continue meanwhile); rolls by age; applies retention. Blocking.
    /// One partition's failure (EIO, ENOSPC, EMFILE) never stops the others: each is handled
    /// on its own, and the errors are returned together, one per failed partition.
    pub fn tick(&self, now_ms: i64) -> Vec<(TopicPartition, Error)> {
        let partitions: Vec<Arc<PartitionLog>> = self.read_logs().values().cloned().collect();
        let mut failures = Vec::new();
        for partition in partitions {
            if let Err(e) = Self::tick_one(&partition, now_ms) {
                failures.push((partition.topic_partition().clone(), e));
            }
        }
        failures
    }

    fn tick_one(partition: &PartitionLog, now_ms: i64) -> Result<()> {
        if let Some(pending) = partition.with_log(|log| log.begin_flush_if_due())? {
            match pending.sync() {
                Ok(end_offset) => partition.with_log(|log| {
                    log.flush_completed(end_offset);
                    Ok(())
                })?,
                // Never retried as if harmless: the log goes offline (see `Log::flush_failed`).
                Err(e) => {
                    partition.with_log(|log| {
                        log.flush_failed(&e);
                        Ok(())
                    })?;
                    return Err(e);
                }
            }
        }
        if !partition
            .configured
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        partition.with_log(|log| {
            log.expire_producers(now_ms);
            log.roll_if_due(now_ms)?;
            log.enforce_retention(now_ms).map(|_| ())
        })
    }

    /// One compaction round: a cleaning pass over every configured, compacted partition that
    /// is due (see `cleaner`), each only below its high watermark. Blocking. `stop` ends the
    /// round early; one partition's failure never stops the others.
    pub fn clean(
        &self,
        cleaner: &CleanerConfig,
        stop: &std::sync::atomic::AtomicBool,
        now_ms: i64,
    ) -> Vec<(TopicPartition, Error)> {
        let partitions: Vec<Arc<PartitionLog>> = self.read_logs().values().cloned().collect();
        let mut failures = Vec::new();
        for partition in partitions {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if !partition
                .configured
                .load(std::sync::atomic::Ordering::Acquire)
            {
                continue;
            }
            let upper = partition.high_watermark().min(partition.log_end_offset());
            match crate::log::cleaner::clean(&partition, upper, now_ms, cleaner, stop) {
                Ok(_) => {}
                Err(_) if stop.load(std::sync::atomic::Ordering::Relaxed) => break,
                Err(e) => failures.push((partition.topic_partition().clone(), e)),
            }
        }
        failures
    }

    /// Flushes and closes every log (clean shutdown). Every log is flushed even if one fails.
    pub fn close(&self) -> Result<()> {
        let mut first_error = None;
        for (tp, partition) in std::mem::take(&mut *self.write_logs()) {
            let result = match Arc::try_unwrap(partition) {
                Ok(partition) => partition
                    .log
                    .into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .close(),
                // Still referenced (the replica manager, an in-flight request): flush it and
                // snapshot its producer state; the drop will not lose data.
                Err(shared) => shared.with_log(|log| {
                    log.flush()?;
                    log.snapshot_producers(true);
                    Ok(())
                }),
            };
            if let Err(e) = result {
                tracing::error!(partition = %tp, "closing log failed: {e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_round_trip() {
        let tp = TopicPartition::new("orders-eu", 12);
        assert_eq!(tp.dir_name(), "orders-eu-12");
        assert_eq!(TopicPartition::from_dir_name("orders-eu-12"), Some(tp));
        assert_eq!(TopicPartition::from_dir_name("orders"), None);
        assert_eq!(TopicPartition::from_dir_name("-3"), None);
        assert_eq!(TopicPartition::from_dir_name("x-y"), None);
    }

    #[test]
    fn try_with_log_runs_only_while_the_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let manager = LogManager::open(dir.path(), LogConfig::default()).unwrap();
        let log = manager
            .get_or_create(&TopicPartition::new("t", 0), None, 1)
            .unwrap();
        let mut batch = rill_protocol::batch::RecordBatchBuilder::new();
        batch.append(0, None, Some(b"v"), &[]);
        log.append(&batch.build(), 0).unwrap();
        let end = |l: &mut Log| Ok(l.log_end_offset());
        assert_eq!(log.try_with_log(end).unwrap().unwrap(), 1);
        let held = log.log.lock().unwrap();
        assert!(
            log.try_with_log(end).is_none(),
            "ran while the lock was held"
        );
        drop(held);
        assert_eq!(log.try_with_log(end).unwrap().unwrap(), 1);
    }

    #[test]
    fn a_log_of_an_earlier_topic_of_the_same_name_is_replaced_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let tp = TopicPartition::new("t", 0);
        let mut batch = rill_protocol::batch::RecordBatchBuilder::new();
        batch.append(0, None, Some(b"old"), &[]);
        {
            let manager = LogManager::open(dir.path(), LogConfig::default()).unwrap();
            let old = manager.get_or_create(&tp, None, 7).unwrap();
            old.append(&batch.build(), 0).unwrap();
            manager.close().unwrap();
        }
        let manager = LogManager::open(dir.path(), LogConfig::default()).unwrap();
        // The same incarnation keeps its data across a restart.
        let same = manager.get_or_create(&tp, None, 7).unwrap();
        assert_eq!((same.topic_id(), same.log_end_offset()), (7, 1));
        // Another incarnation (deleted and created again meanwhile) starts empty.
        let new = manager.get_or_create(&tp, None, 42).unwrap();
        assert_eq!((new.topic_id(), new.log_end_offset()), (42, 0));
        drop(manager);
        let manager = LogManager::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(manager.get(&tp).unwrap().topic_id(), 42);
        // A log from before topic ids takes the id it is given.
        let legacy = TopicPartition::new("legacy", 0);
        manager.get_or_create(&legacy, None, 0).unwrap();
        assert_eq!(
            manager.get_or_create(&legacy, None, 9).unwrap().topic_id(),
            9
        );
    }

    #[test]
    fn reopens_partitions_and_locks_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let manager = LogManager::open(dir.path(), LogConfig::default()).unwrap();
        assert!(
            LogManager::open(dir.path(), LogConfig::default()).is_err(),
            "a second manager cannot lock the directory"
        );
        let tp = TopicPartition::new("t", 0);
        let mut batch = rill_protocol::batch::RecordBatchBuilder::new();
        batch.append(0, None, Some(b"v"), &[]);
        let partition = manager.get_or_create(&tp, None, 0).unwrap();
        let mut end = partition.subscribe();
        partition.append(&batch.build(), 0).unwrap();
        assert!(
            end.has_changed().unwrap(),
            "appends wake fetchers waiting on the log end"
        );
        assert_eq!(*end.borrow_and_update(), 1);
        drop((partition, end));
        manager.close().unwrap();
        drop(manager);
        let manager = LogManager::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(manager.partitions(), vec![tp.clone()]);
        assert_eq!(manager.get(&tp).unwrap().log_end_offset(), 1);
        assert!(manager.delete(&tp).unwrap());
        assert!(!dir.path().join("t-0").exists());
    }
}
