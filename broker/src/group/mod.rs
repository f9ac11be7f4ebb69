//! Consumer groups: server-side assignment (`assignor`) and per-group membership with
//! cooperative hand-off (`state`). The coordinator that hosts groups on the leader of their
//! `__consumer_offsets` partition, and the offsets it persists there, build on these.

pub mod assignor;
pub mod state;
