//! Mail to recipients outside the managed domains: today only ponte's own
//! delivery status notifications to the senders of failed mail. Through
//! the configured relay (`[outbound] relay`), or straight to the
//! recipient domain's mail hosts (MX, then A/AAAA: `net::dns`).
//!
//! Plain SMTP, as most MTA-to-MTA traffic still is; opportunistic
//! STARTTLS to MX hosts is not done yet.

use std::time::Duration;

use tokio::net::TcpStream;

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
    let out = &ctx.config.outbound;
    let helo = out.hostname();
    let (stream, peer) = match &out.relay {
        Some(relay) => connect_relay(relay, t.connect).await?,
        None => {
            let dns = ctx
                .dns
                .as_ref()
                .ok_or_else(|| Undelivered::temporary("no DNS resolver"))?;
            let port = out.mx_port.unwrap_or(25);
            let (tcp, host) = dns
                .connect_mail_host(domain, port, t.connect)
                .await
                .map_err(|e| Undelivered {
                    reason: e.to_string(),
                    permanent: e.is_permanent(),
                })?;
            (Stream::Plain(tcp), host)
        }
    };
    client::transact(&peer, stream, false, &helo, msg, t)
        .await
        .map_err(|e| Undelivered::temporary(e.to_string()))
}

/// Connects to the relay (`smtp://host[:port]`, checked at load).
async fn connect_relay(url: &str, limit: Duration) -> Result<(Stream, String), Undelivered> {
    let ep = Endpoint::parse(url, false).map_err(Undelivered::temporary)?;
    let peer = format!("{}:{}", ep.host, ep.port);
    match tokio::time::timeout(limit, TcpStream::connect((ep.host.as_str(), ep.port))).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok((Stream::Plain(tcp), peer))
        }
        Ok(Err(e)) => Err(Undelivered::temporary(format!("relay {peer}: {e}"))),
        Err(_) => Err(Undelivered::temporary(format!(
            "relay {peer}: connect timed out"
        ))),
    }
}
