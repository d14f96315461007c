//! systemd's service notification protocol (`Type=notify-reload`, see
//! systemd.service(5)): `READY=1` once the listeners are bound,
//! `RELOADING=1` with the monotonic time when a reload starts and
//! `READY=1` when it is done, `STOPPING=1` when the drain starts, and
//! `WATCHDOG=1` pings from the runtime itself while the service is alive.
//! Every call is a no-op without `$NOTIFY_SOCKET` (not under systemd).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "systemd notification failed");
    }
}

/// The listeners are bound and the service is taking connections.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload (SIGHUP) has started. systemd needs the monotonic time with
/// it, to tell this reload from an earlier one.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => warn!(error = %e, "no monotonic clock for the reload notification"),
    }
}

/// The reload is over (applied or refused): ready again.
pub fn reloaded(status: &str) {
    ready(status);
}

/// The graceful shutdown has started.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// The watchdog interval systemd asks for: `$WATCHDOG_USEC`, for this
/// process if `$WATCHDOG_PID` names one (as libsystemd reads them; the
/// sd-notify crate also insists on the PID, which a supervisor other than
/// systemd may not set).
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = std::env::var("WATCHDOG_PID")
        .map(|pid| pid.parse() == Ok(std::process::id()))
        .unwrap_or(true);
    (usec > 0 && for_us).then_some(usec)
}

/// If systemd asks for watchdog pings (`WatchdogSec=`), pings at half the
/// interval from a runtime task until `stop`: a stuck runtime stops the
/// pings and systemd restarts the service.
pub fn spawn_watchdog(stop: CancellationToken) {
    let Some(usec) = watchdog_usec() else {
        return;
    };
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    debug!(?every, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    });
}
