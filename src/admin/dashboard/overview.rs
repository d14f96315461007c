//! What the main page shows, read in one go from the control plane: the
//! domains with their states and counts, live sessions, the spool,
//! backend health, schedules, the recent audit log and, in a fleet, each
//! node's last heartbeat.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::DomainConfig;
use crate::control::{Control, ControlError};
use crate::net::health;
use crate::registry::Entry;
use crate::route::{now_unix, AuditEntry, MailboxState, NodeReport, Schedule};
use crate::spool::{self, Stats};

/// States in the order the page lists them.
pub const STATES: [MailboxState; 4] = [
    MailboxState::Legacy,
    MailboxState::Blackout,
    MailboxState::Migrated,
    MailboxState::Excluded,
];

/// Audit entries shown.
const AUDIT_SHOWN: usize = 15;
/// Queued messages listed (the oldest first).
pub const MESSAGES_SHOWN: usize = 20;

pub struct DomainRow {
    pub name: String,
    pub state: MailboxState,
    pub set_by: String,
    pub config: DomainConfig,
    /// Mailboxes with their own state, per state (in `STATES` order).
    pub overrides: [u64; 4],
    pub sessions: usize,
}

/// The spool as shown: `None` without an inbound listener.
pub struct Queue {
    pub stats: Stats,
    pub oldest: Vec<spool::Entry>,
    pub listed_of: usize,
}

pub struct Overview {
    pub now: i64,
    pub domains: Vec<DomainRow>,
    pub sessions: Vec<Arc<Entry>>,
    pub queue: Option<Queue>,
    pub backends: Vec<(String, health::Snapshot)>,
    pub schedules: Vec<Schedule>,
    /// Read from the store itself: in a fleet it fails while PostgreSQL is
    /// away, and the rest of the page (from memory) is shown all the same.
    pub audit: Result<Vec<AuditEntry>, String>,
    /// Logins (ok, failed) since start.
    pub logins: (u64, u64),
    /// Every node's last heartbeat; `None` outside a fleet (the embedded
    /// store), an error while the shared store cannot be read.
    pub fleet: Option<Result<Vec<NodeReport>, String>>,
    /// This node's name in the fleet.
    pub node: String,
}

impl Overview {
    /// Reads everything; store reads run on the blocking pool.
    pub async fn gather(control: &Arc<Control>) -> Result<Overview, ControlError> {
        let (domains, schedules, audit, fleet) = control.blocking(read_store).await?;
        let queue = match control.queue_stats().await {
            Ok(stats) => {
                let (oldest, listed_of) = control.queue_oldest(MESSAGES_SHOWN).await?;
                Some(Queue {
                    stats,
                    oldest,
                    listed_of,
                })
            }
            Err(ControlError::NoSpool) => None,
            Err(e) => return Err(e),
        };
        let ctx = control.ctx();
        let sessions = ctx.registry.list();
        let mut domains = domains;
        for d in &mut domains {
            d.sessions = sessions.iter().filter(|e| e.domain == d.name).count();
        }
        Ok(Overview {
            now: now_unix(),
            domains,
            sessions,
            queue,
            backends: ctx.observed.backends.snapshot(),
            schedules,
            audit,
            logins: ctx.observed.logins(),
            fleet,
            node: ctx.config.state.node(),
        })
    }

    /// Open sessions per listener and route.
    pub fn sessions_by_route(&self) -> BTreeMap<(&str, &str), usize> {
        let mut m = BTreeMap::new();
        for e in &self.sessions {
            *m.entry((e.listener.as_str(), e.route.as_str()))
                .or_default() += 1;
        }
        m
    }
}

type StoreView = (
    Vec<DomainRow>,
    Vec<Schedule>,
    Result<Vec<AuditEntry>, String>,
    Option<Result<Vec<NodeReport>, String>>,
);

fn read_store(control: &Control) -> Result<StoreView, ControlError> {
    let ctx = control.ctx();
    let store = ctx.router.store();
    let mut domains = Vec::new();
    for (name, cfg) in &ctx.config.domain {
        let rec = store.domain(name)?;
        let mut overrides = [0u64; 4];
        for (_, m) in store.mailboxes(Some(name))? {
            if let Some(i) = STATES.iter().position(|s| *s == m.state) {
                overrides[i] += 1;
            }
        }
        domains.push(DomainRow {
            name: name.clone(),
            state: rec.as_ref().map_or(cfg.state, |r| r.state),
            set_by: rec.map_or_else(|| "config".to_string(), |r| r.set_by),
            config: cfg.clone(),
            overrides,
            sessions: 0,
        });
    }
    let mut schedules = store.schedules()?;
    schedules.sort_by_key(|s| (s.at, s.id));
    let audit = store.audit(AUDIT_SHOWN).map_err(|e| e.to_string());
    let fleet = store.fleet().map_err(|e| e.to_string()).transpose();
    Ok((domains, schedules, audit, fleet))
}

/// The route label a live login gets in `state` (as the router decides
/// it): used to tell which open sessions a change will close.
pub fn live_label(state: MailboxState, cfg: &DomainConfig, backend: Option<&str>) -> String {
    match state {
        MailboxState::Legacy => cfg.legacy.clone(),
        MailboxState::Migrated => backend.unwrap_or(&cfg.new).to_string(),
        MailboxState::Blackout => "read-only".into(),
        MailboxState::Excluded => "refused".into(),
    }
}
