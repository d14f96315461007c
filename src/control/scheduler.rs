//! Scheduled transitions: ponte carries them out itself at their time,
//! also after a restart (a transition whose time passed while ponte was
//! down is applied at start). Schedules live in the state store. In a
//! fleet every node's scheduler looks, and the store lets exactly one of
//! them carry each schedule out (`Change::ClaimSchedule`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Control, ControlError};
use crate::route::{now_unix, Schedule};

/// Longest sleep between looks at the store, so that clock changes and
/// schedules written by another node are noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Runs until `stop`.
pub async fn run(control: Arc<Control>, stop: CancellationToken) {
    loop {
        // Store writes wait on disk or on PostgreSQL: not on a worker thread.
        let due = control.blocking(apply_due).await;
        let next = match due {
            Ok(next) => next,
            Err(e) => {
                warn!(error = %e, "scheduler: will retry");
                Some(now_unix() + 5)
            }
        };
        let wait = next.map_or(MAX_SLEEP, |at| {
            let secs = (at - now_unix()).max(0) as u64;
            Duration::from_secs(secs).min(MAX_SLEEP)
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = control.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Applies every due schedule in time order; returns when the next is due.
fn apply_due(control: &Control) -> Result<Option<i64>, ControlError> {
    let mut schedules = control.ctx().router.store().schedules()?;
    schedules.sort_by_key(|s| (s.at, s.id));
    let now = now_unix();
    let mut unclaimed = false;
    for s in schedules.iter().filter(|s| s.at <= now) {
        // One schedule that cannot be applied must not hold back the others.
        match apply_one(control, s) {
            Ok(claimed) => unclaimed |= !claimed,
            Err(e) => {
                warn!(schedule = s.id, error = %e, "scheduled transition failed; will retry")
            }
        }
    }
    let next = schedules.iter().filter(|s| s.at > now).map(|s| s.at).min();
    // Not claimed: done by another node (the snapshot soon says so), or
    // not yet due by the database's clock (this node's runs ahead): look
    // again shortly rather than at the next schedule.
    Ok(if unclaimed {
        Some(next.map_or(now + 1, |n| n.min(now + 1)))
    } else {
        next
    })
}

/// Carries `s` out; false if the store let another node do it (or it is
/// not due yet by the store's clock).
fn apply_one(control: &Control, s: &Schedule) -> Result<bool, ControlError> {
    let who = format!("schedule {} by {}", s.id, s.by);
    match control.run_schedule(s, &who) {
        Ok(Some(flip)) => {
            info!(schedule = s.id, subject = %s.subject, state = %s.state, late_secs = now_unix() - s.at, kicked = flip.kicked.here, "scheduled transition applied")
        }
        Ok(None) => {
            info!(schedule = s.id, subject = %s.subject, "scheduled transition not claimed here (another node, or not due by the store's clock)");
            return Ok(false);
        }
        // A domain removed from the configuration since, or a backend the
        // mailbox named is gone: it can never apply, so it is dropped
        // (the removal is audited).
        // In a fleet, this node's configuration may just be behind the
        // others' (a rolling change): it leaves the schedule to them.
        Err(ControlError::NotFound(reason) | ControlError::Invalid(reason))
            if control.ctx().router.store().status().kind != "embedded" =>
        {
            warn!(schedule = s.id, %reason, "scheduled transition not applicable on this node; left to the others");
        }
        Err(ControlError::NotFound(reason) | ControlError::Invalid(reason)) => {
            warn!(schedule = s.id, %reason, "scheduled transition dropped");
            control.remove_schedule(s.id, &who)?;
        }
        Err(e) => return Err(e),
    }
    Ok(true)
}
