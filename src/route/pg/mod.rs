//! The fleet state store: PostgreSQL shared by several ponte nodes.
//!
//! Logins never wait on the network: every node keeps the routing state
//! (domains, mailbox overrides, tempmail deadlines, schedules) in memory,
//! loaded at start and kept current by LISTEN/NOTIFY (`listen`). Writes
//! run one transaction each, with their audit rows and a `NOTIFY` that is
//! delivered to every node on commit (`write`).
//!
//! The [`StateStore`] trait is synchronous. The store owns a small tokio
//! runtime of its own (one thread, `ponte-pg`) that drives the pool's
//! connections and the LISTEN connection; a synchronous call spawns its
//! future there and waits for the answer on a channel, with a bound. The
//! caller's runtime is never entered with `block_on`, and nothing on the
//! store's runtime ever waits for the caller's, so there is no deadlock;
//! a caller on a worker thread is held for one loopback transaction, as
//! the embedded store holds it for an fsync.

mod listen;
mod schema;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::fleet::{Ack, Announced, Confirmed, Event, Hook, NodeReport, StoreStatus};
use super::store::{Applied, AuditEntry, Change, DomainRecord, Dump, MailboxRecord, Schedule};
use super::{rfc3339, StateStore};
use crate::error::StoreError;
use crate::secret::Secret;

/// Longest wait for one call to the store's runtime.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Connecting to PostgreSQL, and waiting for a pooled connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pooled connections per node: writes are rare, reads come from memory.
const POOL_SIZE: usize = 4;
/// Answers to a change nobody waited for are dropped after this.
const PENDING_KEPT: Duration = Duration::from_secs(60);
/// How long the listener waits for the control plane to apply a change
/// to this node's sessions before answering without a count.
const APPLIED_WITHIN: Duration = Duration::from_secs(2);

/// The routing state in memory.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    domains: BTreeMap<String, DomainRecord>,
    mailboxes: BTreeMap<String, MailboxRecord>,
    tempmail: HashMap<String, i64>,
    schedules: BTreeMap<u64, Schedule>,
}

/// What the store's runtime and its callers share.
pub(crate) struct Inner {
    pool: Pool,
    pg: tokio_postgres::Config,
    node: String,
    /// This store's own changes, in notifications: process id and start.
    instance: String,
    snap: RwLock<Snapshot>,
    /// Held across a refresh's query and its write into the snapshot, so
    /// that a refresh started later (reading a state at least as new)
    /// also lands later: the post-commit refresh and the LISTEN
    /// connection's run side by side.
    refreshing: tokio::sync::Mutex<()>,
    /// The LISTEN connection is up: changes from other nodes arrive.
    up: AtomicBool,
    /// Unix seconds of the last full load or refresh.
    synced: AtomicI64,
    last_error: Mutex<Option<String>>,
    hook: RwLock<Option<Hook>>,
    /// A heartbeat publication is under way: the next one is skipped
    /// rather than queued (while PostgreSQL hangs they would pile up on
    /// the pool that flips need).
    publishing: AtomicBool,
    /// This instance's changes are numbered, so that the others' answers
    /// ([`Ack`]) name them.
    changes: AtomicU64,
    /// Answers collected per change until its writer has read them.
    pending: Mutex<HashMap<u64, Pending>>,
    /// Woken with each answer.
    answered: tokio::sync::Notify,
    stop: CancellationToken,
}

/// The answers to one change so far.
struct Pending {
    since: Instant,
    /// Per node: sessions closed.
    by: BTreeMap<String, usize>,
    /// This node's own listener, which gets the change's notifications
    /// too and may close sessions before the writer does: payloads seen
    /// and sessions closed.
    own: (usize, usize),
}

/// PostgreSQL as the state store of a fleet.
pub struct PgStore {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    /// Shut down in the background on drop (dropping a runtime may
    /// happen inside another runtime).
    rt: Mutex<Option<tokio::runtime::Runtime>>,
}

impl PgStore {
    /// Connects, applies the schema migrations, loads the routing state
    /// and starts listening for other nodes' changes. `node` names this
    /// node in the fleet. Fails if PostgreSQL cannot be reached: a node
    /// with no state loaded cannot route.
    /// `password`: from a password file; without one, `PGPASSWORD` (as
    /// libpq reads it), else the URL's.
    pub fn open(
        url: &str,
        node: &str,
        password: Option<Secret<Vec<u8>>>,
    ) -> Result<Arc<PgStore>, StoreError> {
        let mut pg = parse_url(url, node)?;
        match password {
            Some(p) => {
                pg.password(p.expose());
            }
            None if pg.get_password().is_none() => {
                if let Some(p) = std::env::var_os("PGPASSWORD") {
                    pg.password(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()));
                }
            }
            None => {}
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ponte-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::new(format!("runtime: {e}")))?;
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(StoreError::new)?;
        let inner = Arc::new(Inner {
            pool,
            pg,
            node: node.to_string(),
            instance: instance_id(),
            snap: RwLock::new(Snapshot::default()),
            refreshing: tokio::sync::Mutex::new(()),
            up: AtomicBool::new(false),
            synced: AtomicI64::new(0),
            last_error: Mutex::new(None),
            hook: RwLock::new(None),
            publishing: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            answered: tokio::sync::Notify::new(),
            stop: CancellationToken::new(),
        });
        let store = PgStore {
            inner: inner.clone(),
            handle: rt.handle().clone(),
            rt: Mutex::new(Some(rt)),
        };
        let i = inner.clone();
        store
            .call(async move {
                schema::migrate(&i).await?;
                i.reload_all().await
            })
            .map_err(|e| StoreError::new(format!("PostgreSQL at start: {e}")))?;
        store.handle.spawn(listen::run(inner));
        Ok(Arc::new(store))
    }

    /// Runs `fut` on the store's runtime and waits for its answer.
    fn call<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(result) => result,
            // The transaction may still commit after this: say so.
            Err(_) => Err(self.inner.unavailable(
                "no answer in time (a change may still be applied: check the audit log before retrying)",
            )),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> Result<T, StoreError> {
        let snap = self
            .inner
            .snap
            .read()
            .map_err(|_| StoreError::new("snapshot lock poisoned"))?;
        Ok(f(&snap))
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.inner.stop.cancel();
        if let Some(rt) = self.rt.lock().ok().and_then(|mut r| r.take()) {
            rt.shutdown_background();
        }
    }
}

/// SQLSTATEs that say "not now" rather than "wrong": connection
/// exceptions (08), insufficient resources (53), operator intervention
/// (57: shutdown, statement timeout), lock not available (55P03).
fn transient(code: &str) -> bool {
    ["08", "53", "57"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == "55P03"
}

/// Unique per store opened: process id and the time of opening.
fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}

/// Parses `postgres://…` (or `key=value` pairs); only plain TCP and unix
/// sockets for now: `sslmode=require` is refused rather than ignored.
pub fn parse_url(url: &str, node: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::new(e))?;
    if pg.get_ssl_mode() == SslMode::Require {
        return Err(StoreError::new(
            "sslmode=require, but ponte speaks to PostgreSQL without TLS for now \
             (use a unix socket, loopback or a private network, with sslmode=disable or prefer)",
        ));
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    // A silent network failure is noticed in about 25 s (keepalive
    // probes), and a write to a dead peer fails after 10 s, instead of
    // the kernel's defaults (minutes).
    pg.keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(10));
    if pg.get_application_name().is_none() {
        pg.application_name(format!("ponte {node}"));
    }
    Ok(pg)
}

/// An error with its causes: "error connecting to server" alone does not
/// say why.
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        source = s.source();
    }
    text
}

impl Inner {
    /// The error of a write refused while PostgreSQL cannot be reached.
    fn unavailable(&self, cause: impl std::fmt::Display) -> StoreError {
        let synced = self.synced.load(Ordering::Relaxed);
        let at = if synced > 0 {
            rfc3339(synced)
        } else {
            "start".into()
        };
        StoreError::unavailable(format!(
            "PostgreSQL: {cause}; routing continues from the state loaded at {at}; \
             retry the change when PostgreSQL is back"
        ))
    }

    /// A database error is the store's; anything else (connection refused,
    /// closed, timed out) means PostgreSQL cannot be reached.
    fn pg_error(&self, e: tokio_postgres::Error) -> StoreError {
        match e.as_db_error() {
            // PostgreSQL answered but cannot serve now (too many
            // connections, shutting down, a lock or statement timeout):
            // the change may be retried, like a lost connection.
            Some(db) if transient(db.code().code()) => {
                self.unavailable(format!("PostgreSQL: {db}"))
            }
            Some(db) => StoreError::new(format!("PostgreSQL: {db}")),
            None => self.unavailable(error_text(&e)),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => self.pg_error(e),
            other => self.unavailable(other),
        })
    }

    fn set_up(&self, up: bool, error: Option<String>) {
        self.up.store(up, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = error;
        }
        metrics::gauge!("ponte_state_store_up").set(if up { 1.0 } else { 0.0 });
    }

    fn synced_now(&self) {
        let now = super::now_unix();
        self.synced.store(now, Ordering::Relaxed);
        metrics::gauge!("ponte_state_store_last_sync_timestamp_seconds").set(now as f64);
    }

    /// Calls the hook; the sessions it closed (`None`: not said in time,
    /// or no control plane to say it, as in `ponte ctl migrate-store`).
    async fn fire(&self, event: &Event) -> Option<usize> {
        let hook = self.hook.read().ok().and_then(|h| h.clone())?;
        let (reply, closed) = tokio::sync::oneshot::channel();
        hook(event, reply);
        tokio::time::timeout(APPLIED_WITHIN, closed)
            .await
            .ok()?
            .ok()
    }

    /// Numbers a change about to be written and starts collecting its
    /// answers (before the commit: they may come before the writer asks).
    fn next_change(&self) -> u64 {
        let change = self.changes.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut p) = self.pending.lock() {
            // Changes nobody waited for (a schedule's, a failed write's).
            p.retain(|_, v| v.since.elapsed() < PENDING_KEPT);
            p.insert(
                change,
                Pending {
                    since: Instant::now(),
                    by: BTreeMap::new(),
                    own: (0, 0),
                },
            );
        }
        change
    }

    /// Records another node's answer to one of this instance's changes.
    fn record(&self, ack: Ack) {
        if ack.to != self.instance {
            return;
        }
        self.count(ack.change, Some(ack.node), ack.kicked);
    }

    /// Records what this node's listener closed for its own change.
    fn record_own(&self, change: u64, kicked: usize) {
        self.count(change, None, kicked);
    }

    fn count(&self, change: u64, node: Option<String>, kicked: usize) {
        if let Ok(mut p) = self.pending.lock() {
            if let Some(pending) = p.get_mut(&change) {
                // Saturating: any role that may NOTIFY can send an answer.
                match node {
                    Some(n) => {
                        let e = pending.by.entry(n).or_default();
                        *e = e.saturating_add(kicked);
                    }
                    None => {
                        pending.own.0 += 1;
                        pending.own.1 = pending.own.1.saturating_add(kicked);
                    }
                }
            }
        }
        self.answered.notify_waiters();
    }

    /// Waits until every expected node answered `a`, and this node's own
    /// listener saw all its payloads, or `within` passed; what came by
    /// then.
    async fn confirmations(&self, a: &Announced, within: Duration) -> Confirmed {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let woken = self.answered.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let done = self.pending.lock().map_or(true, |p| {
                p.get(&a.change).is_none_or(|pending| {
                    pending.own.0 >= a.events
                        && a.expected.iter().all(|n| pending.by.contains_key(n))
                })
            });
            if done || tokio::time::timeout_at(deadline, woken).await.is_err() {
                break;
            }
        }
        let (nodes, own) = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&a.change))
            .map(|p| (p.by, p.own))
            .unwrap_or_default();
        let silent = a
            .expected
            .iter()
            .filter(|n| !nodes.contains_key(*n))
            .cloned()
            .collect();
        Confirmed {
            also_here: own.1,
            nodes,
            silent,
        }
    }
}

impl StateStore for PgStore {
    fn domain(&self, name: &str) -> Result<Option<DomainRecord>, StoreError> {
        self.read(|s| s.domains.get(name).cloned())
    }

    fn domains(&self) -> Result<Vec<(String, DomainRecord)>, StoreError> {
        self.read(|s| {
            s.domains
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    fn mailbox(&self, address: &str) -> Result<Option<MailboxRecord>, StoreError> {
        self.read(|s| s.mailboxes.get(address).cloned())
    }

    fn mailboxes(&self, domain: Option<&str>) -> Result<Vec<(String, MailboxRecord)>, StoreError> {
        let suffix = domain.map(|d| format!("@{d}"));
        self.read(|s| {
            s.mailboxes
                .iter()
                .filter(|(a, _)| suffix.as_deref().is_none_or(|x| a.ends_with(x)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    fn mailbox_count(&self) -> Result<u64, StoreError> {
        self.read(|s| s.mailboxes.len() as u64)
    }

    fn tempmail_until(&self, address: &str) -> Result<Option<i64>, StoreError> {
        self.read(|s| s.tempmail.get(address).copied())
    }

    fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        self.read(|s| s.schedules.values().cloned().collect())
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let inner = self.inner.clone();
        self.call(async move { schema::audit(&inner, limit).await })
    }

    fn apply(&self, change: &Change, who: &str) -> Result<Applied, StoreError> {
        // Lost since it was up: refuse at once rather than wait for a
        // connection timeout (changes from the others do not arrive now
        // either). The LISTEN task retries every 2 s at most.
        if !self.inner.up.load(Ordering::Relaxed) {
            if let Some(e) = self.inner.last_error.lock().ok().and_then(|e| e.clone()) {
                return Err(self.inner.unavailable(e));
            }
        }
        let inner = self.inner.clone();
        let (change, who) = (change.clone(), who.to_string());
        self.call(async move { write::apply(&inner, &change, &who).await })
    }

    fn dump(&self) -> Result<Dump, StoreError> {
        let inner = self.inner.clone();
        self.call(async move { schema::dump(&inner).await })
    }

    fn restore(&self, dump: &Dump) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let dump = dump.clone();
        self.call(async move { write::restore(&inner, &dump).await })
    }

    fn watch(&self, hook: Hook) {
        if let Ok(mut h) = self.inner.hook.write() {
            *h = Some(hook);
        }
    }

    fn status(&self) -> StoreStatus {
        let synced = self.inner.synced.load(Ordering::Relaxed);
        StoreStatus {
            kind: "postgresql",
            node: Some(self.inner.node.clone()),
            up: self.inner.up.load(Ordering::Relaxed),
            last_sync: (synced > 0).then_some(synced),
            error: self.inner.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    fn publish_node(&self, report: NodeReport) {
        if self.inner.publishing.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        self.handle.spawn(async move {
            if let Err(e) = schema::publish(&inner, &report).await {
                tracing::debug!(error = %e, "fleet: node figures not published");
            }
            inner.publishing.store(false, Ordering::Release);
        });
    }

    fn publish_last(&self, report: NodeReport, within: Duration) -> Result<(), StoreError> {
        let since = Instant::now();
        // After the publication under way, which would otherwise land
        // later and undo this one.
        while self.inner.publishing.swap(true, Ordering::AcqRel) {
            if since.elapsed() >= within {
                return Err(self
                    .inner
                    .unavailable("a heartbeat publication still under way"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let inner = self.inner.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let done = schema::publish(&inner, &report).await;
            inner.publishing.store(false, Ordering::Release);
            let _ = tx.send(done);
        });
        rx.recv_timeout(within.saturating_sub(since.elapsed()))
            .unwrap_or_else(|_| Err(self.inner.unavailable("no answer in time")))
    }

    fn confirmations(&self, announced: &Announced, within: Duration) -> Confirmed {
        let (inner, a) = (self.inner.clone(), announced.clone());
        self.call(async move { Ok(inner.confirmations(&a, within).await) })
            .unwrap_or_else(|_| Confirmed {
                silent: announced.expected.clone(),
                ..Confirmed::default()
            })
    }

    fn fleet(&self) -> Result<Option<Vec<NodeReport>>, StoreError> {
        let inner = self.inner.clone();
        self.call(async move { schema::nodes(&inner).await.map(Some) })
    }
}
