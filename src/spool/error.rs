//! What can go wrong in the spool. I/O errors carry the operation and the
//! path, so that an admin can find the file the log line is about.

use std::io;
use std::path::PathBuf;

use super::SpoolId;

/// A spool operation that failed. Nothing was committed unless the
/// variant says so: a failed `store` leaves no message behind.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("spool: {}: unreadable envelope: {source}", path.display())]
    Envelope {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("spool: {}: data is {actual} bytes, its envelope says {expected}", path.display())]
    Corrupt {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("spool: message of {size} bytes is over the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("spool: no message {0}")]
    NotFound(SpoolId),
    #[error("spool: message {id} has no recipient {rcpt}")]
    UnknownRecipient { id: SpoolId, rcpt: String },
    #[error("spool: message {0} still has recipients to deliver")]
    NotDone(SpoolId),
}

impl SpoolError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| SpoolError::Io { op, path, source }
    }
}
