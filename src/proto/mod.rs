//! Protocol front ends: each takes a connection from its first byte to
//! its close. `serve` picks the one the listener speaks.

pub mod imap;
pub mod inbound;
pub mod login;
pub mod pop3;
pub mod sasl;
pub mod smtp;
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
    /// An inbound SMTP session: messages accepted and how it ended.
    Inbound { messages: u32, end: String },
}

/// Runs the listener's protocol on one connection.
pub async fn serve(stream: Stream, conn: &ConnInfo, ctx: &Ctx) -> Outcome {
    // Each protocol's session is boxed: the task then holds only the one
    // it runs, not room for the largest of them.
    match conn.listener.protocol {
        Protocol::Imap => Box::pin(imap::serve(stream, conn, ctx)).await,
        Protocol::Pop3 => Box::pin(pop3::serve(stream, conn, ctx)).await,
        Protocol::Submission => Box::pin(submission::serve(stream, conn, ctx)).await,
        Protocol::Smtp => Box::pin(inbound::serve(stream, conn, ctx)).await,
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
