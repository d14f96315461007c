//! The accept loop of one listener. It only accepts, takes a connection
//! permit, opens the session span and spawns; the TLS handshake and all
//! protocol work happen inside the session task, under its timeouts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use super::per_ip::{IpSlot, PerIp};
use super::proxy_header::{self, Origin};
use super::stream::Stream;
use crate::config::{ListenerConfig, TlsMode};
use crate::proto;
use crate::server::{ConnInfo, Ctx};

/// One listener's accept loop. Each connection takes the configuration in
/// force when it is accepted (`current`), so a reload applies to new
/// connections while open ones keep theirs.
pub struct Listener {
    pub tcp: TcpListener,
    pub name: String,
    pub current: Arc<ArcSwap<Ctx>>,
    pub permits: Arc<Semaphore>,
    pub per_ip: Arc<PerIp>,
    pub sessions: TaskTracker,
    pub stop: CancellationToken,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Listener {
    pub async fn accept_loop(self) {
        loop {
            let (tcp, peer) = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                r = self.tcp.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors or memory: back off instead of spinning.
                        warn!(listener = %self.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let ctx = self.current.load_full();
            // Gone from the configuration; its loop is being stopped.
            let Some(cfg) = ctx.listeners.get(&self.name).cloned() else {
                continue;
            };
            if cfg.proxy_protocol {
                self.accept_proxied(tcp, peer, cfg, ctx);
                continue;
            }
            let permit = self.permits.clone().try_acquire_owned().ok();
            let Some(slots) = permit.zip(self.per_ip.acquire(peer.ip())) else {
                self.sessions.spawn(refuse_over_limit(tcp, cfg));
                continue;
            };
            let local = tcp.local_addr().unwrap_or(peer);
            let (conn, span) = session(&self.name, cfg, peer, local, tokio::time::Instant::now());
            self.sessions
                .spawn(handle(tcp, conn, ctx, slots).instrument(span));
        }
    }

    /// A connection to a PROXY protocol listener: only from a trusted
    /// balancer; the header (read in the task, under the pre-auth
    /// deadline) names the client, whose address the per-address limit,
    /// the logs and the backends then see.
    fn accept_proxied(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        cfg: Arc<ListenerConfig>,
        ctx: Arc<Ctx>,
    ) {
        if !proxy_header::trusted(peer.ip(), &cfg.proxy_trusted) {
            warn!(listener = %self.name, %peer, "connection refused: not a trusted proxy");
            return;
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.sessions.spawn(refuse_over_limit(tcp, cfg));
            return;
        };
        let (name, per_ip) = (self.name.clone(), self.per_ip.clone());
        let accepted = tokio::time::Instant::now();
        let deadline = accepted + ctx.config.limits.preauth_timeout;
        self.sessions.spawn(async move {
            let local = tcp.local_addr().unwrap_or(peer);
            let (client, local) = match proxy_header::read(&mut tcp, deadline).await {
                Ok(Origin::Proxied { client, local }) => (client, local),
                Ok(Origin::Direct) => (peer, local),
                Err(e) => {
                    info!(listener = %name, %peer, error = %e, "connection closed: bad PROXY header");
                    return;
                }
            };
            let Some(slot) = per_ip.acquire(client.ip()) else {
                refuse_over_limit(tcp, cfg).await;
                return;
            };
            let (conn, span) = session(&name, cfg, client, local, accepted);
            handle(tcp, conn, ctx, (permit, slot)).instrument(span).await;
        });
    }
}

/// A connection's identity and its log span.
fn session(
    listener: &str,
    cfg: Arc<ListenerConfig>,
    peer: SocketAddr,
    local: SocketAddr,
    accepted: tokio::time::Instant,
) -> (ConnInfo, tracing::Span) {
    let conn = ConnInfo {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        accepted,
        peer,
        local,
        listener: cfg,
    };
    let span = tracing::info_span!(
        "session", id = conn.id, listener = %listener, peer = %peer,
        mailbox = tracing::field::Empty, route = tracing::field::Empty,
    );
    (conn, span)
}

/// One connection from accept to close.
async fn handle(
    tcp: TcpStream,
    conn: ConnInfo,
    ctx: Arc<Ctx>,
    _slots: (OwnedSemaphorePermit, IpSlot),
) {
    let started = Instant::now();
    let name = conn.listener.name.clone();
    metrics::counter!("ponte_connections_total", "listener" => name.clone()).increment(1);
    let open_gauge = metrics::gauge!("ponte_connections_open", "listener" => name);
    open_gauge.increment(1.0);
    let _ = tcp.set_nodelay(true);
    let session = async {
        let stream = match open(tcp, &conn, &ctx).await {
            Ok(s) => s,
            Err(reason) => {
                debug!(%reason, "connection dropped before the protocol started");
                return;
            }
        };
        let outcome = proto::serve(stream, &conn, &ctx).await;
        info!(outcome = ?outcome, secs = started.elapsed().as_secs_f32(), "session closed");
    };
    // After the grace period, bridges say goodbye on their own; anything
    // else still running (pre-auth) is dropped a little later.
    let stopped = async {
        ctx.hard_stop.cancelled().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    tokio::select! {
        _ = session => {}
        _ = stopped => debug!("session dropped at shutdown"),
    }
    open_gauge.decrement(1.0);
}

/// Implicit TLS handshake (inside the task, under the pre-auth timeout).
async fn open(tcp: TcpStream, conn: &ConnInfo, ctx: &Ctx) -> Result<Stream, String> {
    if conn.listener.tls != TlsMode::Implicit {
        return Ok(Stream::Plain(tcp));
    }
    let config = ctx.tls.clone().ok_or("no TLS certificate configured")?;
    match super::tls::accept(
        config,
        tcp,
        conn.accepted + ctx.config.limits.preauth_timeout,
    )
    .await
    {
        Ok(stream) => Ok(stream),
        Err(super::tls::Handshake::Failed(e)) => Err(format!("TLS handshake: {e}")),
        Err(super::tls::Handshake::TimedOut) => Err("TLS handshake timed out".into()),
    }
}

/// Over the connection limit: say so where the protocol can be spoken in
/// clear text, then close.
async fn refuse_over_limit(mut tcp: TcpStream, cfg: Arc<ListenerConfig>) {
    debug!(peer = ?tcp.peer_addr().ok(), "connection limit reached");
    if cfg.tls != TlsMode::Implicit {
        let bye = proto::over_limit_reply(cfg.protocol);
        let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(bye)).await;
    }
}
