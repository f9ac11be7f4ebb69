//! Log compaction (`cleanup.policy=compact`): the cleaner keeps the latest record per key.
//!
//! One pass over a partition (docs/STORAGE.md, "Compaction"):
//! 1. Under the log lock, take a [`CleaningView`]: the sealed segments wholly below the high
//!    watermark and older than `min.compaction.lag.ms`, and the offset the dirty part starts
//!    at (`cleaner-checkpoint`). The pass runs only if the dirty part is at least
//!    `min.cleanable.dirty.ratio` of those segments' bytes.
//! 2. With the log unlocked, read the dirty segments into an [`OffsetMap`] (128-bit key hash ->
//!    latest offset) of at most `dedupe_buffer_bytes`; a full map ends the pass's range early.
//! 3. Rewrite every cleanable segment below the map's end, in groups of up to `segment_bytes`:
//!    a record is kept if its key's latest offset is its own (or its key is not in the map),
//!    tombstones (null values) go once their segment is `delete.retention.ms` old, records
//!    without a key stay, and each idempotent producer's newest batch keeps at least its
//!    header, with no records if none is left (so producer state can be rebuilt from the log). Batches keep their offsets; compressed ones are
//!    compressed again with their codec. Each group is written as `.cleaned` files, then
//!    swapped in under the lock ([`Log::install_cleaned`], crash-safe, see
//!    [`CleanedSegment::commit`]) only if the log did not change meanwhile.
//! 4. Record the map's end as the new checkpoint.
//!
//! Reads and writes are throttled to `io_max_bytes_per_second`. Invariants: the active segment
//! and anything at or above the high watermark are never touched; no kept record changes its
//! offset; every key's latest record below the high watermark survives every pass.
//!
//! [`Log::install_cleaned`]: crate::log::Log::install_cleaned
//! [`CleanedSegment::commit`]: crate::log::segment::CleanedSegment::commit

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rill_protocol::batch::{batches, RecordBatch, Retained};

use crate::error::{Error, Result};
use crate::log::config::LogConfig;
use crate::log::manager::PartitionLog;
use crate::log::segment::{map_sealed, CleanedWriter};

/// Settings of the cleaner (broker-wide).
#[derive(Debug, Clone)]
pub struct CleanerConfig {
    /// Memory for one pass's key map (`log_cleaner_dedupe_buffer_bytes`). Default 16 MiB.
    pub dedupe_buffer_bytes: usize,
    /// Read plus write rate limit (`log_cleaner_io_max_bytes_per_second`). Default none.
    pub io_max_bytes_per_second: Option<u64>,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig {
            dedupe_buffer_bytes: 16 << 20,
            io_max_bytes_per_second: None,
        }
    }
}

/// One sealed segment the cleaner may rewrite: it covers `base..end` (`end` is the next
/// segment's base).
#[derive(Debug, Clone)]
pub(crate) struct CleanableSegment {
    pub base: u64,
    pub end: u64,
    pub size_bytes: u64,
    pub max_timestamp: i64,
    pub path: PathBuf,
}

/// What a pass needs of the log, taken under its lock ([`crate::log::Log::cleaning_view`]).
#[derive(Debug)]
pub(crate) struct CleaningView {
    pub dir: PathBuf,
    pub config: LogConfig,
    pub first_dirty: u64,
    pub segments: Vec<CleanableSegment>,
    pub layout_version: u64,
    pub producer_last_offsets: HashMap<i64, u64>,
}

/// What one pass did (logged, and the figures behind docs/STORAGE.md's cleaner numbers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CleanStats {
    pub segments_read: usize,
    pub segments_written: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_read: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    pub map_keys: usize,
    /// Memory the key map held at its largest (bytes, estimated from its capacity).
    pub map_bytes: usize,
    /// Offsets below this are clean after the pass.
    pub cleaned_to: u64,
    pub elapsed: Duration,
}

impl CleanStats {
    /// Megabytes (10^6) read per second.
    pub fn read_mb_per_second(&self) -> f64 {
        self.bytes_read as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Bytes one map slot takes: 16-byte hash, 8-byte offset, 1 control byte (hashbrown).
const SLOT_BYTES: usize = 25;

/// Key hash -> offset of the key's latest record, in at most a fixed number of bytes.
pub(crate) struct OffsetMap {
    map: HashMap<u128, u64>,
    capacity: usize,
}

impl OffsetMap {
    /// A map that never takes more than about `bytes` (its table is a power of two of slots at
    /// most 7/8 full; growth stops at the largest that fits).
    pub fn with_memory(bytes: usize) -> OffsetMap {
        let slots = (bytes / SLOT_BYTES).max(16);
        let slots = 1usize << (usize::BITS - 1 - slots.leading_zeros());
        OffsetMap {
            map: HashMap::new(),
            capacity: slots / 8 * 7,
        }
    }

    fn hash(key: &[u8]) -> u128 {
        twox_hash::XxHash3_128::oneshot(key)
    }

    /// Whether `more` new keys may still be added.
    fn has_room(&self, more: usize) -> bool {
        self.map.len() + more <= self.capacity
    }

    fn insert(&mut self, key: &[u8], offset: u64) {
        self.map.insert(Self::hash(key), offset);
    }

    fn latest(&self, key: &[u8]) -> Option<u64> {
        self.map.get(&Self::hash(key)).copied()
    }

    fn memory_bytes(&self) -> usize {
        self.map.capacity().div_ceil(7).saturating_mul(8) * SLOT_BYTES
    }
}

/// Sleeps as needed to keep I/O under a rate.
struct Throttle {
    rate: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    fn new(rate: Option<u64>) -> Throttle {
        Throttle {
            rate: rate.filter(|r| *r > 0),
            started: Instant::now(),
            bytes: 0,
        }
    }

    fn account(&mut self, bytes: u64) {
        let Some(rate) = self.rate else { return };
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            // The cleaner's own thread: pausing it is how the rate is kept.
            std::thread::sleep(ahead);
        }
    }
}

/// Why a pass stopped early without error.
fn stopped(dir: &Path) -> Error {
    Error::io(
        "clean log",
        dir,
        std::io::Error::new(std::io::ErrorKind::Interrupted, "cleaner stopped"),
    )
}

/// Runs one cleaning pass over `partition` if it is due: see the module docs. `upper` is the
/// high watermark. `Ok(None)` when there was nothing to do (or the log changed meanwhile);
/// `stop` ends the pass early (its `.cleaned` files are deleted).
pub fn clean(
    partition: &PartitionLog,
    upper: u64,
    now_ms: i64,
    cleaner: &CleanerConfig,
    stop: &AtomicBool,
) -> Result<Option<CleanStats>> {
    clean_with(partition, upper, now_ms, cleaner, stop, None)
}

pub(crate) fn clean_with(
    partition: &PartitionLog,
    upper: u64,
    now_ms: i64,
    cleaner: &CleanerConfig,
    stop: &AtomicBool,
    crash_after: Option<usize>,
) -> Result<Option<CleanStats>> {
    let Some(view) = partition.with_log(|log| Ok(log.cleaning_view(upper, now_ms)))? else {
        return Ok(None);
    };
    let dirty: u64 = view
        .segments
        .iter()
        .filter(|s| s.end > view.first_dirty)
        .map(|s| s.size_bytes)
        .sum();
    let total: u64 = view.segments.iter().map(|s| s.size_bytes).sum();
    let ratio = if total == 0 {
        0.0
    } else {
        dirty as f64 / total as f64
    };
    // Empty segments left by an earlier pass are merged away too.
    let empties = view.segments.iter().filter(|s| s.size_bytes == 0).count();
    if (dirty == 0 || ratio < view.config.min_cleanable_dirty_ratio) && empties < 2 {
        return Ok(None);
    }
    let started = Instant::now();
    let mut stats = CleanStats::default();
    let mut throttle = Throttle::new(cleaner.io_max_bytes_per_second);
    let limit = view.config.max_batch_decompressed_bytes;

    // 2. The key map over the dirty part.
    let mut map = OffsetMap::with_memory(cleaner.dedupe_buffer_bytes);
    let mut map_end = view.first_dirty;
    'segments: for segment in view.segments.iter().filter(|s| s.end > view.first_dirty) {
        let data = map_sealed(&segment.path, segment.size_bytes)?;
        for batch in batches(data) {
            if stop.load(Ordering::Relaxed) {
                return Err(stopped(&view.dir));
            }
            let batch = batch?;
            let last = batch.last_offset() as u64;
            if last < view.first_dirty {
                continue;
            }
            if !map.has_room(batch.record_count().max(0) as usize) && !map.map.is_empty() {
                map_end = batch.base_offset() as u64;
                break 'segments;
            }
            for record in batch.records_limited(limit)? {
                let record = record?;
                if let Some(key) = &record.key {
                    map.insert(key, record.offset);
                }
            }
            throttle.account(batch.size_bytes() as u64);
            stats.bytes_read += batch.size_bytes() as u64;
        }
        map_end = segment.end;
    }
    stats.map_keys = map.map.len();
    stats.map_bytes = map.memory_bytes();

    // 3. Rewrite every cleanable segment below the map's end, group by group: a group takes
    // segments while what it wrote plus the next one's whole size fits `segment_bytes`.
    let tombstone_horizon = now_ms.saturating_sub(view.config.delete_retention_ms as i64);
    let mut layout_version = view.layout_version;
    let mut pass = Pass {
        view: &view,
        map: &map,
        map_end,
        tombstone_horizon,
        limit,
        throttle: &mut throttle,
        stats: &mut stats,
        stop,
    };
    let mut open: Option<Group> = None;
    let in_range = view.segments.iter().filter(|s| s.base < map_end);
    for segment in in_range {
        let full = open.as_ref().is_some_and(|g| {
            g.writer.size_bytes() + segment.size_bytes > view.config.segment_bytes
                || segment.end - g.base >= u64::from(u32::MAX / 2)
        });
        if full {
            if let Some(group) = open.take() {
                match pass.install(partition, group, layout_version, crash_after)? {
                    Some(version) => layout_version = version,
                    None => return Ok(None),
                }
            }
        }
        let group = match &mut open {
            Some(group) => group,
            None => open.insert(Group {
                writer: CleanedWriter::create(&view.dir, segment.base, &view.config)?,
                base: segment.base,
                end: segment.end,
                old: Vec::new(),
                changed: false,
            }),
        };
        if let Err(e) = pass.copy(segment, group) {
            crate::log::segment::discard_cleaned(&view.dir, group.base);
            return Err(e);
        }
    }
    if let Some(group) = open.take() {
        if pass
            .install(partition, group, layout_version, crash_after)?
            .is_none()
        {
            return Ok(None);
        }
    }

    // 4. The new checkpoint.
    partition.with_log(|log| {
        log.set_cleaned_to(map_end);
        Ok(())
    })?;
    stats.cleaned_to = map_end;
    stats.elapsed = started.elapsed();
    tracing::info!(
        dir = %view.dir.display(),
        segments_read = stats.segments_read,
        segments_written = stats.segments_written,
        read_mb = stats.bytes_read as f64 / 1e6,
        written_mb = stats.bytes_written as f64 / 1e6,
        records_removed = stats.records_removed,
        tombstones_removed = stats.tombstones_removed,
        map_keys = stats.map_keys,
        map_mib = stats.map_bytes as f64 / (1 << 20) as f64,
        mb_per_s = stats.read_mb_per_second(),
        cleaned_to = map_end,
        "compacted log"
    );
    Ok(Some(stats))
}

/// A cleaned segment being written: it replaces the segments `old`, covering `base..end`.
struct Group {
    writer: CleanedWriter,
    base: u64,
    end: u64,
    old: Vec<u64>,
    changed: bool,
}

/// The state of step 3 of one pass.
struct Pass<'a> {
    view: &'a CleaningView,
    map: &'a OffsetMap,
    map_end: u64,
    tombstone_horizon: i64,
    limit: usize,
    throttle: &'a mut Throttle,
    stats: &'a mut CleanStats,
    stop: &'a AtomicBool,
}

impl Pass<'_> {
    /// Copies what compaction keeps of `segment` into `group`.
    fn copy(&mut self, segment: &CleanableSegment, group: &mut Group) -> Result<()> {
        let data = map_sealed(&segment.path, segment.size_bytes)?;
        self.stats.segments_read += 1;
        group.old.push(segment.base);
        group.end = segment.end;
        group.changed |= group.old.len() > 1;
        let drop_tombstones = segment.max_timestamp < self.tombstone_horizon;
        for batch in batches(data) {
            if self.stop.load(Ordering::Relaxed) {
                return Err(stopped(&self.view.dir));
            }
            let batch = batch?;
            self.throttle.account(batch.size_bytes() as u64);
            self.stats.bytes_read += batch.size_bytes() as u64;
            self.stats.records_read += batch.record_count().max(0) as u64;
            // An idempotent producer's newest batch keeps at least its header.
            let keep_header = is_producers_newest(&batch, &self.view.producer_last_offsets);
            let retained = {
                let (map, map_end) = (self.map, self.map_end);
                let mut tombstones = 0;
                let retained =
                    batch.retain(self.limit, keep_header, |record| {
                        match keep_record(record, map, map_end, drop_tombstones) {
                            Keep::Yes => true,
                            Keep::Superseded => false,
                            Keep::ExpiredTombstone => {
                                tombstones += 1;
                                false
                            }
                        }
                    })?;
                self.stats.tombstones_removed += tombstones;
                retained
            };
            match retained {
                Retained::Unchanged => group.writer.push(batch.as_bytes())?,
                Retained::Empty => {
                    group.changed = true;
                    self.stats.records_removed += batch.record_count().max(0) as u64;
                }
                Retained::Rebuilt(bytes) => {
                    group.changed = true;
                    let kept = RecordBatch::parse(bytes.clone())?.record_count();
                    self.stats.records_removed += (batch.record_count() - kept).max(0) as u64;
                    self.throttle.account(bytes.len() as u64);
                    group.writer.push(&bytes)?;
                }
            }
        }
        Ok(())
    }

    /// Finishes `group` and swaps it in (if it changed anything); the new layout version, or
    /// `None` if the log changed meanwhile (the pass is abandoned).
    fn install(
        &mut self,
        partition: &PartitionLog,
        group: Group,
        layout_version: u64,
        crash_after: Option<usize>,
    ) -> Result<Option<u64>> {
        let cleaned = group.writer.finish(group.end)?;
        if !group.changed {
            cleaned.discard();
            return Ok(Some(layout_version));
        }
        self.stats.bytes_written += cleaned.size_bytes;
        self.stats.segments_written += 1;
        let installed = partition.with_log(|log| {
            log.install_cleaned(layout_version, cleaned, &group.old, crash_after)
        })?;
        if installed.is_none() {
            tracing::info!(dir = %self.view.dir.display(), "log changed while it was cleaned (retention or truncation): pass abandoned");
        }
        Ok(installed)
    }
}

/// Whether `batch` is an idempotent producer's newest (its header survives compaction).
fn is_producers_newest(batch: &RecordBatch, last_offsets: &HashMap<i64, u64>) -> bool {
    batch.producer_id() >= 0
        && last_offsets.get(&batch.producer_id()) == Some(&(batch.last_offset() as u64))
}

/// What compaction does with a record.
enum Keep {
    Yes,
    /// A later record has its key.
    Superseded,
    /// The key's latest record, a tombstone past `delete.retention.ms`.
    ExpiredTombstone,
}

/// Whether compaction keeps `record`: see the module docs.
fn keep_record(
    record: &rill_protocol::batch::Record,
    map: &OffsetMap,
    map_end: u64,
    drop_tombstones: bool,
) -> Keep {
    if record.offset >= map_end {
        return Keep::Yes;
    }
    let Some(key) = &record.key else {
        return Keep::Yes;
    };
    if map.latest(key).is_some_and(|o| record.offset < o) {
        Keep::Superseded
    } else if drop_tombstones && record.value.is_none() {
        Keep::ExpiredTombstone
    } else {
        Keep::Yes
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use bytes::Bytes;
    use rill_protocol::batch::{Compression, RecordBatchBuilder};

    use super::*;
    use crate::log::{CleanupPolicy, Log, TopicPartition};

    fn config() -> LogConfig {
        LogConfig {
            cleanup_policy: CleanupPolicy::COMPACT,
            min_cleanable_dirty_ratio: 0.0,
            ..crate::log::tests::small_config()
        }
    }

    /// A batch of `(key, value)` records with timestamp `ts`, compressed with `codec`.
    fn batch(records: &[(String, Option<String>)], ts: i64, codec: Compression) -> Bytes {
        let mut builder = RecordBatchBuilder::new();
        for (key, value) in records {
            builder.append(
                ts,
                Some(key.as_bytes()),
                value.as_deref().map(str::as_bytes),
                &[],
            );
        }
        builder.build_compressed(codec).unwrap()
    }

    /// Writes `rounds` rounds over `keys` keys (every 7th write a tombstone), rolling now and
    /// then; returns the latest (offset, value) per key, as acknowledged.
    fn fill(log: &mut Log, keys: usize, rounds: usize) -> BTreeMap<String, (u64, Option<String>)> {
        let mut latest = BTreeMap::new();
        let mut n = 0;
        for round in 0..rounds {
            let records: Vec<(String, Option<String>)> = (0..keys)
                .map(|k| {
                    n += 1;
                    let value =
                        (n % 7 != 0).then(|| format!("value-{k}-{round}-{}", "x".repeat(40)));
                    (format!("key-{k}"), value)
                })
                .collect();
            let codec = Compression::ALL[round % Compression::ALL.len()];
            for chunk in records.chunks(5) {
                let info = log
                    .append(&batch(chunk, 1_000 + round as i64, codec), 1)
                    .unwrap();
                for (i, (key, value)) in chunk.iter().enumerate() {
                    latest.insert(key.clone(), (info.base_offset + i as u64, value.clone()));
                }
            }
        }
        log.roll().unwrap();
        latest
    }

    /// Every record in the log: offset -> (key, value).
    fn records(log: &mut Log) -> BTreeMap<u64, (String, Option<String>)> {
        let mut out = BTreeMap::new();
        let mut offset = log.log_start_offset();
        while offset < log.log_end_offset() {
            let chunk = log.read(offset, 1 << 16).unwrap();
            if chunk.is_empty() {
                break;
            }
            for b in batches(chunk) {
                let b = b.unwrap();
                b.validate().unwrap();
                for r in b.records().unwrap() {
                    let r = r.unwrap();
                    let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
                    let value = r.value.map(|v| String::from_utf8(v.to_vec()).unwrap());
                    assert!(out.insert(r.offset, (key, value)).is_none());
                }
                offset = b.last_offset() as u64 + 1;
            }
        }
        out
    }

    /// Checks that the log holds exactly the latest record of every key, at its offset (the
    /// tombstones only while `tombstones_kept`).
    fn assert_compacted(
        log: &mut Log,
        latest: &BTreeMap<String, (u64, Option<String>)>,
        tombstones_kept: bool,
    ) {
        let got = records(log);
        let want: BTreeMap<u64, (String, Option<String>)> = latest
            .iter()
            .filter(|(_, (_, value))| tombstones_kept || value.is_some())
            .map(|(key, (offset, value))| (*offset, (key.clone(), value.clone())))
            .collect();
        assert_eq!(got, want);
    }

    fn run(partition: &PartitionLog, now_ms: i64) -> Option<CleanStats> {
        let upper = partition.with_log(|log| Ok(log.log_end_offset())).unwrap();
        clean(
            partition,
            upper,
            now_ms,
            &CleanerConfig::default(),
            &AtomicBool::new(false),
        )
        .unwrap()
    }

    #[test]
    fn compaction_keeps_the_latest_record_per_key_at_its_offset_with_every_codec() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), config()).unwrap();
        let latest = fill(&mut log, 40, 30);
        let (segments, bytes) = (log.segment_count(), log.size_bytes());
        let end = log.log_end_offset();
        let partition = PartitionLog::new(TopicPartition::new("t", 0), log);
        // Tombstones are young (delete.retention.ms of a day from their timestamps).
        let stats = run(&partition, 2_000).expect("a pass ran");
        assert!(
            stats.records_removed > 0 && stats.tombstones_removed == 0,
            "{stats:?}"
        );
        assert_eq!(stats.cleaned_to, end);
        partition
            .with_log(|log| {
                assert!(log.segment_count() < segments && log.size_bytes() < bytes / 10);
                assert_eq!(log.log_end_offset(), end);
                assert_eq!(log.log_start_offset(), 0);
                assert_compacted(log, &latest, true);
                Ok(())
            })
            .unwrap();
        // Nothing new is dirty: no second pass.
        assert!(run(&partition, 2_000).is_none());
        // Reopened from disk: the same.
        drop(partition);
        let mut log = Log::open(dir.path(), config()).unwrap();
        assert_compacted(&mut log, &latest, true);
        assert_eq!(log.cleaned_to(), end);
        // Once delete.retention.ms has passed, the tombstones go too (a pass over new dirt).
        let more = fill(&mut log, 3, 1);
        let mut latest = latest;
        latest.extend(more);
        let partition = PartitionLog::new(TopicPartition::new("t", 0), log);
        let stats = run(&partition, 10 * 24 * 3600 * 1000).expect("a pass ran");
        assert!(stats.tombstones_removed > 0);
        partition
            .with_log(|log| {
                assert_compacted(log, &latest, false);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_reader_holding_old_segments_keeps_a_valid_view_and_producer_state_survives() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), config()).unwrap();
        let mut latest = fill(&mut log, 10, 10);
        // An idempotent producer's newest batch ends up in a sealed segment.
        // (Timestamped now: producer ids expire by their batches' age.)
        let mut builder = RecordBatchBuilder::new().producer(42, 0, 0);
        builder.append(crate::log::now_ms(), Some(b"key-1"), Some(b"p0"), &[]);
        log.append(&builder.build(), 1).unwrap();
        let mut builder = RecordBatchBuilder::new().producer(42, 0, 1);
        builder.append(crate::log::now_ms(), Some(b"key-2"), Some(b"p1"), &[]);
        let retry = builder.build();
        let info = log.append(&retry, 1).unwrap();
        let overwritten = fill(&mut log, 10, 1);
        latest.extend(overwritten);
        let held = log.read(0, 1 << 20).unwrap();
        let partition = PartitionLog::new(TopicPartition::new("t", 0), log);
        run(&partition, crate::log::now_ms()).expect("a pass ran");
        for b in batches(held) {
            b.unwrap().validate().expect("the old mapping stays valid");
        }
        partition
            .with_log(|log| {
                let got = records(log);
                // key-2 was overwritten: the producer's newest batch is left as a bare header.
                assert_eq!(got.get(&info.base_offset), None);
                let header = log.read(info.base_offset, 1)?;
                let header = batches(header).next().unwrap().unwrap();
                assert_eq!(header.base_offset() as u64, info.base_offset);
                assert_eq!(header.record_count(), 0);
                assert_eq!((header.producer_id(), header.base_sequence()), (42, 1));
                Ok(())
            })
            .unwrap();
        drop(partition);
        // Without snapshots the state is rebuilt from the log: the retry is still a duplicate.
        crate::log::producers::delete_snapshots(dir.path(), |_| true).unwrap();
        let mut log = Log::open(dir.path(), config()).unwrap();
        let again = log.append(&retry, 1).unwrap();
        assert_eq!(again.base_offset, info.base_offset);
    }

    #[test]
    fn a_crash_at_any_step_of_the_swap_leaves_a_valid_log_with_every_latest_value() {
        let template = tempfile::tempdir().unwrap();
        let mut log = Log::open(template.path(), config()).unwrap();
        let latest = fill(&mut log, 20, 40);
        log.close().unwrap();
        for crash_after in 1.. {
            let dir = tempfile::tempdir().unwrap();
            for entry in std::fs::read_dir(template.path()).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
            let log = Log::open(dir.path(), config()).unwrap();
            let upper = log.log_end_offset();
            let partition = PartitionLog::new(TopicPartition::new("t", 0), log);
            let result = clean_with(
                &partition,
                upper,
                2_000,
                &CleanerConfig::default(),
                &AtomicBool::new(false),
                Some(crash_after),
            );
            let finished = result.is_ok();
            // A crash: nothing is closed, the directory is opened as found.
            drop(partition);
            std::fs::write(dir.path().join("00000000000000000000.log.cleaned"), b"torn").unwrap();
            let mut log = Log::open(dir.path(), config()).unwrap();
            let got = records(&mut log);
            for (key, (offset, value)) in &latest {
                assert_eq!(
                    got.get(offset),
                    Some(&(key.clone(), value.clone())),
                    "crash after {crash_after} steps lost {key}"
                );
            }
            let names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(
                names
                    .iter()
                    .all(|n| !n.ends_with(".cleaned") && !n.ends_with(".swap")),
                "leftovers after crash {crash_after}: {names:?}"
            );
            // The next pass finishes the job.
            let partition = Arc::new(PartitionLog::new(TopicPartition::new("t", 0), log));
            let _ = run(&partition, 2_000);
            partition
                .with_log(|log| {
                    assert_compacted(log, &latest, true);
                    Ok(())
                })
                .unwrap();
            if finished {
                assert!(crash_after > 6, "the swap has at least 7 steps");
                break;
            }
        }
    }

    #[test]
    fn the_key_map_is_bounded_and_a_full_map_cleans_in_several_passes() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), config()).unwrap();
        let latest = fill(&mut log, 300, 6);
        let partition = PartitionLog::new(TopicPartition::new("t", 0), log);
        let small = CleanerConfig {
            dedupe_buffer_bytes: 64 * SLOT_BYTES, // 56 keys
            io_max_bytes_per_second: None,
        };
        let upper = partition.with_log(|log| Ok(log.log_end_offset())).unwrap();
        let mut passes = 0;
        while let Some(stats) =
            clean(&partition, upper, 2_000, &small, &AtomicBool::new(false)).unwrap()
        {
            passes += 1;
            assert!(stats.map_keys <= 56, "{} keys", stats.map_keys);
            assert!(passes < 1000);
        }
        assert!(passes > 5, "{passes} passes");
        partition
            .with_log(|log| {
                assert_compacted(log, &latest, true);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_follower_replicates_a_compacted_log() {
        let leader_dir = tempfile::tempdir().unwrap();
        let mut leader = Log::open(leader_dir.path(), config()).unwrap();
        let latest = fill(&mut leader, 30, 20);
        let partition = PartitionLog::new(TopicPartition::new("t", 0), leader);
        run(&partition, 2_000).expect("a pass ran");
        // A follower whose topic config says delete (say, the policy was just changed) still
        // takes the leader's gaps, and marks its directory so a rescan at open allows them.
        let delete = LogConfig {
            cleanup_policy: CleanupPolicy::DELETE,
            ..config()
        };
        let follower_dir = tempfile::tempdir().unwrap();
        let mut follower = Log::open(follower_dir.path(), delete.clone()).unwrap();
        partition
            .with_log(|leader| {
                while follower.log_end_offset() < leader.log_end_offset() {
                    let chunk = leader.read(follower.log_end_offset(), 4096)?;
                    follower.append_replica(&chunk)?;
                }
                Ok(())
            })
            .unwrap();
        assert_compacted(&mut follower, &latest, true);
        drop(follower);
        // Every segment rescanned: no recovery point, no indexes.
        for entry in std::fs::read_dir(follower_dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with("index") || name == "recovery-point" {
                std::fs::remove_file(path).unwrap();
            }
        }
        let mut follower = Log::open(follower_dir.path(), delete).unwrap();
        assert_eq!(follower.recovery_report().truncated_bytes, 0);
        assert_compacted(&mut follower, &latest, true);
    }

    #[test]
    fn the_compaction_lag_and_the_dirty_ratio_hold_a_pass_back() {
        let dir = tempfile::tempdir().unwrap();
        let lagging = LogConfig {
            min_compaction_lag_ms: 10_000,
            min_cleanable_dirty_ratio: 0.9,
            ..config()
        };
        let mut log = Log::open(dir.path(), lagging).unwrap();
        let latest = fill(&mut log, 20, 20); // records at 1,000-1,019 ms
        let partition = PartitionLog::new(TopicPartition::new("t", 0), log);
        assert!(
            run(&partition, 5_000).is_none(),
            "younger than min.compaction.lag.ms"
        );
        run(&partition, 20_000).expect("old enough");
        // A little new dirt is below the 0.9 ratio: no pass.
        partition
            .with_log(|log| {
                let more = batch(
                    &[("key-1".into(), Some("new".into()))],
                    1_500,
                    Compression::None,
                );
                log.append(&more, 1)?;
                log.roll()
            })
            .unwrap();
        assert!(run(&partition, 20_000).is_none(), "dirty ratio below 0.9");
        partition
            .with_log(|log| {
                let got = records(log);
                assert!(got.len() > latest.len(), "key-1 has its old and new value");
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn unkeyed_records_are_refused_by_a_compacted_topic() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), config()).unwrap();
        let mut builder = RecordBatchBuilder::new();
        builder.append(1, None, Some(b"v"), &[]);
        let err = log.append(&builder.build(), 1).unwrap_err();
        assert_eq!(err.error_code(), rill_protocol::ErrorCode::INVALID_RECORD);
    }
}
