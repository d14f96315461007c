//! Protocol front ends: each takes a connection from its first byte to
//! its close. `serve` picks the one the listener speaks.

pub mod imap;
pub mod login;
pub mod pop3;
pub mod sasl;
pub mod submission;

use crate::config::Protocol;
use crate::net::stream::Stream;
use crate::server::{ConnInfo, Ctx};

/// How a session ended, for the closing log line.
#[derive(Debug)]
pub enum Outcome {
    /// The client left (or was dropped) before logging in.
    NoLogin(String),
    /// Logged in and spliced; bytes each way and why it ended.
    Spliced {
        up: u64,
        down: u64,
        end: crate::net::bridge::End,
    },
}

/// Runs the listener's protocol on one connection.
pub async fn serve(stream: Stream, conn: &ConnInfo, ctx: &Ctx) -> Outcome {
    match conn.listener.protocol {
        Protocol::Imap => imap::serve(stream, conn, ctx).await,
        Protocol::Pop3 => pop3::serve(stream, conn, ctx).await,
        Protocol::Submission => submission::serve(stream, conn, ctx).await,
        // Refused by `Config::validate` until the inbound path exists.
        Protocol::Smtp => Outcome::NoLogin("protocol not served".into()),
    }
}

/// What a client over the connection limit is told before the close.
pub fn over_limit_reply(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Imap => b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n",
        Protocol::Pop3 => b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n",
        Protocol::Submission | Protocol::Smtp => {
            b"421 4.7.0 Too many connections, try again later.\r\n"
        }
    }
}
