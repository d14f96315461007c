//! The schema (versioned migrations, applied at start under an advisory
//! lock so that nodes starting together do not race) and the reads: the
//! snapshot, the audit log, a full dump, the fleet's node figures.

use std::str::FromStr;

use tokio_postgres::{GenericClient, Row};

use super::{Inner, Snapshot};
use crate::error::StoreError;
use crate::route::fleet::{Event, NodeReport};
use crate::route::store::{AuditEntry, DomainRecord, Dump, MailboxRecord, Schedule, Subject};
use crate::route::MailboxState;

/// Advisory lock keys ("ponte" and a number): schema migrations, and
/// every write transaction (flips are rare; one at a time across the
/// fleet keeps each audit entry's old → new exact).
const MIGRATE_LOCK: i64 = 0x706f_6e74_6501;
pub(super) const WRITE_LOCK: i64 = 0x706f_6e74_6502;

/// Migration `n` (1-based) brings the schema from version `n - 1` to `n`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE domains (
    name text PRIMARY KEY,
    state text NOT NULL,
    set_by text NOT NULL,
    updated bigint NOT NULL
);
CREATE TABLE mailboxes (
    address text PRIMARY KEY,
    state text NOT NULL,
    backend text,
    set_by text NOT NULL,
    updated bigint NOT NULL
);
CREATE TABLE tempmail (
    address text PRIMARY KEY,
    deadline bigint NOT NULL
);
CREATE TABLE schedules (
    id bigserial PRIMARY KEY,
    subject_kind text NOT NULL CHECK (subject_kind IN ('domain', 'mailbox')),
    subject text NOT NULL,
    state text NOT NULL,
    due bigint NOT NULL,
    created_by text NOT NULL,
    created bigint NOT NULL
);
CREATE INDEX schedules_due ON schedules (due);
CREATE TABLE audit (
    seq bigserial PRIMARY KEY,
    at bigint NOT NULL,
    who text NOT NULL,
    what text NOT NULL,
    old_value text,
    new_value text
);
CREATE TABLE nodes (
    name text PRIMARY KEY,
    admin text,
    started bigint NOT NULL,
    heartbeat bigint NOT NULL,
    sessions jsonb NOT NULL DEFAULT '{}',
    queue jsonb NOT NULL DEFAULT 'null'
);
"#];

/// Brings the schema up to date, in one transaction.
pub(super) async fn migrate(inner: &Inner) -> Result<(), StoreError> {
    let pe = |e| inner.pg_error(e);
    let mut c = inner.client().await?;
    let tx = c.transaction().await.map_err(pe)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(pe)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version integer PRIMARY KEY,
             applied timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(pe)?;
    let row = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(pe)?;
    let version: i32 = row.get(0);
    let known = MIGRATIONS.len() as i32;
    if version > known {
        return Err(StoreError::new(format!(
            "the database schema is version {version}, newer than this ponte knows ({known}): upgrade ponte"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).await.map_err(pe)?;
        let v = i as i32 + 1;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&v])
            .await
            .map_err(pe)?;
        tracing::info!(version = v, "PostgreSQL schema migrated");
    }
    tx.commit().await.map_err(pe)
}

fn state(text: &str) -> Result<MailboxState, StoreError> {
    MailboxState::from_str(text).map_err(StoreError::new)
}

fn domain_row(r: &Row) -> Result<(String, DomainRecord), StoreError> {
    Ok((
        r.get(0),
        DomainRecord {
            state: state(r.get(1))?,
            set_by: r.get(2),
            updated: r.get(3),
        },
    ))
}

fn mailbox_row(r: &Row) -> Result<(String, MailboxRecord), StoreError> {
    Ok((
        r.get(0),
        MailboxRecord {
            state: state(r.get(1))?,
            backend: r.get(2),
            set_by: r.get(3),
            updated: r.get(4),
        },
    ))
}

fn schedule_row(r: &Row) -> Result<Schedule, StoreError> {
    let kind: &str = r.get(1);
    let name: String = r.get(2);
    let id: i64 = r.get(0);
    Ok(Schedule {
        id: id as u64,
        subject: if kind == "domain" {
            Subject::Domain(name)
        } else {
            Subject::Mailbox(name)
        },
        state: state(r.get(3))?,
        at: r.get(4),
        by: r.get(5),
        created: r.get(6),
    })
}

fn audit_row(r: &Row) -> AuditEntry {
    let seq: i64 = r.get(0);
    AuditEntry {
        seq: seq as u64,
        at: r.get(1),
        who: r.get(2),
        what: r.get(3),
        old: r.get(4),
        new: r.get(5),
    }
}

const DOMAINS: &str = "SELECT name, state, set_by, updated FROM domains";
const MAILBOXES: &str = "SELECT address, state, backend, set_by, updated FROM mailboxes";
const SCHEDULES: &str =
    "SELECT id, subject_kind, subject, state, due, created_by, created FROM schedules";
const AUDIT: &str = "SELECT seq, at, who, what, old_value, new_value FROM audit";

async fn load_schedules(
    inner: &Inner,
    c: &(impl GenericClient + Sync),
) -> Result<Vec<Schedule>, StoreError> {
    let rows = c
        .query(&format!("{SCHEDULES} ORDER BY id"), &[])
        .await
        .map_err(|e| inner.pg_error(e))?;
    rows.iter().map(schedule_row).collect()
}

/// The whole routing state.
async fn load(inner: &Inner, c: &(impl GenericClient + Sync)) -> Result<Snapshot, StoreError> {
    let pe = |e| inner.pg_error(e);
    let mut s = Snapshot::default();
    for r in c.query(DOMAINS, &[]).await.map_err(pe)? {
        let (k, v) = domain_row(&r)?;
        s.domains.insert(k, v);
    }
    for r in c.query(MAILBOXES, &[]).await.map_err(pe)? {
        let (k, v) = mailbox_row(&r)?;
        s.mailboxes.insert(k, v);
    }
    for r in c
        .query("SELECT address, deadline FROM tempmail", &[])
        .await
        .map_err(pe)?
    {
        s.tempmail.insert(r.get(0), r.get(1));
    }
    for sc in load_schedules(inner, c).await? {
        s.schedules.insert(sc.id, sc);
    }
    Ok(s)
}

impl Inner {
    /// Reloads everything into the snapshot.
    pub(super) async fn reload_all(&self) -> Result<(), StoreError> {
        self.refresh(&Event::All).await
    }

    /// Reloads what `event` names into the snapshot.
    pub(super) async fn refresh(&self, event: &Event) -> Result<(), StoreError> {
        let c = self.client().await?;
        self.refresh_with(&c, event).await
    }

    /// `c` is a connection, not a transaction: a full reload opens its own.
    pub(super) async fn refresh_with(
        &self,
        c: &tokio_postgres::Client,
        event: &Event,
    ) -> Result<(), StoreError> {
        let _ordered = self.refreshing.lock().await;
        let pe = |e| self.pg_error(e);
        let write = |f: &mut dyn FnMut(&mut Snapshot)| -> Result<(), StoreError> {
            let mut snap = self
                .snap
                .write()
                .map_err(|_| StoreError::new("snapshot lock poisoned"))?;
            f(&mut snap);
            Ok(())
        };
        match event {
            Event::All => {
                let mut fresh = Some(self.load_consistent(c).await?);
                write(&mut |s| {
                    if let Some(f) = fresh.take() {
                        *s = f;
                    }
                })?;
            }
            Event::Domain(d) => {
                let row = c
                    .query_opt(&format!("{DOMAINS} WHERE name = $1"), &[d])
                    .await
                    .map_err(pe)?;
                let rec = row.as_ref().map(domain_row).transpose()?;
                write(&mut |s| match rec.clone() {
                    Some((k, v)) => {
                        s.domains.insert(k, v);
                    }
                    None => {
                        s.domains.remove(d);
                    }
                })?;
            }
            Event::Mailbox(a) => {
                let row = c
                    .query_opt(&format!("{MAILBOXES} WHERE address = $1"), &[a])
                    .await
                    .map_err(pe)?;
                let rec = row.as_ref().map(mailbox_row).transpose()?;
                write(&mut |s| match rec.clone() {
                    Some((k, v)) => {
                        s.mailboxes.insert(k, v);
                    }
                    None => {
                        s.mailboxes.remove(a);
                    }
                })?;
            }
            Event::Tempmail(a) => {
                let row = c
                    .query_opt("SELECT deadline FROM tempmail WHERE address = $1", &[a])
                    .await
                    .map_err(pe)?;
                let until: Option<i64> = row.map(|r| r.get(0));
                write(&mut |s| match until {
                    Some(u) => {
                        s.tempmail.insert(a.clone(), u);
                    }
                    None => {
                        s.tempmail.remove(a);
                    }
                })?;
            }
            // Sessions are not state.
            Event::Kick { .. } => return Ok(()),
            Event::Schedules => {
                let list = load_schedules(self, c).await?;
                write(&mut |s| s.schedules = list.iter().map(|x| (x.id, x.clone())).collect())?;
            }
        }
        self.synced_now();
        Ok(())
    }

    /// The whole routing state as of one moment (one repeatable-read
    /// snapshot): a change committed between the table reads must not
    /// land half in it.
    async fn load_consistent(&self, c: &tokio_postgres::Client) -> Result<Snapshot, StoreError> {
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| self.pg_error(e))?;
        let loaded = load(self, c).await;
        // Read only: ending it either way changes nothing. A pooled
        // connection must not go back inside a transaction.
        let end = if loaded.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = c.batch_execute(end).await.map_err(|e| self.pg_error(e));
        let snapshot = loaded?;
        ended?;
        Ok(snapshot)
    }
}

/// The newest `limit` audit entries, oldest first.
pub(super) async fn audit(inner: &Inner, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
    let c = inner.client().await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query(&format!("{AUDIT} ORDER BY seq DESC LIMIT $1"), &[&limit])
        .await
        .map_err(|e| inner.pg_error(e))?;
    let mut out: Vec<AuditEntry> = rows.iter().map(audit_row).collect();
    out.reverse();
    Ok(out)
}

/// Everything, for `migrate-store`.
pub(super) async fn dump(inner: &Inner) -> Result<Dump, StoreError> {
    let pe = |e| inner.pg_error(e);
    let mut c = inner.client().await?;
    // One snapshot of the whole state: a fleet still running must not
    // have a schedule claimed between the schedules and the audit read.
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pe)?;
    let snap = load(inner, &*tx).await?;
    let mut tempmail: Vec<(String, i64)> = snap.tempmail.into_iter().collect();
    tempmail.sort();
    let audit = tx
        .query(&format!("{AUDIT} ORDER BY seq"), &[])
        .await
        .map_err(pe)?
        .iter()
        .map(audit_row)
        .collect();
    tx.commit().await.map_err(pe)?;
    Ok(Dump {
        domains: snap.domains.into_iter().collect(),
        mailboxes: snap.mailboxes.into_iter().collect(),
        tempmail,
        schedules: snap.schedules.into_values().collect(),
        audit,
    })
}

/// Kept as keys of the `sessions` column rather than new columns (a
/// schema version older nodes do not know would stop them from starting
/// during a rolling upgrade; they ignore the keys): `stopped`, when a node
/// stopped cleanly; `answers`, the node answers changes ([`Ack`]s).
///
/// [`Ack`]: crate::route::fleet::Ack
const STOPPED: &str = "stopped";
const ANSWERS: &str = "answers";

/// Writes this node's figures into its `nodes` row. The heartbeat is the
/// database's time, so that its age is one clock's (nodes' clocks differ).
pub(super) async fn publish(inner: &Inner, r: &NodeReport) -> Result<(), StoreError> {
    let mut sessions = r.sessions.clone();
    if let Some(map) = sessions.as_object_mut() {
        map.insert(ANSWERS.into(), true.into());
        if let Some(at) = r.stopped {
            map.insert(STOPPED.into(), at.into());
        }
    }
    let c = inner.client().await?;
    c.execute(
        "INSERT INTO nodes (name, admin, started, heartbeat, sessions, queue)
         VALUES ($1, $2, $3, extract(epoch FROM now())::bigint, $4::text::jsonb, $5::text::jsonb)
         ON CONFLICT (name) DO UPDATE SET admin = excluded.admin, started = excluded.started,
             heartbeat = excluded.heartbeat, sessions = excluded.sessions, queue = excluded.queue",
        &[
            &r.node,
            &r.admin,
            &r.started,
            &sessions.to_string(),
            &r.queue.to_string(),
        ],
    )
    .await
    .map_err(|e| inner.pg_error(e))?;
    Ok(())
}

/// The nodes other than `me` expected to answer a change: running,
/// answering, with a heartbeat in the last
/// [`LIVE`](crate::route::fleet::LIVE) seconds (by PostgreSQL's clock).
pub(super) async fn answering_nodes(
    c: &(impl GenericClient + Sync),
    me: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT name FROM nodes
             WHERE extract(epoch FROM now())::bigint - heartbeat <= $1
               AND sessions -> $2::text IS NULL AND sessions -> $3::text IS NOT NULL
               AND name <> $4::text",
            &[&crate::route::fleet::LIVE, &STOPPED, &ANSWERS, &me],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Every node's last published figures, by name. The heartbeat's time is
/// given on this node's clock: its age by the database's.
pub(super) async fn nodes(inner: &Inner) -> Result<Vec<NodeReport>, StoreError> {
    let c = inner.client().await?;
    let rows = c
        .query(
            "SELECT name, admin, started, extract(epoch FROM now())::bigint - heartbeat,
                 sessions::text, queue::text
             FROM nodes ORDER BY name",
            &[],
        )
        .await
        .map_err(|e| inner.pg_error(e))?;
    let now = crate::route::now_unix();
    Ok(rows
        .iter()
        .map(|r| {
            let json = |i| serde_json::from_str(r.get(i)).unwrap_or(serde_json::Value::Null);
            let mut sessions = json(4);
            let marks = sessions.as_object_mut();
            let stopped = marks.and_then(|m| {
                m.remove(ANSWERS);
                m.remove(STOPPED)
            });
            NodeReport {
                node: r.get(0),
                admin: r.get(1),
                started: r.get(2),
                heartbeat: now - r.get::<_, i64>(3).max(0),
                sessions,
                queue: json(5),
                stopped: stopped.and_then(|v| v.as_i64()),
            }
        })
        .collect())
}
