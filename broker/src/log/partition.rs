//! `Log`: one partition's ordered set of segments, and every operation on it.
//!
//! Owns the partition directory. Invariants: segments are keyed by base offset and the last one
//! is the only active (writable) segment; offsets are assigned densely from the log end offset
//! and never reused unless `truncate_to` removed them; the recovery point file never names an
//! offset beyond the start of the active segment, nor beyond the first sealed segment whose
//! files are not yet synced (a roll leaves those fsyncs to the next flush, off the log lock):
//! every segment before it was trimmed when it was sealed and fsynced since.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rill_protocol::batch::{batches, set_base_offset, set_leader_epoch, RecordBatch};
use rill_protocol::ProtocolError;

use crate::error::{Error, IoContext, Result};
use crate::log::cleaner::{CleanableSegment, CleaningView};
use crate::log::config::{FlushPolicy, LogConfig};
use crate::log::epochs::EpochCache;
use crate::log::producers::{self, ProducerBatch, ProducerEntry, ProducerStates, Verdict};
use crate::log::segment::{
    header_max_timestamp, timed_sync, AppendBatch, CleanedSegment, Durable, SealedFiles, Segment,
};

/// Name of the recovery point checkpoint in a partition directory.
pub const RECOVERY_POINT_FILE: &str = "recovery-point";

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub last_offset: u64,
    pub max_timestamp: i64,
    /// Batches written; 0 for a repeat of an idempotent producer's batch (answered with its
    /// original offsets, nothing written).
    pub batches: usize,
}

/// What opening a log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Segments whose data was scanned batch by batch (the active one, and any after the recovery point).
    pub scanned_segments: usize,
    /// Bytes of invalid (non-zero) data cut from segment tails.
    pub truncated_bytes: u64,
    /// One line per cut: segment, position and reason.
    pub truncations: Vec<String>,
    /// Segments whose index files were rebuilt from their data.
    pub rebuilt_indexes: usize,
    /// Segments deleted because an earlier segment was cut short.
    pub deleted_segments: usize,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
}

/// A flush in progress, detached from the log's lock: the files of segments sealed since the
/// last flush, the directory that gained their successors, and (an `interval` flush that is
/// due) the active segment. See [`Log::begin_flush_if_due`].
pub struct PendingFlush {
    active: Option<(fs::File, PathBuf)>,
    sealed: Vec<SealedFiles>,
    dir: Option<PathBuf>,
    done: Flushed,
}

/// What a [`PendingFlush`] made durable, for [`Log::flush_completed`].
#[derive(Debug, Clone, Copy)]
pub struct Flushed {
    /// The log end when the flush began, if it synced the active segment.
    end_offset: Option<u64>,
    /// The active segment's base when the flush began: every offset before it is durable.
    sealed_through: u64,
    /// Rolls counted when the flush began: their sealed segments are synced, and the
    /// directory too if `dir_synced`.
    rolls: u64,
    dir_synced: bool,
    /// The log's layout when the flush began (a truncation meanwhile voids `end_offset`).
    layout_version: u64,
}

impl PendingFlush {
    /// fsyncs the sealed segments' files, the active segment's data and the directory, in that
    /// order; returns what is now durable.
    pub fn sync(self) -> Result<Flushed> {
        for sealed in &self.sealed {
            sealed.sync()?;
        }
        if let Some((file, path)) = &self.active {
            timed_sync(file, path, Durable::Data)?;
        }
        if let Some(dir) = &self.dir {
            sync_dir(dir)?;
        }
        Ok(self.done)
    }
}

/// A sealed segment whose files a flush has yet to sync (see [`SealedFiles`]).
struct Unsynced {
    /// The roll that sealed it (the log's `rolls` then).
    roll: u64,
    base_offset: u64,
    files: SealedFiles,
}

/// Bytes of the active segment between two marks of [`Recent`]: the last 4-8 MiB this process
/// wrote count as recent.
pub(crate) const RECENT_STEP_BYTES: u64 = 4 << 20;

/// Where the active segment's recent appends begin: two marks (first offset, position), at
/// least [`RECENT_STEP_BYTES`] apart; everything from `older` on was written by this process
/// within the last two steps' worth of appends, so it is in the page cache (it was just
/// written, and the kernel evicts least recently used pages first).
#[derive(Debug, Clone, Copy)]
struct Recent {
    segment_base: u64,
    older: (u64, u64),
    newer: (u64, u64),
}

/// A partition log. See the module docs.
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    segments: BTreeMap<u64, Segment>,
    /// Sealed segments with open mappings, least recently used first.
    open_sealed: VecDeque<u64>,
    flushed_offset: u64,
    last_flush: Instant,
    recovery: RecoveryReport,
    /// Leader epoch -> first offset (see `epochs`).
    epochs: EpochCache,
    /// Set when an fdatasync failed: the kernel may have dropped dirty pages it could not
    /// write, so what the page cache shows is no longer what is on disk, and a later fsync
    /// that succeeds would falsely claim it is (PostgreSQL's "fsyncgate"). The log then refuses
    /// every append and read until the broker restarts and recovery re-verifies the data from
    /// the last good recovery point.
    failed: Option<String>,
    /// Idempotent producers' sequences (see `producers`).
    producers: ProducerStates,
    /// Bumped whenever segments are removed or rewritten other than by appending and rolling
    /// (retention, truncation, reset, compaction): the cleaner installs what it wrote only if
    /// the segments it read are still the log's.
    layout_version: u64,
    /// Compaction has cleaned every offset below this (`cleaner-checkpoint`); the log is
    /// *dirty* from here.
    cleaned_to: u64,
    /// Rolls since the log opened.
    rolls: u64,
    /// Segments sealed by rolls and not yet synced, oldest first: the next flush syncs them off
    /// the lock. The recovery point stays at or before the first.
    unsynced: Vec<Unsynced>,
    /// The directory was last synced after this many rolls; while it is behind `rolls`, the
    /// newest segments' entries may not be durable yet.
    dir_synced_rolls: u64,
    /// The active segment's recent appends (`None` until the first append after an open,
    /// roll, truncation or reset): see [`Log::recent_from`].
    recent: Option<Recent>,
}

/// How an append sets offsets and leader epochs.
#[derive(Debug, Clone, Copy)]
enum Stamp {
    /// Leader: assign offsets from the log end and stamp this epoch.
    Leader(i32),
    /// Follower: keep the leader's offsets and epochs (they must continue the log).
    Replica,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds on a monotonic clock (since this process first asked): for timeouts, which
/// must not jump when the wall clock is set (a backward jump would stop session expiry, a
/// forward one expire every member at once). Not comparable across processes.
pub fn monotonic_ms() -> i64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX)
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering it: see docs/STORAGE.md, "Recovery".
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log> {
        config.validate()?;
        if !dir.exists() {
            fs::create_dir_all(dir).context("create log directory", dir)?;
            // The new directory's entry is durable only once its parent is synced.
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        crate::log::segment::finish_swaps(dir)?;
        let bases = list_segments(dir)?;
        let recovery_point = read_recovery_point(dir);
        // A log that was ever compacted (or replicated a compacted leader) may skip offsets
        // between batches, also if its topic is no longer compacted: scans allow gaps then.
        let config_now = config;
        let config = if dir.join(CLEANER_CHECKPOINT_FILE).exists() {
            LogConfig {
                cleanup_policy: crate::log::CleanupPolicy {
                    compact: true,
                    ..config_now.cleanup_policy
                },
                ..config_now.clone()
            }
        } else {
            config_now.clone()
        };
        // Trust sealed segments wholly before the one holding the recovery point; scan the rest.
        let first_scanned = bases
            .partition_point(|b| *b <= recovery_point)
            .saturating_sub(1);
        let mut report = RecoveryReport::default();
        let mut segments = BTreeMap::new();
        for (i, &base) in bases.iter().enumerate() {
            let last = i + 1 == bases.len();
            let loaded = if last {
                Segment::recover(dir, base, &config, true)?
            } else if i >= first_scanned {
                Segment::recover(dir, base, &config, false)?
            } else {
                Segment::load_sealed(dir, base, &config)?
            };
            report.segments += 1;
            report.scanned_segments += usize::from(i >= first_scanned || loaded.rebuilt_index);
            report.rebuilt_indexes +=
                usize::from(loaded.rebuilt_index && !last && i < first_scanned);
            let segment = loaded.segment;
            if let Some(previous) = segments
                .values()
                .next_back()
                .map(|s: &Segment| s.next_offset)
            {
                // A compacted segment (or one rescanned after its last records were removed)
                // may end before the next one starts; offsets never overlap.
                if previous > base {
                    tracing::warn!(dir = %dir.display(), segment = base, expected = previous, "segments overlap in offsets");
                }
            }
            let cut_short = loaded.truncation_reason.is_some();
            if let Some(reason) = loaded.truncation_reason {
                let line = format!(
                    "segment {base}: cut {} bytes at position {} (offset {}): {reason}",
                    loaded.truncated_bytes, segment.size_bytes, segment.next_offset
                );
                tracing::warn!(dir = %dir.display(), "truncated invalid log data: {line}");
                report.truncated_bytes += loaded.truncated_bytes;
                report.truncations.push(line);
            } else if loaded.rebuilt_index && !last && i < first_scanned {
                tracing::info!(dir = %dir.display(), segment = base, "rebuilt missing or corrupt index files from the segment data");
            }
            segments.insert(base, segment);
            if cut_short && !last {
                for &later in &bases[i + 1..] {
                    Segment::delete_files_of(dir, later)?;
                    report.deleted_segments += 1;
                }
                tracing::warn!(dir = %dir.display(), deleted = bases.len() - i - 1, "deleted segments after a cut segment: their offsets no longer follow on");
                break;
            }
        }
        // The last segment must be the active one (a cut in the middle leaves a sealed one last).
        if let Some(mut last) = segments.last_entry() {
            if !last.get().is_active() {
                let base = *last.key();
                *last.get_mut() = Segment::recover(dir, base, &config, true)?.segment;
            }
        } else {
            segments.insert(0, Segment::create(dir, 0, &config)?);
            sync_dir(dir)?;
        }
        let mut log = Log {
            dir: dir.to_owned(),
            config: config_now,
            segments,
            open_sealed: VecDeque::new(),
            flushed_offset: 0,
            last_flush: Instant::now(),
            recovery: report,
            epochs: EpochCache::default(),
            failed: None,
            producers: ProducerStates::default(),
            layout_version: 0,
            cleaned_to: read_cleaner_checkpoint(dir),
            rolls: 0,
            unsynced: Vec::new(),
            dir_synced_rolls: 0,
            recent: None,
        };
        log.load_epochs()?;
        // A snapshot past the recovered end describes records a crash took (a roll writes its
        // snapshot before its segment is synced): never let it stand for later ones.
        let end = log.log_end_offset();
        producers::delete_snapshots(dir, |at| at > end)?;
        log.load_producers()?;
        log.active()?.sync()?;
        log.flushed_offset = log.log_end_offset();
        // Only a shortcut for the next recovery (an older point just means more scanning): a
        // full disk must not keep the log from opening.
        if let Err(e) = log.write_recovery_point() {
            tracing::warn!(dir = %dir.display(), "could not update the recovery point (the next start scans more): {e}");
        }
        tracing::debug!(dir = %dir.display(), start = log.log_start_offset(), end = log.log_end_offset(), "log opened");
        Ok(log)
    }

    /// The directory this log owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Changes settings (e.g. a topic's retention altered); they apply from the next operation.
    pub fn set_config(&mut self, config: LogConfig) -> Result<()> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// What the last open found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// First offset still in the log.
    pub fn log_start_offset(&self) -> u64 {
        self.segments.values().next().map_or(0, |s| s.base_offset)
    }

    /// The offset the next appended record gets.
    pub fn log_end_offset(&self) -> u64 {
        self.segments
            .values()
            .next_back()
            .map_or(0, |s| s.next_offset)
    }

    /// The first offset of the recent appends: every batch from here to the log end is in the
    /// active segment and was written by this process within its last 4-8 MiB of appends
    /// (`RECENT_STEP_BYTES`), so reading it touches only the page cache and the active
    /// segment's mapping. The log end itself when nothing was appended since the log opened,
    /// rolled, or was truncated or reset. Lets a fetch that is a little behind the end read on
    /// an async task, as one at the end does (`ops::fetch`).
    pub fn recent_from(&self) -> u64 {
        let end = self.log_end_offset();
        match (self.recent, self.segments.values().next_back()) {
            (Some(recent), Some(active)) if recent.segment_base == active.base_offset => {
                recent.older.0.min(end)
            }
            _ => end,
        }
    }

    /// Records an append of `first` at `position` of the active segment (see [`Recent`]).
    fn note_recent(&mut self, first: u64, position: u64) {
        let Some(segment_base) = self.segments.values().next_back().map(|s| s.base_offset) else {
            return;
        };
        match &mut self.recent {
            Some(recent) if recent.segment_base == segment_base && position >= recent.newer.1 => {
                if position - recent.newer.1 >= RECENT_STEP_BYTES {
                    recent.older = recent.newer;
                    recent.newer = (first, position);
                }
            }
            _ => {
                self.recent = Some(Recent {
                    segment_base,
                    older: (first, position),
                    newer: (first, position),
                })
            }
        }
    }

    /// Every offset below this has been fdatasync'ed.
    pub fn flushed_offset(&self) -> u64 {
        self.flushed_offset
    }

    /// Bytes of valid data in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size_bytes).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Sealed segments that currently hold mappings (bounded by `open_sealed_segments_max`).
    pub fn open_sealed_segments(&self) -> usize {
        self.segments
            .values()
            .filter(|s| !s.is_active() && s.is_open())
            .count()
    }

    fn active(&self) -> Result<&Segment> {
        self.segments
            .values()
            .next_back()
            .ok_or_else(|| Error::CorruptLog {
                path: self.dir.clone(),
                reason: "log has no segments".into(),
            })
    }

    fn active_mut(&mut self) -> Result<&mut Segment> {
        let dir = self.dir.clone();
        self.segments
            .values_mut()
            .next_back()
            .ok_or(Error::CorruptLog {
                path: dir,
                reason: "log has no segments".into(),
            })
    }

    /// Appends one or more concatenated record batches, as a leader: validates every batch
    /// (size, structure, CRC) before writing any, assigns offsets from the log end, stamps
    /// `leader_epoch`, and writes them in one positional write. The producer's CRC stays valid
    /// because base offset and leader epoch lie before the CRC-covered range.
    pub fn append(&mut self, input: &Bytes, leader_epoch: i32) -> Result<AppendInfo> {
        self.append_at(input, leader_epoch, now_ms())
    }

    /// Appends batches fetched from the partition leader, as a follower: validated like a
    /// leader's append, but offsets and leader epochs are kept as the leader assigned them, so
    /// the replica's log is byte-for-byte the leader's. The first batch must start at the log end.
    pub fn append_replica(&mut self, input: &Bytes) -> Result<AppendInfo> {
        self.append_stamped(input, Stamp::Replica, now_ms())
    }

    /// The leader epoch of the last record, if the log has any.
    pub fn last_epoch(&self) -> Option<u32> {
        self.epochs.last_epoch()
    }

    /// The largest epoch `<= epoch` in this log and the offset where it ends (the leader's
    /// answer to a follower's divergence check).
    pub fn end_offset_for_epoch(&self, epoch: u32) -> Option<(u32, u64)> {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// The epoch cache entries `(epoch, start offset)`.
    pub fn epochs(&self) -> &[(u32, u64)] {
        self.epochs.entries()
    }

    /// Deletes every record and restarts the log empty at `offset` (a follower whose log ends
    /// before the leader's log start). Blocking.
    pub fn reset_to(&mut self, offset: u64) -> Result<()> {
        self.check_usable()?;
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        for base in bases {
            if let Some(segment) = self.segments.remove(&base) {
                segment.delete_files()?;
            }
        }
        self.open_sealed.clear();
        self.unsynced.clear();
        self.layout_version += 1;
        self.recent = None;
        let config = self.config.clone();
        self.segments
            .insert(offset, Segment::create(&self.dir, offset, &config)?);
        sync_dir(&self.dir)?;
        self.dir_synced_rolls = self.rolls;
        self.flushed_offset = offset;
        self.epochs.clear();
        self.epochs.save(&self.dir)?;
        producers::delete_snapshots(&self.dir, |_| true)?;
        self.producers = ProducerStates::default();
        self.write_recovery_point()?;
        tracing::info!(dir = %self.dir.display(), offset, "log reset: it now starts empty at {offset}");
        Ok(())
    }

    /// Loads the epoch cache, rebuilding it from the batches if the file is missing or bad, and
    /// drops entries beyond the log end (records lost in a crash).
    fn load_epochs(&mut self) -> Result<()> {
        let end = self.log_end_offset();
        let loaded = EpochCache::load(&self.dir);
        // The checkpoint must know the epoch of the last batch (it is written before that
        // epoch's records; a checkpoint that lags the log, e.g. after a power loss, is rebuilt).
        let last_epoch = self.last_batch_epoch()?;
        let lags = |cache: &EpochCache| last_epoch.is_some_and(|e| cache.last_epoch() < Some(e));
        let mut cache = match loaded {
            Some(cache) if !lags(&cache) => cache,
            None if end == self.log_start_offset() => EpochCache::default(),
            _ => {
                tracing::info!(dir = %self.dir.display(), "rebuilding the leader epoch cache from the log");
                let mut cache = EpochCache::default();
                self.scan_batches(self.log_start_offset(), |batch| {
                    let epoch = batch.partition_leader_epoch().max(0) as u32;
                    let _ = cache.assign(epoch, batch.base_offset() as u64);
                })?;
                save_epochs_at_open(&cache, &self.dir);
                cache
            }
        };
        if cache.truncate_from(end) {
            save_epochs_at_open(&cache, &self.dir);
        }
        self.epochs = cache;
        Ok(())
    }

    /// Rebuilds the producer state: the newest snapshot at or before the log end (not before
    /// the log start), then every batch after it.
    fn load_producers(&mut self) -> Result<()> {
        let (start, end) = (self.log_start_offset(), self.log_end_offset());
        let (from, mut states) = match producers::read_latest_snapshot(&self.dir, end)? {
            Some((at, states)) if at >= start => (at, states),
            _ => (start, ProducerStates::default()),
        };
        let max = self.config.max_producers_per_partition;
        self.scan_batches(from, |batch| {
            if let Some(p) = ProducerBatch::of(batch) {
                let (base, last) = (batch.base_offset() as u64, batch.last_offset() as u64);
                states.record(&p, base, last, batch.max_timestamp(), max);
            }
        })?;
        states.expire(now_ms(), self.config.producer_id_expiration_ms);
        self.producers = states;
        Ok(())
    }

    /// Calls `f` with every batch that ends at or after `from`, to the log end (headers only:
    /// compressed batches are not decompressed).
    fn scan_batches(&mut self, from: u64, mut f: impl FnMut(&RecordBatch)) -> Result<()> {
        let end = self.log_end_offset();
        let mut offset = from;
        while offset < end {
            let chunk = self.read(offset, 1 << 20)?;
            if chunk.is_empty() {
                break;
            }
            for batch in batches(chunk) {
                let batch = batch?;
                let last = batch.last_offset() as u64;
                if last >= offset {
                    f(&batch);
                }
                offset = offset.max(last + 1);
            }
        }
        Ok(())
    }

    /// What this partition knows of producer `producer_id`.
    pub fn producer_state(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(producer_id)
    }

    /// Producers tracked.
    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Forgets producers unseen for `producer_id_expiration_ms`; how many.
    pub fn expire_producers(&mut self, now_ms: i64) -> usize {
        let expired = self
            .producers
            .expire(now_ms, self.config.producer_id_expiration_ms);
        if expired > 0 {
            tracing::debug!(dir = %self.dir.display(), expired, "forgot expired idempotent producers");
        }
        expired
    }

    /// Writes a producer state snapshot as of the log end, fsynced if `sync` (a shortcut for
    /// the next open: a failure is only logged).
    pub fn snapshot_producers(&self, sync: bool) {
        let end = self.log_end_offset();
        if let Err(e) = producers::write_snapshot(&self.dir, end, &self.producers, sync) {
            tracing::warn!(dir = %self.dir.display(), "could not write a producer state snapshot (the next start scans more): {e}");
        }
    }

    /// The leader epoch of the log's last batch, if it has one.
    fn last_batch_epoch(&mut self) -> Result<Option<u32>> {
        let (start, end) = (self.log_start_offset(), self.log_end_offset());
        if end == start {
            return Ok(None);
        }
        let chunk = self.read(end - 1, 1)?;
        Ok(batches(chunk)
            .next()
            .and_then(|batch| batch.ok())
            .map(|batch| batch.partition_leader_epoch().max(0) as u32))
    }

    /// [`Log::append`] with an explicit wall-clock time (for rolling by age).
    pub fn append_at(
        &mut self,
        input: &Bytes,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo> {
        self.append_stamped(input, Stamp::Leader(leader_epoch), now_ms)
    }

    /// Whether an fdatasync failed (see the `failed` field); the reason if so.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn check_usable(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(reason) => Err(Error::LogFailed {
                path: self.dir.clone(),
                reason: reason.clone(),
            }),
        }
    }

    /// Marks the log failed after an fdatasync error (see the `failed` field).
    pub fn flush_failed(&mut self, error: &Error) {
        if self.failed.is_none() {
            tracing::error!(dir = %self.dir.display(), "fdatasync failed: this partition is offline on this broker (no appends, no reads) until the broker restarts and recovery re-verifies it; check the disk: {error}");
            self.failed = Some(error.to_string());
        }
    }

    fn append_stamped(&mut self, input: &Bytes, stamp: Stamp, now_ms: i64) -> Result<AppendInfo> {
        self.append_gated(input, stamp, now_ms, false)?
            .ok_or_else(|| Error::Replication("an append was put off that may not be".into()))
    }

    /// [`Log::append`], but only if it writes into the page cache and nothing else: no flush
    /// (policy `always`), no new leader epoch to record, no roll, no preallocation step, no
    /// index space to allocate, no write-behind to start. `Ok(None)`, with nothing written,
    /// when it would do any of those; the caller then appends on a blocking thread. So an
    /// async task may append without blocking on the disk (see `ops::produce`).
    pub fn append_in_page_cache(
        &mut self,
        input: &Bytes,
        leader_epoch: i32,
    ) -> Result<Option<AppendInfo>> {
        self.append_page_cache_only(input, Stamp::Leader(leader_epoch))
    }

    /// [`Log::append_replica`] on the same terms as [`Log::append_in_page_cache`] (a
    /// follower's fetcher task appends what it fetched without a trip to a blocking thread).
    pub fn append_replica_in_page_cache(&mut self, input: &Bytes) -> Result<Option<AppendInfo>> {
        self.append_page_cache_only(input, Stamp::Replica)
    }

    fn append_page_cache_only(
        &mut self,
        input: &Bytes,
        stamp: Stamp,
    ) -> Result<Option<AppendInfo>> {
        if matches!(self.config.flush, FlushPolicy::Always) {
            return Ok(None);
        }
        self.append_gated(input, stamp, now_ms(), true)
    }

    /// The append behind [`Log::append_stamped`] and [`Log::append_in_page_cache`]: with
    /// `page_cache_only`, `Ok(None)` (nothing written, nothing changed) when it would do more
    /// than write into the page cache.
    fn append_gated(
        &mut self,
        input: &Bytes,
        stamp: Stamp,
        now_ms: i64,
        page_cache_only: bool,
    ) -> Result<Option<AppendInfo>> {
        self.check_usable()?;
        if input.len() > (1 << 30) {
            return Err(Error::BatchTooLarge {
                size_bytes: input.len(),
                max_bytes: 1 << 30,
            });
        }
        let previous_end = self.log_end_offset();
        let plan = self.plan_append(input, stamp)?;
        if let Stamp::Leader(_) = stamp {
            if let Some(duplicate) = self.check_producers(input, plan.len())? {
                return Ok(Some(duplicate));
            }
        }
        // A new epoch is recorded (durably) before its records are written.
        let mut epochs = self.epochs.clone();
        for batch in &plan {
            let epoch = i32::from_be_bytes([
                batch.header[12],
                batch.header[13],
                batch.header[14],
                batch.header[15],
            ])
            .max(0) as u32;
            if epochs.assign(epoch, batch.base_offset).is_none() {
                return Err(Error::Replication(format!(
                    "batch at offset {} has leader epoch {epoch}, older than the log's last epoch {:?}",
                    batch.base_offset,
                    epochs.last_epoch()
                )));
            }
        }
        if page_cache_only
            && (epochs != self.epochs || !self.writes_in_page_cache(&plan, now_ms)?)
        {
            return Ok(None);
        }
        let previous_epochs = (epochs != self.epochs).then(|| self.epochs.clone());
        if previous_epochs.is_some() {
            epochs.save(&self.dir)?;
            self.epochs = epochs;
        }
        if let Err(e) = self.write_planned(input, &plan, now_ms) {
            // The new epoch's entry announces records that were not written: take it back,
            // in memory and on disk (else a follower holding it loops on truncation, review
            // #10). If the rewrite fails too, opening the log drops entries past its end.
            if let Some(previous) = previous_epochs {
                self.epochs = previous;
                if let Err(save) = self.epochs.save(&self.dir) {
                    tracing::warn!(dir = %self.dir.display(), "rolling back the epoch checkpoint failed (fixed when the log is next opened): {save}");
                }
            }
            return Err(e);
        }
        // A replica that took a batch past its log end holds a compacted leader's gaps: the
        // checkpoint file marks the directory so (recovery scans allow gaps, see `open`).
        if matches!(stamp, Stamp::Replica)
            && (plan.first().is_some_and(|b| b.base_offset > previous_end)
                || plan
                    .windows(2)
                    .any(|w| w[1].base_offset > w[0].last_offset + 1))
            && !self.dir.join(CLEANER_CHECKPOINT_FILE).exists()
        {
            self.set_cleaned_to(self.cleaned_to);
        }
        let max = self.config.max_producers_per_partition;
        for (batch, planned) in batches(input.clone()).zip(&plan) {
            if let Some(p) = batch.ok().as_ref().and_then(ProducerBatch::of) {
                self.producers
                    .record(&p, planned.base_offset, planned.last_offset, now_ms, max);
            }
        }
        let info = AppendInfo {
            base_offset: plan[0].base_offset,
            last_offset: plan[plan.len() - 1].last_offset,
            max_timestamp: plan
                .iter()
                .map(|b| b.max_timestamp)
                .max()
                .unwrap_or(i64::MIN),
            batches: plan.len(),
        };
        match self.config.flush {
            FlushPolicy::Always => {
                self.flush()?;
            }
            // Interval flushes run from the broker's tick with the log unlocked
            // (`begin_flush_if_due`): an fdatasync here would stall this partition's appends,
            // and with replication every acks=all write waiting on it.
            FlushPolicy::Interval { .. } | FlushPolicy::Os => {}
        }
        Ok(Some(info))
    }

    /// Whether writing `plan` (see [`Log::write_planned`]) touches the active segment's page
    /// cache only: no roll or restart, and room already allocated in its files.
    fn writes_in_page_cache(&self, plan: &[AppendBatch], now_ms: i64) -> Result<bool> {
        let total: u64 = plan.iter().map(|b| b.range.len() as u64).sum();
        let (first, last) = (plan[0].base_offset, plan[plan.len() - 1].last_offset);
        let active = self.active()?;
        let far = last.saturating_sub(active.base_offset) > u64::from(u32::MAX / 2);
        Ok(first == self.log_end_offset()
            && !far
            && !active.needs_roll(total, &self.config, now_ms)
            && active.appends_in_page_cache(total, plan.len()))
    }

    /// A leader's check of an idempotent producer's batch (which must come alone): `Some` with
    /// the original offsets when it was written already; an error when its sequence or epoch
    /// does not fit (see `producers`).
    fn check_producers(&self, input: &Bytes, planned: usize) -> Result<Option<AppendInfo>> {
        let Some(Ok(first)) = batches(input.clone()).next() else {
            return Ok(None);
        };
        let Some(producer) = ProducerBatch::of(&first) else {
            return Ok(None);
        };
        if planned != 1 {
            return Err(ProtocolError::Invalid {
                what: "append",
                reason: "an idempotent producer's batch must be the only one for its partition"
                    .into(),
            }
            .into());
        }
        Ok(match self.producers.check(&producer)? {
            Verdict::Append => None,
            Verdict::Duplicate {
                base_offset,
                last_offset,
            } => {
                tracing::debug!(dir = %self.dir.display(), producer_id = producer.producer_id, sequence = producer.first_seq, base_offset, "duplicate batch of an idempotent producer: answered with its original offsets");
                Some(AppendInfo {
                    base_offset,
                    last_offset,
                    max_timestamp: first.max_timestamp(),
                    batches: 0,
                })
            }
        })
    }

    /// Rolls if the append needs it and writes the planned batches into the active segment.
    fn write_planned(&mut self, input: &Bytes, plan: &[AppendBatch], now_ms: i64) -> Result<()> {
        let total = input.len() as u64;
        let (first, last) = (plan[0].base_offset, plan[plan.len() - 1].last_offset);
        if last - first >= u64::from(u32::MAX / 2) {
            return Err(ProtocolError::Invalid {
                what: "append",
                reason: format!("batches claim {} offsets in one append", last - first + 1),
            }
            .into());
        }
        // Index entries hold offsets relative to the segment base as u32: a segment never
        // spans more offsets than that.
        let base = self.active()?.base_offset;
        // (Half the u32 range, as `needs_roll` and recovery's scan.)
        let far = last - base > u64::from(u32::MAX / 2);
        if self.active()?.needs_roll(total, &self.config, now_ms)
            || (self.active()?.size_bytes > 0 && far)
        {
            // At the first batch's offset: a replicated batch may start past the log end.
            self.roll_to(first)?;
        } else if far {
            // An empty active segment far below a replicated batch (a compacted leader skipped
            // that many offsets): it starts again at the batch.
            self.restart_empty_active_at(first)?;
        }
        let config = self.config.clone();
        let position = self.active()?.size_bytes;
        self.active_mut()?.append(input, plan, &config, now_ms)?;
        self.note_recent(first, position);
        Ok(())
    }

    fn plan_append(&self, input: &Bytes, stamp: Stamp) -> Result<Vec<AppendBatch>> {
        let mut next_offset = self.log_end_offset();
        let mut position = 0;
        let mut plan = Vec::new();
        for batch in batches(input.clone()) {
            let batch = batch?;
            if batch.size_bytes() > self.config.max_batch_bytes {
                return Err(Error::BatchTooLarge {
                    size_bytes: batch.size_bytes(),
                    max_bytes: self.config.max_batch_bytes,
                });
            }
            // A leader vouches for every record it stores (a batch consumers cannot read would
            // poison the partition): it walks the records, decompressing compressed batches
            // within `max_batch_decompressed_bytes` (a decompression bomb is refused there).
            // The batch itself is stored as the producer compressed it. Replicas check the CRC.
            match stamp {
                // A compacted topic needs a key on every record (one that never had one could
                // never be compacted away): Kafka's rule, checked in the same walk.
                Stamp::Leader(_) if self.config.cleanup_policy.compact => {
                    batch.validate_keyed_records(self.config.max_batch_decompressed_bytes)?
                }
                Stamp::Leader(_) => {
                    batch.validate_records(self.config.max_batch_decompressed_bytes)?
                }
                Stamp::Replica => batch.validate_crc()?,
            }
            // (A replicated batch may be a compacted producer batch's bare header.)
            if batch.record_count() == 0 && matches!(stamp, Stamp::Leader(_)) {
                return Err(ProtocolError::Invalid {
                    what: "record batch",
                    reason: "holds no records".into(),
                }
                .into());
            }
            let mut header = [0u8; 16];
            header.copy_from_slice(&batch.as_bytes()[..16]);
            match stamp {
                Stamp::Leader(leader_epoch) => {
                    set_base_offset(&mut header, next_offset);
                    set_leader_epoch(&mut header, leader_epoch);
                }
                // A compacted leader log may skip offsets (removed records): a replicated
                // batch may start past the log end, never before it.
                Stamp::Replica if batch.base_offset() < next_offset as i64 => {
                    return Err(Error::Replication(format!(
                        "replicated batch starts at offset {}, the log ends at {next_offset}",
                        batch.base_offset()
                    )));
                }
                Stamp::Replica => next_offset = batch.base_offset() as u64,
            }
            // A leader's batches are dense (checked above); a replicated one keeps its range.
            let last_offset = next_offset + batch.last_offset_delta().max(0) as u64;
            plan.push(AppendBatch {
                range: position..position + batch.size_bytes(),
                header,
                base_offset: next_offset,
                last_offset,
                max_timestamp: batch.max_timestamp(),
            });
            position += batch.size_bytes();
            next_offset = last_offset + 1;
        }
        if plan.is_empty() {
            return Err(ProtocolError::Invalid {
                what: "append",
                reason: "no record batches in the request".into(),
            }
            .into());
        }
        Ok(plan)
    }

    /// Seals the active segment (if it holds data) and starts a new one at the log end. No
    /// fsync here (a roll happens inside an append, under the log lock): the next flush syncs
    /// the sealed segment and the directory (`begin_flush_if_due`, or `flush`), and only then
    /// does the recovery point move past it.
    pub fn roll(&mut self) -> Result<()> {
        let end = self.log_end_offset();
        self.roll_to(end)
    }

    /// [`Log::roll`] with the new segment starting at `base` (at or past the log end).
    fn roll_to(&mut self, base: u64) -> Result<()> {
        let active = self.active_mut()?;
        if active.size_bytes == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let sealed_base = active.base_offset;
        let files = active.seal()?;
        let base = base.max(active.next_offset);
        let segment = Segment::create(&self.dir, base, &self.config)?;
        self.segments.insert(base, segment);
        self.rolls += 1;
        self.recent = None;
        self.unsynced.push(Unsynced {
            roll: self.rolls,
            base_offset: sealed_base,
            files,
        });
        self.snapshot_producers(false);
        tracing::debug!(dir = %self.dir.display(), base, took_us = started.elapsed().as_micros() as u64, "rolled to a new segment");
        Ok(())
    }

    /// Replaces the empty active segment by one starting at `base` (past the log end).
    fn restart_empty_active_at(&mut self, base: u64) -> Result<()> {
        let Some((_, segment)) = self.segments.pop_last() else {
            return Ok(());
        };
        debug_assert_eq!(segment.size_bytes, 0);
        segment.delete_files()?;
        self.layout_version += 1;
        self.recent = None;
        let config = self.config.clone();
        self.segments
            .insert(base, Segment::create(&self.dir, base, &config)?);
        sync_dir(&self.dir)?;
        self.write_recovery_point()
    }

    /// Rolls the active segment if it is older than `segment_ms` (for callers that tick).
    pub fn roll_if_due(&mut self, now_ms: i64) -> Result<bool> {
        if self.failed.is_some() {
            return Ok(false);
        }
        let due =
            self.active()?.needs_roll(0, &self.config, now_ms) && self.active()?.size_bytes > 0;
        if due {
            self.roll()?;
        }
        Ok(due)
    }

    /// Whole batches from the one containing `offset`, up to `max_bytes` (at least one batch, so
    /// a consumer always progresses), as `Bytes` borrowing the segment mapping: no data is
    /// copied. Empty at the log end; an error outside `[log start, log end]`.
    pub fn read(&mut self, offset: u64, max_bytes: usize) -> Result<Bytes> {
        self.check_usable()?;
        let (start, end) = (self.log_start_offset(), self.log_end_offset());
        if offset < start || offset > end {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start_offset: start,
                log_end_offset: end,
            });
        }
        let first = self
            .segments
            .range(..=offset)
            .next_back()
            .map_or(start, |(base, _)| *base);
        let bases: Vec<u64> = self
            .segments
            .range(first..)
            .map(|(base, _)| *base)
            .collect();
        for base in bases {
            self.open_segment(base)?;
            let read = match self.segments.get(&base) {
                Some(segment) => segment.read(offset, max_bytes)?,
                None => None,
            };
            if let Some(bytes) = read {
                return Ok(bytes);
            }
        }
        Ok(Bytes::new())
    }

    /// Maps a sealed segment if needed, keeping at most `open_sealed_segments_max` mapped.
    fn open_segment(&mut self, base: u64) -> Result<()> {
        let Some(segment) = self.segments.get_mut(&base) else {
            return Ok(());
        };
        if segment.is_active() {
            return Ok(());
        }
        segment.ensure_open()?;
        self.open_sealed.retain(|b| *b != base);
        self.open_sealed.push_back(base);
        while self.open_sealed.len() > self.config.open_sealed_segments_max {
            if let Some(evicted) = self.open_sealed.pop_front() {
                if let Some(s) = self.segments.get_mut(&evicted) {
                    s.close_mappings();
                }
            }
        }
        Ok(())
    }

    /// The first record whose timestamp is >= `timestamp`: `(offset, record timestamp)`, or `None`
    /// if every record is older. For a compressed batch the batch's first offset and max timestamp.
    pub fn offset_for_timestamp(&mut self, timestamp: i64) -> Result<Option<(u64, i64)>> {
        let bases: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, s)| s.max_timestamp >= timestamp && s.size_bytes > 0)
            .map(|(b, _)| *b)
            .collect();
        for base in bases {
            self.open_segment(base)?;
            let Some(segment) = self.segments.get(&base) else {
                continue;
            };
            let floor = segment.time_index_floor(timestamp)?;
            let Some((mut position, _, _)) = segment.locate(floor)? else {
                continue;
            };
            while let Some(batch) = segment.batch_at(position) {
                position += batch.len();
                if header_max_timestamp(&batch) < timestamp {
                    continue;
                }
                let batch = RecordBatch::parse(batch)?;
                for record in batch.records_limited(self.config.max_batch_decompressed_bytes)? {
                    let record = record?;
                    if record.timestamp >= timestamp {
                        return Ok(Some((record.offset, record.timestamp)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Removes every record at or after `offset` (rounded down to the start of the batch that
    /// contains it); returns the new log end offset. Used by followers to drop a divergent tail.
    pub fn truncate_to(&mut self, offset: u64) -> Result<u64> {
        self.check_usable()?;
        if offset >= self.log_end_offset() {
            // Nothing to cut, but an epoch entry with no records at or past `offset` (left by
            // a failed write) must go, or the leader keeps answering with the same divergence.
            if self.epochs.truncate_from(offset) {
                self.epochs.save(&self.dir)?;
            }
            return Ok(self.log_end_offset());
        }
        self.layout_version += 1;
        self.recent = None;
        let doomed: Vec<u64> = self.segments.range(offset..).map(|(b, _)| *b).collect();
        // Deleted files need no sync.
        self.unsynced.retain(|u| u.base_offset < offset);
        for base in doomed {
            if let Some(segment) = self.segments.remove(&base) {
                self.open_sealed.retain(|b| *b != base);
                segment.delete_files()?;
            }
        }
        let config = self.config.clone();
        match self.segments.last_entry() {
            None => {
                self.segments
                    .insert(offset, Segment::create(&self.dir, offset, &config)?);
            }
            Some(mut last) => {
                let base = *last.key();
                self.open_sealed.retain(|b| *b != base);
                let segment = last.get_mut();
                segment.ensure_open()?;
                segment.truncate_to(offset, &config)?;
                if !segment.is_active() {
                    *segment = Segment::recover(&self.dir, base, &config, true)?.segment;
                }
            }
        }
        sync_dir(&self.dir)?;
        self.dir_synced_rolls = self.rolls;
        let end = self.log_end_offset();
        self.flushed_offset = self.flushed_offset.min(end);
        if self.epochs.truncate_from(end) {
            self.epochs.save(&self.dir)?;
        }
        self.write_recovery_point()?;
        producers::delete_snapshots(&self.dir, |at| at > end)?;
        self.load_producers()?;
        tracing::info!(dir = %self.dir.display(), requested = offset, end, "truncated log");
        Ok(end)
    }

    /// Deletes sealed segments, oldest first, while the log would stay at least `retention_bytes`
    /// big, or while the segment's newest record is older than `retention_ms`. The active segment
    /// is never deleted. Advances the log start offset.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<RetentionOutcome> {
        let mut outcome = RetentionOutcome::default();
        // Only `cleanup.policy` delete (or compact,delete) deletes by size or age.
        while self.config.cleanup_policy.delete && self.segments.len() > 1 {
            let Some(oldest) = self.segments.values().next() else {
                break;
            };
            let total = self.size_bytes();
            let by_size = self
                .config
                .retention_bytes
                .is_some_and(|limit| total - oldest.size_bytes >= limit);
            let by_time = self
                .config
                .retention_ms
                .is_some_and(|ms| oldest.max_timestamp < now_ms.saturating_sub(ms as i64));
            if !by_size && !by_time {
                break;
            }
            let Some((base, segment)) = self.segments.pop_first() else {
                break;
            };
            self.open_sealed.retain(|b| *b != base);
            outcome.deleted_segments += 1;
            outcome.deleted_bytes += segment.size_bytes;
            segment.delete_files()?;
        }
        if outcome.deleted_segments > 0 {
            self.layout_version += 1;
            let start = self.log_start_offset();
            producers::delete_snapshots(&self.dir, |at| at < start)?;
            tracing::info!(dir = %self.dir.display(), segments = outcome.deleted_segments, bytes = outcome.deleted_bytes, start = self.log_start_offset(), "retention deleted segments");
        }
        Ok(outcome)
    }

    /// Syncs what rolls left unsynced (sealed segments, the directory), then fdatasyncs the
    /// active segment, all under the lock; returns the new flushed offset.
    pub fn flush(&mut self) -> Result<u64> {
        self.check_usable()?;
        let synced = self.sync_rolls().and_then(|()| self.active()?.sync());
        if let Err(e) = synced {
            self.flush_failed(&e);
            return Err(e);
        }
        self.flushed_offset = self.log_end_offset();
        self.last_flush = Instant::now();
        Ok(self.flushed_offset)
    }

    /// [`Log::flush`]'s first part: syncs the segments sealed since the last flush and the
    /// directory, then moves the recovery point past them.
    fn sync_rolls(&mut self) -> Result<()> {
        if self.unsynced.is_empty() && self.dir_synced_rolls == self.rolls {
            return Ok(());
        }
        for unsynced in &self.unsynced {
            unsynced.files.sync()?;
        }
        self.unsynced.clear();
        sync_dir(&self.dir)?;
        self.dir_synced_rolls = self.rolls;
        self.write_recovery_point()
    }

    /// Starts a flush if one is due, without doing the slow part: the files of segments that
    /// rolls sealed since the last flush (any flush policy), and the active segment if an
    /// `interval` flush is due. The caller fsyncs them with the log unlocked
    /// ([`PendingFlush::sync`], a disk sync can take 100 ms) and then reports back with
    /// [`Log::flush_completed`], so appends never wait behind a flush.
    pub fn begin_flush_if_due(&mut self) -> Result<Option<PendingFlush>> {
        if self.failed.is_some() {
            return Ok(None);
        }
        let active_due = match self.config.flush {
            FlushPolicy::Interval { interval_ms } => {
                self.flushed_offset != self.log_end_offset()
                    && self.last_flush.elapsed().as_millis() >= u128::from(interval_ms)
            }
            FlushPolicy::Always | FlushPolicy::Os => false,
        };
        let dir_due = self.dir_synced_rolls != self.rolls;
        if !active_due && self.unsynced.is_empty() && !dir_due {
            return Ok(None);
        }
        let active = if active_due {
            self.last_flush = Instant::now();
            let active = self.active()?;
            active.clone_file()?.map(|file| (file, active.path()))
        } else {
            None
        };
        let sealed = self
            .unsynced
            .iter()
            .map(|u| u.files.try_clone())
            .collect::<Result<Vec<_>>>()?;
        let end_offset = self.log_end_offset();
        Ok(Some(PendingFlush {
            done: Flushed {
                end_offset: active.is_some().then_some(end_offset),
                sealed_through: self.active()?.base_offset,
                rolls: self.rolls,
                dir_synced: dir_due,
                layout_version: self.layout_version,
            },
            active,
            sealed,
            dir: dir_due.then(|| self.dir.clone()),
        }))
    }

    /// Records a flush done with [`Log::begin_flush_if_due`]: the flushed offset moves up to
    /// what it made durable, and past segments it synced the recovery point does too.
    pub fn flush_completed(&mut self, done: Flushed) {
        let synced_seals = self.unsynced.first().is_some_and(|u| u.roll <= done.rolls);
        self.unsynced.retain(|u| u.roll > done.rolls);
        if done.dir_synced {
            self.dir_synced_rolls = self.dir_synced_rolls.max(done.rolls);
        }
        // A truncation meanwhile may have cut what the flush covered and appends written other
        // records at those offsets since: claim nothing then (the next flush covers them).
        if done.layout_version == self.layout_version {
            let durable = done.end_offset.unwrap_or(done.sealed_through);
            self.flushed_offset = self.flushed_offset.max(durable.min(self.log_end_offset()));
        }
        if synced_seals {
            // Not fsynced itself: a point that does not survive a crash leaves an older one (or
            // none), which only means more scanning at the next open.
            if let Err(e) = self.store_recovery_point(false) {
                tracing::warn!(dir = %self.dir.display(), "could not update the recovery point (the next start scans more): {e}");
            }
        }
    }

    /// Flushes if the `interval` flush policy's interval has passed since the last flush.
    pub fn flush_if_due(&mut self) -> Result<bool> {
        let FlushPolicy::Interval { interval_ms } = self.config.flush else {
            return Ok(false);
        };
        if self.flushed_offset == self.log_end_offset()
            || self.last_flush.elapsed().as_millis() < u128::from(interval_ms)
        {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }

    /// Flushes, trims the active segment's preallocated tail, and records the recovery point.
    pub fn close(mut self) -> Result<()> {
        self.flush()?;
        self.active_mut()?.trim()?;
        self.snapshot_producers(true);
        self.write_recovery_point()
    }

    /// Deletes the whole log directory (for deleting a topic). Readers' mappings stay valid.
    pub fn delete(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(&dir).context("delete log directory", &dir)
    }

    /// Writes the recovery point durably, atomically: the start of the active segment, or of
    /// the first sealed segment not yet synced.
    fn write_recovery_point(&self) -> Result<()> {
        self.store_recovery_point(true)
    }

    /// [`Log::write_recovery_point`], fsynced only if `sync`.
    fn store_recovery_point(&self, sync: bool) -> Result<()> {
        let point = match self.unsynced.first() {
            Some(unsynced) => unsynced.base_offset,
            None => self.active()?.base_offset,
        };
        let path = self.dir.join(RECOVERY_POINT_FILE);
        let tmp = self.dir.join(format!("{RECOVERY_POINT_FILE}.tmp"));
        let mut file = fs::File::create(&tmp).context("create checkpoint", &tmp)?;
        file.write_all(format!("1 {point}\n").as_bytes())
            .context("write checkpoint", &tmp)?;
        if sync {
            file.sync_all().context("sync checkpoint", &tmp)?;
        }
        fs::rename(&tmp, &path).context("rename checkpoint", &path)?;
        if sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Name of the compaction checkpoint in a partition directory: every offset below it is clean.
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-checkpoint";

fn read_cleaner_checkpoint(dir: &Path) -> u64 {
    crate::log::meta::read_numbered(dir, CLEANER_CHECKPOINT_FILE)
}

impl Log {
    /// What the cleaner needs to compact this log with the log unlocked: the sealed segments
    /// below `upper` (the high watermark: nothing a consumer cannot read yet is compacted)
    /// whose newest record is at least `min.compaction.lag.ms` old, with the offset the dirty
    /// part starts at. `None` if the log is not compacted or nothing may be cleaned.
    pub(crate) fn cleaning_view(&self, upper: u64, now_ms: i64) -> Option<CleaningView> {
        if !self.config.cleanup_policy.compact || self.failed.is_some() {
            return None;
        }
        let lag_horizon = now_ms.saturating_sub(self.config.min_compaction_lag_ms as i64);
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        let mut segments = Vec::new();
        for (i, base) in bases.iter().enumerate() {
            let (Some(segment), Some(&end)) = (self.segments.get(base), bases.get(i + 1)) else {
                break; // the active segment is never cleaned
            };
            if end > upper || (segment.size_bytes > 0 && segment.max_timestamp > lag_horizon) {
                break;
            }
            segments.push(CleanableSegment {
                base: *base,
                end,
                size_bytes: segment.size_bytes,
                max_timestamp: segment.max_timestamp,
                path: segment.path(),
            });
        }
        if segments.is_empty() {
            return None;
        }
        Some(CleaningView {
            dir: self.dir.clone(),
            config: self.config.clone(),
            first_dirty: self.cleaned_to.max(self.log_start_offset()),
            segments,
            layout_version: self.layout_version,
            producer_last_offsets: self.producers.last_offsets(),
        })
    }

    /// Puts a cleaned segment in place of the segments at `old_bases` if the log still holds
    /// them as the cleaner read them (`layout_version`); returns the new layout version, or
    /// `None` (and deletes the cleaned files) if the log changed meanwhile.
    pub(crate) fn install_cleaned(
        &mut self,
        layout_version: u64,
        cleaned: CleanedSegment,
        old_bases: &[u64],
        crash_after: Option<usize>,
    ) -> Result<Option<u64>> {
        let unchanged = self.layout_version == layout_version
            && old_bases
                .iter()
                .all(|b| self.segments.get(b).is_some_and(|s| !s.is_active()));
        if !unchanged || self.failed.is_some() {
            cleaned.discard();
            return Ok(None);
        }
        self.layout_version += 1;
        for base in old_bases {
            self.open_sealed.retain(|b| b != base);
            self.segments.remove(base);
        }
        match cleaned.commit(old_bases, crash_after) {
            Ok(segment) => {
                self.segments.insert(segment.base_offset, segment);
                Ok(Some(self.layout_version))
            }
            // Half replaced: the files are right for recovery (which finishes a committed
            // replacement and drops an uncommitted one), the segments in memory are not.
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), "replacing segments by their cleaned segment failed: this partition is offline on this broker until it restarts: {e}");
                self.failed = Some(format!("compaction could not replace segments: {e}"));
                Err(e)
            }
        }
    }

    /// Records that compaction cleaned every offset below `offset` (durably; a failure only
    /// means the next pass cleans more).
    pub(crate) fn set_cleaned_to(&mut self, offset: u64) {
        self.cleaned_to = offset;
        let text = format!("1 {offset}\n");
        if let Err(e) =
            crate::log::meta::write_durably(&self.dir, CLEANER_CHECKPOINT_FILE, text.as_bytes())
        {
            tracing::warn!(dir = %self.dir.display(), "could not write the cleaner checkpoint (the next pass cleans more): {e}");
        }
    }

    /// Offsets below this are clean (compaction's checkpoint).
    pub fn cleaned_to(&self) -> u64 {
        self.cleaned_to
    }
}

/// Saves the epoch cache while opening a log. A failure (a full disk) is not fatal: the cache in
/// memory is right, and the file is brought in line with the log again at every open.
fn save_epochs_at_open(cache: &EpochCache, dir: &Path) {
    if let Err(e) = cache.save(dir) {
        tracing::warn!(dir = %dir.display(), "could not rewrite the leader epoch checkpoint (fixed at the next open): {e}");
    }
}

/// Base offsets of the segments in `dir`, sorted. Removes leftovers of interrupted operations
/// (temporary files, index files without a data file).
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let mut index_files = Vec::new();
    for entry in fs::read_dir(dir).context("list log directory", dir)? {
        let entry = entry.context("list log directory", dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
        let base = (stem.len() == 20)
            .then(|| stem.parse::<u64>().ok())
            .flatten();
        match (base, ext) {
            (Some(base), "log") => bases.push(base),
            (Some(base), "index" | "timeindex") => index_files.push((base, entry.path())),
            (_, e) if e.ends_with("tmp") || e.ends_with(crate::log::segment::CLEANED_SUFFIX) => {
                let _ = fs::remove_file(entry.path());
            }
            _ => {}
        }
    }
    bases.sort_unstable();
    for (base, path) in index_files {
        if bases.binary_search(&base).is_err() {
            tracing::info!(path = %path.display(), "removing index file without a segment");
            let _ = fs::remove_file(path);
        }
    }
    Ok(bases)
}

/// The recovery point from the checkpoint; 0 (scan everything) if missing or unreadable.
fn read_recovery_point(dir: &Path) -> u64 {
    let path = dir.join(RECOVERY_POINT_FILE);
    let Ok(text) = fs::read_to_string(&path) else {
        return 0;
    };
    match text.trim().split_once(' ') {
        Some(("1", point)) => point.parse().unwrap_or(0),
        _ => {
            tracing::warn!(path = %path.display(), "unreadable recovery point checkpoint: scanning every segment");
            0
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .context("sync directory", dir)
}
