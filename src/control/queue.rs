//! The inbound queue's admin operations: figures, lists, one message's
//! envelope and headers, and the changes an admin makes (retry, hold,
//! release, delete).
//!
//! Spool calls block on fsync, so each operation runs on the blocking
//! pool. A change is made in the spool first and audited after it: the
//! audit log records what was done. If the audit write then fails, the
//! change stays made and the error says that it is not in the log
//! ([`ControlError::Unaudited`]), rather than an audit entry claiming a
//! change that a failed spool write never made.
//!
//! Hold and delete race with a delivery already under way: the worker
//! plans a message before it sends it, so a hold or a delete in that
//! moment does not stop that one attempt.

use mail_parser::{HeaderName, MessageParser};
use tracing::{info, warn};

use super::{Control, ControlError};
use crate::route::Change;
use crate::server::Ctx;
use crate::spool::{Entry, Envelope, Filter, Spool, SpoolError, SpoolId, Stats};

/// Bytes of a message searched for its header block: room for a long
/// chain of `Received:` and signature headers, bounded for a hostile one.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields shown of one message.
pub const MAX_HEADERS: usize = 200;
/// Longest header value shown, in characters.
pub const MAX_HEADER_VALUE: usize = 2000;

/// A spooled message as an admin sees it: envelope and header fields,
/// not the body.
#[derive(Debug, Clone)]
pub struct Shown {
    pub id: SpoolId,
    pub envelope: Envelope,
    pub headers: Headers,
}

/// A message's header block, read with mail-parser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// The decoded `Subject:` (RFC 2047 words and all).
    pub subject: Option<String>,
    /// Fields in message order: name and raw value, unfolded.
    pub fields: Vec<(String, String)>,
    /// Fields were left out or cut to the limits above.
    pub truncated: bool,
}

impl Control {
    /// Runs `f` with the spool on the blocking pool; `NoSpool` without one.
    async fn with_spool<T, F>(&self, f: F) -> Result<T, ControlError>
    where
        T: Send + 'static,
        F: FnOnce(&Spool, &Ctx) -> Result<T, ControlError> + Send + 'static,
    {
        let ctx = self.ctx();
        let spool = ctx.inbound.spool.clone().ok_or(ControlError::NoSpool)?;
        tokio::task::spawn_blocking(move || f(&spool, &ctx))
            .await
            .map_err(|e| ControlError::Task(e.to_string()))?
    }

    /// Messages, bytes, held and oldest arrival, in total and per
    /// recipient domain and mailbox.
    pub async fn queue_stats(&self) -> Result<Stats, ControlError> {
        self.with_spool(|s, _| Ok(s.stats())).await
    }

    /// The messages `filter` matches, in arrival order.
    pub async fn queue_list(&self, filter: Filter) -> Result<Vec<Entry>, ControlError> {
        self.with_spool(move |s, _| Ok(s.list_for(&filter))).await
    }

    /// The `n` oldest queued messages and how many there are in all.
    pub async fn queue_oldest(&self, n: usize) -> Result<(Vec<Entry>, usize), ControlError> {
        self.with_spool(move |s, _| Ok(s.first(&Filter::All, n)))
            .await
    }

    /// One message's envelope and headers.
    pub async fn queue_show(&self, id: SpoolId) -> Result<Shown, ControlError> {
        self.with_spool(move |s, _| {
            let (envelope, data) = s.load(id).map_err(spool_error)?;
            Ok(Shown {
                id,
                envelope,
                headers: read_headers(&data),
            })
        })
        .await
    }

    /// Puts every recipient not delivered back to pending, with no
    /// backoff, and wakes the delivery worker. A held message stays held.
    /// Returns how many recipients were reset.
    pub async fn queue_retry(&self, id: SpoolId, who: &str) -> Result<usize, ControlError> {
        let by = who.to_string();
        let reset = self
            .with_spool(move |s, ctx| {
                let reset = s.retry(id).map_err(spool_error)?;
                if reset > 0 {
                    let change = Change::QueueRetry {
                        id: id.to_string(),
                        reset,
                    };
                    audit(ctx, &change, &by, "retry")?;
                }
                Ok(reset)
            })
            .await?;
        self.ctx().inbound.wake_worker();
        info!(%id, reset, %who, "queued message: retry now");
        Ok(reset)
    }

    /// Holds (`true`) or releases a message; a release wakes the delivery
    /// worker. Returns whether the hold changed (the same request again
    /// changes nothing and is not audited).
    pub async fn queue_hold(
        &self,
        id: SpoolId,
        held: bool,
        who: &str,
    ) -> Result<bool, ControlError> {
        let by = who.to_string();
        let changed = self
            .with_spool(move |s, ctx| {
                if s.held(id).map_err(spool_error)? == held {
                    return Ok(false);
                }
                s.hold(id, held).map_err(spool_error)?;
                let (change, action) = if held {
                    (Change::QueueHold { id: id.to_string() }, "hold")
                } else {
                    (Change::QueueRelease { id: id.to_string() }, "release")
                };
                audit(ctx, &change, &by, action)?;
                Ok(true)
            })
            .await?;
        if !held {
            self.ctx().inbound.wake_worker();
        }
        info!(%id, held, changed, %who, "queued message: hold set");
        Ok(changed)
    }

    /// Deletes a message whatever its recipients' state; returns its
    /// envelope as it was.
    pub async fn queue_delete(&self, id: SpoolId, who: &str) -> Result<Envelope, ControlError> {
        let by = who.to_string();
        let envelope = self
            .with_spool(move |s, ctx| {
                let envelope = envelope(s, id)?;
                s.discard(id).map_err(spool_error)?;
                let change = Change::QueueDelete {
                    id: id.to_string(),
                    from: envelope.mail_from.clone(),
                    recipients: envelope
                        .recipients
                        .iter()
                        .map(|r| r.address.clone())
                        .collect(),
                };
                audit(ctx, &change, &by, "delete")?;
                Ok(envelope)
            })
            .await?;
        let undelivered = envelope
            .recipients
            .iter()
            .filter(|r| !r.status.is_done())
            .count();
        warn!(%id, from = %envelope.mail_from, undelivered, %who, "queued message deleted by an admin");
        Ok(envelope)
    }
}

/// A message's envelope. The spool has no lookup by id that skips the
/// data file, so this scans its in-memory index (no disk I/O).
fn envelope(spool: &Spool, id: SpoolId) -> Result<Envelope, ControlError> {
    spool
        .list()
        .into_iter()
        .find(|e| e.id == id)
        .map(|e| e.envelope)
        .ok_or_else(|| spool_error(SpoolError::NotFound(id)))
}

fn audit(ctx: &Ctx, change: &Change, who: &str, action: &'static str) -> Result<(), ControlError> {
    ctx.router
        .store()
        .apply(change, who)
        .map(|_| ())
        .map_err(|source| {
            warn!(?change, %who, error = %source, "queue change made but not audited");
            ControlError::Unaudited { action, source }
        })
}

/// An unknown id is the caller's mistake (404); the rest is the spool's.
fn spool_error(e: SpoolError) -> ControlError {
    match e {
        SpoolError::NotFound(id) => ControlError::NotFound(format!("no message {id} in the queue")),
        e => ControlError::Spool(e),
    }
}

/// The header block of `data`: fields with their raw values unfolded,
/// within the limits above.
pub fn read_headers(data: &[u8]) -> Headers {
    let head = &data[..data.len().min(MAX_HEADER_BYTES)];
    let complete = head.windows(2).any(|w| w == b"\n\n")
        || head.windows(4).any(|w| w == b"\r\n\r\n")
        || head.len() == data.len();
    let parser = MessageParser::new().header_text(HeaderName::Subject);
    let Some(message) = parser.parse_headers(head) else {
        return Headers {
            truncated: !complete,
            ..Headers::default()
        };
    };
    let all = message.headers();
    let mut headers = Headers {
        subject: message.subject().map(str::to_string),
        fields: Vec::new(),
        truncated: !complete || all.len() > MAX_HEADERS,
    };
    for h in all.iter().take(MAX_HEADERS) {
        let raw = head
            .get(h.offset_start as usize..h.offset_end as usize)
            .unwrap_or_default();
        let (value, cut) = unfold(&String::from_utf8_lossy(raw));
        headers.truncated |= cut;
        headers.fields.push((h.name.as_str().to_string(), value));
    }
    headers
}

/// A raw header value on one line (RFC 5322 §2.2.3: a line break before
/// white space is folding), trimmed and cut to `MAX_HEADER_VALUE`
/// characters; `true` if cut.
fn unfold(raw: &str) -> (String, bool) {
    let line: String = raw.lines().collect();
    let line = line.trim();
    match line.char_indices().nth(MAX_HEADER_VALUE) {
        Some((at, _)) => (format!("{}…", &line[..at]), true),
        None => (line.to_string(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_unfolded_in_order_with_the_subject_decoded() {
        let data = b"Received: from a\r\n\tby b; Mon, 1 Jun 2026 09:00:00 +0200\r\n\
                     Subject: =?utf-8?q?caf=C3=A9?=\r\nX-Empty:\r\n\r\nbody: not a header\r\n";
        let h = read_headers(data);
        assert_eq!(h.subject.as_deref(), Some("café"));
        let fields: Vec<(&str, &str)> = h
            .fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("Received", "from a\tby b; Mon, 1 Jun 2026 09:00:00 +0200"),
                ("Subject", "=?utf-8?q?caf=C3=A9?="),
                ("X-Empty", ""),
            ]
        );
        assert!(!h.truncated);
    }

    #[test]
    fn a_hostile_header_block_is_cut_to_the_limits() {
        let mut data = format!("Subject: {}\r\n", "x".repeat(MAX_HEADER_VALUE + 5)).into_bytes();
        for i in 0..MAX_HEADERS + 5 {
            data.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        data.extend_from_slice(b"\r\nbody");
        let h = read_headers(&data);
        assert_eq!(h.fields.len(), MAX_HEADERS);
        assert!(h.fields[0].1.ends_with('…'));
        assert_eq!(h.fields[0].1.chars().count(), MAX_HEADER_VALUE + 1);
        assert!(h.truncated);

        // No end of the header block within the bytes searched.
        let endless = "X-Long: y\r\n".repeat(MAX_HEADER_BYTES / 8);
        let h = read_headers(endless.as_bytes());
        assert!(h.truncated && h.fields.len() == MAX_HEADERS);
        assert_eq!(read_headers(b"").fields, Vec::new());
    }
}
