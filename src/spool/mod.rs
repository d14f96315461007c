//! The durable inbound spool: where mail for blackout recipients waits until
//! their mailbox is migrated. Plain files, like Postfix and Maildir.
//!
//! [`Spool`] is the storage layer only: the SMTP server stores a message
//! with [`Spool::store`] and answers `250` once it returns `Ok`; the
//! delivery worker lists, loads, marks recipients and removes what is done.
//! Every call does blocking file I/O (with fsyncs): async callers run it
//! on `spawn_blocking`.
//!
//! On-disk layout under the configured `[spool] path`:
//!
//! ```text
//! tmp/<id>.msg, tmp/<id>.env   writes in progress; emptied at open
//! msg/<id>                     the message bytes, exactly as received
//! env/<id>                     the envelope (JSON): the commit point
//! corrupt/                     entries set aside at open for the admin
//! seen.log                     delivered (Message-ID, recipient), JSON lines
//! ```
//!
//! `<id>` is the [`SpoolId`]: 16 hex digits, so that file names sort in
//! arrival order. See `store.rs` for the commit point and the crash cases.

pub mod dsn;
mod envelope;
mod error;
mod fsio;
mod id;
mod outbound;
mod recover;
mod seen;
mod stats;
mod store;
pub mod worker;

pub use envelope::{Envelope, Recipient, Status};
pub use error::SpoolError;
pub use id::SpoolId;
pub use stats::{QueueStats, Stats};
pub use store::{Entry, Filter, Options, Recovery, Spool};

/// The domain of an address (after its last `@`), lower case; empty for
/// a bare local part such as `postmaster`.
pub(crate) fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}
