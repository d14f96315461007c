//! Dashboard actions, in two steps: a review page that says exactly what
//! will change (nothing changes on a GET), then a POST with the session's
//! CSRF token that does it. Every change goes through the same
//! [`Control`](crate::control::Control) methods as the admin API and
//! `ponte ctl`, under the token's name, so the audit log records it the
//! same way.

use serde::Deserialize;

use super::review;
use crate::admin::AdminState;
use crate::control::{ControlError, Selector};
use crate::route::{MailboxState, Subject};
use crate::spool::SpoolId;

/// The fields every action form may carry (GET query or POST body).
#[derive(Debug, Default, Deserialize)]
pub struct Form {
    #[serde(default)]
    pub action: String,
    pub domain: Option<String>,
    pub mailbox: Option<String>,
    pub state: Option<String>,
    pub backend: Option<String>,
    pub kind: Option<String>,
    pub target: Option<String>,
    pub at: Option<String>,
    pub tz: Option<String>,
    pub id: Option<String>,
    pub nonce: Option<String>,
    pub csrf: Option<String>,
}

/// A parsed action.
#[derive(Debug, Clone)]
pub enum Action {
    Domain {
        domain: String,
        state: MailboxState,
    },
    Mailbox {
        address: String,
        state: MailboxState,
        backend: Option<String>,
    },
    Schedule {
        subject: Subject,
        state: MailboxState,
        at: i64,
    },
    Unschedule {
        id: u64,
    },
    Kick(Selector),
    Hold {
        id: SpoolId,
        held: bool,
    },
    Import {
        nonce: String,
    },
    /// Drops a mailbox's own state: it follows its domain again.
    Follow {
        address: String,
    },
    /// Sets (`Some`) or clears a mailbox's own tempmail deadline.
    Tempmail {
        address: String,
        until: Option<i64>,
    },
}

/// A field that must be there and not blank.
fn need(field: &Option<String>, name: &str) -> Result<String, String> {
    field
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("{name} is missing"))
}

fn state_of(form: &Form) -> Result<MailboxState, String> {
    need(&form.state, "state")?.parse()
}

/// `at` as RFC 3339, or a datetime-local field's value
/// (`YYYY-MM-DDTHH:MM`, `…:SS` or `…:SS.fff`: browsers send seconds when
/// the field's step asks for them) with `tz` (`+02:00`) as its UTC offset.
fn parse_at(at: &str, tz: Option<&str>) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    let clock = at.split_once('T').map_or("", |(_, c)| c);
    let full = if clock.contains(['Z', 'z', '+', '-']) {
        at.to_string()
    } else {
        let secs = if clock.matches(':').count() == 1 {
            ":00"
        } else {
            ""
        };
        let tz = tz
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .unwrap_or("+00:00");
        format!("{at}{secs}{tz}")
    };
    time::OffsetDateTime::parse(&full, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| {
            format!("time {full:?}: {e} (expected e.g. 2026-04-28T08:00 and offset +02:00)")
        })
}

impl Action {
    pub fn parse(form: &Form) -> Result<Action, String> {
        match form.action.as_str() {
            "domain" => Ok(Action::Domain {
                domain: need(&form.domain, "domain")?.to_ascii_lowercase(),
                state: state_of(form)?,
            }),
            "mailbox" => Ok(Action::Mailbox {
                address: need(&form.mailbox, "address")?.to_lowercase(),
                state: state_of(form)?,
                backend: form
                    .backend
                    .as_deref()
                    .map(str::trim)
                    .filter(|b| !b.is_empty())
                    .map(str::to_string),
            }),
            "schedule" => {
                let target = need(&form.target, "domain or address")?;
                let subject = match form.kind.as_deref() {
                    Some("mailbox") => Subject::Mailbox(target.to_lowercase()),
                    Some("domain") | None => Subject::Domain(target.to_ascii_lowercase()),
                    Some(other) => return Err(format!("unknown kind {other:?}")),
                };
                let at = parse_at(&need(&form.at, "time")?, form.tz.as_deref())?;
                Ok(Action::Schedule {
                    subject,
                    state: state_of(form)?,
                    at,
                })
            }
            "unschedule" => Ok(Action::Unschedule {
                id: need(&form.id, "schedule id")?
                    .parse()
                    .map_err(|_| "a schedule id is a number".to_string())?,
            }),
            "kick" => {
                let target = need(&form.target, "mailbox, domain or id")?;
                Ok(Action::Kick(match form.kind.as_deref() {
                    Some("mailbox") => Selector::Mailbox(target.to_lowercase()),
                    Some("domain") => Selector::Domain(target.to_ascii_lowercase()),
                    Some("id") => Selector::Id(
                        target
                            .parse()
                            .map_err(|_| "a session id is a number".to_string())?,
                    ),
                    _ => return Err("kind is mailbox, domain or id".into()),
                }))
            }
            "hold" | "release" => Ok(Action::Hold {
                id: need(&form.id, "message id")?
                    .parse()
                    .map_err(|e| format!("{e} (a queue id is 16 hex digits)"))?,
                held: form.action == "hold",
            }),
            "import" => Ok(Action::Import {
                nonce: need(&form.nonce, "import")?,
            }),
            "follow" => Ok(Action::Follow {
                address: need(&form.mailbox, "address")?.to_lowercase(),
            }),
            "tempmail" => Ok(Action::Tempmail {
                address: need(&form.mailbox, "address")?.to_lowercase(),
                until: Some(parse_at(&need(&form.at, "time")?, form.tz.as_deref())?),
            }),
            // Its own action name, not a blank time: a time field left
            // empty by mistake must not clear a deadline.
            "tempmail-clear" => Ok(Action::Tempmail {
                address: need(&form.mailbox, "address")?.to_lowercase(),
                until: None,
            }),
            other => Err(format!("unknown action {other:?}")),
        }
    }

    /// The hidden fields that carry the action to its confirmation.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Action::Domain { domain, state } => vec![
                ("action", "domain".into()),
                ("domain", domain.clone()),
                ("state", state.to_string()),
            ],
            Action::Mailbox {
                address,
                state,
                backend,
            } => vec![
                ("action", "mailbox".into()),
                ("mailbox", address.clone()),
                ("state", state.to_string()),
                ("backend", backend.clone().unwrap_or_default()),
            ],
            Action::Schedule { subject, state, at } => {
                let (kind, target) = match subject {
                    Subject::Domain(d) => ("domain", d),
                    Subject::Mailbox(m) => ("mailbox", m),
                };
                vec![
                    ("action", "schedule".into()),
                    ("kind", kind.into()),
                    ("target", target.clone()),
                    ("state", state.to_string()),
                    ("at", crate::route::rfc3339(*at)),
                ]
            }
            Action::Unschedule { id } => {
                vec![("action", "unschedule".into()), ("id", id.to_string())]
            }
            Action::Kick(sel) => {
                let (kind, target) = match sel {
                    Selector::Mailbox(m) => ("mailbox", m.clone()),
                    Selector::Domain(d) => ("domain", d.clone()),
                    Selector::Id(id) => ("id", id.to_string()),
                };
                vec![
                    ("action", "kick".into()),
                    ("kind", kind.into()),
                    ("target", target),
                ]
            }
            Action::Hold { id, held } => vec![
                ("action", if *held { "hold" } else { "release" }.into()),
                ("id", id.to_string()),
            ],
            Action::Import { nonce } => {
                vec![("action", "import".into()), ("nonce", nonce.clone())]
            }
            Action::Follow { address } => {
                vec![("action", "follow".into()), ("mailbox", address.clone())]
            }
            Action::Tempmail {
                address,
                until: Some(at),
            } => vec![
                ("action", "tempmail".into()),
                ("mailbox", address.clone()),
                ("at", crate::route::rfc3339(*at)),
            ],
            Action::Tempmail {
                address,
                until: None,
            } => vec![
                ("action", "tempmail-clear".into()),
                ("mailbox", address.clone()),
            ],
        }
    }

    /// What the action will change, as HTML, and the confirm button's
    /// text; an error if it cannot be done (unknown domain, …).
    pub async fn describe(&self, s: &AdminState) -> Result<(String, String), ControlError> {
        match self {
            Action::Domain { domain, state } => review::domain(s, domain, *state),
            Action::Mailbox {
                address,
                state,
                backend,
            } => review::mailbox(s, address, *state, backend.as_deref()),
            Action::Schedule { subject, state, at } => review::schedule(s, subject, *state, *at),
            Action::Unschedule { id } => review::unschedule(s, *id),
            Action::Kick(sel) => Ok(review::kick(s, sel)),
            Action::Hold { id, held } => review::hold(s, *id, *held).await,
            Action::Import { .. } => Err(ControlError::Invalid(
                "an import is reviewed from its form".into(),
            )),
            Action::Follow { address } => super::own::describe_follow(s, address),
            Action::Tempmail { address, until } => {
                super::own::describe_tempmail(s, address, *until)
            }
        }
    }

    /// Does it, as `who`; a one-line outcome for the next page.
    pub async fn perform(self, s: &AdminState, who: &str) -> Result<String, ControlError> {
        let control = &s.control;
        match self {
            Action::Domain { domain, state } => {
                let (d, w) = (domain.clone(), who.to_string());
                let f = control
                    .blocking(move |c| c.set_domain(&d, state, &w))
                    .await?;
                Ok(format!(
                    "Domain {domain}: {} → {}; {}",
                    f.old.map_or("—".into(), |o| o.to_string()),
                    f.new,
                    closed(&f.kicked)
                ))
            }
            Action::Mailbox {
                address,
                state,
                backend,
            } => {
                let (a, w) = (address.clone(), who.to_string());
                let f = control
                    .blocking(move |c| c.set_mailbox(&a, state, backend, &w))
                    .await?;
                Ok(format!(
                    "Mailbox {address}: {} → {}; {}",
                    f.old.map_or("domain's state".into(), |o| o.to_string()),
                    f.new,
                    closed(&f.kicked)
                ))
            }
            Action::Schedule { subject, state, at } => {
                let w = who.to_string();
                let sch = control
                    .blocking(move |c| c.add_schedule(subject, state, at, &w))
                    .await?;
                Ok(format!(
                    "Schedule {} added: {} to {} at {}.",
                    sch.id,
                    sch.subject,
                    sch.state,
                    crate::route::rfc3339(sch.at)
                ))
            }
            Action::Unschedule { id } => {
                let w = who.to_string();
                let removed = control.blocking(move |c| c.remove_schedule(id, &w)).await?;
                Ok(if removed {
                    format!("Schedule {id} cancelled.")
                } else {
                    format!("Schedule {id} was already gone.")
                })
            }
            Action::Kick(sel) => {
                let w = who.to_string();
                let n = control
                    .blocking(move |c| {
                        c.kick(&sel, "Closed by the administrator; please reconnect.", &w)
                    })
                    .await?;
                Ok(closed(&n))
            }
            Action::Hold { id, held } => {
                let changed = control.queue_hold(id, held, who).await?;
                let verb = if held { "held" } else { "released" };
                Ok(if changed {
                    format!("Message {id} {verb}.")
                } else {
                    format!("Message {id} was already {verb}.")
                })
            }
            // Needs the session's stashed text: see `handlers::perform`.
            Action::Import { .. } => Err(ControlError::Invalid(
                "an import is confirmed from its review page".into(),
            )),
            Action::Follow { address } => super::own::follow(s, address, who).await,
            Action::Tempmail { address, until } => {
                super::own::tempmail(s, address, until, who).await
            }
        }
    }
}

/// This node's open sessions of `address`, and how many of them a change
/// to `new_route` closes: the live ones on another route (the control
/// plane's re-routing test).
pub(super) fn sessions_moved(
    ctx: &crate::server::Ctx,
    address: &str,
    new_route: &str,
) -> (usize, usize) {
    let open = ctx.registry.list();
    let mine = open.iter().filter(|e| e.address == address);
    let closing = mine
        .clone()
        .filter(|e| e.view == crate::config::View::Live && e.route != new_route)
        .count();
    (mine.count(), closing)
}

/// In a fleet, what the counts above it are: this node's sessions; the
/// other nodes close theirs as the change reaches them.
pub(super) fn fleet_note(ctx: &crate::server::Ctx) -> &'static str {
    if ctx.config.state.url.is_some() {
        " (Sessions on this node; every other node of the fleet closes its own, and the outcome counts those that answer within a second.)"
    } else {
        ""
    }
}

/// "N sessions closed." — in a fleet, the nodes' answers too (see
/// [`crate::control::Closed`]).
pub(super) fn closed(k: &crate::control::Closed) -> String {
    format!("{k}.")
}

/// A managed domain's configuration in this generation (a reload may
/// have removed it since it was checked).
pub(super) fn domain_config<'a>(
    ctx: &'a crate::server::Ctx,
    domain: &str,
) -> Result<&'a crate::config::DomainConfig, ControlError> {
    ctx.config
        .domain
        .get(domain)
        .ok_or_else(|| ControlError::NotFound(format!("{domain} is not a managed domain")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Form {
        let mut f = Form::default();
        for (k, v) in pairs {
            if *k == "action" {
                f.action = v.to_string();
                continue;
            }
            let v = Some(v.to_string());
            match *k {
                "domain" => f.domain = v,
                "mailbox" => f.mailbox = v,
                "state" => f.state = v,
                "backend" => f.backend = v,
                "kind" => f.kind = v,
                "target" => f.target = v,
                "at" => f.at = v,
                "tz" => f.tz = v,
                "id" => f.id = v,
                "nonce" => f.nonce = v,
                other => panic!("field {other}"),
            }
        }
        f
    }

    #[test]
    fn parses_actions_and_round_trips_their_fields() {
        let a = Action::parse(&form(&[
            ("action", "domain"),
            ("domain", "PEC.example"),
            ("state", "migrated"),
        ]))
        .unwrap();
        assert!(
            matches!(&a, Action::Domain { domain, state: MailboxState::Migrated } if domain == "pec.example")
        );
        let fields = a.fields();
        let back: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert!(Action::parse(&form(&back)).is_ok());
        let s = Action::parse(&form(&[
            ("action", "schedule"),
            ("kind", "domain"),
            ("target", "pec.example"),
            ("state", "blackout"),
            ("at", "2026-04-28T08:00"),
            ("tz", "+02:00"),
        ]))
        .unwrap();
        assert!(
            matches!(s, Action::Schedule { at: 1777356000, .. }),
            "{s:?}"
        );
        assert!(Action::parse(&form(&[("action", "domain"), ("state", "x")])).is_err());
        assert!(Action::parse(&form(&[("action", "hold"), ("id", "zz")])).is_err());
        assert!(Action::parse(&form(&[("action", "drop-tables")])).is_err());
        assert_eq!(parse_at("2026-04-28T06:00:00Z", None).unwrap(), 1777356000);
    }

    fn round_trip(a: &Action) -> Action {
        let fields = a.fields();
        let back: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Action::parse(&form(&back)).unwrap()
    }

    #[test]
    fn parses_follow_and_tempmail_and_round_trips_them() {
        let f = Action::parse(&form(&[
            ("action", "follow"),
            ("mailbox", " Alice@PEC.example "),
        ]))
        .unwrap();
        assert!(
            matches!(&f, Action::Follow { address } if address == "alice@pec.example"),
            "{f:?}"
        );
        assert!(
            matches!(round_trip(&f), Action::Follow { address } if address == "alice@pec.example")
        );
        assert!(Action::parse(&form(&[("action", "follow")])).is_err());
        assert!(Action::parse(&form(&[("action", "follow"), ("mailbox", " ")])).is_err());

        // A deadline in the admin's local time with its offset.
        let t = Action::parse(&form(&[
            ("action", "tempmail"),
            ("mailbox", "alice@pec.example"),
            ("at", "2026-12-07T09:00"),
            ("tz", "+01:00"),
        ]))
        .unwrap();
        assert!(
            matches!(&t, Action::Tempmail { address, until: Some(1796630400) } if address == "alice@pec.example"),
            "{t:?}"
        );
        // The review carries it as RFC 3339, which needs no offset field.
        assert!(
            matches!(
                round_trip(&t),
                Action::Tempmail {
                    until: Some(1796630400),
                    ..
                }
            ),
            "{:?}",
            t.fields()
        );
        // Setting needs a time: a blank one is refused, never a clear.
        for at in [None, Some(""), Some("  "), Some("2026-12-07")] {
            let mut pairs = vec![("action", "tempmail"), ("mailbox", "alice@pec.example")];
            if let Some(at) = at {
                pairs.push(("at", at));
            }
            assert!(Action::parse(&form(&pairs)).is_err(), "{at:?}");
        }
        assert!(Action::parse(&form(&[
            ("action", "tempmail"),
            ("mailbox", "alice@pec.example"),
            ("at", "2026-12-07T09:00"),
            ("tz", "CET"),
        ]))
        .is_err());

        // Clearing ignores a time the form also sent.
        let c = Action::parse(&form(&[
            ("action", "tempmail-clear"),
            ("mailbox", "alice@pec.example"),
            ("at", "2026-12-07T09:00"),
            ("tz", "+01:00"),
        ]))
        .unwrap();
        assert!(matches!(&c, Action::Tempmail { until: None, .. }), "{c:?}");
        assert!(matches!(
            round_trip(&c),
            Action::Tempmail { until: None, .. }
        ));
        assert!(!c.fields().iter().any(|(k, _)| *k == "at"));
        assert!(Action::parse(&form(&[("action", "tempmail-clear")])).is_err());
    }

    #[test]
    fn accepts_every_form_a_datetime_local_field_sends() {
        let at = 1796630400; // 2026-12-07T08:00:00Z
        for value in [
            "2026-12-07T09:00",
            "2026-12-07T09:00:00",
            "2026-12-07T09:00:00.000",
            "2026-12-07T09:00:00.5",
        ] {
            assert_eq!(parse_at(value, Some("+01:00")), Ok(at), "{value}");
        }
        assert_eq!(parse_at("2026-12-07T08:00:00.000", None), Ok(at));
        assert_eq!(
            parse_at("2026-12-07T09:00:00+01:00", Some("+05:00")),
            Ok(at)
        );
        assert_eq!(parse_at("2026-12-07T03:00:00-05:00", None), Ok(at));
        for bad in [
            "2026-12-07",
            "2026-12-07T09",
            "2026-12-07T9:00",
            "tomorrow",
            "",
        ] {
            assert!(parse_at(bad, Some("+01:00")).is_err(), "{bad}");
        }
        assert!(parse_at("2026-12-07T09:00", Some("CET")).is_err());
    }
}
