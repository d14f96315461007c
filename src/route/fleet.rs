//! What the nodes of a fleet share besides the routing state itself: the
//! change events one node's write sends the others (PostgreSQL
//! LISTEN/NOTIFY), the store's health as the admin API shows it, and each
//! node's published figures (sessions, spool) for the fleet-wide view.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The NOTIFY channel every node listens on.
pub const CHANNEL: &str = "ponte_state";

/// What changed in the shared state. Listeners reload just that; `All`
/// (an import, a restore, a reconnect after missed changes) reloads
/// everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum Event {
    Domain(String),
    Mailbox(String),
    Tempmail(String),
    Schedules,
    All,
    /// An admin closed sessions: every node closes its own that match
    /// (sessions are not state, so nothing is reloaded).
    Kick {
        selector: Selector,
        reason: String,
    },
}

/// Which sessions to close. A session id names one node's session only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    Mailbox(String),
    Domain(String),
    Id(u64),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Mailbox(a) => write!(f, "mailbox {a}"),
            Selector::Domain(d) => write!(f, "domain {d}"),
            Selector::Id(id) => write!(f, "session {id}"),
        }
    }
}

/// Called with each change another node made (after the local snapshot
/// has it). Runs on the store's own thread: it must not wait on the
/// store.
pub type Hook = Arc<dyn Fn(&Event) + Send + Sync>;

/// A NOTIFY payload: the node that made the change and what changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The node's name, for logs.
    pub node: String,
    /// The writing store's instance, unique per process start: a node
    /// knows its own notifications (it closed its own sessions of a kick
    /// already), also if two nodes share a name.
    #[serde(default)]
    pub instance: String,
    pub event: Event,
}

impl Payload {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(text: &str) -> Option<Payload> {
        serde_json::from_str(text).ok()
    }
}

/// The state store as `/api/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    /// `embedded` or `postgresql`.
    pub kind: &'static str,
    /// This node's name in the fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Whether the store can be reached now (changes are accepted).
    pub up: bool,
    /// When the routing state was last brought up to date (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<i64>,
    /// Why it cannot be reached, while it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StoreStatus {
    pub fn embedded() -> StoreStatus {
        StoreStatus {
            kind: "embedded",
            node: None,
            up: true,
            last_sync: None,
            error: None,
        }
    }
}

/// One node's figures, as it last published them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    /// The node's admin API address.
    pub admin: Option<String>,
    /// Unix seconds.
    pub started: i64,
    /// Unix seconds of the last publication, on the reading node's clock
    /// (the store measures its age with the database's).
    pub heartbeat: i64,
    /// Sessions: `{"total": n, "by_route": {...}}`.
    pub sessions: Value,
    /// The spool's totals and per recipient domain (`null` without an
    /// inbound listener; `{"error": …}` when the spool could not be read).
    pub queue: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        for event in [
            Event::Domain("pec.example".into()),
            Event::Mailbox("a@pec.example".into()),
            Event::All,
            Event::Kick {
                selector: Selector::Domain("pec.example".into()),
                reason: "Closed by the administrator.".into(),
            },
        ] {
            let p = Payload {
                node: "n1".into(),
                instance: "1-2".into(),
                event,
            };
            assert_eq!(Payload::decode(&p.encode()), Some(p));
        }
        assert_eq!(Payload::decode("garbage"), None);
    }
}
