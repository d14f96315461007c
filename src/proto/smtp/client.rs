//! Hands one message to a backend's inbound endpoint: SMTP (RFC 5321) or
//! LMTP (RFC 2033). Greeting, EHLO/LHLO, MAIL, one RCPT per recipient,
//! DATA with the message dot-stuffed, then the verdict: one reply for
//! SMTP, one per accepted recipient for LMTP. The message bytes are sent
//! as given: the caller has already prepended its `Received:` header.
//! The endpoint is plain TCP: inbound delivery carries no credentials.
//! To another provider's mail host (MX) the session moves to TLS when the
//! host offers STARTTLS (opportunistic, RFC 3207 and RFC 7435).

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::lines::Lines;
use super::reply::Reply;
use crate::error::BackendError;
use crate::net::backend::{Backend, Endpoint};
use crate::net::dns::Dns;
use crate::net::stream::Stream;

/// One message to deliver.
pub struct Message<'a> {
    /// The reverse path without angle brackets (empty for `<>`).
    pub mail_from: &'a str,
    pub recipients: &'a [String],
    /// The message, unstuffed, ending with CRLF.
    pub data: &'a [u8],
}

/// Time limits of one delivery.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Each reply, and the whole DATA transfer.
    pub reply: Duration,
}

const MAX_LINE: usize = 4096;
/// How ponte names itself in EHLO/LHLO.
const HELO_NAME: &str = "ponte";

struct Conn<'a> {
    /// Who is on the other side, for errors: a backend's name, or the
    /// mail host of an outbound delivery.
    peer: &'a str,
    stream: Stream,
    lines: Lines,
    limit: Duration,
}

/// Delivers `msg`; the reply for each recipient, in order: its RCPT
/// refusal, or the (LMTP: its own) final reply after DATA. An `Err` means
/// nothing is known to be delivered: retry later.
pub async fn deliver(
    backend: &Backend,
    dns: Option<&Dns>,
    msg: &Message<'_>,
    t: Timeouts,
) -> Result<Vec<Reply>, BackendError> {
    let ep = inbound(backend)?;
    if !ep.mx {
        let stream = backend.connect(ep, t.connect).await?;
        return transact(&backend.name, stream, ep.lmtp, HELO_NAME, None, msg, t).await;
    }
    let dns = dns.ok_or_else(|| backend.protocol_error("no DNS resolver for mx://"))?;
    tls_or_clear(
        |tls| deliver_mx(backend, ep, dns, msg, t, tls),
        |e| matches!(e, BackendError::Tls { .. }),
    )
    .await
}

/// Opportunistic STARTTLS to another provider's mail host (RFC 7435):
/// `attempt(true)` offers TLS; if it is TLS that failed (`tls_failed`),
/// the delivery is made again, on a new connection, in clear text, rather
/// than never.
pub async fn tls_or_clear<T, E, Fut>(
    mut attempt: impl FnMut(bool) -> Fut,
    tls_failed: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    match attempt(true).await {
        Err(e) if tls_failed(&e) => {
            tracing::warn!(error = %e, "STARTTLS failed; delivering without TLS");
            attempt(false).await
        }
        other => other,
    }
}

/// One delivery to the mail host of `ep` (`mx://domain`), with
/// opportunistic STARTTLS if `tls`.
async fn deliver_mx(
    backend: &Backend,
    ep: &Endpoint,
    dns: &Dns,
    msg: &Message<'_>,
    t: Timeouts,
    tls: bool,
) -> Result<Vec<Reply>, BackendError> {
    let (tcp, host) = dns
        .connect_mail_host(&ep.host, ep.port, t.connect)
        .await
        .map_err(|e| BackendError::Connect {
            backend: backend.name.clone(),
            addr: format!("mx:{}", ep.host),
            source: std::io::Error::other(e.to_string()),
        })?;
    let tls_name = tls.then_some(host.trim_end_matches('.'));
    let stream = Stream::Plain(tcp);
    transact(&backend.name, stream, ep.lmtp, HELO_NAME, tls_name, msg, t).await
}

/// The transaction of [`deliver`] on a connected `stream` to `peer`,
/// which speaks LMTP if `lmtp`; `helo` is ponte's name in EHLO/LHLO.
/// With `tls_name` (the host's name, for SNI) the session moves to TLS if
/// the server offers STARTTLS; a failed handshake is a
/// [`BackendError::Tls`], after which the caller may try again without.
pub async fn transact(
    peer: &str,
    stream: Stream,
    lmtp: bool,
    helo: &str,
    tls_name: Option<&str>,
    msg: &Message<'_>,
    t: Timeouts,
) -> Result<Vec<Reply>, BackendError> {
    let mut c = Conn {
        peer,
        stream,
        lines: Lines::new(MAX_LINE),
        limit: t.reply,
    };
    c.expect(220, "greeting").await?;
    let hello = if lmtp { "LHLO" } else { "EHLO" };
    let hello_line = format!("{hello} {helo}\r\n");
    let offer = c.exchange(&hello_line).await?;
    if offer.code != 250 {
        return Err(c.protocol_error(format!("{hello}: {}", offer.text())));
    }
    if let Some(name) = tls_name.filter(|_| offers(&offer, "STARTTLS")) {
        let reply = c.exchange("STARTTLS\r\n").await?;
        if reply.code != 220 {
            // Offered but refused: like a failed handshake, clear text next.
            return Err(BackendError::Tls {
                backend: peer.to_string(),
                source: std::io::Error::other(format!("STARTTLS: {}", reply.text())),
            });
        }
        c = c.start_tls(name).await?;
        // RFC 3207 §4.2: everything learnt before TLS is forgotten.
        c.command(&hello_line, 250, hello).await?;
    }
    // Declared from the bytes themselves: the spool keeps no MAIL parameters.
    let eight_bit = msg.data.iter().any(|&b| b >= 0x80);
    let body = if eight_bit { " BODY=8BITMIME" } else { "" };
    let mail = format!("MAIL FROM:<{}>{body}\r\n", msg.mail_from);
    let reply = c.exchange(&mail).await?;
    if !reply.is_success() {
        return Ok(vec![reply; msg.recipients.len()]);
    }
    let mut replies = Vec::with_capacity(msg.recipients.len());
    for r in msg.recipients {
        replies.push(c.exchange(&format!("RCPT TO:<{r}>\r\n")).await?);
    }
    let accepted: Vec<usize> = (0..replies.len())
        .filter(|&i| replies[i].is_success())
        .collect();
    if accepted.is_empty() {
        c.quit().await;
        return Ok(replies);
    }
    let reply = c.exchange("DATA\r\n").await?;
    if reply.code != 354 {
        for &i in &accepted {
            replies[i] = reply.clone();
        }
        return Ok(replies);
    }
    c.send_data(msg.data).await?;
    // LMTP: one reply per accepted recipient, in RCPT order (RFC 2033 §4.2).
    let finals = if lmtp { accepted.len() } else { 1 };
    let mut last = None;
    for (n, &i) in accepted.iter().enumerate() {
        if n < finals {
            last = Some(c.read_reply().await?);
        }
        if let Some(r) = &last {
            replies[i] = r.clone();
        }
    }
    c.quit().await;
    Ok(replies)
}

fn inbound(backend: &Backend) -> Result<&Endpoint, BackendError> {
    backend.endpoint(crate::config::Protocol::Smtp)
}

/// Whether an EHLO reply lists `keyword` (RFC 5321 §4.1.1.1: one per line
/// after the first, then its parameters).
fn offers(ehlo: &Reply, keyword: &str) -> bool {
    ehlo.raw
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| line.get(4..))
        .any(|rest| {
            let word = rest
                .split(|b| b.is_ascii_whitespace())
                .next()
                .unwrap_or(b"");
            word.eq_ignore_ascii_case(keyword.as_bytes())
        })
}

impl<'a> Conn<'a> {
    /// The TLS handshake after STARTTLS's 220.
    async fn start_tls(self, name: &str) -> Result<Conn<'a>, BackendError> {
        let tls_error = |source| BackendError::Tls {
            backend: self.peer.to_string(),
            source,
        };
        // Bytes after the 220 would have been injected in clear text (the
        // STARTTLS injection class of attacks): never read as TLS.
        if self.lines.pending() > 0 {
            return Err(tls_error(std::io::Error::other(
                "data after STARTTLS's 220",
            )));
        }
        let server = rustls_pki_types::ServerName::try_from(name.to_string())
            .map_err(|e| tls_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let (peer, limit) = (self.peer, self.limit);
        let Some(tcp) = self.stream.into_plain() else {
            return Err(BackendError::Protocol {
                backend: peer.to_string(),
                reason: "STARTTLS on a TLS session".into(),
            });
        };
        let connector = TlsConnector::from(crate::net::tls::opportunistic_client_config());
        let tls = match tokio::time::timeout(limit, connector.connect(server, tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(tls_error(e)),
            Err(_) => {
                return Err(tls_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                )))
            }
        };
        Ok(Conn {
            peer,
            stream: Stream::Client(Box::new(tls)),
            lines: Lines::new(MAX_LINE),
            limit,
        })
    }

    fn protocol_error(&self, reason: impl Into<String>) -> BackendError {
        BackendError::Protocol {
            backend: self.peer.to_string(),
            reason: reason.into(),
        }
    }

    fn io_error(&self, source: std::io::Error) -> BackendError {
        BackendError::Io {
            backend: self.peer.to_string(),
            source,
        }
    }

    fn timeout(&self, step: &'static str) -> BackendError {
        BackendError::Timeout {
            backend: self.peer.to_string(),
            step,
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, BackendError> {
        let deadline = Instant::now() + self.limit;
        let mut partial = Vec::new();
        loop {
            match Reply::take(&mut self.lines, &mut partial) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(self.protocol_error(e.to_string())),
            }
            let fill = self.lines.fill(&mut self.stream);
            match tokio::time::timeout_at(deadline, fill).await {
                Ok(Ok(0)) => return Err(self.protocol_error("connection closed")),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(self.io_error(e)),
                Err(_) => return Err(self.timeout("reply")),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.limit, write).await {
            Ok(r) => r.map_err(|e| self.io_error(e)),
            Err(_) => Err(self.timeout("write")),
        }
    }

    async fn exchange(&mut self, line: &str) -> Result<Reply, BackendError> {
        self.send(line.as_bytes()).await?;
        self.read_reply().await
    }

    async fn expect(&mut self, code: u16, step: &str) -> Result<(), BackendError> {
        let reply = self.read_reply().await?;
        if reply.code != code {
            let reason = format!("{step}: {}", reply.text());
            return Err(self.protocol_error(reason));
        }
        Ok(())
    }

    async fn command(&mut self, line: &str, code: u16, step: &str) -> Result<(), BackendError> {
        self.send(line.as_bytes()).await?;
        self.expect(code, step).await
    }

    async fn send_data(&mut self, data: &[u8]) -> Result<(), BackendError> {
        self.send(&dot_stuff(data)).await
    }

    async fn quit(&mut self) {
        let _ = self.send(b"QUIT\r\n").await;
    }
}

/// The DATA stream for `data` (RFC 5321 §4.5.2): a `.` doubled at the
/// start of every line, CRLF added if the message lacks a final one, then
/// the terminating `.` line.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 5);
    let mut at_line_start = true;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starttls_is_seen_only_as_an_ehlo_keyword() {
        let reply = |raw: &str| Reply {
            code: 250,
            raw: raw.as_bytes().to_vec(),
        };
        assert!(offers(
            &reply("250-mx.example\r\n250-SIZE 100\r\n250-starttls\r\n250 8BITMIME\r\n"),
            "STARTTLS"
        ));
        assert!(offers(&reply("250-mx\r\n250 STARTTLS\r\n"), "STARTTLS"));
        // Not the greeting line's text, nor a longer keyword.
        assert!(!offers(&reply("250 STARTTLS\r\n"), "STARTTLS"));
        assert!(!offers(&reply("250-mx\r\n250 STARTTLSX\r\n"), "STARTTLS"));
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b".x"), b"..x\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b"\r\n.\r\n");
    }
}
