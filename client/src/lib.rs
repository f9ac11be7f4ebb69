//! `rill-client`: the Rust client for Rill (Producer, Consumer, Admin) and the `rill` CLI.
//!
//! The client is built in the "working broker" issue; today this crate re-exports the wire
//! protocol it will speak, so applications can already build and inspect record batches.
//!
//! ```
//! use rill_client::protocol::batch::RecordBatchBuilder;
//! let mut batch = RecordBatchBuilder::new();
//! batch.append(0, Some(b"key"), Some(b"value"), &[]);
//! assert_eq!(batch.record_count(), 1);
//! ```

pub use rill_protocol as protocol;
