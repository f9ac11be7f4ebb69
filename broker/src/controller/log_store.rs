//! The Raft log store of the metadata quorum: an append-only file of checksummed entries plus a
//! small metadata file (vote, committed id, last purged id), both under `<data_dir>/raft/`.
//!
//! ```text
//! raft/log:   record* where record = length u32 | crc32 u32 | postcard(StoredEntry)
//! raft/meta:  length u32 | crc32 u32 | postcard(StoredMeta)        (replaced atomically)
//! ```
//!
//! Invariants: `append` reports an entry flushed to openraft only after `fdatasync` returned;
//! the vote is fsynced (write, fsync, rename, fsync directory) before `save_vote` returns; a torn
//! or corrupt record at the end of the log is cut on open, never applied. The metadata log is
//! small (cluster changes, not records), so truncation and purge rewrite the file atomically, and
//! its I/O runs inline on the Raft task: it is never on the produce or fetch path.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use crate::controller::metadata::NodeId;
use crate::controller::TypeConfig;

#[derive(Serialize, Deserialize)]
enum StoredEntry {
    V1(Entry<TypeConfig>),
}

#[derive(Serialize, Deserialize, Default, Clone)]
enum StoredMeta {
    #[default]
    Empty,
    V1 {
        vote: Option<Vote<NodeId>>,
        committed: Option<LogId<NodeId>>,
        last_purged: Option<LogId<NodeId>>,
    },
}

struct Inner {
    dir: PathBuf,
    log: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

/// The log store; clones share state (openraft asks for a separate reader).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn storage_write(e: std::io::Error) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

/// Frames `payload` as length | crc | payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits framed records off `bytes`; stops at the first incomplete or corrupt one and returns
/// the records and the length of the valid prefix.
fn unframe(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len =
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_be_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        records.push(payload);
        at += 8 + len;
    }
    (records, at)
}

/// `raft/reserve`: disk space held back for the metadata quorum. Partition logs can fill the
/// disk the Raft state shares; a Raft write that fails then stops the Raft node (openraft
/// treats storage errors as fatal), so the broker could not even register to serve what it
/// holds. A write that fails for want of space releases the reserve and is tried once more
/// (CockroachDB's "ballast" file is the model). Created (fallocated) at start when missing,
/// and again by the first successful write once there is space: a second full disk finds it
/// there too (found by the fault suite: with the reserve back only at the next start, a second
/// full disk stopped the Raft node for good and the broker never led anything again).
const RESERVE_FILE: &str = "reserve";
const RESERVE_BYTES: u64 = 4 << 20;

/// Creates the reserve if it is missing; whether it is there now. A failure (the disk may be
/// full) is logged as `quiet` says: at start a warning, after a write only at debug level
/// (it is tried again after every write until it works).
fn ensure_reserve(dir: &Path, quiet: bool) -> bool {
    let path = dir.join(RESERVE_FILE);
    if path.exists() {
        return true;
    }
    let created = File::create(&path).and_then(|file| {
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, RESERVE_BYTES)
            .map_err(std::io::Error::from)?;
        file.sync_all()
    });
    match created {
        Ok(()) => true,
        Err(e) => {
            let _ = fs::remove_file(&path);
            if quiet {
                tracing::debug!(path = %path.display(), "cannot restore the metadata quorum's reserve yet: {e}");
            } else {
                tracing::warn!(path = %path.display(), "cannot reserve {} MiB for the metadata quorum: {e}", RESERVE_BYTES >> 20);
            }
            false
        }
    }
}

/// Runs `write`; if it fails for want of space and the reserve is still there, releases the
/// reserve and runs `write` once more. `write` must be safe to repeat. After a successful
/// write, a released reserve is restored if there is room for it again.
pub(crate) fn with_reserve<T>(
    dir: &Path,
    mut write: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let result = match write() {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
            if fs::remove_file(dir.join(RESERVE_FILE)).is_err() {
                return Err(e);
            }
            tracing::error!(
                dir = %dir.display(),
                "DISK FULL: released the metadata quorum's {} MiB reserve so the controller keeps working; free disk space now (the reserve is restored once there is room)",
                RESERVE_BYTES >> 20
            );
            return write();
        }
        other => other,
    };
    if result.is_ok() && !dir.join(RESERVE_FILE).exists() && ensure_reserve(dir, true) {
        tracing::info!(dir = %dir.display(), "disk space is back: the metadata quorum's {} MiB reserve is restored", RESERVE_BYTES >> 20);
    }
    result
}

/// Writes `bytes` to `path` atomically and durably.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

impl LogStore {
    /// Opens the store in `dir` (created if missing), cutting a torn tail of the log file.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let log_path = dir.join("log");
        let bytes = match fs::read(&log_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (records, valid) = unframe(&bytes);
        let mut entries = BTreeMap::new();
        for record in records {
            let StoredEntry::V1(entry) = postcard::from_bytes(record).map_err(io_err)?;
            entries.insert(entry.log_id.index, entry);
        }
        let created = !log_path.exists();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        if created {
            // The new file's directory entry must be durable before entries are reported
            // flushed in it.
            File::open(dir)?.sync_all()?;
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        ensure_reserve(dir, false);
        if valid < bytes.len() {
            tracing::warn!(path = %log_path.display(), cut = bytes.len() - valid, "cut a torn tail off the metadata Raft log");
            log.set_len(valid as u64)?;
            log.sync_all()?;
        }
        let meta = match fs::read(dir.join("meta")) {
            Ok(bytes) => match unframe(&bytes).0.first() {
                Some(payload) => postcard::from_bytes(payload).map_err(io_err)?,
                None => return Err(io_err("raft/meta is corrupt; restore it or remove this node's raft directory and re-add the node")),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoredMeta::Empty,
            Err(e) => return Err(e),
        };
        let (vote, committed, last_purged) = match meta {
            StoredMeta::Empty => (None, None, None),
            StoredMeta::V1 {
                vote,
                committed,
                last_purged,
            } => (vote, committed, last_purged),
        };
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_owned(),
                log,
                entries,
                vote,
                committed,
                last_purged,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn save_meta(&self) -> std::io::Result<()> {
        let meta = StoredMeta::V1 {
            vote: self.vote,
            committed: self.committed,
            last_purged: self.last_purged,
        };
        let bytes = frame(&postcard::to_allocvec(&meta).map_err(io_err)?);
        with_reserve(&self.dir, || write_atomic(&self.dir, "meta", &bytes))
    }

    /// Rewrites the whole log file from `entries` (after truncate or purge).
    fn rewrite_log(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for entry in self.entries.values() {
            bytes.extend(frame(
                &postcard::to_allocvec(&StoredEntry::V1(entry.clone())).map_err(io_err)?,
            ));
        }
        with_reserve(&self.dir, || write_atomic(&self.dir, "log", &bytes))?;
        self.log = OpenOptions::new().append(true).open(self.dir.join("log"))?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.vote = Some(*vote);
        inner
            .save_meta()
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.committed = committed;
        inner.save_meta().map_err(storage_write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut bytes = Vec::new();
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        for entry in &entries {
            let payload = postcard::to_allocvec(&StoredEntry::V1(entry.clone()))
                .map_err(|e| storage_write(io_err(e)))?;
            bytes.extend(frame(&payload));
        }
        // Durable before openraft hears "flushed": it may count this entry towards a quorum.
        // A failed attempt is cut off again before the retry (no torn record in the middle).
        let inner = &mut *inner;
        let (dir, log) = (&inner.dir, &mut inner.log);
        let result = with_reserve(dir, || {
            let end = log.metadata()?.len();
            let written = log.write_all(&bytes).and_then(|()| log.sync_data());
            if written.is_err() {
                let _ = log.set_len(end);
            }
            written
        });
        if result.is_ok() {
            for entry in entries {
                inner.entries.insert(entry.log_id.index, entry);
            }
        }
        let failed = result.as_ref().err().map(|e| io_err(e.to_string()));
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(storage_write(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.entries.retain(|index, _| *index < log_id.index);
        inner.rewrite_log().map_err(storage_write)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.last_purged = Some(log_id);
        inner.save_meta().map_err(storage_write)?;
        inner.entries.retain(|index, _| *index > log_id.index);
        inner.rewrite_log().map_err(storage_write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unframe_stops_at_a_torn_or_corrupt_record() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(b"two"));
        let whole = bytes.len();
        bytes.extend(&frame(b"three")[..5]);
        let (records, valid) = unframe(&bytes);
        assert_eq!(records, vec![&b"one"[..], &b"two"[..]]);
        assert_eq!(valid, whole);
        let mut corrupt = frame(b"one");
        corrupt[9] ^= 1;
        assert_eq!(unframe(&corrupt).1, 0);
    }
}
