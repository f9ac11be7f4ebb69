//! `rill-broker`: the broker — storage engine ([`log`]), metadata controller ([`controller`]),
//! partition replication ([`replica`]), consumer groups ([`group`]) and the network server
//! ([`server`]). docs/ARCHITECTURE.md maps them.

pub mod admin;
pub mod config;
pub mod controller;
pub mod error;
pub mod group;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod ops;
pub mod quota;
pub mod replica;
pub mod security;
pub mod server;
pub mod tls;

pub use error::{Error, Result};
