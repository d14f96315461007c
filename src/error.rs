//! Errors of the layers a caller has to tell apart: configuration (fatal at
//! start), the state store, and a session's backend. Connection-level errors
//! stop at the task boundary and are logged once.

use std::borrow::Cow;
use std::io;

/// A configuration that cannot run: names the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {reason}")]
    Invalid {
        key: Cow<'static, str>,
        reason: String,
    },
    #[error("cannot read configuration: {0}")]
    Load(String),
}

impl ConfigError {
    pub fn invalid(key: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The state store failed (I/O, corruption, encoding), or cannot be
/// reached (a fleet's PostgreSQL is down: routing goes on from the state
/// loaded last, changes are refused until it is back).
#[derive(Debug)]
pub struct StoreError {
    pub message: String,
    /// The store cannot be reached now; retrying later may work.
    pub unavailable: bool,
}

impl StoreError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        StoreError {
            message: e.to_string(),
            unavailable: false,
        }
    }

    /// The store cannot be reached; `message` says why and what goes on.
    pub fn unavailable(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
            unavailable: true,
        }
    }

    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.unavailable {
            write!(f, "state store unavailable: {}", self.message)
        } else {
            write!(f, "state store: {}", self.message)
        }
    }
}

impl std::error::Error for StoreError {}

/// What went wrong reaching a backend. Every variant maps to a temporary
/// error for the client (`NO [UNAVAILABLE]`, `-ERR [SYS/TEMP]`, `4xx`).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {backend}: connect to {addr}: {source}")]
    Connect {
        backend: String,
        addr: String,
        source: io::Error,
    },
    #[error("backend {backend}: TLS: {source}")]
    Tls { backend: String, source: io::Error },
    #[error("backend {backend}: timed out during {step}")]
    Timeout { backend: String, step: &'static str },
    #[error("backend {backend}: protocol: {reason}")]
    Protocol { backend: String, reason: String },
    #[error("backend {backend}: {source}")]
    Io { backend: String, source: io::Error },
    #[error("backend {backend} has no endpoint for {protocol}")]
    NoEndpoint {
        backend: String,
        protocol: &'static str,
    },
}

/// Fatal errors of the server as a whole (binding, TLS material, store).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error("listener {name}: bind {addr}: {source}")]
    Bind {
        name: String,
        addr: String,
        source: io::Error,
    },
}
