//! `LogManager`: the broker's data directory and every partition log in it.
//!
//! Layout: `<data_dir>/<topic>-<partition>/` per partition (topic names never contain `/`, and the
//! partition number is the text after the last `-`), plus `<data_dir>/.lock`, held with an
//! exclusive `flock` for the manager's lifetime so two brokers can never write the same logs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::log::{Log, LogConfig};

/// Identifies a partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    /// The directory name, `<topic>-<partition>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    /// Parses a directory name; `None` if it is not one.
    pub fn from_dir_name(name: &str) -> Option<TopicPartition> {
        let (topic, partition) = name.rsplit_once('-')?;
        if topic.is_empty() || topic.starts_with('.') {
            return None;
        }
        Some(TopicPartition::new(topic, partition.parse().ok()?))
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Owns the data directory lock and the open logs.
pub struct LogManager {
    data_dir: PathBuf,
    default_config: LogConfig,
    logs: BTreeMap<TopicPartition, Log>,
    _lock: fs::File,
}

impl LogManager {
    /// Locks `data_dir` (creating it) and opens, recovering, every partition log found in it.
    pub fn open(data_dir: &Path, default_config: LogConfig) -> Result<LogManager> {
        default_config.validate()?;
        fs::create_dir_all(data_dir).context("create data directory", data_dir)?;
        let lock_path = data_dir.join(".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .context("open lock file", &lock_path)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                Error::io(
                    "cannot lock the data directory (is another rill-broker using it?): lock file",
                    &lock_path,
                    e.into(),
                )
            },
        )?;
        let mut logs = BTreeMap::new();
        for entry in fs::read_dir(data_dir).context("list data directory", data_dir)? {
            let entry = entry.context("list data directory", data_dir)?;
            let is_dir = entry.file_type().context("stat", &entry.path())?.is_dir();
            let Some(tp) = entry
                .file_name()
                .to_str()
                .and_then(TopicPartition::from_dir_name)
            else {
                continue;
            };
            if !is_dir {
                continue;
            }
            let log = Log::open(&entry.path(), default_config.clone())?;
            tracing::info!(partition = %tp, start = log.log_start_offset(), end = log.log_end_offset(), segments = log.segment_count(), "opened partition log");
            logs.insert(tp, log);
        }
        Ok(LogManager {
            data_dir: data_dir.to_owned(),
            default_config,
            logs,
            _lock: lock,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Partitions with a log, in order.
    pub fn partitions(&self) -> impl Iterator<Item = &TopicPartition> {
        self.logs.keys()
    }

    pub fn get_mut(&mut self, tp: &TopicPartition) -> Option<&mut Log> {
        self.logs.get_mut(tp)
    }

    /// Opens (creating if needed) the log of `tp` with `config` (or the default).
    pub fn get_or_create(
        &mut self,
        tp: &TopicPartition,
        config: Option<LogConfig>,
    ) -> Result<&mut Log> {
        if !self.logs.contains_key(tp) {
            if tp.topic.contains('/')
                || TopicPartition::from_dir_name(&tp.dir_name()).as_ref() != Some(tp)
            {
                return Err(Error::InvalidConfig(format!(
                    "{tp} cannot be a partition directory name"
                )));
            }
            let log = Log::open(
                &self.data_dir.join(tp.dir_name()),
                config.unwrap_or_else(|| self.default_config.clone()),
            )?;
            self.logs.insert(tp.clone(), log);
        }
        self.logs
            .get_mut(tp)
            .ok_or_else(|| Error::InvalidConfig(format!("{tp} vanished")))
    }

    /// Deletes a partition's log and its directory.
    pub fn delete(&mut self, tp: &TopicPartition) -> Result<bool> {
        match self.logs.remove(tp) {
            Some(log) => log.delete().map(|()| true),
            None => Ok(false),
        }
    }

    /// Flushes every log whose interval flush is due; applies retention. For a periodic task.
    pub fn tick(&mut self, now_ms: i64) -> Result<()> {
        for log in self.logs.values_mut() {
            log.flush_if_due()?;
            log.roll_if_due(now_ms)?;
            log.enforce_retention(now_ms)?;
        }
        Ok(())
    }

    /// Flushes and closes every log (clean shutdown). Every log is closed even if one fails.
    pub fn close(self) -> Result<()> {
        let mut first_error = None;
        for (tp, log) in self.logs {
            if let Err(e) = log.close() {
                tracing::error!(partition = %tp, "closing log failed: {e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_round_trip() {
        let tp = TopicPartition::new("orders-eu", 12);
        assert_eq!(tp.dir_name(), "orders-eu-12");
        assert_eq!(TopicPartition::from_dir_name("orders-eu-12"), Some(tp));
        assert_eq!(TopicPartition::from_dir_name("orders"), None);
        assert_eq!(TopicPartition::from_dir_name("-3"), None);
        assert_eq!(TopicPartition::from_dir_name("x-y"), None);
    }

    #[test]
    fn reopens_partitions_and_locks_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut manager = LogManager::open(dir.path(), LogConfig::default()).unwrap();
        assert!(
            LogManager::open(dir.path(), LogConfig::default()).is_err(),
            "a second manager cannot lock the directory"
        );
        let tp = TopicPartition::new("t", 0);
        let mut batch = rill_protocol::batch::RecordBatchBuilder::new();
        batch.append(0, None, Some(b"v"), &[]);
        manager
            .get_or_create(&tp, None)
            .unwrap()
            .append(&batch.build(), 0)
            .unwrap();
        manager.close().unwrap();
        let mut manager = LogManager::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(
            manager.partitions().cloned().collect::<Vec<_>>(),
            vec![tp.clone()]
        );
        assert_eq!(manager.get_mut(&tp).unwrap().log_end_offset(), 1);
        assert!(manager.delete(&tp).unwrap());
        assert!(!dir.path().join("t-0").exists());
    }
}
