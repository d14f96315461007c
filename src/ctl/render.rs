//! The API's answers as text for people: one line for a change, aligned
//! tables for lists. Fields the contract marks optional may be missing.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::plan::View;
use super::table::Table;
use super::Failure;

const STATES: [&str; 4] = ["legacy", "blackout", "migrated", "excluded"];

/// The answer to a successful call, as text.
pub fn render(view: View, body: &str) -> Result<String, Failure> {
    match view {
        View::Status => parse(body).map(|s: Status| status(&s)),
        View::DomainSet => parse(body).map(|c: DomainChange| domain_set(&c)),
        View::MailboxSet => parse(body).map(|c: MailboxChange| mailbox_set(&c)),
        View::MailboxShow => parse(body).map(|m: MailboxView| mailbox_show(&m)),
        View::MailboxRm => parse(body).map(|r: MailboxRemoved| mailbox_rm(&r)),
        View::MailboxTempmail => parse(body).map(|t: Tempmail| tempmail(&t)),
        View::MailboxList => parse(body).map(|l: MailboxList| mailbox_list(&l)),
        View::Import => parse(body).map(|i: Imported| imported(&i)),
        View::ScheduleList => parse(body).map(|l: ScheduleList| schedule_list(&l)),
        View::ScheduleAdd => parse(body).map(|s: Schedule| schedule_added(&s)),
        View::ScheduleRm(id) => parse(body).map(|r: Removed| schedule_rm(id, &r)),
        View::Sessions => parse(body).map(|l: SessionList| sessions(&l)),
        View::Kick => parse(body).map(|k: Kicked| closed(&k)),
        View::Audit => parse(body).map(|a: Audit| audit(&a)),
        View::Queue(v) => super::queue::render(v, body),
    }
}

/// The API's error body (`{"error": ..., "details": [...]}`) as a failure.
pub fn api_error(status: u16, body: &str) -> Failure {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
        #[serde(default)]
        details: Vec<String>,
    }
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(e) => Failure::Api {
            message: e.error,
            details: e.details,
        },
        Err(_) => Failure::Api {
            message: match body.lines().next().map(str::trim) {
                Some(line) if !line.is_empty() => format!("HTTP {status}: {line}"),
                _ => format!("HTTP {status}"),
            },
            details: Vec::new(),
        },
    }
}

pub(super) fn parse<T: DeserializeOwned>(body: &str) -> Result<T, Failure> {
    serde_json::from_str(body).map_err(|e| Failure::Api {
        message: format!("unexpected answer from the admin API: {e}"),
        details: Vec::new(),
    })
}

pub(super) fn or_dash(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

/// `1 session closed`, `3 sessions closed`, in a fleet with each node's
/// count (the same words as the dashboard's).
fn closed(k: &Kicked) -> String {
    let closed = crate::control::Closed {
        here: k.fleet.as_ref().map_or(k.kicked, |f| f.here),
        fleet: k.fleet.as_ref().map(|f| f.others.clone()),
    };
    format!("{closed}\n")
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    version: Option<String>,
    sessions: u64,
    schedules: u64,
    domains: Vec<DomainStatus>,
    #[serde(default)]
    store: Option<StoreLine>,
}

/// The state store as `/api/status` shows it (shown for a fleet only).
#[derive(Deserialize)]
struct StoreLine {
    kind: String,
    #[serde(default)]
    node: Option<String>,
    up: bool,
    #[serde(default)]
    last_sync: Option<i64>,
    #[serde(default)]
    error: Option<String>,
}

impl StoreLine {
    fn render(&self) -> Option<String> {
        if self.kind != "postgresql" {
            return None;
        }
        let node = self.node.as_deref().unwrap_or("?");
        let sync = self
            .last_sync
            .map_or("never".to_string(), crate::route::rfc3339);
        Some(if self.up {
            format!("state store: PostgreSQL (fleet), node {node}, up, last sync {sync}\n")
        } else {
            format!(
                "state store: PostgreSQL (fleet), node {node}, UNREACHABLE ({}): routing from the state loaded at {sync}, changes refused\n",
                self.error.as_deref().unwrap_or("no connection")
            )
        })
    }
}

#[derive(Deserialize)]
struct DomainStatus {
    name: String,
    state: String,
    #[serde(default)]
    set_by: Option<String>,
    #[serde(default)]
    tempmail_until: Option<String>,
    #[serde(default)]
    notice: Option<String>,
    #[serde(default)]
    mailboxes: BTreeMap<String, u64>,
}

fn status(s: &Status) -> String {
    let mut t = Table::new(&[
        "DOMAIN",
        "STATE",
        "SET BY",
        "MAILBOX OVERRIDES",
        "TEMPMAIL UNTIL",
        "NOTICE",
    ]);
    for d in &s.domains {
        t.row(vec![
            d.name.clone(),
            d.state.clone(),
            or_dash(&d.set_by),
            overrides(&d.mailboxes),
            or_dash(&d.tempmail_until),
            or_dash(&d.notice),
        ]);
    }
    let version = s.version.as_deref().map(|v| format!(", ponte {v}"));
    let store = s.store.as_ref().and_then(StoreLine::render);
    format!(
        "{}\nsessions {}, schedules {}{}\n{}",
        t.render(),
        s.sessions,
        s.schedules,
        version.unwrap_or_default(),
        store.unwrap_or_default()
    )
}

/// Non-zero override counts in lifecycle order: `2 blackout, 1 migrated`.
fn overrides(counts: &BTreeMap<String, u64>) -> String {
    let known = STATES.iter().filter_map(|s| counts.get_key_value(*s));
    let other = counts.iter().filter(|(k, _)| !STATES.contains(&k.as_str()));
    let parts: Vec<String> = known
        .chain(other)
        .filter(|(_, n)| **n > 0)
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

#[derive(Deserialize)]
struct DomainChange {
    domain: String,
    #[serde(default)]
    old: Option<String>,
    new: String,
    #[serde(flatten)]
    kicked: Kicked,
}

fn domain_set(c: &DomainChange) -> String {
    let kicked = closed(&c.kicked);
    let old = or_dash(&c.old);
    format!("{}: {old} -> {} ({})\n", c.domain, c.new, kicked.trim_end())
}

#[derive(Deserialize)]
struct MailboxChange {
    address: String,
    #[serde(default)]
    old: Option<String>,
    new: String,
    #[serde(flatten)]
    kicked: Kicked,
}

fn mailbox_set(c: &MailboxChange) -> String {
    let old = c.old.as_deref().unwrap_or("(domain)");
    let kicked = closed(&c.kicked);
    format!(
        "{}: {old} -> {} ({})\n",
        c.address,
        c.new,
        kicked.trim_end()
    )
}

#[derive(Deserialize)]
struct MailboxView {
    address: String,
    state: String,
    source: String,
    route: String,
    #[serde(default)]
    backend: Option<String>,
}

fn mailbox_show(m: &MailboxView) -> String {
    let source = match m.source.as_str() {
        "mailbox" => "mailbox override".to_string(),
        "domain" => "from the domain".to_string(),
        other => other.to_string(),
    };
    let mut t = Table::new(&[]);
    t.row(vec!["address".into(), m.address.clone()]);
    t.row(vec!["state".into(), format!("{} ({source})", m.state)]);
    t.row(vec!["route".into(), m.route.clone()]);
    t.row(vec!["backend".into(), or_dash(&m.backend)]);
    t.render()
}

#[derive(Deserialize)]
struct MailboxRemoved {
    address: String,
    removed: bool,
    #[serde(flatten)]
    kicked: Kicked,
}

#[derive(Deserialize)]
struct Tempmail {
    address: String,
    tempmail_until: Option<String>,
}

fn tempmail(t: &Tempmail) -> String {
    match &t.tempmail_until {
        Some(at) => format!("{}: tempmail view open until {at}\n", t.address),
        None => format!("{}: tempmail deadline follows the domain\n", t.address),
    }
}

fn mailbox_rm(r: &MailboxRemoved) -> String {
    if !r.removed {
        return format!("{}: no override to remove\n", r.address);
    }
    let kicked = closed(&r.kicked);
    format!("{}: override removed ({})\n", r.address, kicked.trim_end())
}

#[derive(Deserialize)]
struct MailboxList {
    mailboxes: Vec<MailboxRow>,
}

#[derive(Deserialize)]
struct MailboxRow {
    address: String,
    state: String,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    set_by: Option<String>,
    #[serde(default)]
    updated: Option<String>,
}

fn mailbox_list(l: &MailboxList) -> String {
    let mut t = Table::new(&["ADDRESS", "STATE", "BACKEND", "SET BY", "UPDATED"]);
    for m in &l.mailboxes {
        t.row(vec![
            m.address.clone(),
            m.state.clone(),
            or_dash(&m.backend),
            or_dash(&m.set_by),
            or_dash(&m.updated),
        ]);
    }
    t.render()
}

#[derive(Deserialize)]
struct Imported {
    rows: u64,
    changed: u64,
    #[serde(flatten)]
    kicked: Kicked,
}

fn imported(i: &Imported) -> String {
    let kicked = closed(&i.kicked);
    let s = if i.rows == 1 { "" } else { "s" };
    format!("{} row{s}, {} changed, {kicked}", i.rows, i.changed)
}

#[derive(Deserialize)]
struct ScheduleList {
    schedules: Vec<Schedule>,
}

#[derive(Deserialize)]
struct Schedule {
    id: u64,
    subject: Subject,
    state: String,
    at: String,
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    created: Option<String>,
}

#[derive(Deserialize)]
struct Subject {
    kind: String,
    name: String,
}

fn schedule_list(l: &ScheduleList) -> String {
    let mut t = Table::new(&["ID", "SUBJECT", "STATE", "AT", "BY", "CREATED"]);
    for s in &l.schedules {
        t.row(vec![
            s.id.to_string(),
            format!("{} {}", s.subject.kind, s.subject.name),
            s.state.clone(),
            s.at.clone(),
            or_dash(&s.by),
            or_dash(&s.created),
        ]);
    }
    t.render()
}

fn schedule_added(s: &Schedule) -> String {
    format!(
        "schedule {}: {} {} -> {} at {}\n",
        s.id, s.subject.kind, s.subject.name, s.state, s.at
    )
}

#[derive(Deserialize)]
struct Removed {
    removed: bool,
}

fn schedule_rm(id: u64, r: &Removed) -> String {
    if r.removed {
        format!("schedule {id} removed\n")
    } else {
        format!("schedule {id}: nothing removed\n")
    }
}

#[derive(Deserialize)]
struct SessionList {
    sessions: Vec<Session>,
}

#[derive(Deserialize)]
struct Session {
    id: u64,
    address: String,
    route: String,
    listener: String,
    peer: String,
    since: String,
}

fn sessions(l: &SessionList) -> String {
    let mut t = Table::new(&["ID", "ADDRESS", "ROUTE", "LISTENER", "PEER", "SINCE"]);
    for s in &l.sessions {
        t.row(vec![
            s.id.to_string(),
            s.address.clone(),
            s.route.clone(),
            s.listener.clone(),
            s.peer.clone(),
            s.since.clone(),
        ]);
    }
    t.render()
}

/// `kicked` and, from a fleet node, `fleet`: in every change's answer.
#[derive(Deserialize)]
struct Kicked {
    #[serde(default)]
    kicked: usize,
    #[serde(default)]
    fleet: Option<FleetKicked>,
}

#[derive(Deserialize)]
struct FleetKicked {
    here: usize,
    #[serde(flatten)]
    others: crate::route::fleet::Confirmed,
}

#[derive(Deserialize)]
struct Audit {
    audit: Vec<AuditEntry>,
}

#[derive(Deserialize)]
struct AuditEntry {
    seq: u64,
    at: String,
    who: String,
    what: String,
    #[serde(default)]
    old: Option<String>,
    #[serde(default)]
    new: Option<String>,
}

fn audit(a: &Audit) -> String {
    let mut t = Table::new(&["SEQ", "AT", "WHO", "WHAT", "CHANGE"]);
    for e in &a.audit {
        t.row(vec![
            e.seq.to_string(),
            e.at.clone(),
            e.who.clone(),
            e.what.clone(),
            format!("{} -> {}", or_dash(&e.old), or_dash(&e.new)),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(view: View, body: &str) -> String {
        render(view, body).unwrap()
    }

    #[test]
    fn status_table_and_totals() {
        let body = r#"{"version":"0.1.0","sessions":2,"schedules":1,"domains":[
            {"name":"pec.example","state":"legacy","set_by":"config","legacy":"legacy","new":"new",
             "tempmail_until":"2026-06-28T07:00:00Z","notice":null,
             "mailboxes":{"legacy":0,"blackout":2,"migrated":1,"excluded":0}},
            {"name":"b.example","state":"migrated","set_by":"ops","tempmail_until":null,
             "notice":"Moved.","mailboxes":{"legacy":0,"blackout":0,"migrated":0,"excluded":0}}]}"#;
        assert_eq!(
            text(View::Status, body),
            "DOMAIN       STATE     SET BY  MAILBOX OVERRIDES       TEMPMAIL UNTIL        NOTICE\n\
             pec.example  legacy    config  2 blackout, 1 migrated  2026-06-28T07:00:00Z  -\n\
             b.example    migrated  ops     -                       -                     Moved.\n\
             \n\
             sessions 2, schedules 1, ponte 0.1.0\n"
        );
    }

    #[test]
    fn status_names_a_fleet_store_and_its_health() {
        let up = r#"{"sessions":0,"schedules":0,"domains":[],
            "store":{"kind":"postgresql","node":"mx1","up":true,"last_sync":1800000000}}"#;
        assert!(text(View::Status, up).ends_with(
            "state store: PostgreSQL (fleet), node mx1, up, last sync 2027-01-15T08:00:00Z\n"
        ));
        let down = r#"{"sessions":0,"schedules":0,"domains":[],
            "store":{"kind":"postgresql","node":"mx1","up":false,"last_sync":1800000000,"error":"connection refused"}}"#;
        assert!(text(View::Status, down).contains("UNREACHABLE (connection refused)"));
        let embedded =
            r#"{"sessions":0,"schedules":0,"domains":[],"store":{"kind":"embedded","up":true}}"#;
        assert!(text(View::Status, embedded).ends_with("schedules 0\n"));
    }

    #[test]
    fn a_fleet_answer_counts_each_node() {
        let d = r#"{"domain":"pec.example","old":"legacy","new":"migrated","kicked":5,
            "fleet":{"here":1,"nodes":{"mx2":4,"mx3":0},"silent":[]}}"#;
        assert_eq!(
            text(View::DomainSet, d),
            "pec.example: legacy -> migrated (5 sessions closed: 1 on this node, 4 on mx2, 0 on mx3)\n"
        );
        let k = r#"{"kicked":1,"fleet":{"here":0,"nodes":{"mx2":1},"silent":["mx3","mx4"]}}"#;
        assert_eq!(
            text(View::Kick, k),
            "1 session closed: 0 on this node, 1 on mx2; no answer within 1 s from mx3, mx4 \
             (cut off from PostgreSQL, or slow)\n"
        );
        let i = r#"{"rows":2,"changed":2,"kicked":0,"fleet":{"here":0,"nodes":{},"silent":[]}}"#;
        assert_eq!(
            text(View::Import, i),
            "2 rows, 2 changed, 0 sessions closed: 0 on this node\n"
        );
    }

    #[test]
    fn one_line_changes() {
        let d = r#"{"domain":"pec.example","old":"legacy","new":"migrated","kicked":3}"#;
        assert_eq!(
            text(View::DomainSet, d),
            "pec.example: legacy -> migrated (3 sessions closed)\n"
        );
        let m = r#"{"address":"a@pec.example","old":null,"new":"migrated","kicked":1}"#;
        assert_eq!(
            text(View::MailboxSet, m),
            "a@pec.example: (domain) -> migrated (1 session closed)\n"
        );
        let r = r#"{"address":"a@pec.example","removed":true,"kicked":0}"#;
        assert_eq!(
            text(View::MailboxRm, r),
            "a@pec.example: override removed (0 sessions closed)\n"
        );
        let i = r#"{"rows":100000,"changed":99998,"kicked":0}"#;
        assert_eq!(
            text(View::Import, i),
            "100000 rows, 99998 changed, 0 sessions closed\n"
        );
        assert_eq!(
            text(View::Import, r#"{"rows":1,"changed":0,"kicked":2}"#),
            "1 row, 0 changed, 2 sessions closed\n"
        );
        assert_eq!(text(View::Kick, r#"{"kicked":1}"#), "1 session closed\n");
        assert_eq!(
            text(View::ScheduleRm(4), r#"{"removed":true}"#),
            "schedule 4 removed\n"
        );
    }

    #[test]
    fn mailbox_show_is_a_key_value_list() {
        let body = r#"{"address":"a@pec.example","state":"migrated","source":"domain","route":"new","backend":null}"#;
        assert_eq!(
            text(View::MailboxShow, body),
            "address  a@pec.example\n\
             state    migrated (from the domain)\n\
             route    new\n\
             backend  -\n"
        );
    }

    #[test]
    fn schedules_sessions_and_audit() {
        let s = r#"{"id":1,"subject":{"kind":"domain","name":"pec.example"},"state":"blackout","at":"2026-04-28T06:00:00Z","by":"ops","created":"2026-04-01T10:00:00Z"}"#;
        assert_eq!(
            text(View::ScheduleAdd, s),
            "schedule 1: domain pec.example -> blackout at 2026-04-28T06:00:00Z\n"
        );
        let list = format!(r#"{{"schedules":[{s}]}}"#);
        assert!(text(View::ScheduleList, &list).ends_with(
            "1   domain pec.example  blackout  2026-04-28T06:00:00Z  ops  2026-04-01T10:00:00Z\n"
        ));
        let sessions = r#"{"sessions":[{"id":7,"address":"a@pec.example","domain":"pec.example","route":"legacy","listener":"imaps","peer":"192.0.2.1:50000","since":"2026-04-01T10:00:00Z"}]}"#;
        assert_eq!(
            text(View::Sessions, sessions),
            "ID  ADDRESS        ROUTE   LISTENER  PEER             SINCE\n\
             7   a@pec.example  legacy  imaps     192.0.2.1:50000  2026-04-01T10:00:00Z\n"
        );
        let audit = r#"{"audit":[{"seq":1,"at":"2026-04-01T10:00:00Z","who":"ops","what":"mailbox a@pec.example","old":null,"new":"migrated"}]}"#;
        assert!(text(View::Audit, audit).ends_with("ops  mailbox a@pec.example  - -> migrated\n"));
    }

    #[test]
    fn errors_carry_message_and_details() {
        let body = r#"{"error":"2 bad row(s)","details":["line 3: x","line 9: y"]}"#;
        assert_eq!(
            api_error(400, body),
            Failure::Api {
                message: "2 bad row(s)".into(),
                details: vec!["line 3: x".into(), "line 9: y".into()],
            }
        );
        assert_eq!(
            api_error(502, "Bad Gateway\n").to_string(),
            "HTTP 502: Bad Gateway"
        );
        assert_eq!(api_error(500, "").to_string(), "HTTP 500");
    }

    #[test]
    fn a_malformed_answer_is_reported() {
        let err = render(View::Kick, r#"{"kicked":"x"}"#).unwrap_err();
        assert!(err.to_string().starts_with("unexpected answer"), "{err}");
    }
}
