//! The router: a login name → the mailbox's state → which backend serves it
//! and how. Fails closed: a store error is a temporary failure, never a
//! fall-back to some default backend (wrong for a migration).

pub mod fleet;
pub mod pg;
mod seed;
mod state;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use fleet::{Event, Hook, NodeReport, StoreStatus};
pub use pg::PgStore;
pub use seed::{import_seed, parse_mailbox_csv, Row, SeedError};
pub use state::MailboxState;
pub use store::{
    rfc3339, AuditEntry, Change, DomainRecord, Dump, MailboxRecord, RedbStore, Schedule,
    StateStore, Subject, CONFIG,
};

use crate::config::{DomainConfig, View};
use crate::error::StoreError;

/// Where a login goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Full address, lower case.
    pub address: String,
    pub domain: String,
    pub state: MailboxState,
    pub target: Target,
    /// End of the read-only tempmail view (Unix seconds): the mailbox's
    /// own deadline, else its domain's.
    pub tempmail_until: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Proxy the session to this backend, unchanged.
    Live { backend: String },
    /// Serve the mailbox read-only from this backend (the tempmail view,
    /// or a live login during the blackout, told so with `alert`).
    ReadOnly {
        backend: String,
        alert: Option<String>,
    },
    /// Refuse the login for good (the mailbox is not served any more),
    /// once `check` has accepted the password.
    Refused { notice: String, check: String },
}

impl Target {
    /// The backend name, for logs and the session registry.
    pub fn label(&self) -> &str {
        match self {
            Target::Live { backend } => backend,
            Target::ReadOnly { .. } => "read-only",
            Target::Refused { .. } => "refused",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Not a managed domain (or no domain and no default): authentication fails.
    #[error("unknown domain")]
    UnknownDomain,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Resolves logins against the configured domains and the state store.
pub struct Router {
    store: Arc<dyn StateStore>,
    domains: BTreeMap<String, DomainConfig>,
}

impl Router {
    /// Brings the store's domain states in line with the configuration:
    /// states the configuration set follow the file, states an admin set win.
    pub fn new(
        store: Arc<dyn StateStore>,
        domains: BTreeMap<String, DomainConfig>,
    ) -> Result<Router, StoreError> {
        for (name, d) in &domains {
            match store.domain(name)? {
                Some(rec) if rec.set_by != CONFIG => {
                    if rec.state != d.state {
                        tracing::warn!(
                            domain = %name, configured = %d.state, current = %rec.state,
                            set_by = %rec.set_by, "domain state set by an admin overrides the file"
                        );
                    }
                }
                Some(rec) if rec.state == d.state => {}
                _ => {
                    let change = Change::ConfiguredDomainState {
                        domain: name.clone(),
                        state: d.state,
                    };
                    store.apply(&change, CONFIG)?;
                }
            }
        }
        Ok(Router { store, domains })
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Where a login on a live listener goes.
    pub fn resolve(&self, login: &str, default_domain: Option<&str>) -> Result<Route, RouteError> {
        self.resolve_for(login, default_domain, View::Live)
    }

    /// Normalizes a login (`User@Dom` → `user@dom`, bare local part + default
    /// domain) and decides where it goes on a listener with this `view`.
    pub fn resolve_for(
        &self,
        login: &str,
        default_domain: Option<&str>,
        view: View,
    ) -> Result<Route, RouteError> {
        let address = normalize(login, default_domain).ok_or(RouteError::UnknownDomain)?;
        let (_, domain) = address.rsplit_once('@').ok_or(RouteError::UnknownDomain)?;
        let cfg = self.domains.get(domain).ok_or(RouteError::UnknownDomain)?;
        let domain_until = cfg.tempmail_until.map(|t| t.unix_timestamp());
        let tempmail_until = match view {
            View::Tempmail => self.store.tempmail_until(&address)?.or(domain_until),
            View::Live => None,
        };
        let (state, backend) = match self.store.mailbox(&address)? {
            Some(m) => (m.state, m.backend),
            None => (
                self.store.domain(domain)?.map_or(cfg.state, |d| d.state),
                None,
            ),
        };
        let target = match view {
            View::Live => target_for(state, cfg, backend),
            View::Tempmail => tempmail_target(cfg, tempmail_until),
        };
        Ok(Route {
            domain: domain.to_string(),
            address,
            state,
            target,
            tempmail_until,
        })
    }
}

/// `backend`: a mailbox's own destination, replacing the domain's `new`.
fn target_for(state: MailboxState, cfg: &DomainConfig, backend: Option<String>) -> Target {
    let notice = |default: &str| cfg.notice.clone().unwrap_or_else(|| default.to_string());
    match state {
        MailboxState::Legacy => Target::Live {
            backend: cfg.legacy.clone(),
        },
        MailboxState::Migrated => Target::Live {
            backend: backend.unwrap_or_else(|| cfg.new.clone()),
        },
                MailboxState::Blackout => Target::ReadOnly {
            backend: cfg.legacy.clone(),
            alert: Some(notice(
                "This mailbox is moving to a new provider: until the move is complete it can be read but not changed, and sending is paused.",
            )),
        },
        MailboxState::Excluded => Target::Refused {
            notice: notice("This mailbox is no longer served here."),
            check: cfg.legacy.clone(),
        },
    }
}

/// The tempmail view: the legacy mailbox, read-only, in every state, until
/// the deadline.
fn tempmail_target(cfg: &DomainConfig, until: Option<i64>) -> Target {
    match until {
        Some(t) if t <= now_unix() => Target::Refused {
            notice: format!(
                "The read-only view of your old mailbox closed on {}.{}",
                rfc3339(t),
                cfg.notice
                    .as_ref()
                    .map(|n| format!(" {n}"))
                    .unwrap_or_default()
            ),
            check: cfg.legacy.clone(),
        },
        _ => Target::ReadOnly {
            backend: cfg.legacy.clone(),
            alert: None,
        },
    }
}

/// The longest mailbox address, in bytes (RFC 5321 §4.5.3.1.3: a path
/// is at most 256 octets with its angle brackets). Also keeps every
/// fleet notification, which names one address, far below PostgreSQL's
/// 8,000-byte payload limit.
pub const MAX_ADDRESS: usize = 254;

/// Lower-cases a login and completes a bare local part with the default
/// domain. `None` when there is no usable domain, or the address is
/// longer than any mailbox's can be.
pub fn normalize(login: &str, default_domain: Option<&str>) -> Option<String> {
    // ASCII only: full Unicode case folding maps e.g. the Kelvin sign to k.
    let login = login.trim().to_ascii_lowercase();
    if login.is_empty() || login.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let address = match login.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => login,
        Some(_) => return None,
        None => format!("{login}@{}", default_domain?.to_ascii_lowercase()),
    };
    (address.len() <= MAX_ADDRESS).then_some(address)
}

pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalized_and_bounded() {
        assert_eq!(
            normalize(" Alice@PEC.example ", None).as_deref(),
            Some("alice@pec.example")
        );
        assert_eq!(
            normalize("bob", Some("PEC.example")).as_deref(),
            Some("bob@pec.example")
        );
        for bad in [
            "",
            "bob",
            "@pec.example",
            "bob@",
            "a b@pec.example",
            "a\r@x",
        ] {
            assert_eq!(normalize(bad, None), None, "{bad:?}");
        }
        let local = "a".repeat(MAX_ADDRESS - "@pec.example".len());
        let longest = format!("{local}@pec.example");
        assert_eq!(normalize(&longest, None), Some(longest.clone()));
        assert_eq!(normalize(&format!("a{longest}"), None), None);
        assert_eq!(normalize(&format!("a{local}"), Some("pec.example")), None);
    }

    fn domain(state: MailboxState) -> DomainConfig {
        DomainConfig {
            state,
            legacy: "legacy".into(),
            new: "new".into(),
            tempmail_until: None,
            notice: None,
        }
    }

    fn router(dir: &std::path::Path, state: MailboxState) -> Router {
        let store = RedbStore::open(dir).unwrap();
        let domains = BTreeMap::from([("pec.example".to_string(), domain(state))]);
        Router::new(store, domains).unwrap()
    }

    #[test]
    fn mailbox_override_beats_domain_default() {
        let dir = tempfile::tempdir().unwrap();
        let r = router(dir.path(), MailboxState::Legacy);
        let rows = vec![("bob@pec.example".into(), MailboxState::Migrated, None)];
        r.store().apply(&Change::Mailboxes(rows), "t").unwrap();
        let bob = r.resolve("Bob@PEC.example", None).unwrap();
        assert_eq!(bob.target.label(), "new");
        let alice = r.resolve("alice", Some("pec.example")).unwrap();
        assert_eq!(alice.address, "alice@pec.example");
        assert_eq!(alice.target.label(), "legacy");
    }

    #[test]
    fn unknown_domains_and_bare_names_without_default_fail() {
        let dir = tempfile::tempdir().unwrap();
        let r = router(dir.path(), MailboxState::Legacy);
        assert!(matches!(
            r.resolve("x@other.example", None),
            Err(RouteError::UnknownDomain)
        ));
        assert!(matches!(
            r.resolve("alice", None),
            Err(RouteError::UnknownDomain)
        ));
        assert!(matches!(
            r.resolve("@pec.example", None),
            Err(RouteError::UnknownDomain)
        ));
    }

    #[test]
    fn config_state_follows_the_file_but_admin_state_wins() {
        let dir = tempfile::tempdir().unwrap();
        drop(router(dir.path(), MailboxState::Legacy));
        let r = router(dir.path(), MailboxState::Migrated);
        assert_eq!(
            r.resolve("a@pec.example", None).unwrap().state,
            MailboxState::Migrated
        );
        let change = Change::DomainState {
            domain: "pec.example".into(),
            state: MailboxState::Blackout,
        };
        r.store().apply(&change, "admin").unwrap();
        drop(r);
        let r = router(dir.path(), MailboxState::Legacy);
        assert_eq!(
            r.resolve("a@pec.example", None).unwrap().state,
            MailboxState::Blackout
        );
    }
}
