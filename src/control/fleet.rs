//! Fleet mode in the control plane: what a node does when another node
//! changed the shared state (re-route its own open sessions, wake its
//! delivery worker and scheduler), and the figures it publishes for the
//! fleet-wide view (`ponte ctl queue --fleet`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Control, ControlError};
use crate::route::{now_unix, Event, NodeReport};

/// How often a node publishes its figures.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

impl Control {
    /// Applies another node's change to this node's sessions: those whose
    /// route it changed are closed (the same BYE a local flip gives), and
    /// the delivery worker looks at the spool again. Returns how many
    /// sessions it closed (the writing node reports the fleet's total).
    pub fn on_store_event(&self, event: &Event) -> usize {
        let kicked = match event {
            Event::Domain(d) => self.reroute(|e| e.domain == *d),
            Event::Mailbox(a) => self.reroute(|e| e.address == *a),
            Event::Tempmail(a) => {
                let until = self.ctx().router.store().tempmail_until(a).ok().flatten();
                self.kick_tempmail(a, until)
            }
            Event::Schedules => {
                self.wake.notify_one();
                0
            }
            Event::All => {
                self.wake.notify_one();
                self.reroute_all()
            }
            Event::Kick { selector, reason } => self.kick_here(selector, reason),
        };
        info!(?event, kicked, "state changed on another node");
        kicked
    }
}

/// How long a stopped node tries to say so.
const LAST_WORD: Duration = Duration::from_secs(1);

/// Publishes this node's figures every [`HEARTBEAT`] until `stop`.
/// `admin` is the admin API's bound address, shown in the fleet view;
/// `started`, when this node started (Unix seconds).
pub async fn heartbeat(
    control: Arc<Control>,
    admin: Option<SocketAddr>,
    started: i64,
    stop: CancellationToken,
) {
    loop {
        let report = report(&control, admin, started).await;
        control.ctx().router.store().publish_node(report);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
}

/// Publishes this node's last figures once its sessions are gone, as
/// stopped: the fleet view says so, and changes made elsewhere no longer
/// wait for this node's answer.
pub async fn farewell(control: &Control, admin: Option<SocketAddr>, started: i64) {
    let mut last = report(control, admin, started).await;
    last.stopped = Some(now_unix());
    let store = control.ctx().router.store().clone();
    let said = tokio::task::spawn_blocking(move || store.publish_last(last, LAST_WORD)).await;
    if let Ok(Err(e)) = said {
        tracing::debug!(error = %e, "fleet: the stop was not published");
    }
}

/// Sessions per route and the spool's totals, now.
async fn report(control: &Control, admin: Option<SocketAddr>, started: i64) -> NodeReport {
    let ctx = control.ctx();
    let sessions = ctx.registry.list();
    let mut by_route: BTreeMap<String, usize> = BTreeMap::new();
    for e in &sessions {
        *by_route.entry(e.route.clone()).or_default() += 1;
    }
    let now = now_unix();
    // The totals and each recipient domain's (managed domains only: a
    // few, whatever the queue's size).
    let queue = match control.queue_stats().await {
        Ok(s) => {
            let mut q = s.total.to_json(now);
            q["domains"] = s
                .domains
                .iter()
                .map(|(d, f)| {
                    let mut row = f.to_json(now);
                    row["domain"] = json!(d);
                    row
                })
                .collect();
            q
        }
        Err(ControlError::NoSpool) => Value::Null,
        // Said, not left out: a node whose spool cannot be read must not
        // look like one without mail.
        Err(e) => json!({ "error": e.to_string() }),
    };
    NodeReport {
        node: ctx.config.state.node(),
        admin: admin.map(|a| a.to_string()),
        started,
        heartbeat: now,
        sessions: json!({ "total": sessions.len(), "by_route": by_route }),
        queue,
        stopped: None,
    }
}
