//! Live sessions after login: which mailbox, which route, and a handle to
//! close each one, so that a route change can send its clients to the new
//! route (`* BYE [ALERT] …`) instead of leaving them on the old one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use dashmap::DashMap;

use crate::config::View;
use crate::route::MailboxState;
use tokio_util::sync::CancellationToken;

/// One live session.
#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    pub address: String,
    pub domain: String,
    pub route: String,
    pub state: MailboxState,
    pub listener: String,
    /// The listener's view: routes are re-checked in it on a flip.
    pub view: View,
    /// A tempmail view's closing time (Unix seconds) the session runs
    /// under: a session whose deadline has moved since is sent to it.
    pub deadline: Option<i64>,
    pub peer: SocketAddr,
    pub since: SystemTime,
    kick: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Entry {
    /// Resolves when the session is told to close.
    pub async fn kicked(&self) {
        self.kick.cancelled().await
    }

    pub fn kick_token(&self) -> &CancellationToken {
        &self.kick
    }

    /// The text to give the client when kicked.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().map(|r| r.clone()).unwrap_or(None)
    }

    /// Tells the session to close; false if it was told already (it stays
    /// listed until it is gone, and must not be counted twice).
    fn kick(&self, reason: &str) -> bool {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = !self.kick.is_cancelled();
        r.get_or_insert_with(|| reason.to_string());
        self.kick.cancel();
        fresh
    }
}

/// What a session tells the registry about itself.
pub struct Info {
    pub address: String,
    pub domain: String,
    pub route: String,
    pub state: MailboxState,
    pub listener: String,
    pub view: View,
    pub deadline: Option<i64>,
    pub peer: SocketAddr,
}

#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    sessions: DashMap<u64, Arc<Entry>>,
}

/// Keeps a session listed; dropping it removes the entry.
pub struct Registration {
    registry: Arc<Registry>,
    pub entry: Arc<Entry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.sessions.remove(&self.entry.id);
        open_gauge(&self.entry).decrement(1.0);
    }
}

/// Logged-in sessions by listener, route and state.
fn open_gauge(e: &Entry) -> metrics::Gauge {
    metrics::gauge!(
        "ponte_sessions_logged_in",
        "listener" => e.listener.clone(), "route" => e.route.clone(), "state" => e.state.as_str()
    )
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    pub fn register(self: &Arc<Self>, info: Info) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            id,
            address: info.address,
            domain: info.domain,
            route: info.route,
            state: info.state,
            listener: info.listener,
            view: info.view,
            deadline: info.deadline,
            peer: info.peer,
            since: SystemTime::now(),
            kick: CancellationToken::new(),
            reason: Mutex::new(None),
        });
        self.sessions.insert(id, entry.clone());
        open_gauge(&entry).increment(1.0);
        Registration {
            registry: self.clone(),
            entry,
        }
    }

    /// Closes every session of one mailbox; returns how many.
    pub fn kick_mailbox(&self, address: &str, reason: &str) -> usize {
        self.kick_where(|e| e.address == address, reason)
    }

    /// Closes every session of a domain's mailboxes; returns how many.
    pub fn kick_domain(&self, domain: &str, reason: &str) -> usize {
        self.kick_where(|e| e.domain == domain, reason)
    }

    /// Closes one session by id; returns 1 if it was open and not being
    /// closed already.
    pub fn kick_id(&self, id: u64, reason: &str) -> usize {
        self.sessions
            .get(&id)
            .map_or(0, |e| usize::from(e.value().kick(reason)))
    }

    /// Closes every session matching `pred`; returns how many were not
    /// being closed already.
    pub fn kick_where(&self, pred: impl Fn(&Entry) -> bool, reason: &str) -> usize {
        let mut n = 0;
        for e in self.sessions.iter() {
            if pred(e.value()) && e.value().kick(reason) {
                n += 1;
            }
        }
        n
    }

    pub fn list(&self) -> Vec<Arc<Entry>> {
        let mut v: Vec<_> = self.sessions.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|e| e.id);
        v
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(address: &str) -> Info {
        Info {
            address: address.into(),
            domain: address.rsplit_once('@').unwrap().1.into(),
            route: "legacy".into(),
            state: MailboxState::Legacy,
            listener: "imap".into(),
            view: View::Live,
            deadline: None,
            peer: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn kick_reaches_only_matching_sessions_and_drop_unlists() {
        let r = Registry::new();
        let a = r.register(info("a@x.example"));
        let b = r.register(info("b@y.example"));
        assert_eq!(r.kick_domain("x.example", "moved"), 1);
        a.entry.kicked().await;
        assert_eq!(a.entry.reason().as_deref(), Some("moved"));
        // Still listed while it closes: not closed, nor counted, twice.
        assert_eq!(r.kick_mailbox("a@x.example", "again"), 0);
        assert_eq!(r.kick_id(a.entry.id, "again"), 0);
        assert_eq!(a.entry.reason().as_deref(), Some("moved"));
        assert!(!b.entry.kick_token().is_cancelled());
        drop(a);
        assert_eq!(r.len(), 1);
    }
}
