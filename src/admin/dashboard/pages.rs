//! The main page: live sections (re-rendered for the server-sent events
//! too) and the action forms, and the login page.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::chart;
use super::history::Sample;
use super::html::{csrf_field, duration, esc, number, query, td, tfoot, thead, time, ROW};
use super::overview::{Overview, MESSAGES_SHOWN, STATES};
use crate::control::fleet::HEARTBEAT;
use crate::route::{NodeReport, Schedule, Subject};

/// Sessions listed one by one (the counts per route cover them all).
const SESSIONS_LISTED: usize = 50;

/// The live sections: (element id, heading, renderer). A renderer's
/// `None`: the section does not apply to this node (the fleet's, on the
/// embedded store).
type Section = (
    &'static str,
    &'static str,
    fn(&Overview, &[Sample], u64) -> Option<String>,
);

const SECTIONS: [Section; 8] = [
    ("summary", "At a glance", |o, _, _| Some(summary(o))),
    ("domains", "Domains", |o, _, _| Some(domains(o))),
    ("sessions", "Live sessions", |o, _, _| Some(sessions(o))),
    ("spool", "Inbound queue", |o, _, _| Some(spool(o))),
    ("fleet", "Fleet", |o, _, _| {
        o.fleet.as_ref().map(|f| fleet(f, o.now, &o.node))
    }),
    ("backends", "Backends", |o, _, _| Some(backends(o))),
    ("charts", "Last hours", |_, h, i| Some(chart::charts(h, i))),
    ("audit", "Recent changes", |o, _, _| Some(audit(o))),
];

/// Each live section's HTML by element id, for the event stream.
pub fn live_json(o: &Overview, history: &[Sample], interval: u64) -> Value {
    let mut map = serde_json::Map::new();
    for (id, _, render) in SECTIONS {
        if let Some(html) = render(o, history, interval) {
            map.insert(format!("{id}-live"), json!(html));
        }
    }
    Value::Object(map)
}

/// The main page's body.
pub fn main(
    o: &Overview,
    history: &[Sample],
    interval: u64,
    csrf: &str,
    flash: Option<&str>,
    backends: &[String],
) -> String {
    let mut out = String::new();
    // Not a live region (role=status): it changes every few seconds and a
    // screen reader would read it out each time.
    out.push_str("<p id=\"live-status\" class=\"muted\"><a href=\"/dashboard\">Reload</a> for fresh figures.</p>");
    if let Some(text) = flash {
        let _ = write!(
            out,
            "<div class=\"flash\" role=\"status\" tabindex=\"-1\" id=\"flash\">{}</div>",
            esc(text)
        );
    }
    let shown: Vec<(&str, &str, String)> = SECTIONS
        .iter()
        .filter_map(|(id, heading, render)| Some((*id, *heading, render(o, history, interval)?)))
        .collect();
    out.push_str("<nav aria-label=\"Sections\"><ul class=\"toc\">");
    for (id, heading, _) in &shown {
        let _ = write!(out, "<li><a href=\"#{id}\">{heading}</a></li>");
    }
    out.push_str("<li><a href=\"#actions\">Actions</a></li></ul></nav>");
    for (id, heading, html) in &shown {
        let _ = write!(
            out,
            "<section id=\"{id}\" aria-labelledby=\"{id}-h\"><h2 id=\"{id}-h\">{heading}</h2>\
             <div id=\"{id}-live\">{html}</div></section>",
        );
    }
    out.push_str(&actions(o, csrf, backends));
    out
}

fn summary(o: &Overview) -> String {
    let mut out = String::from("<dl class=\"figures\">");
    let mut fig = |label: &str, value: String| {
        let _ = write!(out, "<div><dt>{}</dt><dd>{value}</dd></div>", esc(label));
    };
    fig("Sessions open", number(o.sessions.len() as u64));
    fig("Logins ok since start", number(o.logins.0));
    fig("Logins failed since start", number(o.logins.1));
    match &o.queue {
        Some(q) => {
            fig("Queued messages", number(q.stats.total.messages));
            fig(
                "Oldest queued",
                q.stats
                    .total
                    .oldest_age(o.now)
                    .map_or("none".into(), duration),
            );
        }
        None => fig("Queued messages", "no inbound listener".into()),
    }
    fig("Schedules pending", number(o.schedules.len() as u64));
    out.push_str("</dl>");
    let _ = write!(out, "<p class=\"muted\">As of {}.</p>", time(o.now));
    out
}

/// A link to the review page of an action.
fn review_link(params: &[(&str, &str)], text: &str, label: &str) -> String {
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", query(v)))
        .collect();
    format!(
        "<a class=\"act\" href=\"/dashboard/confirm?{}\" aria-label=\"{}\">{}</a>",
        esc(&q.join("&")),
        esc(label),
        esc(text)
    )
}

fn domains(o: &Overview) -> String {
    let mut out = String::new();
    let mut cols = vec!["Domain", "State", "Schedule", "Tempmail until"];
    let labels: Vec<String> = STATES.iter().map(|s| format!("Own state {s}")).collect();
    cols.extend(labels.iter().map(String::as_str));
    cols.extend(["Sessions", "Flip to"]);
    thead(
        &mut out,
        "Each domain's state; mailboxes with their own state, per state",
        &cols,
    );
    for d in &o.domains {
        out.push_str(ROW);
        td(
            &mut out,
            "Domain",
            &format!("<strong>{}</strong>", esc(&d.name)),
        );
        td(
            &mut out,
            "State",
            &format!(
                "<span class=\"state s-{s}\">{s}</span> <span class=\"muted\">by {}</span><br><span class=\"muted\">{} → {}</span>",
                esc(&d.set_by),
                esc(&d.config.legacy),
                esc(&d.config.new),
                s = d.state
            ),
        );
        let subject = Subject::Domain(d.name.clone());
        td(&mut out, "Schedule", &schedules_of(o, &subject));
        let until = d
            .config
            .tempmail_until
            .map_or("—".into(), |t| time(t.unix_timestamp()));
        td(&mut out, "Tempmail until", &until);
        for (i, s) in STATES.iter().enumerate() {
            td(&mut out, &format!("Own state {s}"), &number(d.overrides[i]));
        }
        td(&mut out, "Sessions", &number(d.sessions as u64));
        let links: Vec<String> = STATES
            .iter()
            .filter(|s| **s != d.state)
            .map(|s| {
                review_link(
                    &[
                        ("action", "domain"),
                        ("domain", &d.name),
                        ("state", s.as_str()),
                    ],
                    s.as_str(),
                    &format!("Flip {} to {s}", d.name),
                )
            })
            .collect();
        td(&mut out, "Flip to", &links.join(" "));
        out.push_str("</tr>");
    }
    tfoot(&mut out);
    out.push_str(&other_schedules(o));
    out
}

/// A link to the review page that cancels schedule `s`.
fn cancel_link(s: &Schedule) -> String {
    review_link(
        &[("action", "unschedule"), ("id", &s.id.to_string())],
        "cancel",
        &format!("Cancel schedule {} ({} to {})", s.id, s.subject, s.state),
    )
}

/// The pending schedules the domain rows do not show: those of mailboxes
/// (and of a domain no longer configured), each with its cancel link.
fn other_schedules(o: &Overview) -> String {
    let listed = |s: &Schedule| matches!(&s.subject, Subject::Domain(d) if o.domains.iter().any(|r| &r.name == d));
    let others: Vec<&Schedule> = o.schedules.iter().filter(|s| !listed(s)).collect();
    if others.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    thead(
        &mut out,
        "Scheduled mailbox flips, soonest first",
        &["Mailbox", "New state", "At", "Added by", "Cancel"],
    );
    for s in others {
        let of = match &s.subject {
            Subject::Mailbox(m) => esc(m),
            Subject::Domain(d) => format!("domain {} (not configured)", esc(d)),
        };
        out.push_str(ROW);
        td(&mut out, "Mailbox", &of);
        td(
            &mut out,
            "New state",
            &format!("<span class=\"state s-{0}\">{0}</span>", s.state),
        );
        td(&mut out, "At", &time(s.at));
        td(&mut out, "Added by", &esc(&s.by));
        td(&mut out, "Cancel", &cancel_link(s));
        out.push_str("</tr>");
    }
    tfoot(&mut out);
    out
}

/// The pending schedules of one subject, each with a cancel link.
fn schedules_of(o: &Overview, subject: &Subject) -> String {
    let mine: Vec<String> = o
        .schedules
        .iter()
        .filter(|s| &s.subject == subject)
        .map(|s| {
            format!(
                "{} at {} ({}) {}",
                esc(s.state.as_str()),
                time(s.at),
                esc(&s.by),
                cancel_link(s)
            )
        })
        .collect();
    if mine.is_empty() {
        "—".into()
    } else {
        mine.join("<br>")
    }
}

fn sessions(o: &Overview) -> String {
    let mut out = String::new();
    let by_route = o.sessions_by_route();
    if by_route.is_empty() {
        return "<p>No open sessions.</p>".into();
    }
    thead(
        &mut out,
        "Open sessions per listener and route",
        &["Listener", "Route", "Sessions"],
    );
    for ((listener, route), n) in by_route {
        out.push_str(ROW);
        td(&mut out, "Listener", &esc(listener));
        td(&mut out, "Route", &esc(route));
        td(&mut out, "Sessions", &number(n as u64));
        out.push_str("</tr>");
    }
    tfoot(&mut out);
    thead(
        &mut out,
        "Sessions, newest last",
        &[
            "Id", "Mailbox", "Listener", "Route", "Client", "Since", "Close",
        ],
    );
    let skip = o.sessions.len().saturating_sub(SESSIONS_LISTED);
    for e in o.sessions.iter().skip(skip) {
        let since = e
            .since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        out.push_str(ROW);
        td(&mut out, "Id", &e.id.to_string());
        td(&mut out, "Mailbox", &esc(&e.address));
        td(&mut out, "Listener", &esc(&e.listener));
        td(&mut out, "Route", &esc(&e.route));
        td(&mut out, "Client", &esc(&e.peer.ip().to_string()));
        td(&mut out, "Since", &time(since));
        let id = e.id.to_string();
        td(
            &mut out,
            "Close",
            &review_link(
                &[("action", "kick"), ("kind", "id"), ("target", &id)],
                "close",
                &format!("Close session {id} of {}", e.address),
            ),
        );
        out.push_str("</tr>");
    }
    tfoot(&mut out);
    if skip > 0 {
        let _ = write!(
            out,
            "<p class=\"muted\">{} older sessions not listed.</p>",
            number(skip as u64)
        );
    }
    out
}

fn spool(o: &Overview) -> String {
    let Some(q) = &o.queue else {
        return "<p>No inbound listener: nothing is spooled.</p>".into();
    };
    let mut out = String::new();
    if q.stats.total.messages == 0 {
        return "<p>The queue is empty.</p>".into();
    }
    thead(
        &mut out,
        "Messages waiting per recipient domain",
        &["Domain", "Messages", "Held", "Bytes", "Oldest"],
    );
    for (d, f) in &q.stats.domains {
        out.push_str(ROW);
        td(&mut out, "Domain", &esc(d));
        td(&mut out, "Messages", &number(f.messages));
        td(&mut out, "Held", &number(f.held));
        td(&mut out, "Bytes", &number(f.bytes));
        td(
            &mut out,
            "Oldest",
            &f.oldest_age(o.now).map_or("—".into(), duration),
        );
        out.push_str("</tr>");
    }
    tfoot(&mut out);
    thead(
        &mut out,
        "Oldest messages",
        &["Id", "From", "To", "Size", "Waiting", "Hold"],
    );
    for m in &q.oldest {
        let env = &m.envelope;
        let id = m.id.to_string();
        let to: Vec<String> = env.recipients.iter().map(|r| esc(&r.address)).collect();
        out.push_str(ROW);
        td(&mut out, "Id", &format!("<code>{}</code>", esc(&id)));
        td(&mut out, "From", &esc(or_null(&env.mail_from)));
        td(&mut out, "To", &to.join("<br>"));
        td(&mut out, "Size", &number(env.size));
        td(&mut out, "Waiting", &duration(o.now - env.arrived));
        let (action, text) = if env.held {
            ("release", "release")
        } else {
            ("hold", "hold")
        };
        let link = review_link(
            &[("action", action), ("id", &id)],
            text,
            &format!("{text} message {id}"),
        );
        let state = if env.held { "held " } else { "" };
        td(&mut out, "Hold", &format!("{state}{link}"));
        out.push_str("</tr>");
    }
    tfoot(&mut out);
    if q.listed_of > MESSAGES_SHOWN {
        let _ = write!(
            out,
            "<p class=\"muted\">{} of {} messages listed (<code>ponte ctl queue list</code> shows all).</p>",
            MESSAGES_SHOWN,
            number(q.listed_of as u64)
        );
    }
    out
}

fn or_null(sender: &str) -> &str {
    if sender.is_empty() {
        "<> (null sender)"
    } else {
        sender
    }
}

/// Each node's last heartbeat, as it published it. A node silent for
/// three heartbeats is marked: it may be down or cut off from the store.
fn fleet(nodes: &Result<Vec<NodeReport>, String>, now: i64, this: &str) -> String {
    let nodes = match nodes {
        Ok(n) => n,
        Err(e) => {
            return format!(
                "<p role=\"alert\">The fleet's heartbeats cannot be read now: {}</p>",
                esc(e)
            )
        }
    };
    if nodes.is_empty() {
        return "<p>No node has published a heartbeat yet.</p>".into();
    }
    let mut out = String::new();
    thead(
        &mut out,
        &format!(
            "Each node's last heartbeat (sent every {} s)",
            HEARTBEAT.as_secs()
        ),
        &[
            "Node",
            "Admin API",
            "Heartbeat",
            "Up since",
            "Sessions",
            "Spooled messages",
        ],
    );
    let stale = 3 * HEARTBEAT.as_secs() as i64;
    for n in nodes {
        let age = now - n.heartbeat;
        let mut name = esc(&n.node);
        if n.node == this {
            name.push_str(" <span class=\"muted\">(this node)</span>");
        }
        // A stopped node's last heartbeat is its stop (aged by the
        // database's clock, as the others).
        let heartbeat = if n.stopped.is_some() {
            format!("<span class=\"muted\">stopped {} ago</span>", duration(age))
        } else if age > stale {
            format!("<span class=\"bad\">{} ago: silent</span>", duration(age))
        } else {
            format!("{} ago", duration(age))
        };
        let figure = |v: &Value| v.as_u64().map_or("—".into(), number);
        let spooled = if n.queue.is_null() {
            "no inbound listener".to_string()
        } else if let Some(e) = n.queue["error"].as_str() {
            format!("<span class=\"bad\">spool unreadable: {}</span>", esc(e))
        } else {
            let held = n.queue["held"].as_u64().unwrap_or(0);
            let held = if held > 0 {
                format!(" ({} held)", number(held))
            } else {
                String::new()
            };
            format!("{}{held}", figure(&n.queue["messages"]))
        };
        out.push_str(ROW);
        td(&mut out, "Node", &name);
        td(
            &mut out,
            "Admin API",
            &esc(n.admin.as_deref().unwrap_or("—")),
        );
        td(&mut out, "Heartbeat", &heartbeat);
        td(&mut out, "Up since", &time(n.started));
        td(&mut out, "Sessions", &figure(&n.sessions["total"]));
        td(&mut out, "Spooled messages", &spooled);
        out.push_str("</tr>");
    }
    tfoot(&mut out);
    out
}

fn backends(o: &Overview) -> String {
    if o.backends.is_empty() {
        return "<p>No backend configured.</p>".into();
    }
    let mut out = String::new();
    thead(
        &mut out,
        "Connections from ponte to each backend",
        &[
            "Backend",
            "Last connect",
            "Latency",
            "Connects",
            "Errors",
            "Last error",
        ],
    );
    for (name, h) in &o.backends {
        out.push_str(ROW);
        td(&mut out, "Backend", &esc(name));
        td(
            &mut out,
            "Last connect",
            &h.last_ok.map_or("—".into(), time),
        );
        let latency = h.last_latency.map_or("—".into(), |d| {
            format!("{:.1} ms", d.as_secs_f64() * 1000.0)
        });
        td(&mut out, "Latency", &latency);
        td(&mut out, "Connects", &number(h.connects));
        let errors = if h.errors > 0 {
            format!("<span class=\"bad\">{}</span>", number(h.errors))
        } else {
            "0".into()
        };
        td(&mut out, "Errors", &errors);
        let last = h.last_error.as_ref().map_or("—".into(), |(text, at)| {
            format!("{} <span class=\"muted\">({})</span>", esc(text), time(*at))
        });
        td(&mut out, "Last error", &last);
        out.push_str("</tr>");
    }
    tfoot(&mut out);
    out
}

fn audit(o: &Overview) -> String {
    let entries = match &o.audit {
        Ok(entries) => entries,
        Err(e) => {
            return format!(
                "<p role=\"alert\">The audit log cannot be read now: {}</p>",
                esc(e)
            )
        }
    };
    if entries.is_empty() {
        return "<p>No changes yet.</p>".into();
    }
    let mut out = String::new();
    thead(
        &mut out,
        "Audit log, newest first",
        &["When", "Who", "What", "Old", "New"],
    );
    for a in entries {
        out.push_str(ROW);
        td(&mut out, "When", &time(a.at));
        td(&mut out, "Who", &esc(&a.who));
        td(&mut out, "What", &esc(&a.what));
        td(&mut out, "Old", &esc(a.old.as_deref().unwrap_or("—")));
        td(&mut out, "New", &esc(a.new.as_deref().unwrap_or("—")));
        out.push_str("</tr>");
    }
    tfoot(&mut out);
    out
}

fn state_select(id: &str) -> String {
    let mut out = format!(
        "<label for=\"{id}\">New state</label><select id=\"{id}\" name=\"state\" required>"
    );
    for s in STATES {
        let _ = write!(out, "<option value=\"{s}\">{s}</option>");
    }
    out.push_str("</select>");
    out
}

/// The action forms: each goes to a review page first (GET: nothing
/// changes until the review page's own form is confirmed), except the
/// import, whose text is posted for checking.
fn actions(o: &Overview, csrf: &str, backends: &[String]) -> String {
    let mut out = String::from(
        "<section id=\"actions\" aria-labelledby=\"actions-h\"><h2 id=\"actions-h\">Actions</h2>\
         <p class=\"muted\">Each action shows what it will change and asks for confirmation.</p><div class=\"forms\">",
    );
    let domain_options: String = o
        .domains
        .iter()
        .map(|d| format!("<option value=\"{0}\">{0}</option>", esc(&d.name)))
        .collect();
    let backend_options: String = backends
        .iter()
        .map(|b| format!("<option value=\"{0}\">{0}</option>", esc(b)))
        .collect();
    let _ = write!(
        out,
        "<form method=\"get\" action=\"/dashboard/confirm\" id=\"flip-domain\"><h3>Flip a domain</h3>\
         <input type=\"hidden\" name=\"action\" value=\"domain\">\
         <label for=\"fd-domain\">Domain</label><select id=\"fd-domain\" name=\"domain\" required>{domain_options}</select>\
         {}<button type=\"submit\">Review</button></form>",
        state_select("fd-state")
    );
    let _ = write!(
        out,
        "<form method=\"get\" action=\"/dashboard/confirm\" id=\"flip-mailbox\"><h3>Flip a mailbox</h3>\
         <input type=\"hidden\" name=\"action\" value=\"mailbox\">\
         <label for=\"fm-mailbox\">Address</label><input id=\"fm-mailbox\" name=\"mailbox\" required autocomplete=\"off\" spellcheck=\"false\" placeholder=\"user@domain\">\
         {}<label for=\"fm-backend\">Backend when migrated</label><select id=\"fm-backend\" name=\"backend\"><option value=\"\">the domain's new backend</option>{backend_options}</select>\
         <button type=\"submit\">Review</button></form>",
        state_select("fm-state")
    );
    out.push_str(
        "<form method=\"get\" action=\"/dashboard/confirm\" id=\"follow\"><h3>Let a mailbox follow its domain</h3>\
         <input type=\"hidden\" name=\"action\" value=\"follow\">\
         <p class=\"muted\" id=\"fo-help\">Drops the state the mailbox was given on its own (by hand, an import or a schedule): it takes its domain's state and route again.</p>\
         <label for=\"fo-mailbox\">Address</label><input id=\"fo-mailbox\" name=\"mailbox\" required autocomplete=\"off\" spellcheck=\"false\" placeholder=\"user@domain\" aria-describedby=\"fo-help\">\
         <button type=\"submit\">Review</button></form>",
    );
    // Two submit buttons name the action: clearing skips the time field's
    // validation (`formnovalidate`), as it needs no time.
    out.push_str(
        "<form method=\"get\" action=\"/dashboard/confirm\" id=\"tempmail\"><h3>Tempmail deadline of a mailbox</h3>\
         <p class=\"muted\" id=\"tm-help\">When the mailbox's read-only view of its old mailbox closes. Cleared, it follows its domain's deadline again.</p>\
         <label for=\"tm-mailbox\">Address</label><input id=\"tm-mailbox\" name=\"mailbox\" required autocomplete=\"off\" spellcheck=\"false\" placeholder=\"user@domain\" aria-describedby=\"tm-help\">\
         <label for=\"tm-at\">Closes at (local time)</label><input id=\"tm-at\" name=\"at\" type=\"datetime-local\" required>\
         <label for=\"tm-tz\">UTC offset</label><input id=\"tm-tz\" name=\"tz\" value=\"+00:00\" pattern=\"[+\\-][0-9]{2}:[0-9]{2}\" data-tz>\
         <button type=\"submit\" name=\"action\" value=\"tempmail\">Review the deadline</button> \
         <button type=\"submit\" name=\"action\" value=\"tempmail-clear\" formnovalidate>Review clearing it</button></form>",
    );
    let _ = write!(
        out,
        "<form method=\"get\" action=\"/dashboard/confirm\" id=\"schedule\"><h3>Schedule a flip</h3>\
         <input type=\"hidden\" name=\"action\" value=\"schedule\">\
         <label for=\"sc-kind\">Of a</label><select id=\"sc-kind\" name=\"kind\"><option value=\"domain\">domain</option><option value=\"mailbox\">mailbox</option></select>\
         <label for=\"sc-target\">Domain or address</label><input id=\"sc-target\" name=\"target\" required autocomplete=\"off\" spellcheck=\"false\">\
         {}<label for=\"sc-at\">At (local time)</label><input id=\"sc-at\" name=\"at\" type=\"datetime-local\" required>\
         <label for=\"sc-tz\">UTC offset</label><input id=\"sc-tz\" name=\"tz\" value=\"+00:00\" pattern=\"[+\\-][0-9]{{2}}:[0-9]{{2}}\" data-tz>\
         <button type=\"submit\">Review</button></form>",
        state_select("sc-state")
    );
    out.push_str(
        "<form method=\"get\" action=\"/dashboard/confirm\" id=\"kick\"><h3>Close sessions</h3>\
         <input type=\"hidden\" name=\"action\" value=\"kick\">\
         <label for=\"k-kind\">Of a</label><select id=\"k-kind\" name=\"kind\"><option value=\"mailbox\">mailbox</option><option value=\"domain\">domain</option><option value=\"id\">session id</option></select>\
         <label for=\"k-target\">Address, domain or id</label><input id=\"k-target\" name=\"target\" required autocomplete=\"off\" spellcheck=\"false\">\
         <button type=\"submit\">Review</button></form>",
    );
    out.push_str(
        "<form method=\"get\" action=\"/dashboard/confirm\" id=\"queue\"><h3>Hold or release queued mail</h3>\
         <label for=\"q-action\">Action</label><select id=\"q-action\" name=\"action\"><option value=\"hold\">hold</option><option value=\"release\">release</option></select>\
         <label for=\"q-id\">Message id (16 hex digits)</label><input id=\"q-id\" name=\"id\" required autocomplete=\"off\" spellcheck=\"false\" pattern=\"[0-9a-fA-F]{16}\">\
         <button type=\"submit\">Review</button></form>",
    );
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/dashboard/import\" id=\"import\" class=\"wide\"><h3>Import a mailbox list</h3>{}\
         <p class=\"muted\">CSV rows <code>address,state[,backend]</code>; all rows are checked first, nothing is applied if any is bad.</p>\
         <label for=\"im-file\">CSV file</label><input id=\"im-file\" type=\"file\" accept=\".csv,text/csv,text/plain\" data-into=\"im-csv\">\
         <label for=\"im-csv\">Rows (or paste them here)</label><textarea id=\"im-csv\" name=\"csv\" rows=\"6\" required spellcheck=\"false\"></textarea>\
         <button type=\"submit\">Check</button></form>",
        csrf_field(csrf)
    );
    out.push_str("</div></section>");
    out
}

/// The login page's body; `error` after a refused token.
pub fn login(error: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(e) = error {
        let _ = write!(out, "<p class=\"flash bad\" role=\"alert\">{}</p>", esc(e));
    }
    out.push_str(
        "<p id=\"insecure\" class=\"flash bad\" hidden>This page is not a secure context: the browser will not keep the session. \
         Open it on localhost (e.g. through an SSH tunnel) or over https.</p>\
         <form method=\"post\" action=\"/dashboard/login\" class=\"login\">\
         <label for=\"token\">Admin token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" required autocomplete=\"current-password\" autofocus>\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"muted\">The token of the admin API (a line of the token file). It is checked once; the browser keeps only a session cookie.</p>",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, heartbeat: i64, queue: Value) -> NodeReport {
        NodeReport {
            node: name.into(),
            admin: Some("127.0.0.1:8025".into()),
            started: 1_796_600_000,
            heartbeat,
            sessions: json!({"total": 1234, "by_route": {"legacy": 1234}}),
            queue,
            stopped: None,
        }
    }

    #[test]
    fn the_fleet_lists_each_node_and_marks_the_silent_and_stopped_ones() {
        let now = 1_796_630_400;
        let nodes = vec![
            node(
                "mx-a",
                now - 2,
                json!({"messages": 7, "bytes": 1, "held": 2, "oldest_age_seconds": 5, "by_domain": {}}),
            ),
            node("mx-<b>", now - 600, Value::Null),
            node("mx-c", now - 1, json!({"error": "spool: <gone>"})),
            NodeReport {
                stopped: Some(now - 90),
                ..node("mx-d", now - 90, Value::Null)
            },
        ];
        let html = fleet(&Ok(nodes), now, "mx-a");
        assert!(
            html.contains("mx-a <span class=\"muted\">(this node)</span>"),
            "{html}"
        );
        assert!(html.contains(">2 s ago<"), "{html}");
        assert!(html.contains(">1,234<"), "{html}");
        assert!(html.contains(">7 (2 held)<"), "{html}");
        assert!(html.contains("mx-&lt;b&gt;"), "{html}");
        assert!(html.contains("10 min ago: silent"), "{html}");
        // Stopped cleanly: said so, not flagged as silent.
        assert!(html.contains(">stopped 1 min ago<"), "{html}");
        assert_eq!(html.matches("silent").count(), 1, "{html}");
        assert!(html.contains("no inbound listener"), "{html}");
        assert!(
            html.contains("spool unreadable: spool: &lt;gone&gt;"),
            "{html}"
        );
        assert!(!html.contains("<b>"), "{html}");

        let empty = fleet(&Ok(vec![]), now, "mx-a");
        assert!(empty.contains("No node has published"), "{empty}");
        let down = fleet(&Err("connection <refused>".into()), now, "mx-a");
        assert!(
            down.contains("cannot be read now: connection &lt;refused&gt;"),
            "{down}"
        );
    }

    fn overview(
        schedules: Vec<Schedule>,
        fleet: Option<Result<Vec<NodeReport>, String>>,
    ) -> Overview {
        Overview {
            now: 1_796_630_400,
            domains: vec![],
            sessions: vec![],
            queue: None,
            backends: vec![],
            schedules,
            audit: Ok(vec![]),
            logins: (0, 0),
            fleet,
            node: "mx-a".into(),
        }
    }

    #[test]
    fn the_fleet_section_is_shown_only_in_a_fleet() {
        let page = main(&overview(vec![], None), &[], 60, "t", None, &[]);
        assert!(!page.contains("id=\"fleet\""), "{page}");
        assert!(!page.contains("href=\"#fleet\""), "{page}");
        assert!(live_json(&overview(vec![], None), &[], 60)
            .get("fleet-live")
            .is_none());
        let o = overview(
            vec![],
            Some(Ok(vec![node("mx-a", 1_796_630_398, Value::Null)])),
        );
        let page = main(&o, &[], 60, "t", None, &[]);
        assert!(page.contains("<h2 id=\"fleet-h\">Fleet</h2>"), "{page}");
        assert!(page.contains("href=\"#fleet\""), "{page}");
        assert!(live_json(&o, &[], 60)["fleet-live"]
            .as_str()
            .is_some_and(|h| h.contains("mx-a")));
    }

    #[test]
    fn mailbox_schedules_are_listed_with_a_cancel_link() {
        let sch = |id, subject| Schedule {
            id,
            subject,
            state: crate::route::MailboxState::Migrated,
            at: 1_796_716_800,
            by: "ops".into(),
            created: 0,
        };
        let o = overview(
            vec![
                sch(3, Subject::Mailbox("a+b@pec.example".into())),
                sch(4, Subject::Domain("gone.example".into())),
            ],
            None,
        );
        let html = domains(&o);
        assert!(html.contains("Scheduled mailbox flips"), "{html}");
        assert!(html.contains(">a+b@pec.example<"), "{html}");
        assert!(
            html.contains("href=\"/dashboard/confirm?action=unschedule&amp;id=3\""),
            "{html}"
        );
        assert!(
            html.contains("domain gone.example (not configured)"),
            "{html}"
        );
        assert!(html.contains("action=unschedule&amp;id=4"), "{html}");
        assert!(!domains(&overview(vec![], None)).contains("Scheduled mailbox flips"));
    }
}
