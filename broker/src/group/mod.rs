//! Consumer groups: server-side assignment (`assignor`), Kafka's classic JoinGroup/SyncGroup
//! protocol with client-side assignment (`classic`), per-group membership with cooperative
//! hand-off (`state`), and the coordinator that hosts groups on the leader of their
//! `__consumer_offsets` partition and persists committed offsets there (`coordinator`).

pub mod assignor;
pub mod classic;
pub mod coordinator;
pub mod state;
