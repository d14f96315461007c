//! Mail to recipients outside the managed domains: today only ponte's own
//! delivery status notifications to the senders of failed mail. Through
//! the configured relay (`[outbound] relay`), or straight to the
//! recipient domain's mail hosts (MX, then A/AAAA: `net::dns`).
//!
//! STARTTLS when the host offers it, without authenticating it
//! (opportunistic, RFC 7435); a host whose TLS handshake fails gets the
//! message in clear text on a new connection, as common MTAs do, rather
//! than never.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::BackendError;
use crate::net::backend::Endpoint;
use crate::net::stream::Stream;
use crate::proto::smtp::client::{self, Message, Timeouts};
use crate::proto::smtp::reply::Reply;
use crate::server::Ctx;

/// Why nothing was handed over; `permanent` when retrying cannot help
/// (the domain does not exist, or accepts no mail: RFC 7505).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub reason: String,
    pub permanent: bool,
}

impl Undelivered {
    fn temporary(reason: impl Into<String>) -> Undelivered {
        Undelivered {
            reason: reason.into(),
            permanent: false,
        }
    }
}

/// Delivers `msg` (all recipients in `domain`) and returns one reply per
/// recipient, as [`client::deliver`] does.
pub async fn deliver(
    ctx: &Ctx,
    domain: &str,
    msg: &Message<'_>,
    t: Timeouts,
) -> Result<Vec<Reply>, Undelivered> {
    client::tls_or_clear(
        |tls| attempt(ctx, domain, msg, t, tls),
        |e| matches!(e, Attempt::Tls(_)),
    )
    .await
    .map_err(Attempt::into_undelivered)
}

/// Why one attempt failed: the TLS handshake (try again in clear text), or
/// anything else.
enum Attempt {
    Tls(String),
    Other(Undelivered),
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::Tls(reason) => f.write_str(reason),
            Attempt::Other(u) => f.write_str(&u.reason),
        }
    }
}

impl Attempt {
    fn into_undelivered(self) -> Undelivered {
        match self {
            Attempt::Tls(reason) => Undelivered::temporary(reason),
            Attempt::Other(u) => u,
        }
    }
}

/// One connection and transaction, with opportunistic STARTTLS if `tls`.
async fn attempt(
    ctx: &Ctx,
    domain: &str,
    msg: &Message<'_>,
    t: Timeouts,
    tls: bool,
) -> Result<Vec<Reply>, Attempt> {
    let out = &ctx.config.outbound;
    let helo = out.hostname();
    // `name`: the host's name without a port, for SNI.
    let (stream, peer, name) = match &out.relay {
        Some(relay) => connect_relay(relay, t.connect)
            .await
            .map_err(Attempt::Other)?,
        None => {
            let dns = ctx
                .dns
                .as_ref()
                .ok_or_else(|| Attempt::Other(Undelivered::temporary("no DNS resolver")))?;
            let port = out.mx_port.unwrap_or(25);
            let (tcp, host) = dns
                .connect_mail_host(domain, port, t.connect)
                .await
                .map_err(|e| {
                    Attempt::Other(Undelivered {
                        reason: e.to_string(),
                        permanent: e.is_permanent(),
                    })
                })?;
            (Stream::Plain(tcp), host.clone(), host)
        }
    };
    let tls_name = tls.then_some(name.trim_end_matches('.'));
    client::transact(&peer, stream, false, &helo, tls_name, msg, t)
        .await
        .map_err(|e| match e {
            BackendError::Tls { .. } => Attempt::Tls(e.to_string()),
            e => Attempt::Other(Undelivered::temporary(e.to_string())),
        })
}

/// Connects to the relay (`smtp://host[:port]`, checked at load): the
/// stream, `host:port` for messages and the host.
async fn connect_relay(
    url: &str,
    limit: Duration,
) -> Result<(Stream, String, String), Undelivered> {
    let ep = Endpoint::parse(url, false).map_err(Undelivered::temporary)?;
    let peer = format!("{}:{}", ep.host, ep.port);
    match tokio::time::timeout(limit, TcpStream::connect((ep.host.as_str(), ep.port))).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok((Stream::Plain(tcp), peer, ep.host))
        }
        Ok(Err(e)) => Err(Undelivered::temporary(format!("relay {peer}: {e}"))),
        Err(_) => Err(Undelivered::temporary(format!(
            "relay {peer}: connect timed out"
        ))),
    }
}
