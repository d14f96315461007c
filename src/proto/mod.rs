//! Protocol front ends: each takes a connection from its first byte to
//! its close. `serve` picks the one the listener speaks.

pub mod imap;
pub mod sasl;

use crate::config::Protocol;
use crate::net::stream::Stream;
use crate::server::{ConnInfo, Ctx};

/// Runs the listener's protocol on one connection.
pub async fn serve(stream: Stream, conn: &ConnInfo, ctx: &Ctx) -> imap::Outcome {
    match conn.listener.protocol {
        Protocol::Imap => imap::serve(stream, conn, ctx).await,
        // Refused by `Config::validate` until their front ends exist.
        Protocol::Pop3 | Protocol::Submission | Protocol::Smtp => {
            imap::Outcome::NoLogin("protocol not served".into())
        }
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
