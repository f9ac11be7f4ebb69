//! The client's one error type.

use rill_protocol::{ErrorCode, ProtocolError};

/// Result alias of the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Everything that can fail in the client. [`ClientError::is_retriable`] tells whether trying
/// again (after a metadata refresh) may succeed.
#[derive(Debug, thiserror::Error, Clone)]
pub enum ClientError {
    /// No broker could be reached.
    #[error("cannot reach any broker ({addresses}): {reason}; is rill-broker running there?")]
    NoBrokers {
        /// The bootstrap addresses tried.
        addresses: String,
        /// The last failure.
        reason: String,
    },
    /// The connection to a broker failed or closed mid-request.
    #[error("connection to {address} failed: {reason}")]
    Connection {
        /// The broker's address.
        address: String,
        /// What failed.
        reason: String,
    },
    /// TLS with a broker failed for a reason retrying will not change (its certificate is
    /// not trusted or does not name it, or it refused ours).
    #[error("TLS with {address} failed: {reason}")]
    Tls {
        /// The broker's address.
        address: String,
        /// What failed.
        reason: String,
    },
    /// The broker refused this client's SASL authentication (wrong user, password or
    /// mechanism); retrying cannot change it.
    #[error("authentication with {address} failed: {reason}")]
    Authentication {
        /// The broker's address.
        address: String,
        /// The broker's reason.
        reason: String,
    },
    /// The broker answered with an error code.
    #[error("{context}: {code}{}", message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Broker {
        /// The protocol error code.
        code: ErrorCode,
        /// What the client was doing.
        context: String,
        /// The broker's explanation, when it sent one.
        message: Option<String>,
    },
    /// A response could not be decoded.
    #[error("malformed response: {0}")]
    Protocol(#[from] ProtocolError),
    /// The request did not complete in time (including retries).
    #[error("timed out after {0:?}: {1}")]
    Timeout(std::time::Duration, String),
    /// Bad input from the caller.
    #[error("{0}")]
    Invalid(String),
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
}

impl ClientError {
    /// Whether retrying (after refreshing metadata) may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            // A timed-out request may still have been applied: a retried produce can then be
            // written twice (at-least-once delivery; see docs/REPLICATION.md).
            ClientError::Connection { .. }
            | ClientError::NoBrokers { .. }
            | ClientError::Timeout(..) => true,
            ClientError::Broker { code, .. } => code.is_retriable(),
            _ => false,
        }
    }

    /// The broker's error code, if this error is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn broker(
        code: ErrorCode,
        context: impl Into<String>,
        message: Option<String>,
    ) -> Self {
        ClientError::Broker {
            code,
            context: context.into(),
            message,
        }
    }
}
