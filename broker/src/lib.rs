//! `rill-broker`: the broker. Today it holds the storage engine ([`log`]); replication, the
//! metadata controller, consumer groups and the network server come next (see docs/ARCHITECTURE.md).

pub mod config;
pub mod controller;
pub mod error;
pub mod group;
pub mod log;
pub mod server;

pub use error::{Error, Result};
