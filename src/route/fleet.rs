//! What the nodes of a fleet share besides the routing state itself: the
//! change events one node's write sends the others (PostgreSQL
//! LISTEN/NOTIFY), the store's health as the admin API shows it, and each
//! node's published figures (sessions, spool) for the fleet-wide view.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The NOTIFY channel every node listens on.
pub const CHANNEL: &str = "ponte_state";
/// The channel of the answers to a change ([`Ack`]): each node says how
/// many of its sessions the change closed.
pub const ACK_CHANNEL: &str = "ponte_ack";

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
/// has it), and with a [`Reply`] for how many sessions that closed. Runs
/// on the store's own thread: it must not wait, on the store or at all.
pub type Hook = Arc<dyn Fn(&Event, Reply) + Send + Sync>;

/// Where the hook's owner sends the number of sessions a change closed.
pub type Reply = tokio::sync::oneshot::Sender<usize>;

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
    /// The change's number at the writing instance (0: no answer wanted):
    /// every other node answers the change, once, with an [`Ack`].
    #[serde(default)]
    pub change: u64,
    /// How many payloads the change has (a node answers after the last).
    #[serde(default)]
    pub payloads: usize,
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

/// A node's answer to another node's change (all its payloads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The writing instance, which collects the answers.
    pub to: String,
    pub change: u64,
    /// The answering node's name.
    pub node: String,
    /// Sessions it closed.
    pub kicked: usize,
}

impl Ack {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(text: &str) -> Option<Ack> {
        serde_json::from_str(text).ok()
    }
}

/// A change this node wrote and announced to the others: its number, how
/// many payloads it has, and the nodes expected to answer (running, with
/// a heartbeat in the last [`LIVE`] seconds, answering changes: nodes of
/// an older version do not), as the change's transaction saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    pub change: u64,
    pub events: usize,
    pub expected: Vec<String>,
}

/// How the other nodes of a fleet answered one change (as the admin API
/// says it, and `ponte ctl` reads it back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmed {
    /// Sessions this node's own listener closed when the change's
    /// notification came back to it before the writer re-routed.
    #[serde(skip)]
    pub also_here: usize,
    /// Each node that answered, with the sessions it closed.
    #[serde(default)]
    pub nodes: BTreeMap<String, usize>,
    /// Live nodes (a heartbeat in the last [`LIVE`] seconds) that did not
    /// answer in time: cut off from PostgreSQL, or slow.
    #[serde(default)]
    pub silent: Vec<String>,
}

impl Confirmed {
    /// Sessions the other nodes closed.
    pub fn kicked(&self) -> usize {
        self.nodes.values().fold(0, |a, k| a.saturating_add(*k))
    }
}

/// A node whose last heartbeat is at most this old (seconds) is expected
/// to answer a change (three heartbeats).
pub const LIVE: i64 = 15;

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
    /// Unix seconds: the node stopped cleanly then (its last publication;
    /// no sessions, and not expected to answer changes). `None`: running,
    /// or it vanished without a word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<i64>,
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
                change: 7,
                payloads: 4,
                event,
            };
            assert_eq!(Payload::decode(&p.encode()), Some(p));
        }
        assert_eq!(Payload::decode("garbage"), None);
        let a = Ack {
            to: "1-2".into(),
            change: 7,
            node: "n2".into(),
            kicked: 3,
        };
        assert_eq!(Ack::decode(&a.encode()), Some(a));
        // A node of the previous version sends no change number.
        let old = r#"{"node":"n1","instance":"1-2","event":{"kind":"all"}}"#;
        assert_eq!(Payload::decode(old).map(|p| p.change), Some(0));
    }
}
