//! The delivery worker: takes spooled mail to the backends once its
//! recipients' mailboxes are live (legacy or migrated).
//!
//! One pass walks the spool in arrival order. A recipient whose mailbox
//! still waits (blackout, a held message, a temporary failure in backoff,
//! a store error) blocks newer mail to the same mailbox for the rest of
//! the pass, so that spooled mail arrives in order; the inbound session
//! spools new mail for a mailbox with anything pending, for the same
//! reason. Recipients are delivered per backend, one transaction each,
//! and marked delivered or failed (temporary: retried with backoff;
//! permanent: kept as failed, the DSN to the sender is still to come). A
//! message whose recipients are all delivered is removed.
//!
//! Exactly once, with the backend's help. Redeliveries of a message
//! already delivered are suppressed with the spool's seen log (Message-ID,
//! recipient), which `set_status` fills. That leaves the window between
//! the backend's `250` and the status write: the recipients are marked
//! `sending` (durably) before the transaction starts, so after a crash
//! their outcome is known to be in doubt. If the backend has a check user
//! (`backend.<name>.check_user`), the worker looks into the mailbox for
//! the message's trace id before sending again (`proto::imap::lookup`);
//! if the check cannot run now it waits and tries later rather than
//! guess. Without a check user an in-doubt message is delivered again:
//! at least once, never lost.
//!
//! Woken by the inbound session (a message was spooled), by the control
//! plane (a state flip), at start (recovery) and at least every
//! [`POLL`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::outbound::{self, Undelivered};
use super::{dsn, Entry, Envelope, Recipient, Spool, SpoolError, SpoolId, Status};
use crate::config::View;
use crate::proto::imap::lookup::{self, Found};
use crate::proto::smtp::client::{self, Message, Timeouts};
use crate::proto::smtp::reply::Reply;
use crate::route::{now_unix, RouteError, Target};
use crate::server::Ctx;

/// The longest the worker sleeps without being woken.
pub const POLL: Duration = Duration::from_secs(30);
/// First retry after a temporary failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: i64 = 30;
const MAX_BACKOFF: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("spool task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs passes until `stop`; a pass in progress ends after its message.
pub async fn run(
    current: Arc<ArcSwap<Ctx>>,
    spool: Arc<Spool>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    info!("delivery worker started");
    loop {
        let mut pass = Pass {
            ctx: current.load_full(),
            spool: spool.clone(),
            waiting: HashSet::new(),
            next_retry: None,
            written: Vec::new(),
            notified: Vec::new(),
        };
        if let Err(e) = pass.run(&stop).await {
            warn!(error = %e, "delivery pass failed");
        }
        let now = now_unix();
        let sleep = pass
            .next_retry
            .map_or(POLL, |t| {
                Duration::from_secs(t.saturating_sub(now).max(1) as u64)
            })
            .min(POLL);
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
    info!("delivery worker stopped");
}

/// One walk over the spool.
struct Pass {
    ctx: Arc<Ctx>,
    spool: Arc<Spool>,
    /// Mailboxes (lower case) with older mail still undelivered.
    waiting: HashSet<String>,
    /// Earliest retry of a temporary failure (Unix seconds).
    next_retry: Option<i64>,
    /// Statuses written for the message in hand.
    written: Vec<(String, Status)>,
    /// Recipients of the message in hand whose failure was reported.
    notified: Vec<String>,
}

/// Where a group of recipients is delivered, one transaction each.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Via {
    /// A configured backend, by name.
    Backend(String),
    /// A domain outside the managed ones (a DSN's recipient): its mail
    /// hosts or the outbound relay.
    Domain(String),
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::Backend(name) => write!(f, "backend {name}"),
            Via::Domain(domain) => write!(f, "domain {domain}"),
        }
    }
}

/// What to do now with one message's recipients.
#[derive(Debug, Default)]
struct Plan {
    /// Deliver now.
    deliver: BTreeMap<Via, Vec<String>>,
    /// Not served any more (excluded, domain gone): failed for good.
    refused: Vec<String>,
}

impl Pass {
    async fn run(&mut self, stop: &CancellationToken) -> Result<(), WorkerError> {
        let entries = self.blocking(|s| s.list()).await?;
        for entry in entries {
            if stop.is_cancelled() {
                break;
            }
            if let Err(e) = self.handle(&entry).await {
                warn!(id = %entry.id, error = %e, "spooled message not handled");
                for r in &entry.envelope.recipients {
                    self.waiting.insert(r.address.to_ascii_lowercase());
                }
            }
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Spool) -> T + Send + 'static,
    ) -> Result<T, WorkerError> {
        let spool = self.spool.clone();
        Ok(tokio::task::spawn_blocking(move || f(&spool)).await?)
    }

    async fn handle(&mut self, entry: &Entry) -> Result<(), WorkerError> {
        self.written.clear();
        self.notified.clear();
        let plan = self.plan(&entry.envelope);
        for address in plan.refused {
            let status = Status::Failed {
                reason: "550 5.1.1 Mailbox not served any more".into(),
                permanent: true,
            };
            warn!(id = %entry.id, rcpt = %address, "spooled recipient not served any more: failed for good");
            self.set(entry.id, address, status).await?;
        }
        let mut loaded = None;
        if !plan.deliver.is_empty() {
            let id = entry.id;
            let (env, data) = self.blocking(move |s| s.load(id)).await??;
            for (via, rcpts) in plan.deliver {
                self.deliver(id, &env, &data, &via, rcpts).await?;
            }
            loaded = Some(data);
        }
        let env = self.current(entry);
        if env.unreported().next().is_some() {
            self.report(entry.id, &env, loaded).await?;
        }
        self.remove_if_finished(entry).await
    }

    /// The envelope as it stands after this pass's writes.
    fn current(&self, entry: &Entry) -> Envelope {
        let mut env = entry.envelope.clone();
        for (rcpt, status) in &self.written {
            if let Some(r) = env.recipient_mut(rcpt) {
                r.status = status.clone();
            }
        }
        env
    }

    /// Reports the permanent failures to the sender: a DSN (RFC 3464)
    /// goes into the spool as a message of its own, and only then are the
    /// recipients marked reported (a crash in between sends the report
    /// twice rather than never). A bounce, or a message with the null
    /// sender, is not reported (RFC 5321 §4.5.5).
    async fn report(
        &mut self,
        id: SpoolId,
        env: &Envelope,
        data: Option<Vec<u8>>,
    ) -> Result<(), WorkerError> {
        let rcpts: Vec<String> = env.unreported().map(|r| r.address.clone()).collect();
        if env.mail_from.is_empty() || env.dsn {
            warn!(%id, failed = ?rcpts, "permanent failure of a message with the null sender: not reported");
        } else {
            let data = match data {
                Some(d) => d,
                None => self.blocking(move |s| s.load(id)).await??.1,
            };
            let failures: Vec<(String, String)> = env
                .unreported()
                .map(|r| {
                    let reason = match &r.status {
                        Status::Failed { reason, .. } => reason.clone(),
                        _ => String::new(),
                    };
                    (r.address.clone(), reason)
                })
                .collect();
            let failed: Vec<dsn::Failure<'_>> = failures
                .iter()
                .map(|(address, reason)| dsn::Failure { address, reason })
                .collect();
            let host = self.ctx.config.outbound.hostname();
            let now = time::OffsetDateTime::now_utc();
            let report = dsn::build(env, &data, &failed, &host, now);
            let mut dsn_env = Envelope::new("", [env.mail_from.clone()], None, host);
            dsn_env.dsn = true;
            dsn_env.trace_id = Some(format!("dsn.{id}"));
            let dsn_id = self.blocking(move |s| s.store(&dsn_env, &report)).await??;
            info!(%id, dsn = %dsn_id, to = %env.mail_from, failed = ?rcpts, "delivery status notification queued");
            metrics::counter!("ponte_inbound_dsn_total").increment(1);
            self.ctx.inbound.wake_worker();
        }
        let marked = rcpts.clone();
        self.blocking(move |s| s.mark_notified(id, &marked))
            .await??;
        self.notified.extend(rcpts);
        Ok(())
    }

    /// Sorts the recipients not done yet: deliverable now, refused, or
    /// waiting (which blocks newer mail to the same mailbox).
    fn plan(&mut self, env: &Envelope) -> Plan {
        let mut plan = Plan::default();
        let now = now_unix();
        for r in env.recipients.iter().filter(|r| !r.status.is_done()) {
            let key = r.address.to_ascii_lowercase();
            if env.held || self.waiting.contains(&key) {
                self.waiting.insert(key);
                continue;
            }
            if let Some(due) = retry_at(r).filter(|&t| t > now) {
                self.wake_by(due);
                self.waiting.insert(key);
                continue;
            }
            match self.ctx.router.resolve_for(&r.address, None, View::Live) {
                Ok(route) => match route.target {
                    Target::Live { backend } => plan
                        .deliver
                        .entry(Via::Backend(backend))
                        .or_default()
                        .push(r.address.clone()),
                    Target::ReadOnly { .. } => {
                        self.waiting.insert(key);
                    }
                    Target::Refused { .. } => plan.refused.push(r.address.clone()),
                },
                // Only ponte's own reports go out of the managed domains.
                Err(RouteError::UnknownDomain) if env.dsn => plan
                    .deliver
                    .entry(Via::Domain(super::domain_of(&r.address)))
                    .or_default()
                    .push(r.address.clone()),
                Err(RouteError::UnknownDomain) => plan.refused.push(r.address.clone()),
                Err(RouteError::Store(e)) => {
                    warn!(error = %e, "recipient lookup failed");
                    self.waiting.insert(key);
                }
            }
        }
        plan
    }

    /// One transaction `via` a backend or a domain's mail hosts for
    /// `rcpts`, minus those the seen log says already have this message.
    async fn deliver(
        &mut self,
        id: SpoolId,
        env: &Envelope,
        data: &[u8],
        via: &Via,
        rcpts: Vec<String>,
    ) -> Result<(), WorkerError> {
        let mut todo = Vec::new();
        for rcpt in rcpts {
            if let Some(mid) = env.message_id.clone() {
                let (m, r) = (mid, rcpt.clone());
                if self.blocking(move |s| s.seen(&m, &r)).await? {
                    info!(%id, %rcpt, "already delivered: duplicate suppressed");
                    self.set(id, rcpt, Status::Delivered).await?;
                    continue;
                }
            }
            todo.push(rcpt);
        }
        if todo.is_empty() {
            return Ok(());
        }
        // Outside the managed domains there is no mailbox to look into: an
        // in-doubt report is sent again.
        let todo = match via {
            Via::Backend(backend) => self.settle_in_doubt(id, env, backend, todo).await?,
            Via::Domain(_) => todo,
        };
        if todo.is_empty() {
            return Ok(());
        }
        let marked = todo.clone();
        self.blocking(move |s| s.mark_sending(id, &marked))
            .await??;
        let outcome = self.send(env, data, via, &todo).await;
        for (rcpt, status) in todo.into_iter().zip(outcome) {
            self.record(id, rcpt, status).await?;
        }
        Ok(())
    }

    /// Of `rcpts`, those to send now: a recipient whose last delivery was
    /// cut short is looked for in its mailbox first (see the module
    /// documentation). Found: marked delivered. Check failed: left in
    /// doubt for a later pass.
    async fn settle_in_doubt(
        &mut self,
        id: SpoolId,
        env: &Envelope,
        backend: &str,
        rcpts: Vec<String>,
    ) -> Result<Vec<String>, WorkerError> {
        let mut todo = Vec::with_capacity(rcpts.len());
        for rcpt in rcpts {
            if env.recipient(&rcpt).is_none_or(|r| r.sending.is_none()) {
                todo.push(rcpt);
                continue;
            }
            let b = self.ctx.backends.get(backend).cloned();
            let check = b
                .as_ref()
                .and_then(|b| Some((b, b.check.as_ref()?, env.trace_id.as_deref()?)));
            let Some((b, master, trace)) = check else {
                warn!(%id, %rcpt, %backend, "delivery outcome in doubt after a restart; delivering again (set a check_user on the backend for exactly once)");
                todo.push(rcpt);
                continue;
            };
            let limits = &self.ctx.config.limits;
            let found = lookup::find_trace(
                b,
                master,
                &rcpt,
                trace,
                limits.connect_timeout,
                limits.login_timeout,
            )
            .await;
            match found {
                Ok(Found::Yes) => {
                    info!(%id, %rcpt, "in-doubt delivery found in the mailbox: not sent again");
                    metrics::counter!("ponte_inbound_deliveries_total", "outcome" => "found")
                        .increment(1);
                    self.set(id, rcpt, Status::Delivered).await?;
                }
                Ok(Found::No) => {
                    info!(%id, %rcpt, "in-doubt delivery not in the mailbox: sending");
                    todo.push(rcpt);
                }
                Err(e) => {
                    warn!(%id, %rcpt, error = %e, "delivery check failed; will try again");
                    self.defer(&rcpt);
                }
            }
        }
        Ok(todo)
    }

    /// The status each recipient ends up with.
    async fn send(&self, env: &Envelope, data: &[u8], via: &Via, rcpts: &[String]) -> Vec<Status> {
        let limits = &self.ctx.config.limits;
        let t = Timeouts {
            connect: limits.connect_timeout,
            reply: limits.login_timeout,
        };
        let msg = Message {
            mail_from: &env.mail_from,
            recipients: rcpts,
            data,
        };
        let result = match via {
            Via::Backend(name) => match self.ctx.backends.get(name) {
                Some(b) => client::deliver(b, self.ctx.dns.as_ref(), &msg, t)
                    .await
                    .map_err(|e| Undelivered {
                        reason: e.to_string(),
                        permanent: false,
                    }),
                None => Err(Undelivered {
                    reason: format!("unknown backend {name}"),
                    permanent: false,
                }),
            },
            Via::Domain(domain) => outbound::deliver(&self.ctx, domain, &msg, t).await,
        };
        match result {
            Ok(replies) => replies.iter().map(status_of).collect(),
            Err(Undelivered { reason, permanent }) => {
                warn!(%via, %reason, permanent, "delivery failed");
                let failed = Status::Failed { reason, permanent };
                vec![failed; rcpts.len()]
            }
        }
    }

    /// Writes a delivery's status; a temporary failure blocks the mailbox.
    async fn record(
        &mut self,
        id: SpoolId,
        rcpt: String,
        status: Status,
    ) -> Result<(), WorkerError> {
        let outcome = match &status {
            Status::Delivered => "delivered",
            Status::Failed {
                permanent: true, ..
            } => "failed",
            _ => "deferred",
        };
        info!(%id, %rcpt, outcome, "spooled delivery");
        metrics::counter!("ponte_inbound_deliveries_total", "outcome" => outcome).increment(1);
        if outcome == "deferred" {
            self.defer(&rcpt);
        }
        self.set(id, rcpt, status).await
    }

    /// `rcpt` waits (newer mail to it too) and is tried again after the
    /// first backoff.
    fn defer(&mut self, rcpt: &str) {
        self.waiting.insert(rcpt.to_ascii_lowercase());
        self.wake_by(now_unix() + FIRST_BACKOFF);
    }

    /// The next pass starts by `due` (Unix seconds) at the latest.
    fn wake_by(&mut self, due: i64) {
        self.next_retry = Some(self.next_retry.map_or(due, |n| n.min(due)));
    }

    async fn set(&mut self, id: SpoolId, rcpt: String, status: Status) -> Result<(), WorkerError> {
        let (r, st) = (rcpt.clone(), status.clone());
        self.blocking(move |s| s.set_status(id, &r, st)).await??;
        self.written.push((rcpt, status));
        Ok(())
    }

    /// Removes the message once every recipient has it or failed for
    /// good with the failure reported.
    async fn remove_if_finished(&self, entry: &Entry) -> Result<(), WorkerError> {
        let mut env = self.current(entry);
        for r in &mut env.recipients {
            r.notified |= self
                .notified
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&r.address));
        }
        if !env.is_finished() {
            return Ok(());
        }
        let id = entry.id;
        self.blocking(move |s| s.remove(id)).await??;
        info!(%id, "spooled message done for every recipient; removed");
        Ok(())
    }
}

/// A backend reply as a recipient's status.
fn status_of(reply: &Reply) -> Status {
    if reply.is_success() {
        Status::Delivered
    } else {
        Status::Failed {
            reason: reply.text(),
            permanent: reply.is_permanent(),
        }
    }
}

/// When a temporarily failed recipient may be tried again (Unix seconds):
/// 30 s after the first failure, doubling, at most an hour.
fn retry_at(r: &Recipient) -> Option<i64> {
    match (&r.status, r.last_attempt) {
        (
            Status::Failed {
                permanent: false, ..
            },
            Some(last),
        ) => {
            let doublings = r.attempts.saturating_sub(1).min(16);
            let delay = (FIRST_BACKOFF << doublings).min(MAX_BACKOFF);
            Some(last + delay)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(attempts: u32, last: i64) -> Recipient {
        Recipient {
            address: "a@x.example".into(),
            status: Status::Failed {
                reason: "451".into(),
                permanent: false,
            },
            attempts,
            last_attempt: Some(last),
            sending: None,
            notified: false,
        }
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(retry_at(&failed(1, 1000)), Some(1030));
        assert_eq!(retry_at(&failed(2, 1000)), Some(1060));
        assert_eq!(retry_at(&failed(3, 1000)), Some(1120));
        assert_eq!(retry_at(&failed(40, 1000)), Some(4600));
        let mut pending = failed(0, 0);
        pending.status = Status::Pending;
        assert_eq!(retry_at(&pending), None);
    }

    #[test]
    fn replies_become_statuses() {
        let reply = |code, raw: &str| Reply {
            code,
            raw: raw.as_bytes().to_vec(),
        };
        assert_eq!(status_of(&reply(250, "250 ok\r\n")), Status::Delivered);
        assert!(matches!(
            status_of(&reply(452, "452 full\r\n")),
            Status::Failed {
                permanent: false,
                ..
            }
        ));
        assert!(status_of(&reply(550, "550 no\r\n")).is_done());
    }
}
