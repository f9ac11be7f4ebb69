//! The leader epoch cache of a partition (Kafka's `leader-epoch-checkpoint`, KIP-101): for every
//! leader epoch that wrote to the log, the offset of its first record. A follower that may hold
//! records of a deposed leader asks the new leader where its last epoch ends there and truncates
//! the divergent tail, instead of trusting a high watermark.
//!
//! Invariants: epochs and start offsets strictly increase; no entry starts at or beyond the log
//! end (enforced by `truncate_from` after every truncation and at open). The file is written
//! atomically (temp file, fsync, rename) before the records of a new epoch are appended, so a
//! crash can leave an entry without records (removed at open) but never records without an entry.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// File name in the partition directory.
pub const EPOCH_FILE: &str = "leader-epoch-checkpoint";

/// See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    /// `(epoch, start_offset)`, both strictly increasing.
    entries: Vec<(u32, u64)>,
}

impl EpochCache {
    /// Reads the cache of `dir`; `None` if there is no (readable) file.
    pub fn load(dir: &Path) -> Option<EpochCache> {
        let text = fs::read_to_string(dir.join(EPOCH_FILE)).ok()?;
        let mut lines = text.lines();
        if lines.next()? != "1" {
            return None;
        }
        let mut cache = EpochCache::default();
        for line in lines {
            let (epoch, start) = line.split_once(' ')?;
            let (epoch, start) = (epoch.parse().ok()?, start.parse().ok()?);
            if !cache.accepts(epoch, start) {
                return None;
            }
            cache.entries.push((epoch, start));
        }
        Some(cache)
    }

    /// Writes the cache atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(EPOCH_FILE);
        let tmp: PathBuf = dir.join(format!("{EPOCH_FILE}.tmp"));
        let mut text = String::from("1\n");
        for (epoch, start) in &self.entries {
            text.push_str(&format!("{epoch} {start}\n"));
        }
        let mut file = fs::File::create(&tmp).context("create epoch checkpoint", &tmp)?;
        file.write_all(text.as_bytes())
            .context("write epoch checkpoint", &tmp)?;
        file.sync_all().context("sync epoch checkpoint", &tmp)?;
        fs::rename(&tmp, &path).context("rename epoch checkpoint", &path)?;
        // The rename is durable only once the directory is.
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .context("sync directory", dir)
    }

    fn accepts(&self, epoch: u32, start: u64) -> bool {
        self.entries
            .last()
            .is_none_or(|&(e, s)| epoch > e && start >= s)
    }

    /// Records that `epoch` starts at `start` if it is newer than the last epoch; returns whether
    /// the cache changed. An older epoch is an error for the caller to report.
    pub fn assign(&mut self, epoch: u32, start: u64) -> Option<bool> {
        match self.entries.last() {
            Some(&(last, _)) if epoch == last => Some(false),
            Some(&(last, _)) if epoch < last => None,
            _ => {
                // An entry for an epoch that never wrote (start == previous start) is replaced.
                if self.entries.last().is_some_and(|&(_, s)| s == start) {
                    self.entries.pop();
                }
                self.entries.push((epoch, start));
                Some(true)
            }
        }
    }

    /// Drops entries starting at or after `offset` (the log was truncated to `offset`).
    pub fn truncate_from(&mut self, offset: u64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|&(_, s)| s < offset);
        before != self.entries.len()
    }

    /// Drops every entry (the log restarts empty).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The epoch of the last record, if any.
    pub fn last_epoch(&self) -> Option<u32> {
        self.entries.last().map(|&(e, _)| e)
    }

    /// The largest epoch `<= epoch` and the offset where it ends (the next epoch's start, or
    /// `log_end` for the last one). `None` if every known epoch is newer than `epoch`.
    pub fn end_offset_for(&self, epoch: u32, log_end: u64) -> Option<(u32, u64)> {
        let i = self.entries.partition_point(|&(e, _)| e <= epoch);
        if i == 0 {
            return None;
        }
        let end = self.entries.get(i).map_or(log_end, |&(_, s)| s);
        Some((self.entries[i - 1].0, end))
    }

    pub fn entries(&self) -> &[(u32, u64)] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_offsets_and_truncation() {
        let mut cache = EpochCache::default();
        assert_eq!(cache.assign(0, 0), Some(true));
        assert_eq!(cache.assign(0, 5), Some(false));
        assert_eq!(cache.assign(2, 10), Some(true));
        assert_eq!(cache.assign(1, 12), None, "epochs never go back");
        assert_eq!(cache.assign(4, 20), Some(true));
        assert_eq!(cache.end_offset_for(0, 30), Some((0, 10)));
        assert_eq!(
            cache.end_offset_for(1, 30),
            Some((0, 10)),
            "epoch 1 never wrote"
        );
        assert_eq!(cache.end_offset_for(3, 30), Some((2, 20)));
        assert_eq!(cache.end_offset_for(9, 30), Some((4, 30)));
        assert!(cache.truncate_from(15));
        assert_eq!(cache.last_epoch(), Some(2));
        let dir = tempfile::tempdir().unwrap();
        cache.save(dir.path()).unwrap();
        assert_eq!(EpochCache::load(dir.path()), Some(cache));
        fs::write(dir.path().join(EPOCH_FILE), "1\n3 10\n2 20\n").unwrap();
        assert_eq!(
            EpochCache::load(dir.path()),
            None,
            "a corrupt file is not trusted"
        );
    }
}
