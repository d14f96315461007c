//! Turns a `ponte ctl` command into the one API call it stands for,
//! checking its arguments first (states, RFC 3339 times, file to import) so
//! that a typo fails here with exit 2 instead of reaching the server.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{
    CtlCommand, DomainCommand, Failure, KickArgs, MailboxCommand, ScheduleAdd, ScheduleCommand,
};
use crate::route::MailboxState;

/// Budget of an ordinary call, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// An import of a whole domain may take the server longer than a flip.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Empty,
    Json(Value),
    Csv(String),
}

/// How the answer is shown as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Status,
    DomainSet,
    MailboxSet,
    MailboxShow,
    MailboxRm,
    MailboxTempmail,
    MailboxList,
    Import,
    ScheduleList,
    ScheduleAdd,
    ScheduleRm(u64),
    Sessions,
    Kick,
    Audit,
    Queue(super::QueueView),
}

/// One request to the admin API; `path` starts with `/api/` and carries
/// any query string, already encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: Body,
    pub view: View,
    pub timeout: Duration,
}

impl Call {
    pub(super) fn new(method: Method, path: String, body: Body, view: View) -> Self {
        Call {
            method,
            path,
            body,
            view,
            timeout: TIMEOUT,
        }
    }

    pub(super) fn get(path: String, view: View) -> Self {
        Call::new(Method::Get, path, Body::Empty, view)
    }
}

/// The call for `command`, or a usage error.
pub fn plan(command: &CtlCommand) -> Result<Call, Failure> {
    match command {
        CtlCommand::Status => Ok(Call::get("/api/status".into(), View::Status)),
        CtlCommand::Domain {
            action: DomainCommand::Set { domain, state },
        } => domain_set(domain, state),
        CtlCommand::Mailbox { action } => mailbox(action),
        CtlCommand::Import { file } => import(file),
        CtlCommand::Schedule { action } => schedule(action),
        CtlCommand::Sessions => Ok(Call::get("/api/sessions".into(), View::Sessions)),
        CtlCommand::Kick(args) => kick(args),
        CtlCommand::Queue(args) => super::queue::plan(args),
        CtlCommand::Audit { limit } => {
            Ok(Call::get(format!("/api/audit?limit={limit}"), View::Audit))
        }
        CtlCommand::MigrateStore(_) => Err(Failure::Usage(
            "migrate-store works on the stores directly, not over the API".into(),
        )),
    }
}

fn domain_set(domain: &str, state: &str) -> Result<Call, Failure> {
    let path = format!("/api/domains/{}", segment("domain", domain)?);
    let body = json!({ "state": parse_state(state)? });
    Ok(Call::new(
        Method::Put,
        path,
        Body::Json(body),
        View::DomainSet,
    ))
}

fn mailbox(action: &MailboxCommand) -> Result<Call, Failure> {
    match action {
        MailboxCommand::Set {
            address,
            state,
            backend,
        } => mailbox_set(address, state, backend.as_deref()),
        MailboxCommand::Tempmail { address, until } => {
            let until = match until.as_str() {
                "none" => Value::Null,
                at => parse_at(at)?.into(),
            };
            let path = format!("{}/tempmail", mailbox_path(address)?);
            let body = Body::Json(serde_json::json!({ "until": until }));
            Ok(Call::new(Method::Put, path, body, View::MailboxTempmail))
        }
        MailboxCommand::Show { address } => {
            Ok(Call::get(mailbox_path(address)?, View::MailboxShow))
        }
        MailboxCommand::Rm { address } => Ok(Call::new(
            Method::Delete,
            mailbox_path(address)?,
            Body::Empty,
            View::MailboxRm,
        )),
        MailboxCommand::List { domain } => {
            let path = match domain {
                Some(d) => format!("/api/mailboxes?domain={}", segment("domain", d)?),
                None => "/api/mailboxes".into(),
            };
            Ok(Call::get(path, View::MailboxList))
        }
    }
}

fn mailbox_set(address: &str, state: &str, backend: Option<&str>) -> Result<Call, Failure> {
    let path = mailbox_path(address)?;
    let mut body = Map::new();
    body.insert("state".into(), parse_state(state)?.into());
    if let Some(b) = backend {
        body.insert("backend".into(), non_empty("backend", b)?.into());
    }
    Ok(Call::new(
        Method::Put,
        path,
        Body::Json(Value::Object(body)),
        View::MailboxSet,
    ))
}

fn mailbox_path(address: &str) -> Result<String, Failure> {
    Ok(format!("/api/mailboxes/{}", segment("address", address)?))
}

fn import(file: &Path) -> Result<Call, Failure> {
    let text = read_csv(file)?;
    let mut call = Call::new(
        Method::Post,
        "/api/import".into(),
        Body::Csv(text),
        View::Import,
    );
    call.timeout = IMPORT_TIMEOUT;
    Ok(call)
}

fn read_csv(file: &Path) -> Result<String, Failure> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Usage(format!("cannot read stdin: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(file)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))
}

fn schedule(action: &ScheduleCommand) -> Result<Call, Failure> {
    match action {
        ScheduleCommand::List => Ok(Call::get("/api/schedules".into(), View::ScheduleList)),
        ScheduleCommand::Add(add) => schedule_add(add),
        ScheduleCommand::Rm { id } => Ok(Call::new(
            Method::Delete,
            format!("/api/schedules/{id}"),
            Body::Empty,
            View::ScheduleRm(*id),
        )),
    }
}

fn schedule_add(add: &ScheduleAdd) -> Result<Call, Failure> {
    let mut body = Map::new();
    let (key, name) = subject(add.domain.as_deref(), add.mailbox.as_deref())?;
    body.insert(key.into(), name.into());
    body.insert("state".into(), parse_state(&add.state)?.into());
    body.insert("at".into(), parse_at(&add.at)?.into());
    Ok(Call::new(
        Method::Post,
        "/api/schedules".into(),
        Body::Json(Value::Object(body)),
        View::ScheduleAdd,
    ))
}

/// Exactly one of a domain and a mailbox (clap enforces it; this checks it).
fn subject<'a>(
    domain: Option<&'a str>,
    mailbox: Option<&'a str>,
) -> Result<(&'static str, &'a str), Failure> {
    match (domain, mailbox) {
        (Some(d), None) => Ok(("domain", non_empty("domain", d)?)),
        (None, Some(m)) => Ok(("mailbox", non_empty("mailbox", m)?)),
        _ => Err(Failure::Usage(
            "give exactly one of --domain and --mailbox".into(),
        )),
    }
}

fn kick(args: &KickArgs) -> Result<Call, Failure> {
    let mut body = Map::new();
    match (&args.mailbox, &args.domain, args.id) {
        (Some(m), None, None) => body.insert("mailbox".into(), non_empty("mailbox", m)?.into()),
        (None, Some(d), None) => body.insert("domain".into(), non_empty("domain", d)?.into()),
        (None, None, Some(id)) => body.insert("id".into(), id.into()),
        _ => {
            return Err(Failure::Usage(
                "give exactly one of --mailbox, --domain and --id".into(),
            ))
        }
    };
    if let Some(reason) = &args.reason {
        body.insert("reason".into(), reason.as_str().into());
    }
    Ok(Call::new(
        Method::Post,
        "/api/kick".into(),
        Body::Json(Value::Object(body)),
        View::Kick,
    ))
}

/// A state name as the API spells it.
pub fn parse_state(s: &str) -> Result<&'static str, Failure> {
    s.parse::<MailboxState>()
        .map(MailboxState::as_str)
        .map_err(Failure::Usage)
}

/// An RFC 3339 time, sent on as RFC 3339 with its offset kept.
pub fn parse_at(s: &str) -> Result<String, Failure> {
    let bad = |e: &dyn std::fmt::Display| {
        Failure::Usage(format!(
            "bad time {s:?}: {e} (expected RFC 3339, e.g. 2026-04-28T08:00:00+02:00)"
        ))
    };
    let at = OffsetDateTime::parse(s.trim(), &Rfc3339).map_err(|e| bad(&e))?;
    at.format(&Rfc3339).map_err(|e| bad(&e))
}

fn non_empty<'a>(what: &str, s: &'a str) -> Result<&'a str, Failure> {
    let s = s.trim();
    if s.is_empty() {
        return Err(Failure::Usage(format!("empty {what}")));
    }
    Ok(s)
}

/// `s` percent-encoded for a path segment or a query value.
pub(super) fn segment(what: &str, s: &str) -> Result<String, Failure> {
    let s = non_empty(what, s)?;
    if s == "." || s == ".." {
        return Err(Failure::Usage(format!("bad {what} {s:?}")));
    }
    Ok(percent_encode(s))
}

/// Keeps unreserved characters and `@`; encodes every other byte.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(r: Result<Call, Failure>) -> String {
        match r {
            Err(Failure::Usage(m)) => m,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn states_are_checked_and_normalised() {
        assert_eq!(parse_state("Migrated"), Ok("migrated"));
        assert_eq!(parse_state("blackout"), Ok("blackout"));
        let err = parse_state("moved").unwrap_err();
        assert_eq!(err.code(), 2);
        assert!(err.to_string().contains("moved"), "{err}");
    }

    #[test]
    fn times_must_be_rfc3339_and_keep_their_offset() {
        assert_eq!(
            parse_at("2026-04-28T08:00:00+02:00").unwrap(),
            "2026-04-28T08:00:00+02:00"
        );
        assert_eq!(
            parse_at("2026-04-28T06:00:00Z").unwrap(),
            "2026-04-28T06:00:00Z"
        );
        for bad in [
            "2026-04-28",
            "2026-04-28 08:00",
            "tomorrow",
            "2026-04-28T08:00:00",
        ] {
            let err = parse_at(bad).unwrap_err();
            assert_eq!(err.code(), 2, "{bad}");
        }
    }

    #[test]
    fn domain_set_puts_the_state() {
        let call = domain_set("pec.example", "MIGRATED").unwrap();
        assert_eq!(call.method, Method::Put);
        assert_eq!(call.path, "/api/domains/pec.example");
        assert_eq!(call.body, Body::Json(json!({"state": "migrated"})));
        assert!(usage(domain_set("pec.example", "gone")).contains("gone"));
        assert!(usage(domain_set(" ", "legacy")).contains("empty domain"));
    }

    #[test]
    fn paths_are_encoded() {
        assert_eq!(percent_encode("a.b@pec.example"), "a.b@pec.example");
        assert_eq!(percent_encode("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(percent_encode("è"), "%C3%A8");
        let call = mailbox_set("a/b@x", "legacy", Some("new")).unwrap();
        assert_eq!(call.path, "/api/mailboxes/a%2Fb@x");
        assert_eq!(
            call.body,
            Body::Json(json!({"state": "legacy", "backend": "new"}))
        );
        assert!(usage(mailbox_set("..", "legacy", None)).contains("bad address"));
    }

    #[test]
    fn schedule_add_checks_state_and_time() {
        let add = ScheduleAdd {
            domain: Some("pec.example".into()),
            mailbox: None,
            state: "blackout".into(),
            at: "2026-04-28T08:00:00+02:00".into(),
        };
        let call = schedule_add(&add).unwrap();
        assert_eq!(call.method, Method::Post);
        assert_eq!(
            call.body,
            Body::Json(json!({
                "domain": "pec.example",
                "state": "blackout",
                "at": "2026-04-28T08:00:00+02:00"
            }))
        );
        let late = ScheduleAdd {
            at: "28/04/2026 08:00".into(),
            ..add
        };
        assert!(usage(schedule_add(&late)).contains("RFC 3339"));
        let both = ScheduleAdd {
            mailbox: Some("a@pec.example".into()),
            at: "2026-04-28T08:00:00Z".into(),
            ..late
        };
        assert!(usage(schedule_add(&both)).contains("exactly one"));
    }

    #[test]
    fn kick_names_one_target() {
        let args = KickArgs {
            mailbox: None,
            domain: None,
            id: Some(7),
            reason: Some("maintenance".into()),
        };
        let call = kick(&args).unwrap();
        assert_eq!(
            call.body,
            Body::Json(json!({"id": 7, "reason": "maintenance"}))
        );
        let none = KickArgs { id: None, ..args };
        assert!(usage(kick(&none)).contains("exactly one"));
    }

    #[test]
    fn list_and_audit_queries() {
        let list = MailboxCommand::List {
            domain: Some("pec.example".into()),
        };
        assert_eq!(
            mailbox(&list).unwrap().path,
            "/api/mailboxes?domain=pec.example"
        );
        let audit = plan(&CtlCommand::Audit { limit: 5 }).unwrap();
        assert_eq!(audit.path, "/api/audit?limit=5");
    }

    #[test]
    fn an_unreadable_import_file_is_a_usage_error() {
        let err = usage(import(Path::new("/nonexistent/rows.csv")));
        assert!(err.contains("/nonexistent/rows.csv"), "{err}");
    }
}
