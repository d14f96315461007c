//! Queue figures for metrics and `ponte ctl queue`: messages, bytes, held
//! and oldest arrival, in total and per recipient domain and mailbox.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{domain_of, Envelope};

/// The figures of one queue (the whole spool, a domain or a mailbox).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub messages: u64,
    pub bytes: u64,
    /// Of `messages`, how many an admin holds.
    pub held: u64,
    /// Unix seconds of the oldest message's arrival.
    pub oldest: Option<i64>,
}

impl QueueStats {
    /// Seconds the oldest message has waited at `now`.
    pub fn oldest_age(&self, now: i64) -> Option<i64> {
        self.oldest.map(|t| (now - t).max(0))
    }

    /// The figures as the admin API and the fleet's heartbeats give them,
    /// ages at `now`.
    pub fn to_json(&self, now: i64) -> serde_json::Value {
        serde_json::json!({
            "messages": self.messages,
            "bytes": self.bytes,
            "held": self.held,
            "oldest": self.oldest.map(crate::route::rfc3339),
            "oldest_age_seconds": self.oldest_age(now),
        })
    }

    /// Adds another queue's figures (another node's, in a fleet).
    pub fn merge(&mut self, o: &QueueStats) {
        self.messages += o.messages;
        self.bytes += o.bytes;
        self.held += o.held;
        self.oldest = match (self.oldest, o.oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    fn add(&mut self, env: &Envelope) {
        self.messages += 1;
        self.bytes += env.size;
        self.held += u64::from(env.held);
        self.oldest = Some(self.oldest.map_or(env.arrived, |o| o.min(env.arrived)));
    }
}

/// The spool's figures. `total` counts every message on disk; a domain or
/// a mailbox counts the messages with a recipient there still to deliver
/// (pending or failed temporarily), each message once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub total: QueueStats,
    pub domains: BTreeMap<String, QueueStats>,
    /// Keyed by lower-case address.
    pub mailboxes: BTreeMap<String, QueueStats>,
}

impl Stats {
    pub(crate) fn add(&mut self, env: &Envelope) {
        self.total.add(env);
        let waiting: BTreeSet<String> = env
            .recipients
            .iter()
            .filter(|r| !r.status.is_done())
            .map(|r| r.address.to_ascii_lowercase())
            .collect();
        let domains: BTreeSet<String> = waiting.iter().map(|a| domain_of(a)).collect();
        for mailbox in waiting {
            self.mailboxes.entry(mailbox).or_default().add(env);
        }
        for domain in domains {
            self.domains.entry(domain).or_default().add(env);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Status;

    #[test]
    fn counts_each_message_once_per_domain_and_skips_done_recipients() {
        let mut a = Envelope::new(
            "s@z",
            ["a@x.example", "B@x.example", "c@y.example"],
            None,
            "h",
        );
        a.size = 100;
        a.arrived = 1_000;
        a.recipients[2].status = Status::Delivered;
        let mut b = Envelope::new("s@z", ["a@x.example"], None, "h");
        b.size = 10;
        b.arrived = 2_000;
        b.held = true;

        let mut s = Stats::default();
        s.add(&a);
        s.add(&b);
        assert_eq!(s.total.messages, 2);
        assert_eq!(s.total.bytes, 110);
        let x = &s.domains["x.example"];
        assert_eq!(
            (x.messages, x.bytes, x.held, x.oldest),
            (2, 110, 1, Some(1_000))
        );
        assert_eq!(x.oldest_age(1_500), Some(500));
        assert_eq!(s.mailboxes["b@x.example"].messages, 1);
        assert!(!s.domains.contains_key("y.example"));
        assert!(!s.mailboxes.contains_key("c@y.example"));
    }
}
