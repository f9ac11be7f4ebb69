//! Per-log settings with documented defaults, and their validation.

use crate::error::{Error, Result};

/// When appended data is forced to stable storage (fdatasync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every append is fdatasync'ed before `append` returns.
    Always,
    /// Appends return at once; the log is fdatasync'ed when `interval_ms` has passed since the
    /// last flush (checked on append and by [`crate::log::Log::flush_if_due`]). Callers that must
    /// not acknowledge before durability wait for [`crate::log::Log::flushed_offset`] to pass
    /// their batch (group commit).
    Interval { interval_ms: u64 },
    /// Never fdatasync'ed by the log except after a segment is sealed (by the next tick, off
    /// the log lock) and on close; the kernel writes pages back when it likes.
    Os,
}

impl std::str::FromStr for FlushPolicy {
    type Err = Error;

    /// Parses `always`, `os`, or `interval:<ms>`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "always" => Ok(FlushPolicy::Always),
            "os" => Ok(FlushPolicy::Os),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(interval_ms)) if interval_ms > 0 => {
                    Ok(FlushPolicy::Interval { interval_ms })
                }
                _ => Err(Error::InvalidConfig(format!(
                    "flush policy {s:?}: expected always, os or interval:<ms> with ms > 0"
                ))),
            },
        }
    }
}

/// What happens to old data (`cleanup.policy`): deleted by retention, compacted by key, or
/// both. Retention (`retention_ms`, `retention_bytes`) applies only with `delete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    pub delete: bool,
    pub compact: bool,
}

impl CleanupPolicy {
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };
    pub const COMPACT: CleanupPolicy = CleanupPolicy {
        delete: false,
        compact: true,
    };
}

impl std::str::FromStr for CleanupPolicy {
    type Err = Error;

    /// Parses `delete`, `compact`, or both comma-separated (Kafka's spelling).
    fn from_str(s: &str) -> Result<Self> {
        let mut policy = CleanupPolicy {
            delete: false,
            compact: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                _ => {
                    return Err(Error::InvalidConfig(format!(
                        "cleanup.policy {s:?}: expected delete, compact or compact,delete"
                    )))
                }
            }
        }
        Ok(policy)
    }
}

impl std::fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (self.compact, self.delete) {
            (true, true) => "compact,delete",
            (true, false) => "compact",
            _ => "delete",
        })
    }
}

/// Settings of one partition log. See docs/STORAGE.md for what each bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// A segment is rolled when the next append would take it past this size. Default 1 GiB; at most 2 GiB.
    pub segment_bytes: u64,
    /// A non-empty segment is rolled once its first batch is this old. Default 7 days.
    pub segment_ms: u64,
    /// An index entry is written every this many bytes of log. Default 4 KiB.
    pub index_interval_bytes: u64,
    /// Size each index file is preallocated to; a full index rolls the segment. Default 10 MiB.
    pub index_max_bytes: u64,
    /// The active segment's file grows in steps of this size (fallocate), never past
    /// `segment_bytes` unless one batch is larger. Default 16 MiB.
    pub preallocate_bytes: u64,
    /// Largest single batch accepted. Default 1 MiB.
    pub max_batch_bytes: usize,
    /// Most bytes a compressed batch's records may decompress to where the broker looks
    /// inside (leader validation, timestamp lookup): a decompression bomb is refused at this
    /// bound. Default 32 MiB.
    pub max_batch_decompressed_bytes: usize,
    /// An idempotent producer unseen this long is forgotten. Default 1 day (Kafka's).
    pub producer_id_expiration_ms: u64,
    /// Most idempotent producers tracked per partition (past that the least recently active is
    /// forgotten). Default 10000.
    pub max_producers_per_partition: usize,
    /// Sealed segments are deleted, oldest first, while the log stays at least this large. Default none.
    pub retention_bytes: Option<u64>,
    /// Sealed segments whose newest record is older than this are deleted. Default 7 days.
    pub retention_ms: Option<u64>,
    /// Default: `interval:1000`.
    pub flush: FlushPolicy,
    /// `cleanup.policy`. Default delete.
    pub cleanup_policy: CleanupPolicy,
    /// A compacted log is cleaned once this share of its cleanable bytes was written since the
    /// last cleaning (`min.cleanable.dirty.ratio`). Default 0.5.
    pub min_cleanable_dirty_ratio: f64,
    /// Tombstones (records with a null value) are removed by compaction once their segment's
    /// newest record is this old (`delete.retention.ms`). Default 1 day.
    pub delete_retention_ms: u64,
    /// Records younger than this are never compacted (`min.compaction.lag.ms`). Default 0.
    pub min_compaction_lag_ms: u64,
    /// Most sealed segments of this log kept mapped at once (3 mappings each, no file handles). Default 8.
    pub open_sealed_segments_max: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            index_max_bytes: 10 << 20,
            preallocate_bytes: 16 << 20,
            max_batch_bytes: 1 << 20,
            max_batch_decompressed_bytes:
                rill_protocol::compression::DEFAULT_MAX_DECOMPRESSED_BYTES,
            producer_id_expiration_ms: 24 * 3600 * 1000,
            max_producers_per_partition: 10_000,
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            flush: FlushPolicy::Interval { interval_ms: 1000 },
            cleanup_policy: CleanupPolicy::DELETE,
            min_cleanable_dirty_ratio: 0.5,
            delete_retention_ms: 24 * 3600 * 1000,
            min_compaction_lag_ms: 0,
            open_sealed_segments_max: 8,
        }
    }
}

impl LogConfig {
    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::InvalidConfig(msg));
        if self.segment_bytes < 4096 || self.segment_bytes > (1 << 31) {
            return fail(format!(
                "segment_bytes {} must be between 4096 and 2147483648",
                self.segment_bytes
            ));
        }
        if (self.max_batch_bytes as u64) < 64 || self.max_batch_bytes as u64 > (1 << 30) {
            return fail(format!(
                "max_batch_bytes {} must be between 64 and 1073741824",
                self.max_batch_bytes
            ));
        }
        if self.max_batch_decompressed_bytes < 1024 || self.max_batch_decompressed_bytes > (1 << 30)
        {
            return fail(format!(
                "max_batch_decompressed_bytes {} must be between 1024 and 1073741824",
                self.max_batch_decompressed_bytes
            ));
        }
        if self.producer_id_expiration_ms == 0 || self.max_producers_per_partition == 0 {
            return fail(
                "producer_id_expiration_ms and max_producers_per_partition must be positive".into(),
            );
        }
        if self.index_interval_bytes == 0 {
            return fail("index_interval_bytes must be positive".into());
        }
        if self.index_max_bytes < 64 || self.index_max_bytes > (1 << 30) {
            return fail(format!(
                "index_max_bytes {} must be between 64 and 1073741824",
                self.index_max_bytes
            ));
        }
        if self.preallocate_bytes < 4096 {
            return fail(format!(
                "preallocate_bytes {} must be at least 4096",
                self.preallocate_bytes
            ));
        }
        if self.open_sealed_segments_max == 0 {
            return fail("open_sealed_segments_max must be at least 1".into());
        }
        if self.segment_ms == 0 {
            return fail("segment_ms must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.min_cleanable_dirty_ratio) {
            return fail(format!(
                "min.cleanable.dirty.ratio {} must be between 0 and 1",
                self.min_cleanable_dirty_ratio
            ));
        }
        if !self.cleanup_policy.delete && !self.cleanup_policy.compact {
            return fail("cleanup.policy must name delete, compact or both".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policy_parses() {
        assert_eq!(
            "always".parse::<FlushPolicy>().unwrap(),
            FlushPolicy::Always
        );
        assert_eq!(
            "interval:5".parse::<FlushPolicy>().unwrap(),
            FlushPolicy::Interval { interval_ms: 5 }
        );
        assert!("interval:0".parse::<FlushPolicy>().is_err());
        assert!("sometimes".parse::<FlushPolicy>().is_err());
    }

    #[test]
    fn default_is_valid_and_limits_are_checked() {
        LogConfig::default().validate().unwrap();
        let bad = LogConfig {
            segment_bytes: 1 << 40,
            ..LogConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
