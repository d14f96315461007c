//! The review page's text for each action: exactly what it will change,
//! read from the state in force now (nothing changes on a review), and
//! the confirm button's words. An error if it cannot be done.

use std::collections::HashSet;
use std::fmt::Write as _;

use super::actions::{domain_config, fleet_note, sessions_moved};
use super::html::{esc, number, time};
use super::overview::live_label;
use crate::admin::AdminState;
use crate::config::View;
use crate::control::{ControlError, Selector};
use crate::route::{MailboxState, Subject};
use crate::spool::SpoolId;

/// A review: its HTML and the confirm button's text.
type Review = Result<(String, String), ControlError>;

/// Flipping `domain` to `state`: the route new logins get and the open
/// sessions it closes (not those of mailboxes with their own state).
pub fn domain(s: &AdminState, domain: &str, state: MailboxState) -> Review {
    let control = &s.control;
    let ctx = control.ctx();
    let old = control.domain_state(domain)?;
    let cfg = domain_config(&ctx, domain)?;
    let own = ctx.router.store().mailboxes(Some(domain))?;
    let owned: HashSet<&str> = own.iter().map(|(a, _)| a.as_str()).collect();
    let new_route = live_label(state, cfg, None);
    let open: Vec<_> = ctx
        .registry
        .list()
        .into_iter()
        .filter(|e| e.domain == domain)
        .collect();
    let closing = open
        .iter()
        .filter(|e| {
            e.view == View::Live && !owned.contains(e.address.as_str()) && e.route != new_route
        })
        .count();
    let mut out = format!(
        "<p class=\"change\">Flip domain <strong>{}</strong> from <span class=\"state s-{old}\">{old}</span> to <span class=\"state s-{state}\">{state}</span>.</p><ul>",
        esc(domain)
    );
    if old == state {
        out.push_str("<li>It is already in this state: nothing changes.</li>");
    }
    let _ = write!(
        out,
        "<li>Every mailbox of the domain follows it, except {} with their own state.</li>\
         <li>New logins go to: <strong>{}</strong>.</li>\
         <li>{} open session(s) of this domain; <strong>{}</strong> will be closed so that their clients reconnect to the new route.{}</li></ul>",
        number(own.len() as u64),
        esc(&new_route),
        number(open.len() as u64),
        number(closing as u64),
        fleet_note(&ctx)
    );
    Ok((out, format!("Flip {domain} to {state}")))
}

/// Giving `address` its own `state` (and maybe another backend).
pub fn mailbox(
    s: &AdminState,
    address: &str,
    state: MailboxState,
    backend: Option<&str>,
) -> Review {
    let control = &s.control;
    let ctx = control.ctx();
    let a = control.managed_address(address)?;
    if let Some(b) = backend {
        if !ctx.backends.contains_key(b) {
            return Err(ControlError::Invalid(format!("unknown backend {b:?}")));
        }
    }
    let now = ctx
        .router
        .resolve(&a, None)
        .map_err(|e| ControlError::Invalid(e.to_string()))?;
    let own = ctx.router.store().mailbox(&a)?;
    let source = if own.is_some() {
        "its own"
    } else {
        "the domain's"
    };
    let cfg = domain_config(&ctx, &now.domain)?;
    let new_route = live_label(state, cfg, backend);
    let (open, closing) = sessions_moved(&ctx, &a, &new_route);
    let old = now.state;
    let out = format!(
        "<p class=\"change\">Set mailbox <strong>{}</strong> from <span class=\"state s-{old}\">{old}</span> ({source} state, route {}) to <span class=\"state s-{state}\">{state}</span>.</p>\
         <ul><li>New logins go to: <strong>{}</strong>.</li>\
         <li>{} open session(s); <strong>{}</strong> will be closed.{}</li></ul>",
        esc(&a),
        esc(now.target.label()),
        esc(&new_route),
        number(open as u64),
        number(closing as u64),
        fleet_note(&ctx)
    );
    Ok((out, format!("Set {a} to {state}")))
}

/// Scheduling `subject` to `state` at `at`.
pub fn schedule(s: &AdminState, subject: &Subject, state: MailboxState, at: i64) -> Review {
    let control = &s.control;
    let subject = match subject {
        Subject::Domain(d) => {
            control.domain_state(d)?;
            format!("domain <strong>{}</strong>", esc(d))
        }
        Subject::Mailbox(m) => {
            format!(
                "mailbox <strong>{}</strong>",
                esc(&control.managed_address(m)?)
            )
        }
    };
    let when = if at <= crate::route::now_unix() {
        " This time has passed: it is carried out at once."
    } else {
        ""
    };
    let out = format!(
        "<p class=\"change\">At {} (UTC) set {subject} to <span class=\"state s-{state}\">{state}</span>.{when}</p>\
         <p>ponte carries it out itself, also after a restart; open sessions whose route changes are closed then.</p>",
        time(at)
    );
    Ok((out, "Add the schedule".into()))
}

/// Cancelling schedule `id`.
pub fn unschedule(s: &AdminState, id: u64) -> Review {
    let list = s.control.ctx().router.store().schedules()?;
    let sch = list
        .iter()
        .find(|x| x.id == id)
        .ok_or_else(|| ControlError::NotFound(format!("no schedule {id}")))?;
    let out = format!(
        "<p class=\"change\">Cancel schedule {id}: set {} to {} at {} (added by {}).</p>",
        esc(&sch.subject.to_string()),
        sch.state,
        time(sch.at),
        esc(&sch.by)
    );
    Ok((out, format!("Cancel schedule {id}")))
}

/// Closing the sessions `sel` names (this node's count; in a fleet the
/// other nodes close theirs and say how many when it is done).
pub fn kick(s: &AdminState, sel: &Selector) -> (String, String) {
    let ctx = s.control.ctx();
    let open = ctx.registry.list();
    let (what, n) = match sel {
        Selector::Mailbox(m) => (
            format!("of mailbox <strong>{}</strong>", esc(m)),
            open.iter().filter(|e| &e.address == m).count(),
        ),
        Selector::Domain(d) => (
            format!("of domain <strong>{}</strong>", esc(d)),
            open.iter().filter(|e| &e.domain == d).count(),
        ),
        Selector::Id(id) => (
            format!("with id <strong>{id}</strong>"),
            open.iter().filter(|e| e.id == *id).count(),
        ),
    };
    let elsewhere = match sel {
        Selector::Id(_) => "",
        _ => fleet_note(&ctx),
    };
    let out = format!(
        "<p class=\"change\">Close the open sessions {what}: <strong>{}</strong> now. Their clients are told to reconnect.{elsewhere}</p>",
        number(n as u64)
    );
    (out, "Close the sessions".into())
}

/// Holding (`held`) or releasing queued message `id`.
pub async fn hold(s: &AdminState, id: SpoolId, held: bool) -> Review {
    let shown = s.control.queue_show(id).await?;
    let env = &shown.envelope;
    let to: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    let (verb, effect) = if held {
        ("Hold", "the delivery worker leaves it (and newer mail to its mailboxes) alone until it is released; a delivery already under way is not stopped.")
    } else {
        ("Release", "the delivery worker sends it at its next pass.")
    };
    let already = if env.held == held {
        " It already is: nothing changes."
    } else {
        ""
    };
    let out = format!(
        "<p class=\"change\">{verb} message <code>{id}</code> from {} to {} ({} bytes, arrived {}): {effect}{already}</p>",
        esc(if env.mail_from.is_empty() { "<>" } else { &env.mail_from }),
        esc(&to.join(", ")),
        number(env.size),
        time(env.arrived)
    );
    Ok((out, format!("{verb} the message")))
}

/// What an import will change, from its parsed rows: rows per state,
/// how many differ from the mailboxes' own state now, and the open
/// sessions of those mailboxes.
pub fn import(s: &AdminState, rows: &[crate::route::Row]) -> Result<String, ControlError> {
    let ctx = s.control.ctx();
    let store = ctx.router.store();
    let mut per_state = [0u64; 4];
    let mut changed = std::collections::HashSet::new();
    for (address, state, backend) in rows {
        if let Some(i) = super::overview::STATES.iter().position(|s| s == state) {
            per_state[i] += 1;
        }
        let now = store.mailbox(address)?;
        let same = now
            .as_ref()
            .is_some_and(|m| m.state == *state && &m.backend == backend);
        if !same {
            changed.insert(address.as_str());
        }
    }
    let open = ctx
        .registry
        .list()
        .iter()
        .filter(|e| changed.contains(e.address.as_str()))
        .count();
    let mut out = format!(
        "<p class=\"change\">Import <strong>{}</strong> row(s):</p><ul>",
        number(rows.len() as u64)
    );
    for (i, st) in super::overview::STATES.iter().enumerate() {
        if per_state[i] > 0 {
            let _ = write!(
                out,
                "<li>{} to <span class=\"state s-{st}\">{st}</span></li>",
                number(per_state[i])
            );
        }
    }
    let _ = write!(
        out,
        "</ul><p><strong>{}</strong> mailbox(es) get a new state or backend; the others already have it. \
         Open sessions of changed mailboxes whose route changes are closed ({} open now).</p>",
        number(changed.len() as u64),
        number(open as u64)
    );
    Ok(out)
}
