//! The LISTEN connection: one per node, kept open on the store's runtime.
//! Each notification from another node reloads what it names into the
//! snapshot and then calls the hook (the control plane re-routes the open
//! sessions and wakes the delivery worker). When the connection drops,
//! the node goes on routing from its snapshot; it reconnects with
//! backoff, reloads everything (changes made meanwhile are caught up) and
//! calls the hook with `All`.
//!
//! Each node answers another node's numbered change, after its last
//! payload, with an [`Ack`] (the sessions it closed), on the same
//! connection; the writer collects the answers to its own changes as they
//! arrive, not behind the notifications queued for this node to apply.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{info, warn};

use super::{error_text, Inner};
use crate::route::fleet::{Ack, Event, Payload, ACK_CHANNEL, CHANNEL};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Changes whose later payloads are awaited before answering; more means
/// payloads were lost (they are not, within one connection): start over.
const MAX_OPEN_CHANGES: usize = 1000;

/// Per writing instance and change: payloads seen and sessions closed so
/// far (`None`: a payload's count is unknown), until the last one.
type Open = HashMap<(String, u64), (usize, Option<usize>)>;

/// Runs until the store is dropped.
pub(super) async fn run(inner: Arc<Inner>) {
    let mut backoff = FIRST_BACKOFF;
    let mut reconnect = false;
    loop {
        let stop = inner.stop.clone();
        tokio::select! {
            _ = stop.cancelled() => return,
            done = session(&inner, reconnect) => {
                let reason = match done {
                    Ok(()) => "connection closed".to_string(),
                    Err(e) => e,
                };
                if inner.up.load(std::sync::atomic::Ordering::Relaxed) {
                    warn!(%reason, "state store: PostgreSQL lost; routing from the state loaded last, changes refused until it is back");
                    backoff = FIRST_BACKOFF;
                }
                inner.set_up(false, Some(reason));
            }
        }
        reconnect = true;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One LISTEN connection, from connect to loss.
async fn session(inner: &Arc<Inner>, reconnect: bool) -> Result<(), String> {
    let (client, mut conn) = inner.pg.connect(NoTls).await.map_err(|e| error_text(&e))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The connection is driven here; answers are recorded at once, changes
    // go to the channel, which closes when the connection ends.
    let answers = inner.clone();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == ACK_CHANNEL => {
                    match Ack::decode(n.payload()) {
                        Some(a) => answers.record(a),
                        None => warn!(payload = n.payload(), "state store: unknown answer ignored"),
                    }
                }
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return None;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(error_text(&e)),
                None => return None,
            }
        }
    });
    let started = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {ACK_CHANNEL}"))
            .await
            .map_err(|e| error_text(&e))?;
        // Listening now: whatever changed before is in this load.
        inner
            .refresh_with(&client, &Event::All)
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(e) = started.await {
        driver.abort();
        return Err(e);
    }
    inner.set_up(true, None);
    if reconnect {
        info!("state store: PostgreSQL back; state reloaded");
    }
    // Also the first time: a change between the store's opening load and
    // this one may concern sessions accepted meanwhile.
    inner.fire(&Event::All).await;
    let mut open = Open::new();
    while let Some(payload) = rx.recv().await {
        metrics::counter!("ponte_state_store_notifications_total").increment(1);
        if let Err(e) = handle(inner, &client, &payload, &mut open).await {
            // Start over: the reconnect reloads everything and re-routes.
            driver.abort();
            return Err(e);
        }
    }
    drop(client);
    match driver.await {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Reloads what a notification names, on the LISTEN connection itself
/// (known to be up: no pool connection to set up on the way), calls the
/// hook and, after a change's last payload, answers its writer. An error
/// means the snapshot may be behind: the caller drops the connection and
/// starts over with a full reload.
async fn handle(
    inner: &Inner,
    client: &tokio_postgres::Client,
    payload: &str,
    open: &mut Open,
) -> Result<(), String> {
    let Some(p) = Payload::decode(payload) else {
        warn!(payload, "state store: unknown notification ignored");
        return Ok(());
    };
    let own = p.instance == inner.instance;
    let kicked = if let Event::Kick { .. } = p.event {
        // Nothing to reload; the node that wrote it closed its own.
        if own {
            inner.record_own(p.change, 0);
            return Ok(());
        }
        inner.fire(&p.event).await
    } else {
        if let Err(e) = inner.refresh_with(client, &p.event).await {
            warn!(error = %e, event = ?p.event, "state store: reload after a notification failed; full reload");
            inner.reload_all().await.map_err(|e| e.to_string())?;
        }
        // Also for this node's own changes: its control plane re-routed
        // already, but against the state it had if the post-commit
        // refresh failed or its call timed out; re-routing twice closes
        // nothing more.
        inner.fire(&p.event).await
    };
    if own {
        // Counted with the writer's own re-route, which finds these
        // sessions closed already.
        inner.record_own(p.change, kicked.unwrap_or(0));
        return Ok(());
    }
    if p.change == 0 {
        return Ok(());
    }
    let key = (p.instance, p.change);
    let seen = open.entry(key.clone()).or_insert((0, Some(0)));
    seen.0 += 1;
    seen.1 = seen.1.zip(kicked).map(|(a, b)| a.saturating_add(b));
    if seen.0 < p.payloads.max(1) {
        if open.len() > MAX_OPEN_CHANGES {
            return Err("too many changes awaiting their last payload".into());
        }
        return Ok(());
    }
    let Some((_, kicked)) = open.remove(&key) else {
        return Ok(());
    };
    // Not counted in time: no answer, and the writer reports this node as
    // silent rather than with a wrong count.
    let Some(kicked) = kicked else {
        return Ok(());
    };
    let ack = Ack {
        to: key.0,
        change: key.1,
        node: inner.node.clone(),
        kicked,
    };
    // Best effort: the change is applied here either way.
    if let Err(e) = client
        .execute("SELECT pg_notify($1, $2)", &[&ACK_CHANNEL, &ack.encode()])
        .await
    {
        warn!(error = %error_text(&e), "state store: answer to a change not sent");
    }
    Ok(())
}
