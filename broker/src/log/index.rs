//! Sparse, memory-mapped index files of one segment: the offset index and the time index.
//!
//! ```text
//! <base>.index      entries of 8 bytes:  relative_offset u32 | position u32        (big-endian)
//! <base>.timeindex  entries of 12 bytes: timestamp i64      | relative_offset u32
//! ```
//!
//! An offset index entry says "the batch whose base offset is `base + relative_offset` starts at
//! byte `position`". A time index entry says "every batch of this segment before offset
//! `base + relative_offset` has timestamps <= `timestamp`" (the maximum so far). Sealing a segment
//! appends one last time entry for the segment end, so its timestamp is the segment's maximum.
//!
//! The active segment's index files are preallocated to `index_max_bytes` and mapped writable;
//! the entry count lives in memory (recovery rebuilds it by scanning the log, so a torn or
//! zero-filled tail of an index is never trusted). A sealed segment's index files are trimmed to
//! their entries and mapped read-only. Invariants: keys are strictly increasing (relative offset,
//! position) or non-decreasing (timestamp); an index is never truncated while mapped.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};

use crate::error::{Error, IoContext, Result};

/// Bytes of an offset index entry.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of a time index entry.
pub const TIME_ENTRY_BYTES: usize = 12;

enum Mapping {
    Empty,
    Writable(MmapMut),
    ReadOnly(Mmap),
    /// The entries copied to memory: a seal that failed after dropping the writable mapping
    /// (file descriptors or disk space ran out) leaves the index readable, not a panic.
    Heap(Vec<u8>),
}

/// Entries' worth of disk reserved at a time for a writable index (64 KiB of entries).
const ALLOCATE_STEP_BYTES: u64 = 64 << 10;

/// Reserves disk for `file`'s bytes `[offset, offset + len)` so no page of its mapping is ever
/// first touched on a full filesystem (which raises SIGBUS): `fallocate`, or zeros written with
/// positional writes where the filesystem has no `fallocate`.
fn allocate(file: &File, offset: u64, len: u64, path: &Path) -> Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {
            use std::os::unix::fs::FileExt;
            let zeros = vec![0u8; 64 << 10];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], offset + at)
                    .context("preallocate index", path)?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(Error::io("preallocate index", path, e.into())),
    }
}

/// A file of fixed-size entries, mapped into memory.
pub(crate) struct IndexFile {
    path: PathBuf,
    entry_bytes: usize,
    entries: usize,
    capacity: usize,
    /// Writable indexes: entries whose disk space is reserved (`reserve`); the file is
    /// `capacity` entries long but only this prefix is allocated and ever written.
    allocated: usize,
    map: Mapping,
    /// Writable indexes: the open file, to reserve more space.
    file: Option<File>,
}

impl IndexFile {
    /// Creates (or replaces) a writable, preallocated index holding `entries` (encoded).
    pub fn create_writable(
        path: &Path,
        entry_bytes: usize,
        capacity_bytes: u64,
        entries: &[u8],
    ) -> Result<IndexFile> {
        debug_assert_eq!(entries.len() % entry_bytes, 0);
        let capacity = (capacity_bytes as usize / entry_bytes).max(entries.len() / entry_bytes);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .context("create index", path)?;
        // The file is sized sparsely to its capacity; disk is reserved step by step ahead of the
        // entries (`reserve`), so a full disk fails an append instead of raising SIGBUS.
        file.set_len((capacity * entry_bytes) as u64)
            .context("size index", path)?;
        let step_entries = (ALLOCATE_STEP_BYTES as usize / entry_bytes).max(1);
        let needed = entries.len() / entry_bytes;
        let mut allocated = (needed + step_entries).min(capacity);
        if let Err(e) = allocate(&file, 0, (allocated * entry_bytes) as u64, path) {
            // A full disk (recovery rebuilding an index): take just what the entries need, so
            // the log still opens; appends then fail cleanly in `reserve` until space returns.
            tracing::warn!(path = %path.display(), "cannot reserve index space ahead: {e}");
            allocate(&file, 0, (needed * entry_bytes) as u64, path)?;
            allocated = needed;
        }
        // SAFETY: the mapping covers the file length just set; Rill never shrinks an index file
        // while it is mapped (see `seal`), and no other process writes the data directory.
        let mut map = unsafe { MmapMut::map_mut(&file) }.context("map index", path)?;
        // No read-ahead on faults: the first write into a fresh index otherwise faults in (and
        // zero-fills) as much of the file as the device's read-ahead (8 MiB here, under an
        // append's log lock: 2 ms into recycled memory, 50 ms into memory the VM had handed
        // back), where one page is all an append needs. A hint; a kernel without it reads ahead.
        if let Err(e) = map.advise(memmap2::Advice::Random) {
            tracing::debug!(path = %path.display(), "madvise(MADV_RANDOM) on the index: {e}");
        }
        map[..entries.len()].copy_from_slice(entries);
        Ok(IndexFile {
            path: path.to_owned(),
            entry_bytes,
            entries: entries.len() / entry_bytes,
            capacity,
            allocated,
            map: Mapping::Writable(map),
            file: Some(file),
        })
    }

    /// Writes a sealed index with exactly `entries` and maps it read-only.
    pub fn create_sealed(path: &Path, entry_bytes: usize, entries: &[u8]) -> Result<IndexFile> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .context("create index", path)?;
        file.write_all(entries).context("write index", path)?;
        file.sync_data().context("sync index", path)?;
        drop(file);
        Self::open_sealed(path, entry_bytes)?.ok_or_else(|| partial_entry(path))
    }

    /// Maps an existing sealed index read-only. `Ok(None)` if its length is not a whole number of
    /// entries (the caller rebuilds it); an error if it cannot be opened (missing, unreadable).
    pub fn open_sealed(path: &Path, entry_bytes: usize) -> Result<Option<IndexFile>> {
        let file = File::open(path).context("open index", path)?;
        let len = file.metadata().context("stat index", path)?.len() as usize;
        if !len.is_multiple_of(entry_bytes) {
            return Ok(None);
        }
        let map = if len == 0 {
            Mapping::Empty
        } else {
            // SAFETY: as in `create_writable`; a sealed index is never written or truncated again
            // except by `reopen_writable`, which drops this mapping first.
            Mapping::ReadOnly(unsafe { Mmap::map(&file) }.context("map index", path)?)
        };
        Ok(Some(IndexFile {
            path: path.to_owned(),
            entry_bytes,
            entries: len / entry_bytes,
            capacity: len / entry_bytes,
            allocated: len / entry_bytes,
            map,
            file: None,
        }))
    }

    fn bytes(&self) -> &[u8] {
        match &self.map {
            Mapping::Empty => &[],
            Mapping::Writable(m) => &m[..self.entries * self.entry_bytes],
            Mapping::ReadOnly(m) => &m[..self.entries * self.entry_bytes],
            Mapping::Heap(v) => &v[..self.entries * self.entry_bytes],
        }
    }

    /// The raw bytes of entry `i`.
    pub fn entry(&self, i: usize) -> &[u8] {
        &self.bytes()[i * self.entry_bytes..(i + 1) * self.entry_bytes]
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether [`IndexFile::reserve`] of `more` entries has nothing to allocate.
    pub fn has_room(&self, more: usize) -> bool {
        (self.entries + more).min(self.capacity) <= self.allocated || self.file.is_none()
    }

    /// Makes sure disk space is reserved for `more` entries after the current ones (or up to
    /// the capacity), before the data they will index is written.
    pub fn reserve(&mut self, more: usize) -> Result<()> {
        let wanted = (self.entries + more).min(self.capacity);
        if wanted <= self.allocated {
            return Ok(());
        }
        let Some(file) = &self.file else {
            return Ok(());
        };
        let step_entries = (ALLOCATE_STEP_BYTES as usize / self.entry_bytes).max(1);
        let target = (wanted.div_ceil(step_entries) * step_entries).min(self.capacity);
        let from = (self.allocated * self.entry_bytes) as u64;
        let len = ((target - self.allocated) * self.entry_bytes) as u64;
        allocate(file, from, len, &self.path)?;
        self.allocated = target;
        Ok(())
    }

    /// Appends an encoded entry; false if the index is full, read-only, or its space was not
    /// reserved ([`IndexFile::reserve`]; a sparse index simply misses that entry).
    pub fn push(&mut self, entry: &[u8]) -> bool {
        debug_assert_eq!(entry.len(), self.entry_bytes);
        let Mapping::Writable(map) = &mut self.map else {
            return false;
        };
        if self.entries >= self.capacity || self.entries >= self.allocated {
            return false;
        }
        let at = self.entries * self.entry_bytes;
        map[at..at + self.entry_bytes].copy_from_slice(entry);
        self.entries += 1;
        true
    }

    /// Index of the last entry whose key (as read by `key`) is <= `target`.
    pub fn last_at_or_below(&self, target: i64, key: impl Fn(&[u8]) -> i64) -> Option<usize> {
        let (mut low, mut high) = (0, self.entries);
        while low < high {
            let mid = low + (high - low) / 2;
            if key(self.entry(mid)) <= target {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low.checked_sub(1)
    }

    /// Trims the file to its entries and maps it read-only, without syncing: returns a handle
    /// to the file for the caller to fsync (a roll leaves that to the next flush, off the log
    /// lock). The writable mapping is dropped before the file is shortened; the entries written
    /// through it stay in the page cache until that fsync writes them.
    pub fn seal(&mut self) -> Result<File> {
        // Until the sealed file is mapped again, lookups read a copy (a failure below leaves
        // a consistent, read-only index).
        let entries = self.bytes().to_vec();
        self.map = Mapping::Heap(entries);
        self.file = None;
        let file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .context("open index", &self.path)?;
        file.set_len((self.entries * self.entry_bytes) as u64)
            .context("trim index", &self.path)?;
        let sealed = Self::open_sealed(&self.path, self.entry_bytes)?
            .ok_or_else(|| partial_entry(&self.path))?;
        *self = sealed;
        Ok(file)
    }
}

fn partial_entry(path: &Path) -> Error {
    Error::CorruptLog {
        path: path.to_owned(),
        reason: "index file changed under the broker: not a whole number of entries".into(),
    }
}

/// Encodes an offset index entry.
pub fn offset_entry(relative_offset: u32, position: u32) -> [u8; OFFSET_ENTRY_BYTES] {
    let mut e = [0u8; OFFSET_ENTRY_BYTES];
    e[..4].copy_from_slice(&relative_offset.to_be_bytes());
    e[4..].copy_from_slice(&position.to_be_bytes());
    e
}

/// Decodes an offset index entry into (relative offset, position).
pub fn read_offset_entry(e: &[u8]) -> (u32, u32) {
    (
        u32::from_be_bytes([e[0], e[1], e[2], e[3]]),
        u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
    )
}

/// Encodes a time index entry.
pub fn time_entry(timestamp: i64, relative_offset: u32) -> [u8; TIME_ENTRY_BYTES] {
    let mut e = [0u8; TIME_ENTRY_BYTES];
    e[..8].copy_from_slice(&timestamp.to_be_bytes());
    e[8..].copy_from_slice(&relative_offset.to_be_bytes());
    e
}

/// Decodes a time index entry into (timestamp, relative offset).
pub fn read_time_entry(e: &[u8]) -> (i64, u32) {
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&e[..8]);
    (
        i64::from_be_bytes(ts),
        u32::from_be_bytes([e[8], e[9], e[10], e[11]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `path` in the page cache (mincore over a mapping of the whole file).
    fn resident_pages(path: &Path) -> usize {
        let file = File::open(path).unwrap();
        let map = unsafe { Mmap::map(&file) }.unwrap();
        let page = 4096;
        let mut vec = vec![0u8; map.len().div_ceil(page)];
        let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|v| **v & 1 == 1).count()
    }

    /// The first entry written into a fresh 10 MiB index brings in a page or a few, not the
    /// device's read-ahead worth of zeros (8 MiB on the development VMs), all under an
    /// append's log lock.
    #[test]
    fn the_first_write_into_a_fresh_index_reads_nothing_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut index =
            IndexFile::create_writable(&path, OFFSET_ENTRY_BYTES, 10 << 20, &[]).unwrap();
        assert!(index.push(&offset_entry(0, 0)));
        assert!(index.push(&offset_entry(1, 4096)));
        let resident = resident_pages(&path);
        assert!(
            (1..=16).contains(&resident),
            "{resident} pages of the index in the page cache after one write"
        );
    }

    #[test]
    fn writable_index_pushes_looks_up_seals_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut index = IndexFile::create_writable(&path, OFFSET_ENTRY_BYTES, 64, &[]).unwrap();
        for i in 0..8u32 {
            assert!(index.push(&offset_entry(i * 10, i * 100)));
        }
        assert!(
            !index.push(&offset_entry(80, 800)),
            "a full index refuses entries"
        );
        let key = |e: &[u8]| i64::from(read_offset_entry(e).0);
        assert_eq!(index.last_at_or_below(35, key), Some(3));
        assert_eq!(index.last_at_or_below(-1, key), None);
        index.seal().unwrap().sync_all().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 * 8);
        let reopened = IndexFile::open_sealed(&path, OFFSET_ENTRY_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(reopened.len(), 8);
        assert_eq!(read_offset_entry(reopened.entry(4)), (40, 400));
    }

    #[test]
    fn index_with_partial_entry_is_reported_for_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        std::fs::write(&path, [1u8; 13]).unwrap();
        assert!(IndexFile::open_sealed(&path, TIME_ENTRY_BYTES)
            .unwrap()
            .is_none());
    }
}
