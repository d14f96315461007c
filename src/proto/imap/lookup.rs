//! Looks into a backend mailbox as the backend's master user, to settle a
//! delivery whose outcome is in doubt: ponte was killed after sending a
//! spooled message and before recording the backend's answer. The
//! question asked is "does INBOX hold a message whose `Received:` header
//! carries this trace id?" (the id ponte put in its own trace header, so
//! unique to that message), with `UID SEARCH HEADER`, which servers answer
//! by substring (RFC 9051 §6.4.4).
//!
//! INBOX only: that is where LMTP and SMTP delivery put mail unless the
//! mailbox's own filters move it; a filtered message is not found and is
//! delivered again, the at-least-once fallback.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use imap_codec::imap_types::response::{Data, Response};
use imap_codec::ResponseCodec;
use tokio::time::Instant;

use super::backend::{self, ClientInfo, Conn, Login};
use super::framer::Framer;
use crate::error::BackendError;
use crate::net::backend::Backend;
use crate::secret::{Credentials, SecretKind};

/// Search responses list UIDs; 1 MiB is ~100k of them, more than an
/// INBOX matching one trace id can hold.
const MAX_RESPONSE: u32 = 1024 * 1024;

/// What the mailbox says about the trace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Yes,
    No,
}

/// Logs in at `backend` as `master` acting as `mailbox`, and searches its
/// INBOX for `trace_id`. Any failure (login refused, no IMAP endpoint,
/// timeout) is an `Err`: the outcome stays in doubt and the caller tries
/// again later rather than guess.
pub async fn find_trace(
    backend: &Backend,
    master: &Credentials,
    mailbox: &str,
    trace_id: &str,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Found, BackendError> {
    if !searchable(trace_id) {
        return Err(backend.protocol_error("trace id not searchable"));
    }
    let creds = Credentials {
        user: master.user.clone(),
        password: master.password.clone(),
        authzid: Some(mailbox.to_string()),
        kind: SecretKind::Password,
    };
    let nowhere = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let client = ClientInfo {
        peer: nowhere,
        local: nowhere,
        session: "ponte-delivery-check",
        id: &[],
    };
    let login = backend::login(backend, &creds, &client, connect_timeout, timeout).await?;
    let (stream, rest) = match login {
        Login::Ok { stream, rest, .. } => (stream, rest),
        Login::Refused { reply, .. } => {
            let reply = String::from_utf8_lossy(&reply);
            return Err(backend.protocol_error(format!(
                "delivery check login refused: {}",
                reply.trim_end()
            )));
        }
    };
    let mut framer = Framer::new(MAX_RESPONSE);
    framer.push(&rest);
    let mut s = Conn {
        backend,
        stream,
        framer,
        deadline: Instant::now() + timeout,
    };
    s.command("c1", "EXAMINE INBOX").await?;
    let found = s.search("c2", trace_id).await?;
    // Best effort: the answer is already known.
    let _ = s.command("c3", "LOGOUT").await;
    Ok(found)
}

/// The trace ids ponte makes (hex digits and dots) go into a quoted
/// string as they are; anything else is refused rather than escaped.
fn searchable(trace_id: &str) -> bool {
    !trace_id.is_empty()
        && trace_id.len() <= 64
        && trace_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// The check's commands, on the connection the login left open.
impl Conn<'_> {
    /// Sends `tag command` and reads to its tagged answer, which must be OK.
    async fn command(&mut self, tag: &str, command: &str) -> Result<(), BackendError> {
        self.send(format!("{tag} {command}\r\n").as_bytes()).await?;
        self.until_ok(tag, |_| {}).await
    }

    async fn until_ok(
        &mut self,
        tag: &str,
        mut untagged: impl FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        let prefix = format!("{tag} ");
        loop {
            self.read_message().await?;
            let msg = self.framer.message();
            match msg.strip_prefix(prefix.as_bytes()) {
                Some(tail) if tail.len() >= 2 && tail[..2].eq_ignore_ascii_case(b"OK") => {
                    return Ok(())
                }
                Some(tail) => {
                    let tail = String::from_utf8_lossy(tail);
                    return Err(self
                        .backend
                        .protocol_error(format!("{tag}: {}", tail.trim_end())));
                }
                None => untagged(msg),
            }
        }
    }

    async fn search(&mut self, tag: &str, trace_id: &str) -> Result<Found, BackendError> {
        let line = format!("{tag} UID SEARCH HEADER Received \"{trace_id}\"\r\n");
        self.send(line.as_bytes()).await?;
        let mut hits = 0usize;
        self.until_ok(tag, |msg| hits += search_hits(msg)).await?;
        Ok(if hits > 0 { Found::Yes } else { Found::No })
    }
}

/// How many messages an untagged `* SEARCH` response lists (0 for any
/// other response).
fn search_hits(msg: &[u8]) -> usize {
    match imap_codec::decode::Decoder::decode(&ResponseCodec::default(), msg) {
        Ok((_, Response::Data(Data::Search(uids, ..)))) => uids.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_responses_are_counted_and_others_ignored() {
        assert_eq!(search_hits(b"* SEARCH 4 9\r\n"), 2);
        assert_eq!(search_hits(b"* SEARCH\r\n"), 0);
        assert_eq!(search_hits(b"* 3 EXISTS\r\n"), 0);
    }

    #[test]
    fn only_plain_trace_ids_are_searched() {
        assert!(searchable("18c2f3a9e01.1f.2"));
        assert!(!searchable(""));
        assert!(!searchable("a\" OR ALL"));
        assert!(!searchable(&"a".repeat(65)));
    }
}
