//! `ponte ctl queue`: the inbound queue's commands, the API call each one
//! stands for, and how their answers read.

use clap::{ArgGroup, Subcommand};
use serde::Deserialize;

use super::plan::{self, Body, Call, Method};
use super::render::{or_dash, parse};
use super::table::Table;
use super::Failure;
use crate::spool::SpoolId;

/// `ponte ctl queue [--mailboxes]` counts; a subcommand does the rest.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct QueueArgs {
    /// Also count per mailbox.
    #[arg(long)]
    pub mailboxes: bool,
    /// Every node of the fleet: sessions and spool totals, as each node
    /// last published them, and the fleet's queue per recipient domain.
    #[arg(long, conflicts_with = "mailboxes")]
    pub fleet: bool,
    #[command(subcommand)]
    pub action: Option<QueueCommand>,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Spooled messages, oldest first.
    #[command(group(ArgGroup::new("narrow").args(["domain", "mailbox"])))]
    List {
        /// Only messages with a recipient in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages for this mailbox.
        #[arg(long)]
        mailbox: Option<String>,
        /// Most messages shown.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// One message's envelope, recipients and headers (not its body).
    Show { id: String },
    /// Deliver now: recipients not delivered go back to pending, no backoff.
    Retry { id: String },
    /// Keep a message from delivery until it is released.
    Hold { id: String },
    /// Let a held message be delivered.
    Release { id: String },
    /// Delete a message, undelivered recipients and all. Cannot be undone.
    Delete { id: String },
}

/// How a queue answer is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueView {
    Counts { mailboxes: bool },
    Fleet,
    List,
    Show,
    Retry,
    Hold,
    Release,
    Delete,
}

/// The call for a queue command, or a usage error (a malformed id fails
/// here, before reaching the server).
pub fn plan(args: &QueueArgs) -> Result<Call, Failure> {
    let view = |v| plan::View::Queue(v);
    let Some(action) = &args.action else {
        if args.fleet {
            return Ok(Call::get(
                "/api/queue?fleet=1".into(),
                view(QueueView::Fleet),
            ));
        }
        let counts = QueueView::Counts {
            mailboxes: args.mailboxes,
        };
        return Ok(Call::get("/api/queue".into(), view(counts)));
    };
    let (method, suffix, v) = match action {
        QueueCommand::List {
            domain,
            mailbox,
            limit,
        } => return list(domain.as_deref(), mailbox.as_deref(), *limit),
        QueueCommand::Show { id } => (Method::Get, id_path(id)?, QueueView::Show),
        QueueCommand::Retry { id } => (Method::Post, id_path(id)? + "/retry", QueueView::Retry),
        QueueCommand::Hold { id } => (Method::Post, id_path(id)? + "/hold", QueueView::Hold),
        QueueCommand::Release { id } => {
            (Method::Post, id_path(id)? + "/release", QueueView::Release)
        }
        QueueCommand::Delete { id } => (Method::Delete, id_path(id)?, QueueView::Delete),
    };
    Ok(Call::new(method, suffix, Body::Empty, view(v)))
}

fn list(domain: Option<&str>, mailbox: Option<&str>, limit: u32) -> Result<Call, Failure> {
    let narrow = match (domain, mailbox) {
        (Some(d), None) => format!("&domain={}", plan::segment("domain", d)?),
        (None, Some(m)) => format!("&mailbox={}", plan::segment("mailbox", m)?),
        (None, None) => String::new(),
        _ => {
            return Err(Failure::Usage(
                "give at most one of --domain and --mailbox".into(),
            ))
        }
    };
    let path = format!("/api/queue/messages?limit={limit}{narrow}");
    Ok(Call::get(path, plan::View::Queue(QueueView::List)))
}

/// `/api/queue/<id>` for a well-formed id.
fn id_path(id: &str) -> Result<String, Failure> {
    let id: SpoolId = id.trim().parse().map_err(|_| {
        Failure::Usage(format!(
            "bad queue id {id:?}: 16 hex digits, as `ponte ctl queue list` shows"
        ))
    })?;
    Ok(format!("/api/queue/{id}"))
}

/// The answer to a successful queue call, as text.
pub fn render(view: QueueView, body: &str) -> Result<String, Failure> {
    match view {
        QueueView::Counts { mailboxes } => parse(body).map(|c: Counts| counts(&c, mailboxes)),
        QueueView::Fleet => parse(body).map(|f: Fleet| fleet(&f)),
        QueueView::List => parse(body).map(|l: List| list_table(&l)),
        QueueView::Show => parse(body).map(|m: Message| show(&m)),
        QueueView::Retry => parse(body).map(|r: Retried| {
            let s = if r.reset == 1 { "" } else { "s" };
            format!(
                "{}: {} recipient{s} reset, delivery retried now\n",
                r.id, r.reset
            )
        }),
        QueueView::Hold | QueueView::Release => parse(body).map(|h: Held| held(&h)),
        QueueView::Delete => parse(body).map(|d: Deleted| deleted(&d)),
    }
}

#[derive(Deserialize)]
struct Counts {
    total: Figures,
    #[serde(default)]
    domains: Vec<Figures>,
    #[serde(default)]
    mailboxes: Vec<Figures>,
}

#[derive(Deserialize)]
struct Figures {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    address: Option<String>,
    messages: u64,
    bytes: u64,
    held: u64,
    #[serde(default)]
    oldest: Option<String>,
    #[serde(default)]
    oldest_age_seconds: Option<i64>,
}

fn counts(c: &Counts, per_mailbox: bool) -> String {
    let mut tables = vec![("DOMAIN", c.domains.as_slice())];
    if per_mailbox {
        tables.push(("MAILBOX", c.mailboxes.as_slice()));
    }
    queue_tables(&tables, &c.total)
}

/// A table per non-empty list, then the total's line.
fn queue_tables(tables: &[(&str, &[Figures])], total: &Figures) -> String {
    let mut out = String::new();
    for (title, rows) in tables {
        if rows.is_empty() {
            continue;
        }
        let mut t = Table::new(&[title, "MESSAGES", "BYTES", "HELD", "OLDEST"]);
        for f in rows.iter() {
            let name = f.domain.as_ref().or(f.address.as_ref());
            t.row(vec![
                name.cloned().unwrap_or_default(),
                f.messages.to_string(),
                bytes(f.bytes),
                f.held.to_string(),
                when(f.oldest.as_deref(), f.oldest_age_seconds),
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
    }
    let t = total;
    let s = if t.messages == 1 { "" } else { "s" };
    out.push_str(&format!(
        "total: {} message{s}, {}, {} held",
        t.messages,
        bytes(t.bytes),
        t.held
    ));
    if let Some(age) = t.oldest_age_seconds {
        out.push_str(&format!(", oldest waiting {}", duration(age)));
    }
    out.push('\n');
    out
}

#[derive(Deserialize)]
struct Fleet {
    nodes: Vec<Node>,
    /// The whole fleet's queue, and per recipient domain.
    #[serde(default)]
    total: Option<Figures>,
    #[serde(default)]
    domains: Vec<Figures>,
}

#[derive(Deserialize)]
struct Node {
    node: String,
    #[serde(default)]
    admin: Option<String>,
    heartbeat_age_seconds: i64,
    #[serde(default)]
    sessions: serde_json::Value,
    /// Figures, `null` (no inbound listener) or `{"error": …}`.
    #[serde(default)]
    queue: serde_json::Value,
    /// When it stopped cleanly (RFC 3339), if it did.
    #[serde(default)]
    stopped: Option<String>,
}

/// One row per node: its sessions and spool, and how old the figures are;
/// then the fleet's queue per recipient domain.
fn fleet(f: &Fleet) -> String {
    let mut t = Table::new(&[
        "NODE",
        "ADMIN",
        "HEARTBEAT",
        "SESSIONS",
        "MESSAGES",
        "BYTES",
        "HELD",
        "OLDEST",
    ]);
    let (mut sessions, mut messages) = (0, 0);
    for n in &f.nodes {
        let s = n.sessions["total"].as_u64().unwrap_or(0);
        sessions += s;
        let figures = Figures::deserialize(&n.queue).ok();
        let q = figures.as_ref();
        messages += q.map_or(0, |q| q.messages);
        let unread = n.queue["error"]
            .as_str()
            .map(|e| format!("unreadable: {e}"));
        t.row(vec![
            n.node.clone(),
            or_dash(&n.admin),
            // A stopped node's last heartbeat is its stop.
            format!(
                "{}{} ago",
                if n.stopped.is_some() { "stopped " } else { "" },
                duration(n.heartbeat_age_seconds)
            ),
            s.to_string(),
            q.map(|q| q.messages.to_string())
                .or(unread)
                .unwrap_or_else(|| "-".into()),
            q.map_or("-".into(), |q| bytes(q.bytes)),
            q.map_or("-".into(), |q| q.held.to_string()),
            q.and_then(|q| q.oldest_age_seconds)
                .map_or("-".into(), duration),
        ]);
    }
    let n = f.nodes.len();
    let mut out = t.render();
    out.push('\n');
    if let Some(total) = &f.total {
        out.push_str(&queue_tables(&[("DOMAIN", f.domains.as_slice())], total));
    }
    out.push_str(&format!(
        "fleet: {n} node{}, {sessions} session{}, {messages} spooled message{}\n",
        if n == 1 { "" } else { "s" },
        if sessions == 1 { "" } else { "s" },
        if messages == 1 { "" } else { "s" },
    ));
    out
}

#[derive(Deserialize)]
struct List {
    messages: Vec<Message>,
    #[serde(default)]
    left_off: u64,
}

#[derive(Deserialize)]
struct Message {
    id: String,
    from: String,
    recipients: Vec<Rcpt>,
    size: u64,
    arrived: String,
    #[serde(default)]
    age_seconds: Option<i64>,
    held: bool,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    helo: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    headers: Vec<Field>,
    #[serde(default)]
    headers_truncated: bool,
}

#[derive(Deserialize)]
struct Rcpt {
    address: String,
    status: String,
    #[serde(default)]
    attempts: u64,
    #[serde(default)]
    last_attempt: Option<String>,
    #[serde(default)]
    last_error: Option<String>,
}

#[derive(Deserialize)]
struct Field {
    name: String,
    value: String,
}

/// `<>` for the null reverse path (a bounce).
fn sender(from: &str) -> String {
    if from.is_empty() {
        "<>".into()
    } else {
        from.into()
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn list_table(l: &List) -> String {
    let mut t = Table::new(&["ID", "FROM", "SIZE", "ARRIVED", "HELD", "RECIPIENTS"]);
    for m in &l.messages {
        let rcpts: Vec<String> = m.recipients.iter().map(rcpt_short).collect();
        t.row(vec![
            m.id.clone(),
            sender(&m.from),
            bytes(m.size),
            when(Some(&m.arrived), m.age_seconds),
            yes_no(m.held),
            rcpts.join(", "),
        ]);
    }
    let mut out = t.render();
    if l.left_off > 0 {
        out.push_str(&format!("… and {} more (see --limit)\n", l.left_off));
    }
    out
}

/// `a@x (pending)`, `a@x (deferred, 2 attempts)`.
fn rcpt_short(r: &Rcpt) -> String {
    match r.attempts {
        0 => format!("{} ({})", r.address, r.status),
        1 => format!("{} ({}, 1 attempt)", r.address, r.status),
        n => format!("{} ({}, {n} attempts)", r.address, r.status),
    }
}

fn show(m: &Message) -> String {
    let mut t = Table::new(&[]);
    t.row(vec!["id".into(), m.id.clone()]);
    t.row(vec!["from".into(), sender(&m.from)]);
    t.row(vec!["subject".into(), or_dash(&m.subject)]);
    t.row(vec!["message-id".into(), or_dash(&m.message_id)]);
    t.row(vec!["size".into(), format!("{} bytes", m.size)]);
    t.row(vec![
        "arrived".into(),
        when(Some(&m.arrived), m.age_seconds),
    ]);
    t.row(vec!["held".into(), yes_no(m.held)]);
    let client = match (&m.client, &m.helo) {
        (Some(c), Some(h)) if !h.is_empty() => format!("{c} ({h})"),
        (c, _) => or_dash(c),
    };
    t.row(vec!["client".into(), client]);
    let mut out = t.render();
    let mut r = Table::new(&[
        "RECIPIENT",
        "STATUS",
        "ATTEMPTS",
        "LAST ATTEMPT",
        "LAST ERROR",
    ]);
    for rc in &m.recipients {
        r.row(vec![
            rc.address.clone(),
            rc.status.clone(),
            rc.attempts.to_string(),
            or_dash(&rc.last_attempt),
            or_dash(&rc.last_error),
        ]);
    }
    out.push('\n');
    out.push_str(&r.render());
    out.push('\n');
    for f in &m.headers {
        out.push_str(&format!("{}: {}\n", f.name, f.value));
    }
    if m.headers_truncated {
        out.push_str("(headers truncated)\n");
    }
    out
}

#[derive(Deserialize)]
struct Retried {
    id: String,
    reset: u64,
}

#[derive(Deserialize)]
struct Held {
    id: String,
    held: bool,
    changed: bool,
}

fn held(h: &Held) -> String {
    let what = match (h.held, h.changed) {
        (true, true) => "held",
        (true, false) => "already held",
        (false, true) => "released",
        (false, false) => "was not held",
    };
    format!("{}: {what}\n", h.id)
}

#[derive(Deserialize)]
struct Deleted {
    id: String,
    from: String,
    recipients: Vec<String>,
    #[serde(default)]
    undelivered: u64,
}

fn deleted(d: &Deleted) -> String {
    format!(
        "{}: deleted (from {} to {}; {} undelivered)\n",
        d.id,
        sender(&d.from),
        d.recipients.join(", "),
        d.undelivered
    )
}

/// `2026-04-01T10:00:00Z (5m 3s ago)`, or `-`.
fn when(at: Option<&str>, age: Option<i64>) -> String {
    match (at, age) {
        (Some(at), Some(age)) => format!("{at} ({} ago)", duration(age)),
        (Some(at), None) => at.to_string(),
        (None, _) => "-".into(),
    }
}

/// `45s`, `5m 3s`, `2h 5m`, `3d 4h`: the two largest units.
fn duration(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `512 B`, `1.2 KiB`, `25.0 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(action: Option<QueueCommand>) -> QueueArgs {
        QueueArgs {
            mailboxes: false,
            fleet: false,
            action,
        }
    }

    const ID: &str = "0006423b5c1d2e3f";

    #[test]
    fn commands_become_calls_and_bad_ids_fail_before_the_server() {
        let call = plan(&args(None)).unwrap();
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Get, "/api/queue")
        );
        let id = || ID.to_string();
        let cases = [
            (
                QueueCommand::Show { id: id() },
                Method::Get,
                format!("/api/queue/{ID}"),
            ),
            (
                QueueCommand::Retry { id: id() },
                Method::Post,
                format!("/api/queue/{ID}/retry"),
            ),
            (
                QueueCommand::Hold { id: id() },
                Method::Post,
                format!("/api/queue/{ID}/hold"),
            ),
            (
                QueueCommand::Release { id: id() },
                Method::Post,
                format!("/api/queue/{ID}/release"),
            ),
            (
                QueueCommand::Delete { id: id() },
                Method::Delete,
                format!("/api/queue/{ID}"),
            ),
        ];
        for (cmd, method, path) in cases {
            let call = plan(&args(Some(cmd))).unwrap();
            assert_eq!((call.method, call.path), (method, path));
        }
        // Upper-case hex is the same id, sent as the API prints it.
        let call = plan(&args(Some(QueueCommand::Show {
            id: ID.to_uppercase(),
        })))
        .unwrap();
        assert_eq!(call.path, format!("/api/queue/{ID}"));
        for bad in ["123", "../../api/status", "0006423b5c1d2e3g", ""] {
            let err = plan(&args(Some(QueueCommand::Hold { id: bad.into() }))).unwrap_err();
            assert_eq!(err.code(), 2, "{bad}");
            assert!(err.to_string().contains("16 hex digits"), "{err}");
        }
        let l = QueueCommand::List {
            domain: Some("pec.example".into()),
            mailbox: None,
            limit: 5,
        };
        let call = plan(&args(Some(l))).unwrap();
        assert_eq!(call.path, "/api/queue/messages?limit=5&domain=pec.example");
    }

    #[test]
    fn counts_per_domain_and_mailbox() {
        let body = r#"{"total":{"messages":3,"bytes":3584,"held":1,"oldest":"2026-04-01T10:00:00Z","oldest_age_seconds":303},
            "domains":[{"domain":"pec.example","messages":3,"bytes":3584,"held":1,"oldest":"2026-04-01T10:00:00Z","oldest_age_seconds":303}],
            "mailboxes":[{"address":"alice@pec.example","messages":2,"bytes":2048,"held":1,"oldest":"2026-04-01T10:00:00Z","oldest_age_seconds":303}]}"#;
        let domains = "DOMAIN       MESSAGES  BYTES    HELD  OLDEST\n\
                       pec.example  3         3.5 KiB  1     2026-04-01T10:00:00Z (5m 3s ago)\n\n";
        let total = "total: 3 messages, 3.5 KiB, 1 held, oldest waiting 5m 3s\n";
        let view = QueueView::Counts { mailboxes: false };
        assert_eq!(render(view, body).unwrap(), format!("{domains}{total}"));
        let view = QueueView::Counts { mailboxes: true };
        let text = render(view, body).unwrap();
        assert!(
            text.contains(
                "MAILBOX            MESSAGES  BYTES    HELD  OLDEST\n\
                               alice@pec.example  2         2.0 KiB  1"
            ),
            "{text}"
        );
        let empty = r#"{"total":{"messages":0,"bytes":0,"held":0,"oldest":null,"oldest_age_seconds":null},"domains":[],"mailboxes":[]}"#;
        assert_eq!(
            render(QueueView::Counts { mailboxes: true }, empty).unwrap(),
            "total: 0 messages, 0 B, 0 held\n"
        );
    }

    #[test]
    fn list_show_and_changes_read_as_lines() {
        let m = r#"{"id":"0006423b5c1d2e3f","from":"","size":900,"arrived":"2026-04-01T10:00:00Z","age_seconds":7200,"held":true,"message_id":"m@x",
            "recipients":[{"address":"a@pec.example","status":"deferred","attempts":2,"last_attempt":"2026-04-01T10:01:00Z","last_error":"connect: refused"},
                          {"address":"b@pec.example","status":"pending","attempts":0,"last_attempt":null,"last_error":null}]"#;
        let list = format!(r#"{{"messages":[{m}}}],"left_off":4}}"#);
        let text = render(QueueView::List, &list).unwrap();
        assert!(
            text.ends_with(
                "0006423b5c1d2e3f  <>    900 B  2026-04-01T10:00:00Z (2h 0m ago)  yes   \
             a@pec.example (deferred, 2 attempts), b@pec.example (pending)\n\
             … and 4 more (see --limit)\n"
            ),
            "{text}"
        );
        let shown = format!(
            r#"{m},"client":"127.0.0.1","helo":"mx.x","subject":"café","headers":[{{"name":"Subject","value":"=?utf-8?q?caf=C3=A9?="}}],"headers_truncated":true}}"#
        );
        let text = render(QueueView::Show, &shown).unwrap();
        for line in [
            "subject     café\n",
            "client      127.0.0.1 (mx.x)\n",
            "a@pec.example  deferred  2         2026-04-01T10:01:00Z  connect: refused\n",
            "\nSubject: =?utf-8?q?caf=C3=A9?=\n(headers truncated)\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
        let one = |v, b| render(v, b).unwrap();
        assert_eq!(
            one(QueueView::Retry, r#"{"id":"0006423b5c1d2e3f","reset":1}"#),
            "0006423b5c1d2e3f: 1 recipient reset, delivery retried now\n"
        );
        assert_eq!(
            one(
                QueueView::Hold,
                r#"{"id":"0006423b5c1d2e3f","held":true,"changed":false}"#
            ),
            "0006423b5c1d2e3f: already held\n"
        );
        assert_eq!(
            one(
                QueueView::Release,
                r#"{"id":"0006423b5c1d2e3f","held":false,"changed":true}"#
            ),
            "0006423b5c1d2e3f: released\n"
        );
        assert_eq!(
            one(
                QueueView::Delete,
                r#"{"id":"0006423b5c1d2e3f","deleted":true,"from":"s@x","recipients":["a@y","b@y"],"undelivered":1}"#
            ),
            "0006423b5c1d2e3f: deleted (from s@x to a@y, b@y; 1 undelivered)\n"
        );
    }

    #[test]
    fn the_fleet_view_has_a_row_per_node_and_the_fleets_queue_per_domain() {
        let body = r#"{"nodes":[
            {"node":"mx1","admin":"127.0.0.1:8025","heartbeat_age_seconds":2,"sessions":{"total":3},
             "queue":{"messages":2,"bytes":2048,"held":0,"oldest_age_seconds":60}},
            {"node":"mx2","admin":null,"heartbeat_age_seconds":40,"sessions":{"total":1},"queue":null},
            {"node":"mx3","admin":null,"heartbeat_age_seconds":3,"sessions":{"total":0},"queue":{"error":"spool: disk gone"}},
            {"node":"mx4","admin":null,"heartbeat_age_seconds":70,"sessions":{"total":0},"queue":null,"stopped":"2026-04-01T10:00:00Z"}],
            "total":{"messages":2,"bytes":2048,"held":0,"oldest":"2026-04-01T10:00:00Z","oldest_age_seconds":62},
            "domains":[{"domain":"pec.example","messages":2,"bytes":2048,"held":0,"oldest":"2026-04-01T10:00:00Z","oldest_age_seconds":62}]}"#;
        let text = render(QueueView::Fleet, body).unwrap();
        let want = "NODE  ADMIN           HEARTBEAT           SESSIONS  MESSAGES                      BYTES    HELD  OLDEST\n\
                    mx1   127.0.0.1:8025  2s ago              3         2                             2.0 KiB  0     1m 0s\n\
                    mx2   -               40s ago             1         -                             -        -     -\n\
                    mx3   -               3s ago              0         unreadable: spool: disk gone  -        -     -\n\
                    mx4   -               stopped 1m 10s ago  0         -                             -        -     -\n\n\
                    DOMAIN       MESSAGES  BYTES    HELD  OLDEST\n\
                    pec.example  2         2.0 KiB  0     2026-04-01T10:00:00Z (1m 2s ago)\n\n\
                    total: 2 messages, 2.0 KiB, 0 held, oldest waiting 1m 2s\n\
                    fleet: 4 nodes, 4 sessions, 2 spooled messages\n";
        assert_eq!(text, want, "\n{text}");
    }

    #[test]
    fn sizes_and_ages_read_at_a_glance() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(25 * 1024 * 1024), "25.0 MiB");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(303), "5m 3s");
        assert_eq!(duration(7500), "2h 5m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 9), "3d 4h");
        assert_eq!(duration(-5), "0s");
    }
}
