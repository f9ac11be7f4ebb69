//! The partition log storage engine.
//!
//! A partition is a directory of segments (`segment`), each a data file of record batches plus a
//! sparse offset index and time index (`index`). [`Log`] (`partition`) owns the directory:
//! appends (validate, assign offsets, one positional vectored write), zero-copy reads (`Bytes`
//! slices of a read-only mapping), rolling, retention, truncation, timestamp lookup, flush
//! policy and crash recovery. docs/STORAGE.md specifies the files byte by byte.
//!
//! ```
//! use bytes::Bytes;
//! use rill_broker::log::{Log, LogConfig};
//! use rill_protocol::batch::RecordBatchBuilder;
//! let dir = tempfile::tempdir().unwrap();
//! let mut log = Log::open(dir.path(), LogConfig::default()).unwrap();
//! let mut batch = RecordBatchBuilder::new();
//! batch.append(1_700_000_000_000, None, Some(b"hello"), &[]);
//! let info = log.append(&batch.build(), 0).unwrap();
//! assert_eq!(info.base_offset, 0);
//! let bytes: Bytes = log.read(0, 1 << 20).unwrap();
//! assert!(!bytes.is_empty());
//! ```

pub mod cleaner;
pub mod config;
pub mod epochs;
pub(crate) mod index;
pub mod manager;
pub mod meta;
pub mod partition;
pub mod producers;
pub(crate) mod segment;

pub use cleaner::{CleanStats, CleanerConfig};
pub use config::{CleanupPolicy, FlushPolicy, LogConfig};
pub use manager::{Locking, LogManager, LogStats, PartitionLog, TopicPartition};
pub use partition::{
    monotonic_ms, now_ms, AppendInfo, Flushed, Log, PendingFlush, RecoveryReport, RetentionOutcome,
    RECOVERY_POINT_FILE,
};

/// The most bytes of one partition's batches that an async task appends itself when they only
/// go into the page cache (`Log::append_in_page_cache`, a copy of about 0.1-0.3 ms here): a
/// leader's produce on the connection's task, a follower's fetched records on its fetcher's
/// task. More go to a blocking thread, so that one large append does not hold a runtime worker
/// for long.
pub(crate) const INLINE_APPEND_MAX_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests;
