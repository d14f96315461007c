//! After DATA: where the message goes and what the sender is told.
//!
//! - Every recipient live on one backend, none with older mail still in
//!   the spool: relay now and give the sender the backend's own answer.
//! - Otherwise (a blackout recipient, recipients on different backends,
//!   or older spooled mail that must arrive first): store the whole
//!   message in the spool, answer `250` once `Spool::store` returned (file
//!   and directory fsynced), and wake the delivery worker.
//! - A relay where only some recipients succeeded (LMTP answers per
//!   recipient; the SMTP client can get one answer only): the sender gets
//!   `250`, the others are spooled with their status, temporary failures
//!   for the worker to retry, permanent ones kept as failed (the DSN to
//!   the sender is still to come: issue 7).

use std::sync::Arc;

use tracing::{info, warn};

use super::rcpt::{self, Disposition};
use crate::net::backend::Backend;
use crate::proto::smtp::client::{self, Message, Timeouts};
use crate::proto::smtp::reply::Reply;
use crate::server::{ConnInfo, Ctx};
use crate::spool::{Envelope, Filter, Spool, SpoolError, Status};

/// One mail transaction: the envelope so far.
#[derive(Debug)]
pub struct Transaction {
    pub mail_from: String,
    /// Accepted recipients, as the client wrote them.
    pub recipients: Vec<String>,
}

const NO_SPOOL: &str = "451 4.3.0 Mail queue unavailable, try again later\r\n";
const BACKEND_DOWN: &str = "451 4.4.1 Mailbox server unavailable, try again later\r\n";

/// Delivers or spools `message` (the trace header already prepended);
/// the reply for the sender.
pub async fn finish(
    ctx: &Ctx,
    conn: &ConnInfo,
    helo: Option<&str>,
    tx: Transaction,
    message: Vec<u8>,
    trace_id: String,
) -> String {
    let Some(spool) = ctx.inbound.spool.clone() else {
        warn!("inbound message refused: no spool open");
        return NO_SPOOL.into();
    };
    let mut envelope = Envelope::new(
        tx.mail_from.clone(),
        tx.recipients.clone(),
        Some(conn.peer.ip()),
        helo.unwrap_or_default(),
    );
    envelope.trace_id = Some(trace_id);
    if let Some(backend) = one_live_backend(ctx, &tx.recipients) {
        if !has_pending(&spool, &tx.recipients).await {
            return relay(ctx, &spool, &backend, envelope, message).await;
        }
    }
    store(ctx, &spool, envelope, message).await
}

/// The backend every recipient is live on now, if there is one.
fn one_live_backend(ctx: &Ctx, recipients: &[String]) -> Option<Arc<Backend>> {
    let mut name = None;
    for r in recipients {
        match rcpt::decide(&ctx.router, r) {
            Ok(Disposition::Live { backend }) if name.is_none() => name = Some(backend),
            Ok(Disposition::Live { backend }) if name.as_ref() == Some(&backend) => {}
            _ => return None,
        }
    }
    ctx.backends.get(&name?).cloned()
}

/// A recipient still has spooled mail to be delivered: newer mail waits
/// behind it (DESIGN.md: spooled mail first, in order).
async fn has_pending(spool: &Arc<Spool>, recipients: &[String]) -> bool {
    let spool = spool.clone();
    let recipients = recipients.to_vec();
    let scan = move || {
        recipients.iter().any(|r| {
            spool
                .list_for(&Filter::Mailbox(r.clone()))
                .iter()
                .any(|e| e.envelope.recipient(r).is_some_and(|x| !x.status.is_done()))
        })
    };
    // If the scan cannot run, assume the worst: spooling keeps the order.
    tokio::task::spawn_blocking(scan).await.unwrap_or(true)
}

/// Stores the whole message; `250` once it is on disk.
async fn store(ctx: &Ctx, spool: &Arc<Spool>, envelope: Envelope, message: Vec<u8>) -> String {
    // Mail for blackout mailboxes only has nothing to deliver until a flip,
    // which wakes the worker itself: waking it per message would walk the
    // whole spool per message (measured: the accept rate fell as the spool
    // grew, benches/results/spool.md).
    let deliverable = envelope.recipients.iter().any(|r| {
        !r.status.is_done()
            && matches!(
                rcpt::decide(&ctx.router, &r.address),
                Ok(Disposition::Live { .. })
            )
    });
    let stored = {
        let spool = spool.clone();
        tokio::task::spawn_blocking(move || spool.store(&envelope, &message)).await
    };
    match stored {
        Ok(Ok(id)) => {
            info!(%id, "message spooled");
            count("spooled");
            if deliverable {
                ctx.inbound.wake_worker();
            }
            format!("250 2.0.0 OK queued as {id}\r\n")
        }
        Ok(Err(SpoolError::TooLarge { .. })) => "552 5.3.4 Message too big for system\r\n".into(),
        Ok(Err(e)) => {
            warn!(error = %e, "spool store failed");
            NO_SPOOL.into()
        }
        Err(e) => {
            warn!(error = %e, "spool store task failed");
            NO_SPOOL.into()
        }
    }
}

/// Relays to `backend` and answers with its verdict.
async fn relay(
    ctx: &Ctx,
    spool: &Arc<Spool>,
    backend: &Backend,
    mut envelope: Envelope,
    message: Vec<u8>,
) -> String {
    let addresses: Vec<String> = envelope
        .recipients
        .iter()
        .map(|r| r.address.clone())
        .collect();
    let msg = Message {
        mail_from: &envelope.mail_from,
        recipients: &addresses,
        data: &message,
    };
    let limits = &ctx.config.limits;
    let t = Timeouts {
        connect: limits.connect_timeout,
        reply: limits.login_timeout,
    };
    let replies = match client::deliver(backend, ctx.dns.as_ref(), &msg, t).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "inbound relay failed");
            return BACKEND_DOWN.into();
        }
    };
    info!(backend = %backend.name, outcome = ?codes(&replies), "message relayed");
    count("relayed");
    let Some(first_ok) = replies.iter().find(|r| r.is_success()) else {
        // Nobody got it: the sender keeps the message (4xx) or bounces it
        // (5xx), on the backend's own words.
        let worst = replies
            .iter()
            .find(|r| !r.is_permanent())
            .or(replies.first());
        return worst.map_or_else(|| BACKEND_DOWN.into(), reply_text);
    };
    let answer = reply_text(first_ok);
    if replies.iter().all(Reply::is_success) {
        return answer;
    }
    // Some delivered, some not: the rest wait in the spool with their
    // status. If that fails the sender retries all: the ones delivered get
    // it twice (at least once beats at most once).
    keep_undelivered(&mut envelope, &replies);
    let stored = store(ctx, spool, envelope, message).await;
    if stored.starts_with('2') {
        answer
    } else {
        stored
    }
}

/// Drops the recipients `replies` (in recipient order) say have the
/// message; marks those refused for good as failed.
fn keep_undelivered(envelope: &mut Envelope, replies: &[Reply]) {
    let mut replies = replies.iter();
    // `retain_mut` visits each recipient once, in order.
    envelope.recipients.retain_mut(|r| {
        let Some(reply) = replies.next() else {
            return true;
        };
        if reply.is_permanent() {
            r.status = Status::Failed {
                reason: reply.text(),
                permanent: true,
            };
        }
        !reply.is_success()
    });
}

fn count(outcome: &'static str) {
    metrics::counter!("ponte_inbound_messages_total", "outcome" => outcome).increment(1);
}

fn codes(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.code).collect()
}

/// A backend reply as ponte's own: every line CRLF-ended.
fn reply_text(r: &Reply) -> String {
    let text = String::from_utf8_lossy(&r.raw);
    text.lines()
        .map(|l| format!("{}\r\n", l.trim_end()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_relays_keep_the_failed_recipients_with_their_status() {
        let mut env = Envelope::new(
            "s@x.example",
            ["a@p.example", "b@p.example", "c@p.example"],
            None,
            "h",
        );
        let reply = |code, raw: &str| Reply {
            code,
            raw: raw.as_bytes().to_vec(),
        };
        let replies = [
            reply(250, "250 2.0.0 ok\r\n"),
            reply(452, "452 4.2.2 full\r\n"),
            reply(550, "550 5.1.1 unknown\r\n"),
        ];
        keep_undelivered(&mut env, &replies);
        let left: Vec<_> = env
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.status.is_done()))
            .collect();
        assert_eq!(left, [("b@p.example", false), ("c@p.example", true)]);
        assert_eq!(
            reply_text(&reply(250, "250-a\n250 b")),
            "250-a\r\n250 b\r\n"
        );
    }
}
