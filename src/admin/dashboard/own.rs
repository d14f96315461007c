//! The review and outcome of the two actions on a mailbox's own settings
//! that the API and `ponte ctl mailbox` have: dropping its own state so
//! that it follows its domain again (`ponte ctl mailbox clear`), and
//! setting or clearing its own tempmail deadline.

use std::fmt::Write as _;

use super::actions::{closed, domain_config, fleet_note, sessions_moved};
use super::html::{esc, number, time};
use super::overview::live_label;
use crate::admin::AdminState;
use crate::config::View;
use crate::control::ControlError;
use crate::route::Subject;

/// What dropping `address`'s own state changes: its state and route
/// become the domain's, and its live sessions on another route close.
pub fn describe_follow(s: &AdminState, address: &str) -> Result<(String, String), ControlError> {
    let control = &s.control;
    let ctx = control.ctx();
    let a = control.managed_address(address)?;
    let now = ctx
        .router
        .resolve(&a, None)
        .map_err(|e| ControlError::Invalid(e.to_string()))?;
    let store = ctx.router.store();
    let own = store.mailbox(&a)?;
    let state = control.domain_state(&now.domain)?;
    let new_route = live_label(state, domain_config(&ctx, &now.domain)?, None);
    let (open, closing) = sessions_moved(&ctx, &a, &new_route);
    let old = now.state;
    let source = if own.is_some() {
        "its own"
    } else {
        "the domain's"
    };
    let mut out = format!(
        "<p class=\"change\">Let mailbox <strong>{}</strong> follow its domain again: from <span class=\"state s-{old}\">{old}</span> ({source} state, route {}) to the domain&#39;s <span class=\"state s-{state}\">{state}</span>.</p><ul>",
        esc(&a),
        esc(now.target.label()),
    );
    if own.is_none() {
        out.push_str(
            "<li>It has no state of its own: it already follows its domain; nothing changes.</li>",
        );
    }
    let _ = write!(
        out,
        "<li>New logins go to: <strong>{}</strong>.</li>\
         <li>{} open session(s); <strong>{}</strong> will be closed.{}</li>",
        esc(&new_route),
        number(open as u64),
        number(closing as u64),
        fleet_note(&ctx)
    );
    out.push_str(&what_stays(store.as_ref(), &a)?);
    out.push_str("</ul>");
    Ok((out, format!("Let {a} follow the domain")))
}

/// What dropping `a`'s own state leaves in place: its pending schedules
/// (which give it its own state again) and its own tempmail deadline.
fn what_stays(store: &dyn crate::route::StateStore, a: &str) -> Result<String, ControlError> {
    let mut out = String::new();
    let subject = Subject::Mailbox(a.to_string());
    let pending = store
        .schedules()?
        .iter()
        .filter(|s| s.subject == subject)
        .count();
    if pending > 0 {
        let _ = write!(
            out,
            "<li>{} pending schedule(s) of this mailbox will give it its own state again when they run (cancel them on the dashboard).</li>",
            number(pending as u64)
        );
    }
    if let Some(until) = store.tempmail_until(a)? {
        let _ = write!(
            out,
            "<li>Its own tempmail deadline ({}) stays; it is cleared apart.</li>",
            time(until)
        );
    }
    Ok(out)
}

/// Drops `address`'s own state as `who`; the outcome for the flash.
pub async fn follow(s: &AdminState, address: String, who: &str) -> Result<String, ControlError> {
    let control = &s.control;
    let (a, w) = (address.clone(), who.to_string());
    let (removed, kicked) = control.blocking(move |c| c.remove_mailbox(&a, &w)).await?;
    let ctx = control.ctx();
    // What a login gets now, as the API's `GET /api/mailboxes/{a}` says.
    let now = ctx
        .router
        .resolve(&address, None)
        .map_err(|e| ControlError::Invalid(e.to_string()))?;
    let what = if removed {
        "its own state dropped, it follows its domain again"
    } else {
        "it had no state of its own and already followed its domain"
    };
    Ok(format!(
        "Mailbox {address}: {what}: now {} (route {}); {}",
        now.state,
        now.target.label(),
        closed(&kicked)
    ))
}

/// The domain's configured tempmail deadline of `address`'s domain.
fn domain_until(s: &AdminState, address: &str) -> Result<Option<i64>, ControlError> {
    let ctx = s.control.ctx();
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
    Ok(domain_config(&ctx, domain)?
        .tempmail_until
        .map(|t| t.unix_timestamp()))
}

/// A deadline for the page: the time, or "none".
fn shown(until: Option<i64>) -> String {
    until.map_or("none".into(), time)
}

/// What setting (`Some`) or clearing `address`'s own tempmail deadline
/// changes: the deadline in force on the tempmail view, and its open
/// tempmail sessions, which close to take it.
pub fn describe_tempmail(
    s: &AdminState,
    address: &str,
    until: Option<i64>,
) -> Result<(String, String), ControlError> {
    let control = &s.control;
    let ctx = control.ctx();
    let a = control.managed_address(address)?;
    let own = ctx.router.store().tempmail_until(&a)?;
    let domain = domain_until(s, &a)?;
    let mut out = match until {
        Some(u) => format!(
            "<p class=\"change\">Set the tempmail deadline of mailbox <strong>{}</strong> to {} (UTC): after it, its read-only view of the old mailbox closes.</p><ul>",
            esc(&a),
            time(u)
        ),
        None => format!(
            "<p class=\"change\">Clear the own tempmail deadline of mailbox <strong>{}</strong>: it follows its domain&#39;s again ({}).</p><ul>",
            esc(&a),
            shown(domain)
        ),
    };
    let now = match own {
        Some(o) => format!("its own, {}", time(o)),
        None => format!("the domain&#39;s, {}", shown(domain)),
    };
    let _ = write!(out, "<li>In force now: {now}.</li>");
    if own == until {
        out.push_str("<li>It already is: the deadline does not change.</li>");
    }
    if until.is_some_and(|u| u <= crate::route::now_unix()) {
        out.push_str("<li>This time has passed: the read-only view closes at once.</li>");
    }
    // The control plane closes every tempmail session of the mailbox,
    // changed or not: each takes its deadline at login.
    let open = ctx
        .registry
        .list()
        .iter()
        .filter(|e| e.address == a && e.view == View::Tempmail)
        .count();
    let _ = write!(
        out,
        "<li>Live logins are not affected. <strong>{}</strong> open tempmail session(s) will be closed so that their clients take the new deadline.{}</li></ul>",
        number(open as u64),
        fleet_note(&ctx)
    );
    let button = match until {
        Some(_) => format!("Set the deadline of {a}"),
        None => format!("Clear the deadline of {a}"),
    };
    Ok((out, button))
}

/// Sets or clears `address`'s own tempmail deadline as `who`; the
/// outcome for the flash.
pub async fn tempmail(
    s: &AdminState,
    address: String,
    until: Option<i64>,
    who: &str,
) -> Result<String, ControlError> {
    let (a, w) = (address.clone(), who.to_string());
    s.control
        .blocking(move |c| c.set_tempmail(&a, until, &w))
        .await?;
    let what = match until {
        Some(u) => format!("tempmail deadline set to {}", crate::route::rfc3339(u)),
        None => match domain_until(s, &address)? {
            Some(d) => format!(
                "own tempmail deadline cleared; it follows its domain's, {}",
                crate::route::rfc3339(d)
            ),
            None => "own tempmail deadline cleared; it follows its domain's (none)".into(),
        },
    };
    Ok(format!(
        "Mailbox {address}: {what}. Its open tempmail sessions were closed to take it."
    ))
}
