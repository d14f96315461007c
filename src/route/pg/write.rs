//! The write side: one transaction per change, holding the fleet's write
//! lock, with its audit rows and a `NOTIFY` per thing changed (delivered
//! to every node when the transaction commits). The same audit entries as
//! the embedded store's.

use tokio_postgres::Transaction;

use super::schema::WRITE_LOCK;
use super::Inner;
use crate::error::StoreError;
use crate::route::fleet::{Announced, Event, Payload, Selector, CHANNEL};
use crate::route::store::{wording, Applied, AuditEntry, Change, Dump, Subject, CONFIG};
use crate::route::MailboxState;

/// More mailboxes than this changed at once: one `All` event instead of
/// one per mailbox (a NOTIFY payload is at most 8000 bytes each, and a
/// full reload is cheaper than thousands of single ones).
const MAX_MAILBOX_EVENTS: usize = 100;

/// Applies `change` as `who` and brings this node's snapshot up to date.
pub(super) async fn apply(
    inner: &Inner,
    change: &Change,
    who: &str,
) -> Result<Applied, StoreError> {
    let pe = |e| inner.pg_error(e);
    let mut c = inner.client().await?;
    let tx = c.transaction().await.map_err(pe)?;
    bounded(&tx).await.map_err(pe)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await
        .map_err(pe)?;
    let mut w = Writer {
        tx: &tx,
        inner,
        who,
        now: crate::route::now_unix(),
        applied: Applied::default(),
        events: Vec::new(),
        change: inner.next_change(),
    };
    match change {
        Change::ClaimSchedule { id, change } => w.claim(*id, change).await?,
        other => w.write(other).await?,
    }
    w.write_audit().await?;
    let events = w.notify().await?;
    let applied = w.applied;
    tx.commit().await.map_err(pe)?;
    for e in &events {
        // Committed: a failed refresh is caught up by our own NOTIFY.
        if let Err(err) = inner.refresh_with(&c, e).await {
            tracing::warn!(error = %err, "state store: snapshot refresh after a change failed");
        }
    }
    Ok(applied)
}

/// Bounds the transaction's waits: a node that died holding the write
/// lock (its backend kept until PostgreSQL notices) must not hold every
/// other node's changes for hours; they fail and can be retried.
async fn bounded(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(
        "SET LOCAL lock_timeout = '5s'; SET LOCAL statement_timeout = '10s';
         SET LOCAL idle_in_transaction_session_timeout = '10s'",
    )
    .await
}

/// Replaces everything with `dump` (`migrate-store`).
pub(super) async fn restore(inner: &Inner, d: &Dump) -> Result<(), StoreError> {
    let pe = |e| inner.pg_error(e);
    let mut c = inner.client().await?;
    let tx = c.transaction().await.map_err(pe)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await
        .map_err(pe)?;
    tx.batch_execute("TRUNCATE domains, mailboxes, tempmail, schedules, audit")
        .await
        .map_err(pe)?;
    let col = |f: &dyn Fn(usize) -> String, n| (0..n).map(f).collect::<Vec<String>>();
    let n = d.domains.len();
    tx.execute(
        "INSERT INTO domains (name, state, set_by, updated)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])",
        &[
            &col(&|i| d.domains[i].0.clone(), n),
            &col(&|i| d.domains[i].1.state.to_string(), n),
            &col(&|i| d.domains[i].1.set_by.clone(), n),
            &d.domains.iter().map(|x| x.1.updated).collect::<Vec<i64>>(),
        ],
    )
    .await
    .map_err(pe)?;
    insert_mailboxes(&tx, inner, &d.mailboxes).await?;
    tx.execute(
        "INSERT INTO tempmail (address, deadline) SELECT * FROM UNNEST($1::text[], $2::bigint[])",
        &[
            &d.tempmail.iter().map(|t| t.0.clone()).collect::<Vec<_>>(),
            &d.tempmail.iter().map(|t| t.1).collect::<Vec<i64>>(),
        ],
    )
    .await
    .map_err(pe)?;
    for s in &d.schedules {
        let (kind, name) = subject_columns(&s.subject);
        tx.execute(
            "INSERT INTO schedules (id, subject_kind, subject, state, due, created_by, created)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &(s.id as i64),
                &kind,
                &name,
                &s.state.as_str(),
                &s.at,
                &s.by,
                &s.created,
            ],
        )
        .await
        .map_err(pe)?;
    }
    insert_audit(&tx, inner, &d.audit, true).await?;
    tx.batch_execute(
        "SELECT setval(pg_get_serial_sequence('audit', 'seq'), coalesce((SELECT max(seq) FROM audit), 0) + 1, false);
         SELECT setval(pg_get_serial_sequence('schedules', 'id'), coalesce((SELECT max(id) FROM schedules), 0) + 1, false);",
    )
    .await
    .map_err(pe)?;
    notify(&tx, inner, (0, 1), &Event::All).await?;
    tx.commit().await.map_err(pe)?;
    inner.refresh_with(&c, &Event::All).await
}

fn subject_columns(s: &Subject) -> (&'static str, &str) {
    match s {
        Subject::Domain(d) => ("domain", d.as_str()),
        Subject::Mailbox(m) => ("mailbox", m.as_str()),
    }
}

/// Sends one NOTIFY (delivered at commit); `change`: this instance's
/// number of the change and its count of payloads, for the others'
/// answers (0: none wanted).
async fn notify(
    tx: &Transaction<'_>,
    inner: &Inner,
    (change, payloads): (u64, usize),
    event: &Event,
) -> Result<(), StoreError> {
    let payload = Payload {
        node: inner.node.clone(),
        instance: inner.instance.clone(),
        change,
        payloads,
        event: event.clone(),
    }
    .encode();
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await
        .map_err(|e| inner.pg_error(e))?;
    Ok(())
}

/// Inserts or replaces mailbox rows.
async fn insert_mailboxes(
    tx: &Transaction<'_>,
    inner: &Inner,
    rows: &[(String, crate::route::MailboxRecord)],
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO mailboxes (address, state, backend, set_by, updated)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
         ON CONFLICT (address) DO UPDATE SET state = excluded.state, backend = excluded.backend,
             set_by = excluded.set_by, updated = excluded.updated",
        &[
            &rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            &rows
                .iter()
                .map(|r| r.1.state.to_string())
                .collect::<Vec<_>>(),
            &rows.iter().map(|r| r.1.backend.clone()).collect::<Vec<_>>(),
            &rows.iter().map(|r| r.1.set_by.clone()).collect::<Vec<_>>(),
            &rows.iter().map(|r| r.1.updated).collect::<Vec<i64>>(),
        ],
    )
    .await
    .map_err(|e| inner.pg_error(e))?;
    Ok(())
}

/// Inserts audit entries; with `keep_seq` under their own numbers (a
/// restore), else numbered by the sequence, in order.
async fn insert_audit(
    tx: &Transaction<'_>,
    inner: &Inner,
    entries: &[AuditEntry],
    keep_seq: bool,
) -> Result<Vec<u64>, StoreError> {
    let seqs: Vec<i64> = entries.iter().map(|a| a.seq as i64).collect();
    let ats: Vec<i64> = entries.iter().map(|a| a.at).collect();
    let who: Vec<String> = entries.iter().map(|a| a.who.clone()).collect();
    let what: Vec<String> = entries.iter().map(|a| a.what.clone()).collect();
    let old: Vec<Option<String>> = entries.iter().map(|a| a.old.clone()).collect();
    let new: Vec<Option<String>> = entries.iter().map(|a| a.new.clone()).collect();
    let rows = if keep_seq {
        tx.query(
            "INSERT INTO audit (seq, at, who, what, old_value, new_value)
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])
             RETURNING seq",
            &[&seqs, &ats, &who, &what, &old, &new],
        )
        .await
    } else {
        // ORDER BY the position: the sequence numbers follow the entries.
        tx.query(
            "INSERT INTO audit (at, who, what, old_value, new_value)
             SELECT at, who, what, o, n FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
                 WITH ORDINALITY AS t(at, who, what, o, n, i) ORDER BY i
             RETURNING seq",
            &[&ats, &who, &what, &old, &new],
        )
        .await
    }
    .map_err(|e| inner.pg_error(e))?;
    let mut out: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
    out.sort_unstable();
    Ok(out)
}

/// One change inside its transaction.
struct Writer<'t> {
    tx: &'t Transaction<'t>,
    inner: &'t Inner,
    who: &'t str,
    now: i64,
    applied: Applied,
    events: Vec<Event>,
    /// This change's number ([`Inner::next_change`]).
    change: u64,
}

impl Writer<'_> {
    fn pe(&self, e: tokio_postgres::Error) -> StoreError {
        self.inner.pg_error(e)
    }

    fn audit(&mut self, line: wording::Line) {
        self.applied.audit.push(line.entry(self.now, self.who));
    }

    fn event(&mut self, e: Event) {
        if !self.events.contains(&e) {
            self.events.push(e);
        }
    }

    async fn write_audit(&mut self) -> Result<(), StoreError> {
        if self.applied.audit.is_empty() {
            return Ok(());
        }
        let seqs = insert_audit(self.tx, self.inner, &self.applied.audit, false).await?;
        for (entry, seq) in self.applied.audit.iter_mut().zip(seqs) {
            entry.seq = seq;
        }
        Ok(())
    }

    /// Sends the NOTIFYs (delivered at commit) and says whose answers to
    /// wait for; returns the events.
    async fn notify(&mut self) -> Result<Vec<Event>, StoreError> {
        let mailboxes = self
            .events
            .iter()
            .filter(|e| matches!(e, Event::Mailbox(_)))
            .count();
        if mailboxes > MAX_MAILBOX_EVENTS {
            // One full reload instead; what is not a reload stays.
            self.events.retain(|e| matches!(e, Event::Kick { .. }));
            self.events.push(Event::All);
        }
        let n = self.events.len();
        for e in &self.events {
            notify(self.tx, self.inner, (self.change, n), e).await?;
        }
        if n > 0 {
            let expected = super::schema::answering_nodes(self.tx, &self.inner.node)
                .await
                .map_err(|e| self.pe(e))?;
            self.applied.announced = Some(Announced {
                change: self.change,
                events: n,
                expected,
            });
        }
        Ok(self.events.clone())
    }

    /// Carries out schedule `id` if it is still there (another node may
    /// have done it): removed and applied in this one transaction.
    async fn claim(&mut self, id: u64, change: &Change) -> Result<(), StoreError> {
        let row = self
            .tx
            // Due by the database's clock, not this node's (a node whose
            // clock runs fast must not carry schedules out early).
            .query_opt(
                "SELECT id FROM schedules
                 WHERE id = $1 AND due <= extract(epoch FROM now())::bigint
                 FOR UPDATE",
                &[&(id as i64)],
            )
            .await
            .map_err(|e| self.pe(e))?;
        if row.is_none() {
            return Ok(());
        }
        self.applied.claimed = true;
        if matches!(change, Change::ClaimSchedule { .. }) {
            return Err(StoreError::new("a schedule cannot claim a schedule"));
        }
        self.write(change).await?;
        self.remove_schedule(id).await
    }

    async fn write(&mut self, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::DomainState { domain, state } => self.domain_state(domain, *state, false).await,
            Change::ConfiguredDomainState { domain, state } => {
                self.domain_state(domain, *state, true).await
            }
            Change::Mailboxes(rows) => self.mailboxes(rows).await,
            Change::MailboxState { address, state } => {
                let backend: Option<String> = self
                    .tx
                    .query_opt(
                        "SELECT backend FROM mailboxes WHERE address = $1 FOR UPDATE",
                        &[address],
                    )
                    .await
                    .map_err(|e| self.pe(e))?
                    .and_then(|row| row.get(0));
                self.mailboxes(&[(address.clone(), *state, backend)]).await
            }
            Change::RemoveMailbox { address } => self.remove_mailbox(address).await,
            Change::MailboxTempmail { address, until } => self.tempmail(address, *until).await,
            Change::AddSchedule { subject, state, at } => {
                self.add_schedule(subject, *state, *at).await
            }
            Change::RemoveSchedule { id } => self.remove_schedule(*id).await,
            Change::ClaimSchedule { .. } => Err(StoreError::new("nested schedule claim")),
            Change::QueueHold { .. }
            | Change::QueueRelease { .. }
            | Change::QueueRetry { .. }
            | Change::QueueDelete { .. }
            | Change::Kick { .. } => {
                if let Some(line) = wording::audit_only(change) {
                    self.audit(line);
                }
                if let Change::Kick {
                    selector: selector @ (Selector::Mailbox(_) | Selector::Domain(_)),
                    reason,
                    ..
                } = change
                {
                    self.event(Event::Kick {
                        selector: selector.clone(),
                        reason: reason.clone(),
                    });
                }
                Ok(())
            }
        }
    }

    /// `keep_admin`: leave a state an admin set (the configuration's write).
    async fn domain_state(
        &mut self,
        domain: &str,
        state: MailboxState,
        keep_admin: bool,
    ) -> Result<(), StoreError> {
        let old = self
            .tx
            .query_opt(
                "SELECT state, set_by FROM domains WHERE name = $1 FOR UPDATE",
                &[&domain],
            )
            .await
            .map_err(|e| self.pe(e))?
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)));
        self.applied.replaced = old.as_ref().and_then(|(s, _)| s.parse().ok());
        if old.as_ref().is_some_and(|(s, by)| {
            (s == state.as_str() && by == self.who) || (keep_admin && by != CONFIG)
        }) {
            return Ok(());
        }
        self.tx
            .execute(
                "INSERT INTO domains (name, state, set_by, updated) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET state = excluded.state,
                     set_by = excluded.set_by, updated = excluded.updated",
                &[&domain, &state.as_str(), &self.who, &self.now],
            )
            .await
            .map_err(|e| self.pe(e))?;
        let old_state = old.and_then(|(s, _)| s.parse().ok());
        if let Some(line) = wording::domain(domain, old_state, state) {
            self.audit(line);
        }
        self.event(Event::Domain(domain.to_string()));
        Ok(())
    }

    async fn mailboxes(
        &mut self,
        rows: &[(String, MailboxState, Option<String>)],
    ) -> Result<(), StoreError> {
        let addresses: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let existing: std::collections::HashMap<String, crate::route::MailboxRecord> = self
            .tx
            .query(
                "SELECT address, state, backend, set_by, updated FROM mailboxes
                 WHERE address = ANY($1) FOR UPDATE",
                &[&addresses],
            )
            .await
            .map_err(|e| self.pe(e))?
            .iter()
            .filter_map(|r| {
                let state = r.get::<_, &str>(1).parse().ok()?;
                let rec = crate::route::MailboxRecord {
                    state,
                    backend: r.get(2),
                    set_by: r.get(3),
                    updated: r.get(4),
                };
                Some((r.get(0), rec))
            })
            .collect();
        let mut changed = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (address, state, backend) in rows.iter().rev() {
            // The last row for an address wins, as in the embedded store.
            if !seen.insert(address.as_str()) {
                continue;
            }
            let old = existing.get(address);
            if rows.len() == 1 {
                self.applied.replaced = old.map(|o| o.state);
            }
            if old.is_some_and(|o| o.state == *state && o.backend == *backend) {
                continue;
            }
            let rec = crate::route::MailboxRecord {
                state: *state,
                backend: backend.clone(),
                set_by: self.who.to_string(),
                updated: self.now,
            };
            changed.push((address.clone(), old, rec));
        }
        if changed.is_empty() {
            return Ok(());
        }
        changed.reverse();
        let records: Vec<_> = changed.iter().map(|c| (c.0.clone(), c.2.clone())).collect();
        insert_mailboxes(self.tx, self.inner, &records).await?;
        // Named one by one only while few (`event` scans what it has).
        let each = changed.len() <= MAX_MAILBOX_EVENTS;
        if !each {
            self.event(Event::All);
        }
        for (address, old, rec) in changed {
            self.audit(wording::mailbox(&address, old, Some(&rec)));
            if each {
                self.event(Event::Mailbox(address));
            }
        }
        Ok(())
    }

    async fn remove_mailbox(&mut self, address: &str) -> Result<(), StoreError> {
        let old = self
            .tx
            .query_opt(
                "DELETE FROM mailboxes WHERE address = $1 RETURNING state, backend",
                &[&address],
            )
            .await
            .map_err(|e| self.pe(e))?;
        if let Some(r) = old {
            let rec = crate::route::MailboxRecord {
                state: r.get::<_, &str>(0).parse().map_err(StoreError::new)?,
                backend: r.get(1),
                set_by: String::new(),
                updated: 0,
            };
            self.audit(wording::mailbox(address, Some(&rec), None));
            self.event(Event::Mailbox(address.to_string()));
        }
        Ok(())
    }

    async fn tempmail(&mut self, address: &str, until: Option<i64>) -> Result<(), StoreError> {
        let old: Option<i64> = self
            .tx
            .query_opt(
                "SELECT deadline FROM tempmail WHERE address = $1 FOR UPDATE",
                &[&address],
            )
            .await
            .map_err(|e| self.pe(e))?
            .map(|r| r.get(0));
        if old == until {
            return Ok(());
        }
        let done = match until {
            Some(u) => {
                self.tx
                    .execute(
                        "INSERT INTO tempmail (address, deadline) VALUES ($1, $2)
                         ON CONFLICT (address) DO UPDATE SET deadline = excluded.deadline",
                        &[&address, &u],
                    )
                    .await
            }
            None => {
                self.tx
                    .execute("DELETE FROM tempmail WHERE address = $1", &[&address])
                    .await
            }
        };
        done.map_err(|e| self.pe(e))?;
        self.audit(wording::tempmail(address, old, until));
        self.event(Event::Tempmail(address.to_string()));
        Ok(())
    }

    async fn add_schedule(
        &mut self,
        subject: &Subject,
        state: MailboxState,
        at: i64,
    ) -> Result<(), StoreError> {
        let (kind, name) = subject_columns(subject);
        let row = self
            .tx
            .query_one(
                "INSERT INTO schedules (subject_kind, subject, state, due, created_by, created)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&kind, &name, &state.as_str(), &at, &self.who, &self.now],
            )
            .await
            .map_err(|e| self.pe(e))?;
        let id = row.get::<_, i64>(0) as u64;
        self.applied.schedule_id = Some(id);
        self.audit(wording::schedule_added(id, subject, state, at));
        self.event(Event::Schedules);
        Ok(())
    }

    async fn remove_schedule(&mut self, id: u64) -> Result<(), StoreError> {
        let old = self
            .tx
            .query_opt(
                "DELETE FROM schedules WHERE id = $1 RETURNING subject_kind, subject, state",
                &[&(id as i64)],
            )
            .await
            .map_err(|e| self.pe(e))?;
        if let Some(r) = old {
            let name: String = r.get(1);
            let subject = if r.get::<_, &str>(0) == "domain" {
                Subject::Domain(name)
            } else {
                Subject::Mailbox(name)
            };
            let state = r.get::<_, &str>(2).parse().map_err(StoreError::new)?;
            self.audit(wording::schedule_removed(id, &subject, state));
            self.event(Event::Schedules);
        }
        Ok(())
    }
}
