//! One segment of a partition log: `<base_offset:020>.log` plus its two index files.
//!
//! A segment is *active* (the last one, appended to) or *sealed* (trimmed and read-only).
//!
//! - Active: the data file is preallocated in steps of `preallocate_bytes` with `fallocate` and
//!   written with positional vectored writes (`pwritev`) — chosen over writing through a mapping
//!   by the `append_path` bench (docs/STORAGE.md). Reads go through a shared read-only mapping of
//!   the whole allocated length; when the file grows, a new mapping replaces it and readers keep
//!   the old one alive through their `Bytes`.
//! - Sealed: the data file is trimmed to its valid size; mappings are opened on demand and may be
//!   dropped again by the log's open-segment limit. No file handle stays open.
//!
//! Invariants: `size` is the end of the last complete, CRC-checked batch, and no read ever returns
//! bytes at or past `size`; batches increase in offsets from `base_offset` to `next_offset`
//! (contiguous, except in a segment written by compaction, where removed records leave gaps);
//! a file is only shortened when the segment's own mapping has been dropped, and only bytes past
//! `size` are ever cut, so `Bytes` handed to readers (which end at or before `size`) never point
//! past the end of the file (no SIGBUS). Truncating *valid* data (`truncate_to`) zeroes it in
//! place instead of shortening the file.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use memmap2::Mmap;
use rill_protocol::batch::{peek_offset_and_size, RecordBatch, BATCH_HEADER_BYTES};

use crate::error::{Error, IoContext, Result};
use crate::log::config::LogConfig;
use crate::log::index::{
    offset_entry, read_offset_entry, read_time_entry, time_entry, IndexFile, OFFSET_ENTRY_BYTES,
    TIME_ENTRY_BYTES,
};

/// Writeback of appended data is started every this many bytes (as RocksDB's
/// `bytes_per_sync`; by the write-behind thread, see [`WritebackQueue`]), so that dirty pages
/// never pile up in a segment: the sync after it is sealed then has little left to write.
/// Without it a 1 GiB segment's roll synced up to a gigabyte inline, and every producer of the
/// partition waited (a 450 ms stall at 150 MB/s).
const WRITE_BEHIND_BYTES: u64 = 4 << 20;

/// File name of a segment's data file.
pub fn log_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

fn index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}

fn time_index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.timeindex"))
}

/// A segment's three files, in the order a cleaned segment's are renamed into place (the data
/// file last).
fn segment_paths(dir: &Path, base_offset: u64) -> [PathBuf; 3] {
    [
        time_index_path(dir, base_offset),
        index_path(dir, base_offset),
        dir.join(log_file_name(base_offset)),
    ]
}

/// `path` with `.suffix` appended (`...log` -> `...log.cleaned`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Suffix of a cleaned segment's files while they are written (deleted at open: unfinished).
pub const CLEANED_SUFFIX: &str = "cleaned";
/// Suffix of a cleaned segment's files once complete: from the moment the data file has it,
/// the replacement is committed and opening the log finishes it.
pub const SWAP_SUFFIX: &str = "swap";

/// Last offset of the batch whose header starts `header`.
pub(crate) fn header_last_offset(header: &[u8]) -> u64 {
    let base = u64::from_be_bytes(header[0..8].try_into().unwrap_or_default());
    let delta = i32::from_be_bytes(header[23..27].try_into().unwrap_or_default());
    base + delta.max(0) as u64
}

/// Largest timestamp of the batch whose header starts `header`.
pub(crate) fn header_max_timestamp(header: &[u8]) -> i64 {
    i64::from_be_bytes(header[35..43].try_into().unwrap_or_default())
}

/// Decides where index entries go, identically for appends and for rebuilding by scan.
#[derive(Debug, Clone)]
struct Indexer {
    interval_bytes: u64,
    bytes_since_entry: u64,
    max_timestamp: i64,
}

impl Indexer {
    fn new(interval_bytes: u64) -> Self {
        Indexer {
            interval_bytes,
            bytes_since_entry: 0,
            max_timestamp: i64::MIN,
        }
    }

    /// Called for each batch before it is accounted; returns the entries to write, if any.
    fn before_batch(
        &mut self,
        relative_offset: u32,
        position: u32,
    ) -> Option<([u8; OFFSET_ENTRY_BYTES], [u8; TIME_ENTRY_BYTES])> {
        if position == 0 || self.bytes_since_entry < self.interval_bytes {
            return None;
        }
        self.bytes_since_entry = 0;
        Some((
            offset_entry(relative_offset, position),
            time_entry(self.max_timestamp, relative_offset),
        ))
    }

    fn after_batch(&mut self, size_bytes: u64, max_timestamp: i64) {
        self.bytes_since_entry += size_bytes;
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
    }
}

/// What scanning a segment's bytes found.
#[derive(Debug)]
pub(crate) struct Scan {
    pub valid_bytes: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    offset_entries: Vec<u8>,
    time_entries: Vec<u8>,
    indexer: Indexer,
    /// Why the scan stopped before the end of the data, if it did.
    pub stop_reason: Option<String>,
    /// Whether everything after `valid_bytes` is zero (a preallocated tail, not lost data).
    pub tail_is_zeros: bool,
}

/// Validates batches from the start of `data` (length, magic, contiguous offsets, CRC) and
/// rebuilds index entries, stopping at the first invalid byte.
pub(crate) fn scan(data: &Bytes, base_offset: u64, config: &LogConfig) -> Scan {
    let mut indexer = Indexer::new(config.index_interval_bytes);
    let (mut offset_entries, mut time_entries) = (Vec::new(), Vec::new());
    let mut position = 0usize;
    let mut next_offset = base_offset;
    let mut stop_reason = None;
    while position < data.len() {
        let rest = &data[position..];
        let reason = match peek_offset_and_size(rest) {
            None => Some(format!(
                "{} trailing bytes are too few for a batch header",
                rest.len()
            )),
            Some((offset, size))
                if size < BATCH_HEADER_BYTES as i64 || size > rest.len() as i64 =>
            {
                Some(format!(
                    "batch at offset {offset} declares {size} bytes, {} remain",
                    rest.len()
                ))
            }
            // Offsets are contiguous, except that a compacted log may skip some (removed
            // records). The base offset is outside the CRC: in a log that is not compacted a
            // gap is corruption, and no gap may leave the segment's u32 relative offsets.
            Some((offset, _))
                if offset < next_offset as i64
                    || (offset != next_offset as i64 && !config.cleanup_policy.compact)
                    || offset as u64 - base_offset > u64::from(u32::MAX / 2) =>
            {
                Some(format!("batch has offset {offset}, expected {next_offset}"))
            }
            Some((_, size)) => {
                let batch = RecordBatch::parse(data.slice(position..position + size as usize));
                match batch {
                    Err(e) => Some(e.to_string()),
                    Ok(b) if b.compute_crc() != b.crc() => {
                        Some(format!("CRC mismatch in batch at offset {next_offset}"))
                    }
                    Ok(b) => {
                        let relative = (next_offset - base_offset) as u32;
                        if let Some((o, t)) = indexer.before_batch(relative, position as u32) {
                            offset_entries.extend_from_slice(&o);
                            time_entries.extend_from_slice(&t);
                        }
                        indexer.after_batch(size as u64, b.max_timestamp());
                        next_offset = b.last_offset() as u64 + 1;
                        position += size as usize;
                        None
                    }
                }
            }
        };
        if reason.is_some() {
            stop_reason = reason;
            break;
        }
    }
    let tail_is_zeros = data[position..].iter().all(|b| *b == 0);
    Scan {
        valid_bytes: position as u64,
        next_offset,
        max_timestamp: indexer.max_timestamp,
        offset_entries,
        time_entries,
        indexer,
        stop_reason,
        tail_is_zeros,
    }
}

/// Maps `file` read-only as a `Bytes` owner, or empty `Bytes` for an empty file.
fn map_bytes(file: &File, path: &Path) -> Result<Bytes> {
    let len = file.metadata().context("stat segment", path)?.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: Rill never shortens a data file below bytes a reader can hold (see module docs),
    // and nothing outside the broker writes the data directory.
    let map = unsafe { Mmap::map(file) }.context("map segment", path)?;
    Ok(Bytes::from_owner(map))
}

struct ActiveState {
    file: File,
    data: Bytes,
    allocated_bytes: u64,
    /// Bytes before this have had their writeback started (`start_writeback`).
    written_back: u64,
    offset_index: IndexFile,
    time_index: IndexFile,
    indexer: Indexer,
}

struct OpenSealed {
    data: Bytes,
    offset_index: IndexFile,
}

impl ActiveState {
    /// Drops the segment's own mapping, then shortens the file to `size_bytes` (only bytes past
    /// the valid end, which no reader holds); the caller syncs data and length. The one place a
    /// data file is shortened while the broker runs.
    fn cut_to(&mut self, size_bytes: u64, path: &Path) -> Result<()> {
        self.data = Bytes::new();
        self.file
            .set_len(size_bytes)
            .context("trim segment", path)?;
        self.allocated_bytes = size_bytes;
        Ok(())
    }
}

/// A sealed segment's files (data and both indexes), trimmed but not yet synced: a roll leaves
/// the fsyncs to the next flush, which runs them off the log lock, so no append or replica
/// fetch waits on the disk for a roll (Kafka's roll defers its flush the same way).
pub(crate) struct SealedFiles {
    files: Vec<(File, PathBuf)>,
}

impl SealedFiles {
    /// Second handles to the same files, for a flush that runs without the log.
    pub fn try_clone(&self) -> Result<SealedFiles> {
        let files = self
            .files
            .iter()
            .map(|(file, path)| {
                let file = file.try_clone().context("duplicate segment handle", path)?;
                Ok((file, path.clone()))
            })
            .collect::<Result<_>>()?;
        Ok(SealedFiles { files })
    }

    /// fsync of each file, data and length (the trim shortened them).
    pub fn sync(&self) -> Result<()> {
        for (file, path) in &self.files {
            timed_sync(file, path, Durable::All)?;
        }
        Ok(())
    }
}

/// What [`timed_sync`] makes durable.
pub(crate) enum Durable {
    /// fdatasync: the data (and the length only if reading it needs it).
    Data,
    /// fsync: data and metadata (a trimmed file's new length).
    All,
}

/// Syncs a segment file, its latency going to `rill_fsync_duration_seconds`.
pub(crate) fn timed_sync(file: &File, path: &Path, what: Durable) -> Result<()> {
    let started = std::time::Instant::now();
    let synced = match what {
        Durable::Data => file.sync_data(),
        Durable::All => file.sync_all(),
    };
    crate::metrics::FSYNC_SECONDS.observe(started.elapsed().as_secs_f64());
    synced.context("sync segment", path)
}

enum State {
    Active(ActiveState),
    Sealed(Option<OpenSealed>),
}

/// A segment. See the module docs for its two states and invariants.
pub(crate) struct Segment {
    pub base_offset: u64,
    dir: PathBuf,
    pub size_bytes: u64,
    pub next_offset: u64,
    /// Largest record timestamp in the segment (`i64::MIN` when empty).
    pub max_timestamp: i64,
    /// Broker wall-clock time (ms) of the first append, for rolling by age. Record timestamps
    /// are not used: a producer sending old timestamps would otherwise roll on every append.
    /// A segment recovered at startup counts from the time it was opened.
    pub first_append_ms: Option<i64>,
    state: State,
}

/// Result of loading a segment at open: the segment, and a description of what was cut or
/// rebuilt (for the recovery report and log lines).
pub(crate) struct Loaded {
    pub segment: Segment,
    pub truncated_bytes: u64,
    pub truncation_reason: Option<String>,
    pub rebuilt_index: bool,
}

impl Segment {
    pub fn path(&self) -> PathBuf {
        self.dir.join(log_file_name(self.base_offset))
    }

    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Active(_))
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Active(_) | State::Sealed(Some(_)))
    }

    /// Creates a new, empty active segment.
    pub fn create(dir: &Path, base_offset: u64, config: &LogConfig) -> Result<Segment> {
        let path = dir.join(log_file_name(base_offset));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .context("create segment", &path)?;
        let scan = Scan {
            valid_bytes: 0,
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            offset_entries: Vec::new(),
            time_entries: Vec::new(),
            indexer: Indexer::new(config.index_interval_bytes),
            stop_reason: None,
            tail_is_zeros: true,
        };
        Self::activate(dir, base_offset, file, scan, config)
    }

    fn activate(
        dir: &Path,
        base_offset: u64,
        file: File,
        scan: Scan,
        config: &LogConfig,
    ) -> Result<Segment> {
        let path = dir.join(log_file_name(base_offset));
        let offset_index = IndexFile::create_writable(
            &index_path(dir, base_offset),
            OFFSET_ENTRY_BYTES,
            config.index_max_bytes,
            &scan.offset_entries,
        )?;
        let time_index = IndexFile::create_writable(
            &time_index_path(dir, base_offset),
            TIME_ENTRY_BYTES,
            config.index_max_bytes,
            &scan.time_entries,
        )?;
        let data = map_bytes(&file, &path)?;
        let allocated_bytes = data.len() as u64;
        Ok(Segment {
            base_offset,
            dir: dir.to_owned(),
            size_bytes: scan.valid_bytes,
            next_offset: scan.next_offset,
            max_timestamp: scan.max_timestamp,
            first_append_ms: (scan.valid_bytes > 0).then(crate::log::now_ms),
            state: State::Active(ActiveState {
                file,
                data,
                allocated_bytes,
                written_back: scan.valid_bytes,
                offset_index,
                time_index,
                indexer: scan.indexer,
            }),
        })
    }

    /// Scans a segment's whole data file, cuts it at the first invalid byte, and opens it as the
    /// active segment (`active`) or writes fresh sealed indexes for it.
    pub fn recover(
        dir: &Path,
        base_offset: u64,
        config: &LogConfig,
        active: bool,
    ) -> Result<Loaded> {
        let path = dir.join(log_file_name(base_offset));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .context("open segment", &path)?;
        let data = map_bytes(&file, &path)?;
        let file_len = data.len() as u64;
        let scan = scan(&data, base_offset, config);
        drop(data);
        let cut = file_len - scan.valid_bytes;
        let truncation_reason = match (&scan.stop_reason, scan.tail_is_zeros) {
            (Some(reason), false) => Some(reason.clone()),
            _ => None,
        };
        if cut > 0 {
            // The scan's mapping is dropped, so shortening the file cannot fault a reader.
            file.set_len(scan.valid_bytes)
                .context("truncate segment", &path)?;
            file.sync_all().context("sync segment", &path)?;
        }
        let truncated_bytes = if truncation_reason.is_some() { cut } else { 0 };
        let segment = if active {
            Self::activate(dir, base_offset, file, scan, config)?
        } else {
            let mut time_entries = scan.time_entries.clone();
            if scan.valid_bytes > 0 {
                time_entries.extend_from_slice(&time_entry(
                    scan.max_timestamp,
                    (scan.next_offset - base_offset) as u32,
                ));
            }
            IndexFile::create_sealed(
                &index_path(dir, base_offset),
                OFFSET_ENTRY_BYTES,
                &scan.offset_entries,
            )?;
            IndexFile::create_sealed(
                &time_index_path(dir, base_offset),
                TIME_ENTRY_BYTES,
                &time_entries,
            )?;
            Segment {
                base_offset,
                dir: dir.to_owned(),
                size_bytes: scan.valid_bytes,
                next_offset: scan.next_offset,
                max_timestamp: scan.max_timestamp,
                first_append_ms: None,
                state: State::Sealed(None),
            }
        };
        Ok(Loaded {
            segment,
            truncated_bytes,
            truncation_reason,
            rebuilt_index: true,
        })
    }

    /// Loads a sealed segment below the recovery point without reading its data: size from the
    /// file, end offset and max timestamp from the time index's closing entry. Indexes that are
    /// missing or fail their checks are rebuilt by a scan (which may also cut the segment).
    pub fn load_sealed(dir: &Path, base_offset: u64, config: &LogConfig) -> Result<Loaded> {
        let path = dir.join(log_file_name(base_offset));
        let size_bytes = std::fs::metadata(&path)
            .context("stat segment", &path)?
            .len();
        match Self::check_sealed_indexes(dir, base_offset, size_bytes) {
            Some((next_offset, max_timestamp)) => Ok(Loaded {
                segment: Segment {
                    base_offset,
                    dir: dir.to_owned(),
                    size_bytes,
                    next_offset,
                    max_timestamp,
                    first_append_ms: None,
                    state: State::Sealed(None),
                },
                truncated_bytes: 0,
                truncation_reason: None,
                rebuilt_index: false,
            }),
            None => Self::recover(dir, base_offset, config, false),
        }
    }

    /// Checks a sealed segment's indexes; returns (next offset, max timestamp) if they are sound.
    fn check_sealed_indexes(dir: &Path, base_offset: u64, size_bytes: u64) -> Option<(u64, i64)> {
        let offsets =
            IndexFile::open_sealed(&index_path(dir, base_offset), OFFSET_ENTRY_BYTES).ok()??;
        let times =
            IndexFile::open_sealed(&time_index_path(dir, base_offset), TIME_ENTRY_BYTES).ok()??;
        let (max_timestamp, end_relative) =
            read_time_entry(times.entry(times.len().checked_sub(1)?));
        if size_bytes == 0 || end_relative == 0 {
            return None;
        }
        let mut previous = (None::<u32>, None::<u32>);
        for i in 0..offsets.len() {
            let (relative, position) = read_offset_entry(offsets.entry(i));
            let increasing =
                previous.0.is_none_or(|p| relative > p) && previous.1.is_none_or(|p| position > p);
            if !increasing || relative >= end_relative || u64::from(position) >= size_bytes {
                return None;
            }
            previous = (Some(relative), Some(position));
        }
        let mut previous = (i64::MIN, 0u32);
        for i in 0..times.len() {
            let (timestamp, relative) = read_time_entry(times.entry(i));
            if timestamp < previous.0 || relative < previous.1 || relative > end_relative {
                return None;
            }
            previous = (timestamp, relative);
        }
        Some((base_offset + u64::from(end_relative), max_timestamp))
    }

    /// Maps a sealed segment's data and offset index if they are not mapped. Returns whether it
    /// opened anything (the log counts open segments).
    pub fn ensure_open(&mut self) -> Result<bool> {
        let State::Sealed(open @ None) = &mut self.state else {
            return Ok(false);
        };
        let path = self.dir.join(log_file_name(self.base_offset));
        let file = File::open(&path).context("open segment", &path)?;
        let data = map_bytes(&file, &path)?;
        if (data.len() as u64) < self.size_bytes {
            return Err(Error::CorruptLog {
                path,
                reason: format!(
                    "segment shrank to {} bytes, expected {}",
                    data.len(),
                    self.size_bytes
                ),
            });
        }
        let index_file = index_path(&self.dir, self.base_offset);
        let offset_index =
            IndexFile::open_sealed(&index_file, OFFSET_ENTRY_BYTES)?.ok_or_else(|| {
                Error::CorruptLog {
                    path: index_file,
                    reason: "offset index changed under the broker".into(),
                }
            })?;
        *open = Some(OpenSealed { data, offset_index });
        Ok(true)
    }

    /// Drops a sealed segment's mappings (readers holding `Bytes` keep theirs alive).
    pub fn close_mappings(&mut self) {
        if let State::Sealed(open) = &mut self.state {
            *open = None;
        }
    }

    fn view(&self) -> Option<(&Bytes, &IndexFile)> {
        match &self.state {
            State::Active(a) => Some((&a.data, &a.offset_index)),
            State::Sealed(Some(s)) => Some((&s.data, &s.offset_index)),
            State::Sealed(None) => None,
        }
    }

    /// Whether an append of `bytes` more must go to a new segment instead.
    pub fn needs_roll(&self, bytes: u64, config: &LogConfig, now_ms: i64) -> bool {
        let State::Active(active) = &self.state else {
            return true;
        };
        if self.size_bytes == 0 {
            return false;
        }
        let too_big = self.size_bytes + bytes > config.segment_bytes;
        // Keep one time-index slot for the closing entry written on seal.
        let index_full = active.offset_index.len() + 1
            >= (config.index_max_bytes as usize / OFFSET_ENTRY_BYTES)
            || active.time_index.len() + 2 >= (config.index_max_bytes as usize / TIME_ENTRY_BYTES);
        let too_old = self
            .first_append_ms
            .is_some_and(|t| now_ms.saturating_sub(t) >= config.segment_ms as i64);
        // Relative offsets are u32: leave room for one more batch of up to i32::MAX records.
        let offsets_exhausted = self.next_offset - self.base_offset > u64::from(u32::MAX / 2);
        too_big || index_full || too_old || offsets_exhausted
    }

    /// Whether [`Segment::append`] of `bytes` in `batches` batches would only write into the
    /// page cache: within the preallocated space and the index space already allocated.
    pub fn appends_in_page_cache(&self, bytes: u64, batches: usize) -> bool {
        let State::Active(active) = &self.state else {
            return false;
        };
        let end = self.size_bytes + bytes;
        end <= active.allocated_bytes
            && active.offset_index.has_room(batches)
            && active.time_index.has_room(batches + 1)
    }

    /// Writes already-validated batches at the end of the active segment. `batches` gives, for
    /// each batch, its byte range in `input`, assigned base and last offset, and max timestamp.
    /// Base offsets and leader epochs are written from `headers` (12 + 4 bytes per batch) so the
    /// producer's bytes are written as they are, in one vectored write and without a copy.
    pub fn append(
        &mut self,
        input: &Bytes,
        batches: &[AppendBatch],
        config: &LogConfig,
        now_ms: i64,
    ) -> Result<()> {
        let path = self.path();
        let State::Active(active) = &mut self.state else {
            return Err(Error::CorruptLog {
                path,
                reason: "append to a sealed segment".into(),
            });
        };
        let total: u64 = batches.iter().map(|b| b.range.len() as u64).sum();
        let end = self.size_bytes + total;
        if end > active.allocated_bytes {
            // In steps, but never past the segment's size (a 1 MiB segment reserved 16 MiB
            // and a handful of small-segment partitions filled a disk); a batch larger than
            // the segment size still fits.
            let step = config.preallocate_bytes;
            let target = (end.div_ceil(step) * step).min(config.segment_bytes.max(end));
            preallocate(
                &active.file,
                active.allocated_bytes,
                target - active.allocated_bytes,
                &path,
            )?;
            active.allocated_bytes = target;
            active.data = map_bytes(&active.file, &path)?;
        }
        // Index space first (one entry per batch at most, plus the closing time entry): a full
        // disk fails the append here, before any data is written.
        active.offset_index.reserve(batches.len())?;
        active.time_index.reserve(batches.len() + 1)?;
        let mut slices = Vec::with_capacity(batches.len() * 3);
        for batch in batches {
            slices.push(IoSlice::new(&batch.header[..12]));
            slices.push(IoSlice::new(&batch.header[12..16]));
            slices.push(IoSlice::new(
                &input[batch.range.start + 16..batch.range.end],
            ));
        }
        write_all_vectored_at(&active.file, &mut slices, self.size_bytes)
            .context("write segment", &path)?;
        let mut position = self.size_bytes;
        for batch in batches {
            let relative = (batch.base_offset - self.base_offset) as u32;
            if let Some((o, t)) = active.indexer.before_batch(relative, position as u32) {
                active.offset_index.push(&o);
                active.time_index.push(&t);
            }
            active
                .indexer
                .after_batch(batch.range.len() as u64, batch.max_timestamp);
            position += batch.range.len() as u64;
        }
        debug_assert_eq!(position, end);
        self.size_bytes = end;
        if end - active.written_back >= WRITE_BEHIND_BYTES {
            let queued = match active.file.try_clone() {
                Ok(file) => writeback_queue().push(Writeback {
                    file,
                    offset: active.written_back,
                    len: end - active.written_back,
                }),
                Err(_) => false,
            };
            if !queued {
                tracing::debug!(path = %path.display(), "write-behind skipped a range");
            }
            active.written_back = end;
        }
        self.first_append_ms.get_or_insert(now_ms);
        self.next_offset = batches
            .last()
            .map_or(self.next_offset, |b| b.last_offset + 1);
        self.max_timestamp = active.indexer.max_timestamp;
        Ok(())
    }

    /// A second handle to the active data file, to fdatasync it without holding the log.
    pub fn clone_file(&self) -> Result<Option<File>> {
        match &self.state {
            State::Active(active) => active
                .file
                .try_clone()
                .map(Some)
                .context("duplicate segment handle", &self.path()),
            State::Sealed(_) => Ok(None),
        }
    }

    /// fdatasync of the active data file (its latency goes to `rill_fsync_duration_seconds`).
    pub fn sync(&self) -> Result<()> {
        if let State::Active(active) = &self.state {
            timed_sync(&active.file, &self.path(), Durable::Data)?;
        }
        Ok(())
    }

    /// Writes the closing time-index entry, trims data and index files, and turns the segment
    /// read-only; returns the files for the caller to sync (see [`SealedFiles`]).
    pub fn seal(&mut self) -> Result<SealedFiles> {
        let path = self.path();
        let State::Active(active) = &mut self.state else {
            return Ok(SealedFiles { files: Vec::new() });
        };
        if self.size_bytes > 0 {
            let pushed = active.time_index.push(&time_entry(
                self.max_timestamp,
                (self.next_offset - self.base_offset) as u32,
            ));
            debug_assert!(pushed, "needs_roll keeps a slot for the closing time entry");
        }
        let offset_index = active.offset_index.seal()?;
        let time_index = active.time_index.seal()?;
        active.cut_to(self.size_bytes, &path)?;
        let data = active
            .file
            .try_clone()
            .context("duplicate segment handle", &path)?;
        self.state = State::Sealed(None);
        Ok(SealedFiles {
            files: vec![
                (data, path),
                (offset_index, index_path(&self.dir, self.base_offset)),
                (time_index, time_index_path(&self.dir, self.base_offset)),
            ],
        })
    }

    /// Syncs and trims the active segment's preallocated tail (clean shutdown); it stays active,
    /// and the next append preallocates again.
    pub fn trim(&mut self) -> Result<()> {
        let path = self.path();
        let State::Active(active) = &mut self.state else {
            return Ok(());
        };
        if active.allocated_bytes == self.size_bytes {
            return active.file.sync_data().context("sync segment", &path);
        }
        active.cut_to(self.size_bytes, &path)?;
        active.file.sync_all().context("sync segment", &path)?;
        active.data = map_bytes(&active.file, &path)?;
        Ok(())
    }

    /// Finds the batch containing `offset` (or the first batch after it): its position, base
    /// offset and size. `None` if the segment holds nothing at or after `offset`.
    pub fn locate(&self, offset: u64) -> Result<Option<(usize, u64, usize)>> {
        let Some((data, index)) = self.view() else {
            return Ok(None);
        };
        let relative = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as i64;
        let start = index
            .last_at_or_below(relative, |e| i64::from(read_offset_entry(e).0))
            .map_or(0, |i| read_offset_entry(index.entry(i)).1 as usize);
        let mut position = start;
        let end = self.size_bytes as usize;
        while position + BATCH_HEADER_BYTES <= end {
            let header = &data[position..position + BATCH_HEADER_BYTES];
            let Some((base, size)) = peek_offset_and_size(header) else {
                return Ok(None);
            };
            let size = self.checked_size(position, size)?;
            if header_last_offset(header) >= offset {
                return Ok(Some((position, base as u64, size)));
            }
            position += size;
        }
        Ok(None)
    }

    /// A batch size read from the data (trusted for sealed segments before the recovery point):
    /// one that cannot be a batch or runs past the segment's end is bit rot, reported as an
    /// error instead of looping or reading past the data.
    fn checked_size(&self, position: usize, size: i64) -> Result<usize> {
        let fits = usize::try_from(size).ok().filter(|size| {
            *size >= BATCH_HEADER_BYTES && position + *size <= self.size_bytes as usize
        });
        fits.ok_or_else(|| Error::CorruptLog {
            path: self.path(),
            reason: format!(
                "batch at position {position} claims {size} bytes (segment holds {}); restore this replica from another one",
                self.size_bytes
            ),
        })
    }

    /// Whole batches starting with the one containing `offset`, up to `max_bytes` (but at least
    /// one batch), as a zero-copy slice of the mapping.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Option<Bytes>> {
        let Some((start, _, first_size)) = self.locate(offset)? else {
            return Ok(None);
        };
        let Some((data, _)) = self.view() else {
            return Ok(None);
        };
        let end_limit = self.size_bytes as usize;
        let mut end = start + first_size;
        while end + BATCH_HEADER_BYTES <= end_limit {
            let Some((_, size)) = peek_offset_and_size(&data[end..]) else {
                break;
            };
            // A rotten batch after the first ends this read; reading at it is the error.
            let Ok(size) = self.checked_size(end, size) else {
                break;
            };
            if end + size - start > max_bytes {
                break;
            }
            end += size;
        }
        debug_assert!(end <= end_limit);
        Ok(Some(data.slice(start..end)))
    }

    /// The whole batch starting at `position`, if one does (for timestamp lookups).
    pub fn batch_at(&self, position: usize) -> Option<Bytes> {
        let (data, _) = self.view()?;
        let (_, size) = peek_offset_and_size(data.get(position..self.size_bytes as usize)?)?;
        let size = self.checked_size(position, size).ok()?;
        Some(data.slice(position..position + size))
    }

    /// Removes every batch from the one containing `offset` on: zeroes those bytes in place
    /// (never shortening a mapped file), makes the segment active again, and rebuilds its indexes.
    pub fn truncate_to(&mut self, offset: u64, config: &LogConfig) -> Result<()> {
        let Some((position, base, _)) = self.locate(offset)? else {
            return Ok(());
        };
        debug_assert!(base >= self.base_offset);
        let path = self.path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .context("open segment", &path)?;
        let zeros = vec![0u8; 64 << 10];
        let mut at = position as u64;
        while at < self.size_bytes {
            let n = (self.size_bytes - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)
                .context("zero truncated segment tail", &path)?;
            at += n as u64;
        }
        file.sync_data().context("sync segment", &path)?;
        let data = map_bytes(&file, &path)?;
        let scan = scan(&data.slice(..position), self.base_offset, config);
        drop(data);
        debug_assert_eq!(scan.valid_bytes, position as u64);
        self.state = State::Sealed(None);
        *self = Self::activate(&self.dir.clone(), self.base_offset, file, scan, config)?;
        Ok(())
    }

    /// An offset at or before the first record with a timestamp >= `timestamp` (time index lookup).
    pub fn time_index_floor(&self, timestamp: i64) -> Result<u64> {
        let time_index = match &self.state {
            State::Active(active) => return Ok(self.floor_in(&active.time_index, timestamp)),
            State::Sealed(_) => IndexFile::open_sealed(
                &time_index_path(&self.dir, self.base_offset),
                TIME_ENTRY_BYTES,
            )?,
        };
        Ok(time_index.map_or(self.base_offset, |index| self.floor_in(&index, timestamp)))
    }

    fn floor_in(&self, index: &IndexFile, timestamp: i64) -> u64 {
        // Entries say "all batches before offset o have timestamps <= t": the last entry with
        // t < timestamp is a safe place to start looking for the first timestamp >= `timestamp`.
        index
            .last_at_or_below(timestamp.saturating_sub(1), |e| read_time_entry(e).0)
            .map_or(self.base_offset, |i| {
                self.base_offset + u64::from(read_time_entry(index.entry(i)).1)
            })
    }

    /// Deletes the segment's files. Mappings held by readers stay valid (the inode lives on).
    pub fn delete_files(self) -> Result<()> {
        Self::delete_files_of(&self.dir, self.base_offset)
    }

    /// Deletes the files of the segment at `base_offset` in `dir`, whichever of them exist.
    pub fn delete_files_of(dir: &Path, base_offset: u64) -> Result<()> {
        let paths = [
            dir.join(log_file_name(base_offset)),
            index_path(dir, base_offset),
            time_index_path(dir, base_offset),
        ];
        for path in paths {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("delete segment file", &path, e)),
            }
        }
        Ok(())
    }
}

/// One batch of an append, after validation.
#[derive(Debug, Clone)]
pub(crate) struct AppendBatch {
    pub range: std::ops::Range<usize>,
    /// The batch's first 16 bytes as they will be stored: base offset, length, leader epoch.
    pub header: [u8; 16],
    pub base_offset: u64,
    pub last_offset: u64,
    pub max_timestamp: i64,
}

fn preallocate(file: &File, offset: u64, len: u64, path: &Path) -> Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len) {
        Ok(()) => Ok(()),
        // Filesystems without fallocate: extend the file (sparse) instead.
        Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {
            file.set_len(offset + len).context("extend segment", path)
        }
        Err(e) => Err(Error::io("preallocate segment", path, e.into())),
    }
}

/// Write-behind of a range of a segment's data file.
struct Writeback {
    file: File,
    offset: u64,
    len: u64,
}

/// Hands write-behind ranges from appends to one thread that starts their writeback. Not in the
/// append itself: `sync_file_range` waits when the device's queue is full (the block layer's
/// writeback throttling), and there every producer of the partition waited with it, under the
/// log lock (seen in the brokers' kernel stacks with three brokers on one busy disk). Nor in
/// chunks from the storage tick: 100 ms of appends at a time (over 100 MB at full speed) cost
/// single-node bursts a higher p99 (3-6 ms -> 4.5-16.5 ms). Never blocks an append: when the
/// thread is behind, a range is dropped (write-behind only spreads the writes; the fsyncs
/// still decide durability).
struct WritebackQueue {
    sender: Option<std::sync::mpsc::SyncSender<Writeback>>,
}

impl WritebackQueue {
    /// A queue of at most `capacity` ranges and its thread (none if it cannot be spawned:
    /// every range is dropped then).
    fn start(capacity: usize) -> WritebackQueue {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Writeback>(capacity);
        let spawned = std::thread::Builder::new()
            .name("rill-writeback".into())
            .spawn(move || {
                for range in receiver {
                    start_writeback(&range.file, range.offset, range.len);
                }
            });
        match spawned {
            Ok(_) => WritebackQueue {
                sender: Some(sender),
            },
            Err(e) => {
                tracing::warn!("no write-behind thread ({e}): dirty pages wait for the flushes");
                WritebackQueue { sender: None }
            }
        }
    }

    /// Queues a range; false if it was dropped (queue full, or no thread).
    fn push(&self, range: Writeback) -> bool {
        self.sender
            .as_ref()
            .is_some_and(|sender| sender.try_send(range).is_ok())
    }
}

/// The process's write-behind queue (one thread for every log, like the kernel's flusher).
fn writeback_queue() -> &'static WritebackQueue {
    static QUEUE: std::sync::OnceLock<WritebackQueue> = std::sync::OnceLock::new();
    QUEUE.get_or_init(|| WritebackQueue::start(256))
}

/// Starts writeback of `len` bytes at `offset` of `file` without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`; the durable syncs stay `fdatasync`). A failure
/// only logs: a write error shows again in the next sync, which decides.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range reads and writes no memory of this process; the descriptor is
    // open (borrowed from `file`) for the whole call.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc != 0 {
        tracing::debug!(
            "starting writeback failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// `pwritev` until every slice is written.
fn write_all_vectored_at(
    file: &File,
    mut slices: &mut [IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match rustix::io::pwritev(file, slices, offset) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "pwritev wrote nothing",
                ))
            }
            Ok(n) => {
                offset += n as u64;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes the segment that compaction makes of a group of sealed segments covering
/// `base_offset..end_offset`: `<base>.log.cleaned` and its two indexes (`.cleaned`), sealed.
/// Nothing is visible to the log until [`CleanedSegment::commit`].
pub(crate) struct CleanedWriter {
    dir: PathBuf,
    base_offset: u64,
    file: std::io::BufWriter<File>,
    path: PathBuf,
    size_bytes: u64,
    indexer: Indexer,
    offset_entries: Vec<u8>,
    time_entries: Vec<u8>,
    last_offset: Option<u64>,
}

impl CleanedWriter {
    pub fn create(dir: &Path, base_offset: u64, config: &LogConfig) -> Result<CleanedWriter> {
        let path = with_suffix(&dir.join(log_file_name(base_offset)), CLEANED_SUFFIX);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .context("create cleaned segment", &path)?;
        Ok(CleanedWriter {
            dir: dir.to_owned(),
            base_offset,
            file: std::io::BufWriter::with_capacity(256 << 10, file),
            path,
            size_bytes: 0,
            indexer: Indexer::new(config.index_interval_bytes),
            offset_entries: Vec::new(),
            time_entries: Vec::new(),
            last_offset: None,
        })
    }

    /// Bytes written so far.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Appends one whole, valid batch; offsets must increase from the base offset.
    pub fn push(&mut self, batch: &[u8]) -> Result<()> {
        use std::io::Write as _;
        let Some((base, _)) = peek_offset_and_size(batch) else {
            return Err(self.corrupt("a batch without a header"));
        };
        if batch.len() < BATCH_HEADER_BYTES {
            return Err(self.corrupt("a batch without a header"));
        }
        let (base, last) = (base as u64, header_last_offset(batch));
        let in_order = self.last_offset.is_none_or(|l| base > l);
        if base < self.base_offset || last - self.base_offset >= u64::from(u32::MAX) || !in_order {
            return Err(self.corrupt(&format!(
                "batch {base}..={last} out of order for a segment at {}",
                self.base_offset
            )));
        }
        let relative = (base - self.base_offset) as u32;
        if let Some((o, t)) = self.indexer.before_batch(relative, self.size_bytes as u32) {
            self.offset_entries.extend_from_slice(&o);
            self.time_entries.extend_from_slice(&t);
        }
        self.indexer
            .after_batch(batch.len() as u64, header_max_timestamp(batch));
        self.file
            .write_all(batch)
            .context("write cleaned segment", &self.path)?;
        self.size_bytes += batch.len() as u64;
        self.last_offset = Some(last);
        Ok(())
    }

    fn corrupt(&self, reason: &str) -> Error {
        Error::CorruptLog {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// Flushes and fsyncs the data, then writes the sealed indexes (the time index closes with
    /// the group's end offset, so the cleaned segment covers the same offsets as the ones it
    /// replaces, also where its last records were removed).
    /// `end_offset` is the end of the range the segment replaces (past its last batch).
    pub fn finish(self, end_offset: u64) -> Result<CleanedSegment> {
        let CleanedWriter {
            dir,
            base_offset,
            file,
            path,
            size_bytes,
            indexer,
            offset_entries,
            mut time_entries,
            last_offset: self_last_offset,
        } = self;
        let file = file
            .into_inner()
            .map_err(|e| Error::io("write cleaned segment", &path, e.into_error()))?;
        file.sync_all().context("sync cleaned segment", &path)?;
        drop(file);
        if self_last_offset.is_some_and(|l| l >= end_offset) || end_offset <= base_offset {
            return Err(Error::CorruptLog {
                path,
                reason: format!("cleaned segment at {base_offset} does not end by {end_offset}"),
            });
        }
        time_entries.extend_from_slice(&time_entry(
            indexer.max_timestamp,
            (end_offset - base_offset) as u32,
        ));
        let cleaned = CleanedSegment {
            dir,
            base_offset,
            end_offset,
            size_bytes,
            max_timestamp: indexer.max_timestamp,
        };
        let [time_path, index_path, _] = cleaned.paths(CLEANED_SUFFIX);
        IndexFile::create_sealed(&index_path, OFFSET_ENTRY_BYTES, &offset_entries)?;
        IndexFile::create_sealed(&time_path, TIME_ENTRY_BYTES, &time_entries)?;
        Ok(cleaned)
    }
}

/// A cleaned segment written and synced, not yet in place.
#[derive(Debug)]
pub(crate) struct CleanedSegment {
    dir: PathBuf,
    pub base_offset: u64,
    pub end_offset: u64,
    pub size_bytes: u64,
    pub max_timestamp: i64,
}

impl CleanedSegment {
    fn paths(&self, suffix: &str) -> [PathBuf; 3] {
        segment_paths(&self.dir, self.base_offset).map(|p| with_suffix(&p, suffix))
    }

    /// Removes the cleaned files (cleaning abandoned).
    pub fn discard(self) {
        discard_cleaned(&self.dir, self.base_offset);
    }

    /// Puts the cleaned segment in place of the segments at `old_bases` (which lie in its
    /// range and include its base): indexes renamed to `.swap`, then the data file (the commit
    /// point: from here on opening the log finishes the replacement, see [`finish_swaps`]),
    /// then the old files deleted, then the `.swap` files renamed to their final names, the
    /// data file last. Every step is made durable before the next (directory fsyncs). Readers
    /// holding the old segments' mappings keep a valid view (the inodes live on).
    /// `crash_after` stops after that many file operations (tests of each crash point).
    pub fn commit(self, old_bases: &[u64], crash_after: Option<usize>) -> Result<Segment> {
        let mut done = 0usize;
        let mut step = |op: std::io::Result<()>, what: &str, path: &Path| -> Result<()> {
            match op {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && what == "delete" => {}
                Err(e) => return Err(Error::io("replace cleaned segment", path, e)),
            }
            done += 1;
            if crash_after == Some(done) {
                return Err(Error::CorruptLog {
                    path: path.to_owned(),
                    reason: format!("simulated crash after {done} steps"),
                });
            }
            Ok(())
        };
        let cleaned = self.paths(CLEANED_SUFFIX);
        let swap = self.paths(SWAP_SUFFIX);
        for i in 0..2 {
            step(std::fs::rename(&cleaned[i], &swap[i]), "rename", &swap[i])?;
        }
        sync_dir(&self.dir)?;
        step(std::fs::rename(&cleaned[2], &swap[2]), "rename", &swap[2])?;
        sync_dir(&self.dir)?;
        for &old in old_bases {
            for path in segment_paths(&self.dir, old) {
                step(std::fs::remove_file(&path), "delete", &path)?;
            }
        }
        sync_dir(&self.dir)?;
        for (from, to) in swap.iter().zip(segment_paths(&self.dir, self.base_offset)) {
            step(std::fs::rename(from, &to), "rename", &to)?;
        }
        sync_dir(&self.dir)?;
        Ok(Segment {
            base_offset: self.base_offset,
            dir: self.dir.clone(),
            size_bytes: self.size_bytes,
            next_offset: self.end_offset,
            max_timestamp: self.max_timestamp,
            first_append_ms: None,
            state: State::Sealed(None),
        })
    }
}

/// Deletes the `.cleaned` files of the segment at `base_offset`, whichever exist.
pub(crate) fn discard_cleaned(dir: &Path, base_offset: u64) {
    for path in segment_paths(dir, base_offset) {
        let _ = std::fs::remove_file(with_suffix(&path, CLEANED_SUFFIX));
    }
}

/// Finishes every committed replacement by a cleaned segment (a data file `<base>.log.swap`)
/// that a crash interrupted: deletes what is left of the segments it replaces (found from the
/// end offset its time index closes with) and renames its files into place. Uncommitted ones
/// (index `.swap` files without the data file's) are deleted; `.cleaned` files are left for
/// the listing to delete. Called when a log opens, before its segments are listed.
pub(crate) fn finish_swaps(dir: &Path) -> Result<usize> {
    let mut swapped = Vec::new();
    let mut orphans = Vec::new();
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).context("list log directory", dir)? {
        let entry = entry.context("list log directory", dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(base) = name.get(..20).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        match &name[20..] {
            ".log.swap" => swapped.push(base),
            ".index.swap" | ".timeindex.swap" => orphans.push((base, entry.path())),
            ".log" => bases.push(base),
            _ => {}
        }
    }
    for (base, path) in orphans {
        if !swapped.contains(&base) {
            tracing::info!(path = %path.display(), "removing an uncommitted cleaned index");
            std::fs::remove_file(&path).context("delete uncommitted index", &path)?;
        }
    }
    for &base in &swapped {
        let [time_path, index_path, log_path] = segment_paths(dir, base);
        let time_swap = with_suffix(&time_path, SWAP_SUFFIX);
        let index_swap = with_suffix(&index_path, SWAP_SUFFIX);
        // The data file is renamed last: while it is a `.swap`, a time index without the
        // suffix is already the new one.
        let time_now = if time_swap.exists() {
            &time_swap
        } else {
            &time_path
        };
        let end = IndexFile::open_sealed(time_now, TIME_ENTRY_BYTES)?
            .and_then(|index| {
                let last = index.len().checked_sub(1)?;
                Some(read_time_entry(index.entry(last)).1)
            })
            .filter(|relative| *relative > 0)
            .map(|relative| base + u64::from(relative))
            .ok_or_else(|| Error::CorruptLog {
                path: time_now.clone(),
                reason: "the time index of a committed cleaned segment names no end offset; restore this replica from another one".into(),
            })?;
        let mut doomed = vec![log_path.clone()];
        if time_swap.exists() {
            doomed.push(time_path.clone());
        }
        if index_swap.exists() {
            doomed.push(index_path.clone());
        }
        for &old in bases.iter().filter(|b| **b > base && **b < end) {
            doomed.extend(segment_paths(dir, old));
        }
        for path in doomed {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("delete replaced segment", &path, e)),
            }
        }
        sync_dir(dir)?;
        for (from, to) in [
            (time_swap, time_path),
            (index_swap, index_path),
            (with_suffix(&log_path, SWAP_SUFFIX), log_path),
        ] {
            if from.exists() {
                std::fs::rename(&from, &to).context("rename cleaned segment", &to)?;
            }
        }
        sync_dir(dir)?;
        tracing::info!(dir = %dir.display(), segment = base, end, "finished replacing segments by their cleaned segment (interrupted by a crash)");
    }
    Ok(swapped.len())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context("sync directory", dir)
}

/// Maps the first `size_bytes` of a sealed segment's data file on its own (the cleaner reads
/// with the log unlocked; sealed data is never shortened, and deletion keeps the inode alive).
pub(crate) fn map_sealed(path: &Path, size_bytes: u64) -> Result<Bytes> {
    let file = File::open(path).context("open segment", path)?;
    let data = map_bytes(&file, path)?;
    if (data.len() as u64) < size_bytes {
        return Err(Error::CorruptLog {
            path: path.to_owned(),
            reason: format!("segment holds {} bytes, expected {size_bytes}", data.len()),
        });
    }
    Ok(data.slice(..size_bytes as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(dir: &Path) -> Writeback {
        let file = File::create(dir.join("range")).unwrap();
        file.write_all_at(&[1u8; 8192], 0).unwrap();
        Writeback {
            file,
            offset: 0,
            len: 8192,
        }
    }

    #[test]
    fn write_behind_takes_ranges_and_drops_them_rather_than_wait() {
        let dir = tempfile::tempdir().unwrap();
        let queue = WritebackQueue::start(4);
        assert!(queue.push(range(dir.path())), "a queue with room takes it");
        let without_thread = WritebackQueue { sender: None };
        assert!(
            !without_thread.push(range(dir.path())),
            "no thread: the range is dropped, never waited for"
        );
    }
}
