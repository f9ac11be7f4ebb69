//! The metadata state machine: applies committed commands to `MetadataState`, publishes each new
//! state on a `watch` channel (the broker's other parts react to it), and keeps snapshots in
//! `<data_dir>/raft/snapshot` (written atomically) so the Raft log can be purged.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::controller::metadata::{
    CommandResult, MetadataState, MetadataStateV1, MetadataStateV2, NodeId,
};
use crate::controller::TypeConfig;

/// A snapshot file. postcard is not self-describing: a change to `MetadataState`'s shape adds a
/// variant, and older variants are converted on load. (The shapes of Rills before data format 1
/// went with the directories that held them: `meta.properties` refuses those directories.)
#[derive(Serialize, Deserialize, Clone)]
enum StoredSnapshot {
    /// Data format 1: cluster id and producer id blocks.
    V1 {
        meta: SnapshotMeta<NodeId, BasicNode>,
        state: MetadataStateV1,
    },
    /// And the brokers' other listeners (the Kafka addresses).
    V2 {
        meta: SnapshotMeta<NodeId, BasicNode>,
        state: MetadataStateV2,
    },
    /// And users (SCRAM credentials), ACLs and client quotas.
    V3 {
        meta: SnapshotMeta<NodeId, BasicNode>,
        state: MetadataState,
    },
}

impl StoredSnapshot {
    fn into_parts(self) -> (SnapshotMeta<NodeId, BasicNode>, MetadataState) {
        match self {
            StoredSnapshot::V1 { meta, state } => (meta, state.into()),
            StoredSnapshot::V2 { meta, state } => (meta, state.into()),
            StoredSnapshot::V3 { meta, state } => (meta, state),
        }
    }

    fn meta(&self) -> &SnapshotMeta<NodeId, BasicNode> {
        match self {
            StoredSnapshot::V1 { meta, .. }
            | StoredSnapshot::V2 { meta, .. }
            | StoredSnapshot::V3 { meta, .. } => meta,
        }
    }
}

/// See the module docs.
pub struct StateMachine {
    dir: PathBuf,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: MetadataState,
    publisher: watch::Sender<Arc<MetadataState>>,
    snapshots_built: u64,
}

fn read_snapshot(dir: &Path) -> std::io::Result<Option<StoredSnapshot>> {
    match std::fs::read(dir.join("snapshot")) {
        Ok(bytes) => postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::other(format!("raft/snapshot is corrupt: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_snapshot(dir: &Path, snapshot: &StoredSnapshot) -> std::io::Result<Vec<u8>> {
    let bytes = postcard::to_allocvec(snapshot).map_err(std::io::Error::other)?;
    let tmp = dir.join("snapshot.tmp");
    super::log_store::with_reserve(dir, || {
        std::fs::write(&tmp, &bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dir.join("snapshot"))?;
        std::fs::File::open(dir)?.sync_all()
    })?;
    Ok(bytes)
}

impl StateMachine {
    /// Loads the last snapshot (if any) from `dir`; openraft re-applies committed entries after it.
    pub fn open(
        dir: &Path,
        publisher: watch::Sender<Arc<MetadataState>>,
    ) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let mut machine = StateMachine {
            dir: dir.to_owned(),
            last_applied: None,
            membership: StoredMembership::default(),
            state: MetadataState::default(),
            publisher,
            snapshots_built: 0,
        };
        if let Some((meta, state)) = read_snapshot(dir)?.map(StoredSnapshot::into_parts) {
            machine.last_applied = meta.last_log_id;
            machine.membership = meta.last_membership;
            machine.state = state;
            machine.publish();
        }
        Ok(machine)
    }

    fn publish(&self) {
        self.publisher.send_replace(Arc::new(self.state.clone()));
    }

    fn snapshot_meta(&self) -> SnapshotMeta<NodeId, BasicNode> {
        let id = self.last_applied.map_or_else(
            || "empty".to_string(),
            |l| format!("{}-{}-{}", l.leader_id, l.index, self.snapshots_built),
        );
        SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: id,
        }
    }
}

/// Builds a snapshot from a copy of the state taken when openraft asked for a builder.
pub struct SnapshotBuilder {
    dir: PathBuf,
    snapshot: StoredSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let bytes = write_snapshot(&self.dir, &self.snapshot)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Snapshot {
            meta: self.snapshot.meta().clone(),
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => CommandResult::Ok,
                EntryPayload::Normal(command) => {
                    let result = self.state.apply_at(&command, entry.log_id.index);
                    tracing::debug!(?command, ?result, "applied metadata command");
                    result
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResult::Ok
                }
            };
            results.push(result);
        }
        self.publish();
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        SnapshotBuilder {
            dir: self.dir.clone(),
            snapshot: StoredSnapshot::V3 {
                meta: self.snapshot_meta(),
                state: self.state.clone(),
            },
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let (_, state) = postcard::from_bytes::<StoredSnapshot>(&bytes)
            .map_err(|e| {
                StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(e))
            })?
            .into_parts();
        let stored = StoredSnapshot::V3 {
            meta: meta.clone(),
            state: state.clone(),
        };
        write_snapshot(&self.dir, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.state = state;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored =
            read_snapshot(&self.dir).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|stored| {
            let bytes = postcard::to_allocvec(&stored).unwrap_or_default();
            Snapshot {
                meta: stored.meta().clone(),
                snapshot: Box::new(Cursor::new(bytes)),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::controller::metadata::Command;

    #[test]
    fn a_format_1_snapshot_loads_with_no_listeners_and_new_ones_keep_them() {
        let mut state = MetadataState::default();
        state.apply(&Command::Register {
            node_id: 1,
            host: "h".into(),
            port: 9292,
            incarnation: 7,
        });
        let v1 = MetadataStateV1 {
            brokers: state.brokers.clone(),
            topics: state.topics.clone(),
            cluster_id: Some("c".into()),
            next_producer_id: 5,
        };
        let bytes = postcard::to_allocvec(&StoredSnapshot::V1 {
            meta: SnapshotMeta::default(),
            state: v1,
        })
        .unwrap();
        let (_, loaded) = postcard::from_bytes::<StoredSnapshot>(&bytes)
            .unwrap()
            .into_parts();
        assert_eq!(loaded.brokers, state.brokers);
        assert_eq!(loaded.next_producer_id, 5);
        assert!(loaded.listeners.is_empty());

        let listeners = BTreeMap::from([("kafka".to_string(), ("h".to_string(), 9092))]);
        let mut state = loaded;
        assert_eq!(
            state.apply(&Command::RegisterListeners {
                node_id: 1,
                listeners: listeners.clone(),
            }),
            CommandResult::Ok
        );
        assert!(matches!(
            state.apply(&Command::RegisterListeners {
                node_id: 2,
                listeners: listeners.clone(),
            }),
            CommandResult::Invalid(_)
        ));
        let v2 = MetadataStateV2 {
            brokers: state.brokers.clone(),
            topics: state.topics.clone(),
            cluster_id: state.cluster_id.clone(),
            next_producer_id: state.next_producer_id,
            listeners: state.listeners.clone(),
        };
        let bytes = postcard::to_allocvec(&StoredSnapshot::V2 {
            meta: SnapshotMeta::default(),
            state: v2,
        })
        .unwrap();
        let (_, again) = postcard::from_bytes::<StoredSnapshot>(&bytes)
            .unwrap()
            .into_parts();
        assert_eq!(again, state);
        assert_eq!(again.listeners[&1], listeners);
        assert!(again.users.is_empty() && again.acls.is_empty());
    }

    #[test]
    fn users_acls_and_client_quotas_survive_a_format_3_snapshot() {
        use crate::controller::metadata::StoredCredential;
        use crate::security::acl::*;
        let mut state = MetadataState::default();
        let credential = StoredCredential {
            salt: vec![1; 32],
            stored_key: vec![2; 32],
            server_key: vec![3; 32],
            iterations: 4096,
        };
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
            assert_eq!(
                state.apply(&Command::UpsertScramCredential {
                    user: "alice".into(),
                    mechanism: mechanism.into(),
                    credential: credential.clone(),
                }),
                CommandResult::Ok
            );
        }
        assert!(matches!(
            state.apply(&Command::UpsertScramCredential {
                user: "alice".into(),
                mechanism: "PLAIN".into(),
                credential: credential.clone(),
            }),
            CommandResult::Invalid(_)
        ));
        let acl = AclBinding {
            resource_type: ResourceType::Topic,
            pattern_type: PatternType::Prefixed,
            resource_name: "orders".into(),
            principal: "User:alice".into(),
            host: "*".into(),
            operation: Operation::Write,
            permission: Permission::Allow,
        };
        let create = Command::CreateAcls {
            acls: vec![acl.clone()],
        };
        assert_eq!(state.apply(&create), CommandResult::Ok);
        assert_eq!(state.apply(&create), CommandResult::Ok);
        assert_eq!(state.acls.len(), 1);
        let quota = |client: Option<&str>, value: Option<u64>| Command::AlterClientQuotas {
            entries: vec![(
                client.map(str::to_string),
                vec![("producer_byte_rate".to_string(), value)],
            )],
        };
        assert_eq!(
            state.apply(&quota(Some("etl"), Some(1000))),
            CommandResult::Ok
        );
        assert_eq!(state.apply(&quota(None, Some(50))), CommandResult::Ok);
        assert!(matches!(
            state.apply(&Command::AlterClientQuotas {
                entries: vec![(None, vec![("request_percentage".to_string(), Some(1))])],
            }),
            CommandResult::Invalid(_)
        ));
        assert_eq!(state.client_quotas.len(), 2);
        let bytes = postcard::to_allocvec(&StoredSnapshot::V3 {
            meta: SnapshotMeta::default(),
            state: state.clone(),
        })
        .unwrap();
        let (_, mut again) = postcard::from_bytes::<StoredSnapshot>(&bytes)
            .unwrap()
            .into_parts();
        assert_eq!(again, state);
        assert_eq!(
            again.client_quotas[&Some("etl".to_string())]["producer_byte_rate"],
            1000
        );
        // Removing a client id's last quota forgets the client id.
        assert_eq!(again.apply(&quota(None, None)), CommandResult::Ok);
        assert_eq!(again.client_quotas.len(), 1);
        assert_eq!(
            again.apply(&Command::DeleteAcls {
                filters: vec![AclFilter {
                    principal: Some("User:alice".into()),
                    ..Default::default()
                }]
            }),
            CommandResult::AclsDeleted(vec![vec![acl]])
        );
        assert!(again.acls.is_empty());
        let delete = Command::DeleteScramCredential {
            user: "alice".into(),
            mechanism: "SCRAM-SHA-256".into(),
        };
        assert_eq!(again.apply(&delete), CommandResult::Ok);
        assert_eq!(again.apply(&delete), CommandResult::UnknownUser);
        assert_eq!(again.users["alice"].len(), 1);
    }
}
