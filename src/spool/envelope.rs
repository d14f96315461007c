//! A spooled message's envelope: who sent it, from where, to whom, and
//! where each recipient's delivery stands. Stored as JSON in `env/<id>`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The SMTP envelope and delivery state of one spooled message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The reverse path without angle brackets; empty for `MAIL FROM:<>`.
    pub mail_from: String,
    pub recipients: Vec<Recipient>,
    /// Unix seconds when the message was received.
    pub arrived: i64,
    /// The sending client's address; `None` for mail ponte made itself
    /// (a DSN).
    #[serde(default)]
    pub client: Option<IpAddr>,
    /// The client's EHLO/HELO name.
    #[serde(default)]
    pub helo: String,
    /// Bytes of message data; set by [`Spool::store`](super::Spool::store).
    #[serde(default)]
    pub size: u64,
    /// The `Message-ID` (without angle brackets), read with mail-parser by
    /// [`Spool::store`](super::Spool::store); for duplicate suppression.
    #[serde(default)]
    pub message_id: Option<String>,
    /// Held by an admin: the delivery worker leaves it alone.
    #[serde(default)]
    pub held: bool,
    /// The id in the `Received:` header ponte prepended: unique per
    /// message, so that a backend's mailbox can be searched for it when
    /// a delivery's outcome is in doubt.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// A delivery status notification ponte made: its recipient (the
    /// original sender) may be outside the managed domains, and its own
    /// failure is never reported (no bounce of a bounce).
    #[serde(default)]
    pub dsn: bool,
}

/// One recipient of a spooled message and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward path without angle brackets, as the client gave it.
    pub address: String,
    pub status: Status,
    /// Delivery attempts so far (each `set_status` other than `Pending`).
    #[serde(default)]
    pub attempts: u32,
    /// Unix seconds of the last attempt, for the worker's backoff.
    #[serde(default)]
    pub last_attempt: Option<i64>,
    /// Set (Unix seconds) just before a delivery to the backend starts,
    /// cleared with its outcome. Found set after a restart, the
    /// outcome is in doubt: the backend may have the message already.
    #[serde(default)]
    pub sending: Option<i64>,
    /// A permanent failure has been reported to the sender (a DSN is in
    /// the spool) or needs no report (null sender, a DSN itself).
    #[serde(default)]
    pub notified: bool,
}

/// Where a recipient's delivery stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Status {
    Pending,
    Delivered,
    /// The last attempt failed. A temporary failure is retried; a
    /// permanent one is final (the worker sends a DSN).
    Failed {
        reason: String,
        permanent: bool,
    },
}

impl Status {
    /// Nothing more to do for this recipient: delivered, or failed for
    /// good.
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            Status::Delivered
                | Status::Failed {
                    permanent: true,
                    ..
                }
        )
    }
}

impl Envelope {
    /// A new envelope received now, every recipient pending. `size` and
    /// `message_id` are filled in by `Spool::store`.
    pub fn new(
        mail_from: impl Into<String>,
        recipients: impl IntoIterator<Item = impl Into<String>>,
        client: Option<IpAddr>,
        helo: impl Into<String>,
    ) -> Envelope {
        Envelope {
            mail_from: mail_from.into(),
            recipients: recipients
                .into_iter()
                .map(|a| Recipient {
                    address: a.into(),
                    status: Status::Pending,
                    attempts: 0,
                    last_attempt: None,
                    sending: None,
                    notified: false,
                })
                .collect(),
            arrived: crate::route::now_unix(),
            client,
            helo: helo.into(),
            size: 0,
            message_id: None,
            held: false,
            trace_id: None,
            dsn: false,
        }
    }

    /// Every recipient is delivered or failed for good.
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| r.status.is_done())
    }

    /// Done, and every permanent failure reported: the message can go.
    pub fn is_finished(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| r.status == Status::Delivered || (r.status.is_done() && r.notified))
    }

    /// Recipients failed for good and not reported yet.
    pub fn unreported(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients.iter().filter(|r| {
            matches!(
                r.status,
                Status::Failed {
                    permanent: true,
                    ..
                }
            ) && !r.notified
        })
    }

    /// The recipient with this address (ASCII case-insensitive).
    pub fn recipient(&self, address: &str) -> Option<&Recipient> {
        self.recipients
            .iter()
            .find(|r| r.address.eq_ignore_ascii_case(address))
    }

    pub(crate) fn recipient_mut(&mut self, address: &str) -> Option<&mut Recipient> {
        self.recipients
            .iter_mut()
            .find(|r| r.address.eq_ignore_ascii_case(address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_delivered_and_permanent_failures_are_done() {
        assert!(!Status::Pending.is_done());
        assert!(Status::Delivered.is_done());
        let failed = |permanent| Status::Failed {
            reason: "x".into(),
            permanent,
        };
        assert!(!failed(false).is_done());
        assert!(failed(true).is_done());
    }

    #[test]
    fn envelope_round_trips_through_json() {
        let mut env = Envelope::new("a@x.example", ["B@y.example"], None, "mx.x.example");
        env.recipients[0].status = Status::Failed {
            reason: "452 full".into(),
            permanent: false,
        };
        let json = serde_json::to_string(&env).unwrap();
        assert!(json.contains(r#""state":"failed""#));
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), env);
        assert!(env.recipient("b@Y.example").is_some());
    }
}
