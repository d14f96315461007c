//! The control plane: state changes that take effect at once. Every change
//! is written (with its audit entry) to the store, applies to the next
//! login, and closes the open sessions whose route it changes, so that
//! their clients reconnect to the new route. The admin API and the
//! scheduler both come through here.

pub mod fleet;
pub mod queue;
pub mod scheduler;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use tokio::sync::Notify;
use tracing::info;

use crate::error::StoreError;
use crate::registry::Entry;
use crate::route::fleet::Confirmed;
use crate::route::store::Applied;
use crate::route::{self, Change, MailboxState, Schedule, Subject, Target};
use crate::server::Ctx;

/// Longest kick reason kept (characters).
const MAX_REASON: usize = 500;
/// How long a change made here waits for the other nodes of a fleet to
/// say how many sessions they closed (on loopback they answer in ~20 ms).
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{} bad row(s)", .0.len())]
    BadRows(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Queue operations on a ponte without an inbound listener.
    #[error("no inbound queue: this ponte has no inbound (smtp) listener, so nothing is spooled")]
    NoSpool,
    #[error(transparent)]
    Spool(crate::spool::SpoolError),
    /// A queue change was made but its audit entry could not be written.
    #[error("{action} done, but not written to the audit log: {source}")]
    Unaudited {
        action: &'static str,
        source: StoreError,
    },
    /// A blocking task of the control plane panicked or was cancelled.
    #[error("control task: {0}")]
    Task(String),
}

/// The result of a state change: old → new and the sessions closed
/// because their route changed.
#[derive(Debug, Clone)]
pub struct Flip {
    pub old: Option<MailboxState>,
    pub new: MailboxState,
    pub kicked: Closed,
}

/// The result of a bulk import.
#[derive(Debug, Clone)]
pub struct Imported {
    pub rows: usize,
    pub changed: usize,
    pub kicked: Closed,
}

/// The sessions a change closed: this node's and, in a fleet, those of
/// the other nodes that said so within [`CONFIRM_WITHIN`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closed {
    pub here: usize,
    /// `None` outside a fleet (and for schedules: nobody waits for them).
    pub fleet: Option<Confirmed>,
}

impl Closed {
    pub fn here(here: usize) -> Closed {
        Closed { here, fleet: None }
    }

    /// Here and on the nodes that answered.
    pub fn total(&self) -> usize {
        self.here
            .saturating_add(self.fleet.as_ref().map_or(0, Confirmed::kicked))
    }

    /// How the admin API says it: `kicked` (the total) and, in a fleet,
    /// `fleet` with this node's count, each other node's and the live
    /// nodes that did not answer.
    pub fn to_json(&self, mut answer: serde_json::Value) -> serde_json::Value {
        answer["kicked"] = self.total().into();
        if let Some(f) = &self.fleet {
            answer["fleet"] = serde_json::json!({
                "here": self.here,
                "nodes": f.nodes,
                "silent": f.silent,
            });
        }
        answer
    }
}

/// `3 sessions closed: 1 on this node, 2 on b, 0 on c; no answer … from d`.
impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.total();
        write!(f, "{n} session{} closed", if n == 1 { "" } else { "s" })?;
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        write!(f, ": {} on this node", self.here)?;
        for (node, k) in &fleet.nodes {
            write!(f, ", {k} on {node}")?;
        }
        if !fleet.silent.is_empty() {
            write!(
                f,
                "; no answer within {} s from {} (cut off from PostgreSQL, or slow)",
                CONFIRM_WITHIN.as_secs(),
                fleet.silent.join(", "),
            )?;
        }
        Ok(())
    }
}

pub use crate::route::fleet::Selector;

pub struct Control {
    current: Arc<ArcSwap<Ctx>>,
    /// Wakes the scheduler when a schedule is added.
    wake: Notify,
}

impl Control {
    /// Runs `f` (state store writes, which wait on PostgreSQL in a fleet)
    /// on the blocking pool, so that no thread serving sessions waits.
    pub async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, ControlError>
    where
        T: Send + 'static,
        F: FnOnce(&Control) -> Result<T, ControlError> + Send + 'static,
    {
        let control = self.clone();
        tokio::task::spawn_blocking(move || f(&control))
            .await
            .map_err(|e| ControlError::Task(e.to_string()))?
    }

    pub fn new(current: Arc<ArcSwap<Ctx>>) -> Arc<Control> {
        Arc::new(Control {
            current,
            wake: Notify::new(),
        })
    }

    /// The configuration generation in force now.
    pub fn ctx(&self) -> Arc<Ctx> {
        self.current.load_full()
    }

    fn managed_domain(&self, domain: &str) -> Result<String, ControlError> {
        let d = domain.trim().to_ascii_lowercase();
        self.configured_state(&d)?;
        Ok(d)
    }

    /// A full, lower-case address in a managed domain.
    pub fn managed_address(&self, address: &str) -> Result<String, ControlError> {
        let a = route::normalize(address, None)
            .filter(|a| a.contains('@'))
            .ok_or_else(|| ControlError::Invalid(format!("{address:?} is not an address")))?;
        let domain = a.rsplit_once('@').map_or("", |(_, d)| d);
        self.managed_domain(domain)?;
        Ok(a)
    }

    /// The domain's current default state.
    pub fn domain_state(&self, domain: &str) -> Result<MailboxState, ControlError> {
        let d = self.managed_domain(domain)?;
        let configured = self.configured_state(&d)?;
        Ok(self
            .ctx()
            .router
            .store()
            .domain(&d)?
            .map_or(configured, |r| r.state))
    }

    /// The state the configuration gives domain `d` (looked up, not
    /// indexed: a reload may have removed it since it was checked).
    fn configured_state(&self, d: &str) -> Result<MailboxState, ControlError> {
        self.ctx()
            .config
            .domain
            .get(d)
            .map(|c| c.state)
            .ok_or_else(|| ControlError::NotFound(format!("{d} is not a managed domain")))
    }

    pub fn set_domain(
        &self,
        domain: &str,
        state: MailboxState,
        who: &str,
    ) -> Result<Flip, ControlError> {
        let d = self.managed_domain(domain)?;
        let change = Change::DomainState {
            domain: d.clone(),
            state,
        };
        let applied = self.ctx().router.store().apply(&change, who)?;
        // Applied: a reload that dropped the domain meanwhile must not
        // turn this into an error.
        let old = match applied.replaced {
            Some(old) => old,
            None => self.configured_state(&d).unwrap_or(state),
        };
        let here = self.reroute(|e| e.domain == d);
        let kicked = self.confirmed(here, &applied);
        info!(domain = %d, %old, new = %state, %who, kicked = kicked.total(), "domain state changed");
        metrics::counter!("ponte_state_flips_total", "kind" => "domain").increment(1);
        Ok(Flip {
            old: Some(old),
            new: state,
            kicked,
        })
    }

    /// Sets a mailbox's own state (and optionally its destination backend).
    pub fn set_mailbox(
        &self,
        address: &str,
        state: MailboxState,
        backend: Option<String>,
        who: &str,
    ) -> Result<Flip, ControlError> {
        let a = self.managed_address(address)?;
        if let Some(b) = &backend {
            if !self.ctx().backends.contains_key(b) {
                return Err(ControlError::Invalid(format!("unknown backend {b:?}")));
            }
        }
        let change = Change::Mailboxes(vec![(a.clone(), state, backend)]);
        let applied = self.ctx().router.store().apply(&change, who)?;
        let old = applied.replaced;
        let here = self.reroute(|e| e.address == a);
        let kicked = self.confirmed(here, &applied);
        info!(mailbox = %a, old = ?old, new = %state, %who, kicked = kicked.total(), "mailbox state changed");
        metrics::counter!("ponte_state_flips_total", "kind" => "mailbox").increment(1);
        Ok(Flip {
            old,
            new: state,
            kicked,
        })
    }

    /// Sets (`Some`) or clears a mailbox's own tempmail deadline.
    pub fn set_tempmail(
        &self,
        address: &str,
        until: Option<i64>,
        who: &str,
    ) -> Result<(), ControlError> {
        let a = self.managed_address(address)?;
        let change = Change::MailboxTempmail {
            address: a.clone(),
            until,
        };
        self.ctx().router.store().apply(&change, who)?;
        self.kick_tempmail(&a, until);
        Ok(())
    }

    /// Open tempmail sessions took their deadline at login: they are
    /// closed and take the new one when the client reconnects.
    fn kick_tempmail(&self, a: &str, until: Option<i64>) -> usize {
        let reason = match until {
            Some(u) if u <= crate::route::now_unix() => {
                "The read-only view of your old mailbox has closed."
            }
            _ => "The closing date of this read-only view has changed; please reconnect.",
        };
        let ctx = self.ctx();
        ctx.registry.kick_where(
            |e| e.address == a && e.view == crate::config::View::Tempmail,
            reason,
        )
    }

    /// Drops a mailbox's override: it follows its domain again.
    pub fn remove_mailbox(&self, address: &str, who: &str) -> Result<(bool, Closed), ControlError> {
        let a = self.managed_address(address)?;
        let change = Change::RemoveMailbox { address: a.clone() };
        let applied = self.ctx().router.store().apply(&change, who)?;
        let here = self.reroute(|e| e.address == a);
        Ok((!applied.audit.is_empty(), self.confirmed(here, &applied)))
    }

    /// Imports a CSV mailbox list: every row checked first, all or nothing.
    pub fn import(&self, csv: &str, who: &str) -> Result<Imported, ControlError> {
        let known = |b: &str| self.ctx().backends.contains_key(b);
        let rows = route::parse_mailbox_csv(csv, &self.ctx().config.domain, &known).map_err(
            |e| match e {
                route::SeedError::Rows(bad) => ControlError::BadRows(bad),
                other => ControlError::Invalid(other.to_string()),
            },
        )?;
        let n = rows.len();
        let applied = self
            .ctx()
            .router
            .store()
            .apply(&Change::Mailboxes(rows), who)?;
        let changed: HashSet<String> = applied
            .audit
            .iter()
            .filter_map(|a| a.what.strip_prefix("mailbox ").map(str::to_string))
            .collect();
        let here = self.reroute(|e| changed.contains(&e.address));
        let kicked = self.confirmed(here, &applied);
        info!(rows = n, changed = changed.len(), %who, kicked = kicked.total(), "mailbox list imported");
        Ok(Imported {
            rows: n,
            changed: changed.len(),
            kicked,
        })
    }

    pub fn add_schedule(
        &self,
        subject: Subject,
        state: MailboxState,
        at: i64,
        who: &str,
    ) -> Result<Schedule, ControlError> {
        let subject = match subject {
            Subject::Domain(d) => Subject::Domain(self.managed_domain(&d)?),
            Subject::Mailbox(a) => Subject::Mailbox(self.managed_address(&a)?),
        };
        let change = Change::AddSchedule { subject, state, at };
        let applied = self.ctx().router.store().apply(&change, who)?;
        let id = applied.schedule_id.unwrap_or_default();
        self.wake.notify_one();
        self.ctx()
            .router
            .store()
            .schedules()?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| ControlError::NotFound(format!("schedule {id} vanished")))
    }

    /// Carries out schedule `s` as `who`: its change and its removal in
    /// one transaction, only if it is still pending. `None`: another node
    /// of the fleet did it first.
    pub fn run_schedule(&self, s: &Schedule, who: &str) -> Result<Option<Flip>, ControlError> {
        let store = self.ctx().router.store().clone();
        let (change, old, subject) = match &s.subject {
            Subject::Domain(d) => {
                let d = self.managed_domain(d)?;
                let old = Some(self.domain_state(&d)?);
                let change = Change::DomainState {
                    domain: d.clone(),
                    state: s.state,
                };
                (change, old, Subject::Domain(d))
            }
            Subject::Mailbox(a) => {
                let a = self.managed_address(a)?;
                let own = store.mailbox(&a)?;
                let backend = own.as_ref().and_then(|m| m.backend.clone());
                if let Some(b) = &backend {
                    if !self.ctx().backends.contains_key(b) {
                        return Err(ControlError::Invalid(format!("unknown backend {b:?}")));
                    }
                }
                // The store keeps whatever backend the override names when
                // it writes (checked here against this node's view).
                let change = Change::MailboxState {
                    address: a.clone(),
                    state: s.state,
                };
                (change, own.map(|m| m.state), Subject::Mailbox(a))
            }
        };
        let claim = Change::ClaimSchedule {
            id: s.id,
            change: Box::new(change),
        };
        if !store.apply(&claim, who)?.claimed {
            return Ok(None);
        }
        let (kind, kicked) = match &subject {
            Subject::Domain(d) => ("domain", self.reroute(|e| e.domain == *d)),
            Subject::Mailbox(a) => ("mailbox", self.reroute(|e| e.address == *a)),
        };
        info!(%subject, old = ?old, new = %s.state, %who, kicked, "state changed by a schedule");
        metrics::counter!("ponte_state_flips_total", "kind" => kind).increment(1);
        Ok(Some(Flip {
            old,
            new: s.state,
            kicked: Closed::here(kicked),
        }))
    }

    pub fn remove_schedule(&self, id: u64, who: &str) -> Result<bool, ControlError> {
        let applied = self
            .ctx()
            .router
            .store()
            .apply(&Change::RemoveSchedule { id }, who)?;
        Ok(!applied.audit.is_empty())
    }

    /// Closes sessions on request, with `reason` shown to the user. In a
    /// fleet, the other nodes close theirs when the audit entry's
    /// notification reaches them (a session id names this node's only).
    pub fn kick(
        &self,
        selector: &Selector,
        reason: &str,
        who: &str,
    ) -> Result<Closed, ControlError> {
        // Normalized as sessions are registered, and bounded: the
        // selector travels in a NOTIFY payload too.
        let selector = match selector {
            Selector::Mailbox(a) => Selector::Mailbox(
                route::normalize(a, None)
                    .ok_or_else(|| ControlError::Invalid(format!("{a:?} is not an address")))?,
            ),
            Selector::Domain(d) => {
                let d = d.trim().to_ascii_lowercase();
                // RFC 1035: a domain name is at most 253 characters.
                if d.is_empty()
                    || d.len() > 253
                    || d.contains(|c: char| c.is_whitespace() || c == '@')
                {
                    return Err(ControlError::Invalid(format!("{d:?} is not a domain")));
                }
                Selector::Domain(d)
            }
            Selector::Id(id) => Selector::Id(*id),
        };
        // Bounded: the reason travels in a NOTIFY payload (8,000 bytes).
        let reason: String = reason.chars().take(MAX_REASON).collect();
        let closed = self.kick_here(&selector, &reason);
        // Done first, audited after (as queue changes): the log never
        // claims a kick that did not happen.
        let change = Change::Kick {
            selector,
            reason,
            closed,
        };
        let applied = self
            .ctx()
            .router
            .store()
            .apply(&change, who)
            .map_err(|source| ControlError::Unaudited {
                action: "kick",
                source,
            })?;
        Ok(self.confirmed(closed, &applied))
    }

    /// `here` and, for a change the store announced to a fleet, what the
    /// other nodes say they closed (waiting up to [`CONFIRM_WITHIN`]).
    fn confirmed(&self, here: usize, applied: &Applied) -> Closed {
        let store = self.ctx().router.store().clone();
        let fleet = match &applied.announced {
            Some(a) => Some(store.confirmations(a, CONFIRM_WITHIN)),
            // A fleet change that told nobody (nothing changed).
            None if store.status().kind != "embedded" => Some(Confirmed::default()),
            None => None,
        };
        Closed {
            here: here.saturating_add(fleet.as_ref().map_or(0, |f| f.also_here)),
            fleet,
        }
    }

    /// Closes this node's sessions that `selector` names.
    fn kick_here(&self, selector: &Selector, reason: &str) -> usize {
        let registry = &self.ctx().registry;
        match selector {
            Selector::Mailbox(a) => registry.kick_mailbox(a, reason),
            Selector::Domain(d) => registry.kick_domain(d, reason),
            Selector::Id(id) => registry.kick_id(*id, reason),
        }
    }

    /// Re-checks every open session's route (after a reload).
    pub fn reroute_all(&self) -> usize {
        self.reroute(|_| true)
    }

    /// Closes the matching sessions whose route is no longer the one they
    /// are on; their clients reconnect and land on the new route.
    fn reroute(&self, matches: impl Fn(&Entry) -> bool) -> usize {
        // Spooled mail may now have a live route: let the worker look.
        self.ctx().inbound.wake_worker();
        let mut kicked = 0;
        for e in self.ctx().registry.list().iter().filter(|e| matches(e)) {
            let now = match self.ctx().router.resolve_for(&e.address, None, e.view) {
                Ok(now) => now,
                // The domain is no longer managed (a reload removed it).
                Err(crate::route::RouteError::UnknownDomain) => {
                    kicked += self
                        .ctx()
                        .registry
                        .kick_id(e.id, "This mailbox is no longer served here.");
                    continue;
                }
                Err(_) => continue,
            };
            if now.target.label() != e.route {
                let reason = match &now.target {
                    Target::Live { .. } => {
                        "Your mailbox has moved to a new server; please reconnect.".to_string()
                    }
                    Target::ReadOnly { alert, .. } => alert.clone().unwrap_or_else(|| {
                        "Your mailbox is now read-only; please reconnect.".into()
                    }),
                    Target::Refused { notice, .. } => notice.clone(),
                };
                kicked += self.ctx().registry.kick_id(e.id, &reason);
            } else if e.view == crate::config::View::Tempmail && now.tempmail_until != e.deadline {
                // Same route, another closing time (also one changed while
                // a fleet node was cut off from the others).
                let reason = match now.tempmail_until {
                    Some(u) if u <= crate::route::now_unix() => {
                        "The read-only view of your old mailbox has closed."
                    }
                    _ => "The closing date of this read-only view has changed; please reconnect.",
                };
                kicked += self.ctx().registry.kick_id(e.id, reason);
            }
        }
        kicked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_sessions_as_the_api_says_them() {
        let alone = Closed::here(2);
        assert_eq!(
            alone.to_json(serde_json::json!({ "new": "migrated" })),
            serde_json::json!({ "new": "migrated", "kicked": 2 })
        );
        assert_eq!(alone.to_string(), "2 sessions closed");
        let fleet = Closed {
            here: 1,
            fleet: Some(Confirmed {
                nodes: [("b".to_string(), 3), ("c".to_string(), 0)].into(),
                silent: vec!["d".into()],
                also_here: 0,
            }),
        };
        assert_eq!(fleet.total(), 4);
        assert_eq!(
            fleet.to_json(serde_json::json!({})),
            serde_json::json!({
                "kicked": 4,
                "fleet": { "here": 1, "nodes": { "b": 3, "c": 0 }, "silent": ["d"] }
            })
        );
        assert_eq!(
            fleet.to_string(),
            "4 sessions closed: 1 on this node, 3 on b, 0 on c; \
             no answer within 1 s from d (cut off from PostgreSQL, or slow)"
        );
    }
}
