//! The durable state store: domain states, per-mailbox overrides, scheduled
//! transitions and the audit log.
//!
//! [`StateStore`] is the small interface the router and the control plane
//! need; [`RedbStore`] is the embedded, crash-safe implementation (one
//! file, transactional). A fleet backend (PostgreSQL) implements the same
//! trait later. Every change goes through [`StateStore::apply`], which
//! writes the change and its audit entries in one transaction. Lookups sit
//! on the login path, so implementations answer from memory or local disk.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::MailboxState;
use crate::error::StoreError;

/// A domain's current default state, and who set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub state: MailboxState,
    /// `config` when it comes from the configuration file, else the admin.
    pub set_by: String,
    /// Unix seconds.
    pub updated: i64,
}

/// A mailbox's override of its domain's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxRecord {
    pub state: MailboxState,
    /// A backend other than the domain's for this mailbox's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    pub set_by: String,
    pub updated: i64,
}

/// What a schedule or an audit entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum Subject {
    Domain(String),
    Mailbox(String),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Domain(d) => write!(f, "domain {d}"),
            Subject::Mailbox(m) => write!(f, "mailbox {m}"),
        }
    }
}

/// A state transition ponte carries out itself at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: u64,
    pub subject: Subject,
    pub state: MailboxState,
    /// Unix seconds.
    pub at: i64,
    pub by: String,
    pub created: i64,
}

/// One line of the audit log: when, who, what, old → new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: i64,
    pub who: String,
    pub what: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// Who the configuration file's writes are by (a reserved token name).
pub const CONFIG: &str = "config";

/// A change to the routing state. Applied atomically with its audit.
#[derive(Debug, Clone)]
pub enum Change {
    DomainState {
        domain: String,
        state: MailboxState,
    },
    /// The state the configuration file gives a domain: written only while
    /// no admin has set one. Decided inside the write's transaction: a node
    /// started with an old file, or whose view is behind, must not undo a
    /// flip made elsewhere in the fleet.
    ConfiguredDomainState {
        domain: String,
        state: MailboxState,
    },
    /// Insert or replace mailbox overrides (one or many: an import).
    Mailboxes(Vec<(String, MailboxState, Option<String>)>),
    /// A mailbox's state, keeping the backend its override names at the
    /// moment of writing (a schedule: another node may just have set it).
    MailboxState {
        address: String,
        state: MailboxState,
    },
    RemoveMailbox {
        address: String,
    },
    /// Sets (or clears) a mailbox's own tempmail deadline. Kept apart
    /// from its state: a deadline never pins a mailbox's state.
    MailboxTempmail {
        address: String,
        until: Option<i64>,
    },
    AddSchedule {
        subject: Subject,
        state: MailboxState,
        at: i64,
    },
    RemoveSchedule {
        id: u64,
    },
    /// An admin holds a spooled message. The queue changes are audit
    /// entries only: the spool itself keeps the message's state.
    QueueHold {
        id: String,
    },
    QueueRelease {
        id: String,
    },
    /// An admin reset `reset` recipients of a spooled message to pending.
    QueueRetry {
        id: String,
        reset: usize,
    },
    /// An admin closed open sessions (`closed` of them on this node).
    /// Audited; in a fleet the other nodes are told to close theirs.
    Kick {
        selector: super::fleet::Selector,
        reason: String,
        closed: usize,
    },
    /// An admin deleted a spooled message, undelivered recipients and all.
    QueueDelete {
        id: String,
        from: String,
        recipients: Vec<String>,
    },
    /// The scheduler carries out schedule `id`: the schedule is removed
    /// and `change` applied in one transaction, only if the schedule was
    /// still there (in a fleet, exactly one node gets to do it).
    ClaimSchedule {
        id: u64,
        change: Box<Change>,
    },
}

/// What `apply` did: the audit entries written (empty if nothing changed)
/// and, for `AddSchedule`, the new schedule's id.
#[derive(Debug, Default)]
pub struct Applied {
    pub audit: Vec<AuditEntry>,
    pub schedule_id: Option<u64>,
    /// For a change of one domain's state or one mailbox's own state: the
    /// state it replaced, as the change's own transaction read it (in a
    /// fleet, newer than this node's copy may be). `None`: none was
    /// stored (the configuration's, or the domain's, was in force).
    pub replaced: Option<MailboxState>,
    /// For `ClaimSchedule`: the schedule was there and this call did it.
    pub claimed: bool,
    /// A fleet store told the other nodes: what to wait for their answers
    /// by ([`StateStore::confirmations`]).
    pub announced: Option<super::fleet::Announced>,
}

/// Everything a store holds, for `ponte ctl migrate-store`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dump {
    pub domains: Vec<(String, DomainRecord)>,
    pub mailboxes: Vec<(String, MailboxRecord)>,
    pub tempmail: Vec<(String, i64)>,
    pub schedules: Vec<Schedule>,
    /// In `seq` order.
    pub audit: Vec<AuditEntry>,
}

impl Dump {
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
            && self.mailboxes.is_empty()
            && self.tempmail.is_empty()
            && self.schedules.is_empty()
            && self.audit.is_empty()
    }
}

/// Where routing state lives. Addresses and domains are lower case.
pub trait StateStore: Send + Sync {
    fn domain(&self, name: &str) -> Result<Option<DomainRecord>, StoreError>;
    fn domains(&self) -> Result<Vec<(String, DomainRecord)>, StoreError>;
    fn mailbox(&self, address: &str) -> Result<Option<MailboxRecord>, StoreError>;
    /// Mailbox overrides, of one domain or all, in address order.
    fn mailboxes(&self, domain: Option<&str>) -> Result<Vec<(String, MailboxRecord)>, StoreError>;
    fn mailbox_count(&self) -> Result<u64, StoreError>;
    /// A mailbox's own tempmail deadline (Unix seconds), if it has one.
    fn tempmail_until(&self, address: &str) -> Result<Option<i64>, StoreError>;
    fn schedules(&self) -> Result<Vec<Schedule>, StoreError>;
    /// The newest `limit` audit entries, oldest first.
    fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Applies `change` as `who`, with its audit entries, all or nothing.
    fn apply(&self, change: &Change, who: &str) -> Result<Applied, StoreError>;
    /// Everything the store holds.
    fn dump(&self) -> Result<Dump, StoreError>;
    /// Replaces everything the store holds with `dump`, in one transaction.
    fn restore(&self, dump: &Dump) -> Result<(), StoreError>;

    /// Calls `hook` when another node changed the shared state (a fleet
    /// store); the embedded store has no other writers.
    fn watch(&self, _hook: super::fleet::Hook) {}
    /// Which store this is and whether it can be reached.
    fn status(&self) -> super::fleet::StoreStatus {
        super::fleet::StoreStatus::embedded()
    }
    /// Publishes this node's figures for the fleet view (fleet stores
    /// only; never waits on the network).
    fn publish_node(&self, _report: super::fleet::NodeReport) {}
    /// Publishes this node's last figures at a clean stop, after any
    /// publication under way, waiting up to `within`.
    fn publish_last(
        &self,
        _report: super::fleet::NodeReport,
        _within: std::time::Duration,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    /// Waits up to `within` for the other nodes' answers to a change this
    /// node announced (the sessions each closed). Only fleet stores
    /// announce changes.
    fn confirmations(
        &self,
        announced: &super::fleet::Announced,
        _within: std::time::Duration,
    ) -> super::fleet::Confirmed {
        super::fleet::Confirmed {
            silent: announced.expected.clone(),
            ..Default::default()
        }
    }
    /// Every node's last published figures; `None` outside a fleet.
    fn fleet(&self) -> Result<Option<Vec<super::fleet::NodeReport>>, StoreError> {
        Ok(None)
    }
}

const DOMAINS: TableDefinition<&str, &[u8]> = TableDefinition::new("domains");
const MAILBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("mailboxes");
const SCHEDULES: TableDefinition<u64, &[u8]> = TableDefinition::new("schedules");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const TEMPMAIL: TableDefinition<&str, i64> = TableDefinition::new("tempmail");

/// The embedded store: a redb file `state.redb` in the configured directory.
pub struct RedbStore {
    db: Database,
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(StoreError::new)
}

fn from_json<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(StoreError::new)
}

impl RedbStore {
    pub fn open(dir: &Path) -> Result<Arc<RedbStore>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::new(format!("create {}: {e}", dir.display())))?;
        let file = dir.join("state.redb");
        let db = Database::create(&file)
            .map_err(|e| StoreError::new(format!("open {}: {e}", file.display())))?;
        // Create the tables once so that read transactions always find them.
        let txn = db.begin_write().map_err(StoreError::new)?;
        txn.open_table(DOMAINS).map_err(StoreError::new)?;
        txn.open_table(MAILBOXES).map_err(StoreError::new)?;
        txn.open_table(SCHEDULES).map_err(StoreError::new)?;
        txn.open_table(AUDIT).map_err(StoreError::new)?;
        txn.open_table(TEMPMAIL).map_err(StoreError::new)?;
        txn.commit().map_err(StoreError::new)?;
        Ok(Arc::new(RedbStore { db }))
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::new)?;
        let t = txn.open_table(table).map_err(StoreError::new)?;
        let v = t.get(key).map_err(StoreError::new)?;
        v.map(|v| from_json(v.value())).transpose()
    }
}

/// The write side of one `apply`, inside its transaction.
struct Writer<'t> {
    txn: &'t redb::WriteTransaction,
    who: &'t str,
    now: i64,
    applied: Applied,
}

impl Writer<'_> {
    fn write(&mut self, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::DomainState { domain, state } => self.domain_state(domain, *state, false),
            Change::ConfiguredDomainState { domain, state } => {
                self.domain_state(domain, *state, true)
            }
            Change::Mailboxes(rows) => self.mailboxes(rows),
            Change::MailboxState { address, state } => {
                let backend = {
                    let t = self.txn.open_table(MAILBOXES).map_err(StoreError::new)?;
                    let current: Option<MailboxRecord> = t
                        .get(address.as_str())
                        .map_err(StoreError::new)?
                        .map(|v| from_json(v.value()))
                        .transpose()?;
                    current.and_then(|m| m.backend)
                };
                self.mailboxes(&[(address.clone(), *state, backend)])
            }
            Change::RemoveMailbox { address } => self.remove_mailbox(address),
            Change::MailboxTempmail { address, until } => self.mailbox_tempmail(address, *until),
            Change::AddSchedule { subject, state, at } => self.add_schedule(subject, *state, *at),
            Change::RemoveSchedule { id } => self.remove_schedule(*id),
            Change::ClaimSchedule { id, change } => {
                let present = {
                    let t = self.txn.open_table(SCHEDULES).map_err(StoreError::new)?;
                    let v = t.get(*id).map_err(StoreError::new)?;
                    v.is_some()
                };
                if present {
                    self.applied.claimed = true;
                    self.write(change)?;
                    self.remove_schedule(*id)?;
                }
                Ok(())
            }
            Change::QueueHold { .. }
            | Change::QueueRelease { .. }
            | Change::QueueRetry { .. }
            | Change::QueueDelete { .. }
            | Change::Kick { .. } => {
                if let Some(line) = wording::audit_only(change) {
                    self.audit(line);
                }
                Ok(())
            }
        }
    }

    /// Queues an audit entry; `write_audit` stores them all at the end of
    /// the change (one table open for a whole import).
    fn audit(&mut self, line: wording::Line) {
        self.applied.audit.push(line.entry(self.now, self.who));
    }

    /// Numbers the queued audit entries after the last stored one and
    /// writes them, inside the change's transaction.
    fn write_audit(&mut self) -> Result<(), StoreError> {
        if self.applied.audit.is_empty() {
            return Ok(());
        }
        let mut t = self.txn.open_table(AUDIT).map_err(StoreError::new)?;
        let mut seq = t
            .last()
            .map_err(StoreError::new)?
            .map_or(0, |(k, _)| k.value());
        for entry in &mut self.applied.audit {
            seq += 1;
            entry.seq = seq;
            t.insert(seq, json(entry)?.as_slice())
                .map_err(StoreError::new)?;
        }
        Ok(())
    }

    /// `keep_admin`: leave a state an admin set (the configuration's write).
    fn domain_state(
        &mut self,
        domain: &str,
        state: MailboxState,
        keep_admin: bool,
    ) -> Result<(), StoreError> {
        let old: Option<DomainRecord> = {
            let t = self.txn.open_table(DOMAINS).map_err(StoreError::new)?;
            let v = t.get(domain).map_err(StoreError::new)?;
            v.map(|v| from_json(v.value())).transpose()?
        };
        self.applied.replaced = old.as_ref().map(|o| o.state);
        if old.as_ref().is_some_and(|o| {
            (o.state == state && o.set_by == self.who) || (keep_admin && o.set_by != CONFIG)
        }) {
            return Ok(());
        }
        let rec = DomainRecord {
            state,
            set_by: self.who.to_string(),
            updated: self.now,
        };
        let mut t = self.txn.open_table(DOMAINS).map_err(StoreError::new)?;
        t.insert(domain, json(&rec)?.as_slice())
            .map_err(StoreError::new)?;
        drop(t);
        if let Some(line) = wording::domain(domain, old.map(|o| o.state), state) {
            self.audit(line);
        }
        Ok(())
    }

    fn mailboxes(
        &mut self,
        rows: &[(String, MailboxState, Option<String>)],
    ) -> Result<(), StoreError> {
        let mut changed = Vec::new();
        {
            let mut t = self.txn.open_table(MAILBOXES).map_err(StoreError::new)?;
            for (address, state, backend) in rows {
                let old: Option<MailboxRecord> = t
                    .get(address.as_str())
                    .map_err(StoreError::new)?
                    .map(|v| from_json(v.value()))
                    .transpose()?;
                if rows.len() == 1 {
                    self.applied.replaced = old.as_ref().map(|o| o.state);
                }
                if old
                    .as_ref()
                    .is_some_and(|o| o.state == *state && o.backend == *backend)
                {
                    continue;
                }
                let rec = MailboxRecord {
                    state: *state,
                    backend: backend.clone(),
                    set_by: self.who.to_string(),
                    updated: self.now,
                };
                t.insert(address.as_str(), json(&rec)?.as_slice())
                    .map_err(StoreError::new)?;
                changed.push(wording::mailbox(address, old.as_ref(), Some(&rec)));
            }
        }
        for line in changed {
            self.audit(line);
        }
        Ok(())
    }

    fn mailbox_tempmail(&mut self, address: &str, until: Option<i64>) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(TEMPMAIL).map_err(StoreError::new)?;
        let old = match until {
            Some(u) => t.insert(address, u),
            None => t.remove(address),
        }
        .map_err(StoreError::new)?
        .map(|v| v.value());
        drop(t);
        if old == until {
            return Ok(());
        }
        self.audit(wording::tempmail(address, old, until));
        Ok(())
    }

    fn remove_mailbox(&mut self, address: &str) -> Result<(), StoreError> {
        let old: Option<MailboxRecord> = {
            let mut t = self.txn.open_table(MAILBOXES).map_err(StoreError::new)?;
            let v = t.remove(address).map_err(StoreError::new)?;
            v.map(|v| from_json(v.value())).transpose()?
        };
        if let Some(old) = old {
            self.audit(wording::mailbox(address, Some(&old), None));
        }
        Ok(())
    }

    fn add_schedule(
        &mut self,
        subject: &Subject,
        state: MailboxState,
        at: i64,
    ) -> Result<(), StoreError> {
        let id = {
            let mut t = self.txn.open_table(SCHEDULES).map_err(StoreError::new)?;
            let id = t
                .last()
                .map_err(StoreError::new)?
                .map_or(1, |(k, _)| k.value() + 1);
            let s = Schedule {
                id,
                subject: subject.clone(),
                state,
                at,
                by: self.who.to_string(),
                created: self.now,
            };
            t.insert(id, json(&s)?.as_slice())
                .map_err(StoreError::new)?;
            id
        };
        self.applied.schedule_id = Some(id);
        self.audit(wording::schedule_added(id, subject, state, at));
        Ok(())
    }

    fn remove_schedule(&mut self, id: u64) -> Result<(), StoreError> {
        let old: Option<Schedule> = {
            let mut t = self.txn.open_table(SCHEDULES).map_err(StoreError::new)?;
            let v = t.remove(id).map_err(StoreError::new)?;
            v.map(|v| from_json(v.value())).transpose()?
        };
        if let Some(s) = old {
            self.audit(wording::schedule_removed(id, &s.subject, s.state));
        }
        Ok(())
    }
}

/// How each change reads in the audit log, worded once for both stores
/// (embedded and PostgreSQL), so that their logs read alike and
/// `migrate-store` copies like with like.
pub(crate) mod wording {
    use super::{rfc3339, AuditEntry, Change, MailboxRecord, MailboxState, Subject};

    /// What changed, old → new; numbered and timed when stored.
    pub struct Line {
        what: String,
        old: Option<String>,
        new: Option<String>,
    }

    impl Line {
        fn new(what: String, old: Option<String>, new: Option<String>) -> Line {
            Line { what, old, new }
        }

        /// The entry `who` made at `at`; `seq` is set when it is written.
        pub fn entry(self, at: i64, who: &str) -> AuditEntry {
            AuditEntry {
                seq: 0,
                at,
                who: who.to_string(),
                what: self.what,
                old: self.old,
                new: self.new,
            }
        }
    }

    /// A domain's state; nothing if it stays the same.
    pub fn domain(domain: &str, old: Option<MailboxState>, new: MailboxState) -> Option<Line> {
        (old != Some(new)).then(|| {
            Line::new(
                format!("domain {domain}"),
                old.map(|o| o.to_string()),
                Some(new.to_string()),
            )
        })
    }

    /// A mailbox's override set, replaced or removed.
    pub fn mailbox(
        address: &str,
        old: Option<&MailboxRecord>,
        new: Option<&MailboxRecord>,
    ) -> Line {
        Line::new(
            format!("mailbox {address}"),
            old.map(describe),
            new.map(describe),
        )
    }

    /// A mailbox's own tempmail deadline set, moved or cleared.
    pub fn tempmail(address: &str, old: Option<i64>, new: Option<i64>) -> Line {
        let show = |u: Option<i64>| u.map(|u| format!("tempmail until {}", rfc3339(u)));
        Line::new(format!("mailbox {address}"), show(old), show(new))
    }

    pub fn schedule_added(id: u64, subject: &Subject, state: MailboxState, at: i64) -> Line {
        Line::new(
            format!("schedule {id}: {subject}"),
            None,
            Some(format!("{state} at {}", rfc3339(at))),
        )
    }

    pub fn schedule_removed(id: u64, subject: &Subject, state: MailboxState) -> Line {
        Line::new(
            format!("schedule {id}: {subject}"),
            Some(state.to_string()),
            None,
        )
    }

    /// `migrated` or `migrated via backend2`.
    fn describe(rec: &MailboxRecord) -> String {
        match &rec.backend {
            Some(b) => format!("{} via {b}", rec.state),
            None => rec.state.to_string(),
        }
    }

    /// Most recipients named in a queue deletion's audit entry.
    const AUDIT_RECIPIENTS: usize = 10;

    /// The entry of an action that changes no routing state (on a
    /// spooled message, on open sessions).
    pub fn audit_only(change: &Change) -> Option<Line> {
        let what = |id: &str| format!("queue message {id}");
        let some = |s: &str| Some(s.to_string());
        let (what, old, new) = match change {
            Change::QueueHold { id } => (what(id), some("queued"), some("held")),
            Change::QueueRelease { id } => (what(id), some("held"), some("queued")),
            Change::QueueRetry { id, reset } => {
                let s = if *reset == 1 { "" } else { "s" };
                (
                    what(id),
                    None,
                    Some(format!("retry now ({reset} recipient{s} reset)")),
                )
            }
            Change::QueueDelete {
                id,
                from,
                recipients,
            } => {
                let from = if from.is_empty() { "<>" } else { from };
                let mut to = recipients
                    .iter()
                    .take(AUDIT_RECIPIENTS)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if recipients.len() > AUDIT_RECIPIENTS {
                    to.push_str(&format!(
                        " and {} more",
                        recipients.len() - AUDIT_RECIPIENTS
                    ));
                }
                (what(id), Some(format!("from {from} to {to}")), None)
            }
            Change::Kick {
                selector, closed, ..
            } => {
                let s = if *closed == 1 { "" } else { "s" };
                (
                    format!("sessions of {selector}"),
                    Some(format!("{closed} open session{s}")),
                    Some("closed".into()),
                )
            }
            _ => return None,
        };
        Some(Line::new(what, old, new))
    }
}

/// Unix seconds as RFC 3339 (UTC), or the number if out of range.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

impl StateStore for RedbStore {
    fn domain(&self, name: &str) -> Result<Option<DomainRecord>, StoreError> {
        self.get(DOMAINS, name)
    }

    fn domains(&self) -> Result<Vec<(String, DomainRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::new)?;
        let t = txn.open_table(DOMAINS).map_err(StoreError::new)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(StoreError::new)? {
            let (k, v) = row.map_err(StoreError::new)?;
            out.push((k.value().to_string(), from_json(v.value())?));
        }
        Ok(out)
    }

    fn mailbox(&self, address: &str) -> Result<Option<MailboxRecord>, StoreError> {
        self.get(MAILBOXES, address)
    }

    fn mailboxes(&self, domain: Option<&str>) -> Result<Vec<(String, MailboxRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::new)?;
        let t = txn.open_table(MAILBOXES).map_err(StoreError::new)?;
        let suffix = domain.map(|d| format!("@{d}"));
        let mut out = Vec::new();
        for row in t.iter().map_err(StoreError::new)? {
            let (k, v) = row.map_err(StoreError::new)?;
            let address = k.value();
            if suffix.as_deref().is_none_or(|s| address.ends_with(s)) {
                out.push((address.to_string(), from_json(v.value())?));
            }
        }
        Ok(out)
    }

    fn mailbox_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::new)?;
        let t = txn.open_table(MAILBOXES).map_err(StoreError::new)?;
        t.len().map_err(StoreError::new)
    }

    fn tempmail_until(&self, address: &str) -> Result<Option<i64>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::new)?;
        let t = txn.open_table(TEMPMAIL).map_err(StoreError::new)?;
        Ok(t.get(address).map_err(StoreError::new)?.map(|v| v.value()))
    }

    fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::new)?;
        let t = txn.open_table(SCHEDULES).map_err(StoreError::new)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(StoreError::new)? {
            out.push(from_json(row.map_err(StoreError::new)?.1.value())?);
        }
        Ok(out)
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::new)?;
        let t = txn.open_table(AUDIT).map_err(StoreError::new)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(StoreError::new)?.rev().take(limit) {
            out.push(from_json(row.map_err(StoreError::new)?.1.value())?);
        }
        out.reverse();
        Ok(out)
    }

    fn apply(&self, change: &Change, who: &str) -> Result<Applied, StoreError> {
        let txn = self.db.begin_write().map_err(StoreError::new)?;
        let mut w = Writer {
            txn: &txn,
            who,
            now: super::now_unix(),
            applied: Applied::default(),
        };
        w.write(change)?;
        w.write_audit()?;
        let applied = w.applied;
        txn.commit().map_err(StoreError::new)?;
        Ok(applied)
    }

    fn dump(&self) -> Result<Dump, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::new)?;
        let t = txn.open_table(TEMPMAIL).map_err(StoreError::new)?;
        let mut tempmail = Vec::new();
        for row in t.iter().map_err(StoreError::new)? {
            let (k, v) = row.map_err(StoreError::new)?;
            tempmail.push((k.value().to_string(), v.value()));
        }
        Ok(Dump {
            domains: self.domains()?,
            mailboxes: self.mailboxes(None)?,
            tempmail,
            schedules: self.schedules()?,
            audit: self.audit(usize::MAX)?,
        })
    }

    fn restore(&self, dump: &Dump) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(StoreError::new)?;
        {
            txn.delete_table(DOMAINS).map_err(StoreError::new)?;
            txn.delete_table(MAILBOXES).map_err(StoreError::new)?;
            txn.delete_table(TEMPMAIL).map_err(StoreError::new)?;
            txn.delete_table(SCHEDULES).map_err(StoreError::new)?;
            txn.delete_table(AUDIT).map_err(StoreError::new)?;
            let mut t = txn.open_table(DOMAINS).map_err(StoreError::new)?;
            for (name, rec) in &dump.domains {
                t.insert(name.as_str(), json(rec)?.as_slice())
                    .map_err(StoreError::new)?;
            }
            let mut t = txn.open_table(MAILBOXES).map_err(StoreError::new)?;
            for (address, rec) in &dump.mailboxes {
                t.insert(address.as_str(), json(rec)?.as_slice())
                    .map_err(StoreError::new)?;
            }
            let mut t = txn.open_table(TEMPMAIL).map_err(StoreError::new)?;
            for (address, until) in &dump.tempmail {
                t.insert(address.as_str(), *until)
                    .map_err(StoreError::new)?;
            }
            let mut t = txn.open_table(SCHEDULES).map_err(StoreError::new)?;
            for s in &dump.schedules {
                t.insert(s.id, json(s)?.as_slice())
                    .map_err(StoreError::new)?;
            }
            let mut t = txn.open_table(AUDIT).map_err(StoreError::new)?;
            for a in &dump.audit {
                t.insert(a.seq, json(a)?.as_slice())
                    .map_err(StoreError::new)?;
            }
        }
        txn.commit().map_err(StoreError::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_change_keeps_the_backend_the_override_names_when_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let a = "a@x.example".to_string();
        let via = Some("b2".to_string());
        s.apply(
            &Change::Mailboxes(vec![(a.clone(), MailboxState::Legacy, via.clone())]),
            "ops",
        )
        .unwrap();
        let applied = s
            .apply(
                &Change::MailboxState {
                    address: a.clone(),
                    state: MailboxState::Migrated,
                },
                "schedule 1 by ops",
            )
            .unwrap();
        let rec = s.mailbox(&a).unwrap().unwrap();
        assert_eq!((rec.state, rec.backend), (MailboxState::Migrated, via));
        assert_eq!(applied.audit[0].new.as_deref(), Some("migrated via b2"));
    }

    #[test]
    fn changes_are_audited_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path()).unwrap();
            let rows = vec![("a@x.example".to_string(), MailboxState::Migrated, None)];
            let applied = s.apply(&Change::Mailboxes(rows.clone()), "ops").unwrap();
            assert_eq!(applied.audit.len(), 1);
            // The same change again changes nothing and logs nothing.
            assert!(s
                .apply(&Change::Mailboxes(rows), "ops")
                .unwrap()
                .audit
                .is_empty());
            let at = 1_800_000_000;
            let sub = Subject::Domain("x.example".into());
            let id = s
                .apply(
                    &Change::AddSchedule {
                        subject: sub,
                        state: MailboxState::Blackout,
                        at,
                    },
                    "ops",
                )
                .unwrap()
                .schedule_id
                .unwrap();
            assert_eq!(s.schedules().unwrap()[0].id, id);
            s.apply(
                &Change::DomainState {
                    domain: "x.example".into(),
                    state: MailboxState::Legacy,
                },
                "config",
            )
            .unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(
            s.mailbox("a@x.example").unwrap().unwrap().state,
            MailboxState::Migrated
        );
        assert_eq!(s.mailbox_count().unwrap(), 1);
        let audit = s.audit(10).unwrap();
        assert_eq!(audit.len(), 3);
        assert_eq!(audit[0].what, "mailbox a@x.example");
        assert_eq!(
            (audit[0].old.as_deref(), audit[0].new.as_deref()),
            (None, Some("migrated"))
        );
        assert_eq!(audit[2].who, "config");
        s.apply(
            &Change::RemoveMailbox {
                address: "a@x.example".into(),
            },
            "ops",
        )
        .unwrap();
        assert!(s.mailbox("a@x.example").unwrap().is_none());
        assert_eq!(s.audit(1).unwrap()[0].new, None);
    }

    #[test]
    fn the_configured_state_never_replaces_an_admins() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let configured = |state| Change::ConfiguredDomainState {
            domain: "x.example".into(),
            state,
        };
        // First write and a change of the file apply.
        s.apply(&configured(MailboxState::Legacy), CONFIG).unwrap();
        s.apply(&configured(MailboxState::Blackout), CONFIG)
            .unwrap();
        assert_eq!(
            s.domain("x.example").unwrap().unwrap().state,
            MailboxState::Blackout
        );
        let flip = Change::DomainState {
            domain: "x.example".into(),
            state: MailboxState::Migrated,
        };
        let applied = s.apply(&flip, "ops").unwrap();
        assert_eq!(applied.replaced, Some(MailboxState::Blackout));
        // A node with an old file (or a stale view) writes nothing.
        let applied = s.apply(&configured(MailboxState::Legacy), CONFIG).unwrap();
        assert!(applied.audit.is_empty());
        let rec = s.domain("x.example").unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.set_by.as_str()),
            (MailboxState::Migrated, "ops")
        );
    }

    #[test]
    fn a_schedule_is_claimed_once_with_its_change() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let add = Change::AddSchedule {
            subject: Subject::Domain("x.example".into()),
            state: MailboxState::Migrated,
            at: 1_800_000_000,
        };
        let id = s.apply(&add, "ops").unwrap().schedule_id.unwrap();
        let claim = Change::ClaimSchedule {
            id,
            change: Box::new(Change::DomainState {
                domain: "x.example".into(),
                state: MailboxState::Migrated,
            }),
        };
        let who = format!("schedule {id} by ops");
        let first = s.apply(&claim, &who).unwrap();
        assert!(first.claimed);
        let what: Vec<&str> = first.audit.iter().map(|a| a.what.as_str()).collect();
        assert_eq!(what, ["domain x.example", "schedule 1: domain x.example"]);
        assert!(s.schedules().unwrap().is_empty());
        // A second claim (another node, late) changes nothing.
        let second = s.apply(&claim, &who).unwrap();
        assert!(!second.claimed && second.audit.is_empty());
        assert_eq!(
            s.domain("x.example").unwrap().unwrap().state,
            MailboxState::Migrated
        );
    }

    #[test]
    fn queue_actions_are_audited_with_their_message() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let id = "0006123456789abc".to_string();
        s.apply(&Change::QueueHold { id: id.clone() }, "ops")
            .unwrap();
        s.apply(&Change::QueueRelease { id: id.clone() }, "ops")
            .unwrap();
        s.apply(
            &Change::QueueRetry {
                id: id.clone(),
                reset: 1,
            },
            "noc",
        )
        .unwrap();
        let recipients = (0..12).map(|i| format!("u{i}@x.example")).collect();
        let delete = Change::QueueDelete {
            id: id.clone(),
            from: String::new(),
            recipients,
        };
        assert_eq!(s.apply(&delete, "ops").unwrap().audit.len(), 1);
        let audit = s.audit(10).unwrap();
        let shown: Vec<(&str, &str, Option<&str>, Option<&str>)> = audit
            .iter()
            .map(|a| {
                (
                    a.who.as_str(),
                    a.what.as_str(),
                    a.old.as_deref(),
                    a.new.as_deref(),
                )
            })
            .collect();
        let what = "queue message 0006123456789abc";
        assert_eq!(shown[0], ("ops", what, Some("queued"), Some("held")));
        assert_eq!(shown[1], ("ops", what, Some("held"), Some("queued")));
        assert_eq!(
            shown[2],
            ("noc", what, None, Some("retry now (1 recipient reset)"))
        );
        let old = shown[3].2.unwrap();
        assert!(
            old.starts_with("from <> to u0@x.example, u1@x.example"),
            "{old}"
        );
        assert!(old.ends_with("u9@x.example and 2 more"), "{old}");
        assert_eq!(shown[3].3, None);
    }
}
