//! The LISTEN connection: one per node, kept open on the store's runtime.
//! Each notification from another node reloads what it names into the
//! snapshot and then calls the hook (the control plane re-routes the open
//! sessions and wakes the delivery worker). When the connection drops,
//! the node goes on routing from its snapshot; it reconnects with
//! backoff, reloads everything (changes made meanwhile are caught up) and
//! calls the hook with `All`.
//!
//! Each node answers every numbered payload of another node's change
//! with an [`Ack`] (the sessions it closed), on the same connection; the
//! writer collects the answers to its own changes here too.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{info, warn};

use super::{error_text, Inner};
use crate::route::fleet::{Ack, Event, Payload, ACK_CHANNEL, CHANNEL};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

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
async fn session(inner: &Inner, reconnect: bool) -> Result<(), String> {
    let (client, mut conn) = inner.pg.connect(NoTls).await.map_err(|e| error_text(&e))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The connection is driven here; notifications go to the channel,
    // which closes when the connection ends.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let ack = n.channel() == ACK_CHANNEL;
                    if tx.send((ack, n.payload().to_string())).is_err() {
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
    while let Some((ack, payload)) = rx.recv().await {
        if ack {
            match Ack::decode(&payload) {
                Some(a) => inner.record(a),
                None => warn!(payload, "state store: unknown answer ignored"),
            }
            continue;
        }
        metrics::counter!("ponte_state_store_notifications_total").increment(1);
        if let Err(e) = handle(inner, &client, &payload).await {
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
/// hook and answers the writer. An error means the snapshot may be
/// behind: the caller drops the connection and starts over with a full
/// reload.
async fn handle(
    inner: &Inner,
    client: &tokio_postgres::Client,
    payload: &str,
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
    // Not counted in time: no answer, the writer reports this node as
    // silent rather than a wrong count.
    let Some(kicked) = kicked.filter(|_| p.change != 0) else {
        return Ok(());
    };
    let ack = Ack {
        to: p.instance,
        change: p.change,
        node: inner.node.clone(),
        kicked,
    };
    client
        .execute("SELECT pg_notify($1, $2)", &[&ACK_CHANNEL, &ack.encode()])
        .await
        .map_err(|e| error_text(&e))?;
    Ok(())
}
