//! The one error type of `rill-broker`, and its mapping onto protocol error codes.

use std::path::PathBuf;

use rill_protocol::{ErrorCode, ProtocolError};

/// Result alias for the broker crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can fail inside the broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed; `context` says which file and what the broker was doing.
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A batch a client sent is malformed or fails its CRC.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] ProtocolError),
    /// A batch over the configured maximum.
    #[error("record batch of {size_bytes} bytes exceeds the maximum of {max_bytes} bytes; send smaller batches or raise max_batch_bytes")]
    BatchTooLarge { size_bytes: usize, max_bytes: usize },
    /// A read or lookup outside `[log_start_offset, log_end_offset]`.
    #[error("offset {offset} is outside the log range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: u64,
        log_start_offset: u64,
        log_end_offset: u64,
    },
    /// A configuration value that cannot work.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The metadata controller failed (Raft error).
    #[error("metadata controller: {0}")]
    Controller(String),
    /// This broker is not the active controller.
    #[error("this broker is not the active controller (leader: {leader:?}); retry on the leader")]
    NotController { leader: Option<u64> },
    /// The metadata quorum has no leader yet.
    #[error("the metadata quorum has not elected a controller yet; retry shortly")]
    ClusterNotReady,
    /// Replication broke a rule (a fetched batch does not continue the log, epochs go back).
    #[error("replication: {0}")]
    Replication(String),
    /// A leader append admitted at `epoch` after this broker stopped leading at it.
    #[error("{partition}: this broker no longer leads at epoch {epoch}; refresh metadata and retry on the leader")]
    NotLeader { partition: String, epoch: u32 },
    /// An fdatasync of this log failed earlier: it is offline until the broker restarts.
    #[error("partition log {path} is offline after a failed fdatasync ({reason}); check the disk and restart the broker (recovery re-verifies the log)")]
    LogFailed { path: PathBuf, reason: String },
    /// A data directory this broker must not open (other data format, node or cluster).
    #[error("data directory {path} refused: {reason}")]
    DataDirectory { path: PathBuf, reason: String },
    /// The controller quorum belongs to another cluster than this broker's data directory.
    #[error("{0}")]
    InconsistentClusterId(String),
    /// Another live broker at another address holds this broker's node id.
    #[error("{0}")]
    DuplicateNodeId(String),
    /// An idempotent producer's batch refused by the partition's producer state.
    #[error("{message}")]
    ProducerState {
        code: rill_protocol::ErrorCode,
        message: String,
    },
    /// A log directory whose files cannot be turned into a log (wrong names, impossible sizes).
    #[error("log directory {path} is unusable: {reason}")]
    CorruptLog { path: PathBuf, reason: String },
}

impl Error {
    /// Builds an [`Error::Io`] with context.
    pub fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            context: context.into(),
            path: path.into(),
            source,
        }
    }

    /// The protocol error code a client receives for this error.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Error::Io { .. }
            | Error::CorruptLog { .. }
            | Error::LogFailed { .. }
            | Error::DataDirectory { .. } => ErrorCode::STORAGE_ERROR,
            Error::InvalidBatch(e) => match e {
                ProtocolError::UnsupportedCompression(_) => ErrorCode::UNSUPPORTED_COMPRESSION,
                ProtocolError::DecompressedTooLarge { .. } => ErrorCode::MESSAGE_TOO_LARGE,
                ProtocolError::MissingKey { .. } => ErrorCode::INVALID_RECORD,
                _ => ErrorCode::CORRUPT_MESSAGE,
            },
            Error::BatchTooLarge { .. } => ErrorCode::MESSAGE_TOO_LARGE,
            Error::OffsetOutOfRange { .. } => ErrorCode::OFFSET_OUT_OF_RANGE,
            Error::InvalidConfig(_) => ErrorCode::INVALID_CONFIG,
            Error::Controller(_) => ErrorCode::UNKNOWN_SERVER_ERROR,
            Error::NotController { .. } => ErrorCode::NOT_CONTROLLER,
            Error::ClusterNotReady => ErrorCode::CLUSTER_NOT_READY,
            Error::Replication(_) => ErrorCode::UNKNOWN_SERVER_ERROR,
            Error::NotLeader { .. } => ErrorCode::NOT_LEADER,
            Error::InconsistentClusterId(_) | Error::DuplicateNodeId(_) => {
                ErrorCode::UNKNOWN_SERVER_ERROR
            }
            Error::ProducerState { code, .. } => *code,
        }
    }
}

/// Attaches file context to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    fn context(self, what: &str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: &str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(what, path, e))
    }
}
