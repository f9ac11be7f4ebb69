//! `rill-protocol`: the Rill wire format, as pure encode/decode over `bytes` buffers.
//!
//! This crate does no I/O and starts no runtime: it turns bytes into typed values and back, so
//! that the broker, the client, tests and fuzzers share one definition of the format.
//!
//! - [`frame`]: length-prefixed frames, request/response headers, and the tokio-util codecs.
//! - [`acl`]: the ACL codes on the wire and their names.
//! - [`api`]: api keys and every request and response body.
//! - [`batch`]: the record batch (builder, zero-copy reader, validation).
//! - [`compression`]: the batch codecs (gzip, snappy, lz4, zstd), with bounded decompression.
//! - [`sasl`]: the PLAIN and SCRAM-SHA-256/512 exchanges (both sides) and stored credentials.
//! - [`error`]: the one error-code table ([`ErrorCode`]) and [`ProtocolError`].
//! - [`wire`]: the primitive encodings everything above is made of.
//!
//! docs/PROTOCOL.md specifies every byte; this crate is its reference implementation.

pub mod acl;
pub mod api;
pub mod batch;
pub mod compression;
pub mod error;
pub mod frame;
pub mod sasl;
pub mod wire;

pub use error::{ErrorCode, ProtocolError};
