//! The SMTP client side towards a backend's submission service: greeting,
//! EHLO, STARTTLS if the endpoint asks for it (and EHLO again, RFC 3207
//! §4.2), `XCLIENT` with the client's address if the backend offers it
//! (Dovecot does to `login_trusted_networks`; a new greeting and EHLO
//! follow), then `AUTH PLAIN` with the client's credentials. The
//! backend's own verdict is what the client gets when it refuses. EHLO
//! carries the client's own name, as a direct session would, so that the
//! backend's `Received:` header names the client, not ponte.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use smtp_proto::{
    EhloResponse, AUTH_OAUTHBEARER, AUTH_PLAIN, AUTH_XOAUTH2, EXT_AUTH, EXT_START_TLS,
};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::debug;

use crate::config::Protocol;
use crate::error::BackendError;
use crate::net::backend::{Backend, Endpoint};
use crate::net::stream::Stream;
use crate::proto::sasl;
use crate::proto::smtp::lines::Lines;
use crate::secret::{Credentials, Secret, SecretKind};

/// Who the client is, for the backend's logs, policies and trace header.
pub struct ClientInfo<'a> {
    pub peer: SocketAddr,
    /// Its EHLO/HELO name.
    pub helo: Option<&'a str>,
}

pub enum Login {
    /// Authenticated: the stream and whatever the backend sent after 235.
    Ok { stream: Stream, rest: Vec<u8> },
    /// The backend refused: its whole reply, to give to the client as it
    /// is; `temporary` for a 4xx (not the client's fault).
    Refused { reply: Vec<u8>, temporary: bool },
}

/// Lines of a reply; generous, RFC 5321 §4.5.3.1.5 says 512.
const MAX_LINE: usize = 4096;
/// Replies before login are small (EHLO is the longest); more is broken.
const MAX_REPLY: usize = 64 * 1024;
/// What ponte calls itself in EHLO when the client's name is unusable.
const EHLO_NAME: &str = "ponte";

/// One reply: its code and its raw lines.
struct Reply {
    code: u16,
    raw: Vec<u8>,
}

struct Conn<'a> {
    backend: &'a Backend,
    ep: &'a Endpoint,
    stream: Stream,
    lines: Lines,
    deadline: Instant,
    /// The EHLO line, with the client's name in it.
    ehlo: String,
}

/// Connects, optionally upgrades with STARTTLS, forwards the client's
/// address and authenticates with the client's credentials.
pub async fn login(
    backend: &Backend,
    creds: &Credentials,
    client: &ClientInfo<'_>,
    connect_timeout: Duration,
    login_timeout: Duration,
) -> Result<Login, BackendError> {
    let ep = backend.endpoint(Protocol::Submission)?;
    let stream = backend.connect(ep, connect_timeout).await?;
    let mut conn = Conn {
        backend,
        ep,
        stream,
        lines: Lines::new(MAX_LINE),
        deadline: Instant::now() + connect_timeout,
        ehlo: format!("EHLO {}\r\n", ehlo_name(client.helo)),
    };
    conn.greeting().await?;
    let mut ehlo = conn.ehlo().await?;
    if ep.starttls {
        // What was offered in clear text is forgotten (RFC 3207 §4.2).
        conn = conn.starttls(&ehlo, connect_timeout).await?;
        ehlo = conn.ehlo().await?;
    }
    conn.deadline = Instant::now() + login_timeout;
    if let Some(command) = xclient_command(&ehlo, client) {
        if conn.xclient(&command).await? {
            ehlo = conn.ehlo().await?;
        }
    }
    conn.authenticate(creds, &ehlo).await
}

impl Conn<'_> {
    /// Reads one whole reply (all its lines) under the deadline.
    async fn read_reply(&mut self) -> Result<Reply, BackendError> {
        let mut raw = Vec::new();
        let mut code = None;
        loop {
            let line = match self.lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.fill().await?;
                    continue;
                }
                Err(_) => return Err(self.backend.protocol_error("reply line too long")),
            };
            let (this, last) =
                reply_line(line).ok_or_else(|| self.backend.protocol_error("unreadable reply"))?;
            if *code.get_or_insert(this) != this || raw.len() + line.len() > MAX_REPLY {
                return Err(self.backend.protocol_error("malformed reply"));
            }
            raw.extend_from_slice(line);
            if last {
                return Ok(Reply { code: this, raw });
            }
        }
    }

    async fn fill(&mut self) -> Result<(), BackendError> {
        let fill = self.lines.fill(&mut self.stream);
        match tokio::time::timeout_at(self.deadline, fill).await {
            Ok(Ok(0)) => Err(self.backend.protocol_error("connection closed")),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.backend.io_error(e)),
            Err(_) => Err(self.backend.timeout("reply")),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout_at(self.deadline, write).await {
            Ok(r) => r.map_err(|e| self.backend.io_error(e)),
            Err(_) => Err(self.backend.timeout("write")),
        }
    }

    /// `220` or nothing: a backend that greets with 421/554 is unavailable.
    async fn greeting(&mut self) -> Result<(), BackendError> {
        let reply = self.read_reply().await?;
        if reply.code != 220 {
            return Err(self
                .backend
                .protocol_error(format!("greeting {}", reply.code)));
        }
        Ok(())
    }

    /// EHLO; its extensions (smtp-proto's parser) and raw reply.
    async fn ehlo(&mut self) -> Result<Ehlo, BackendError> {
        let line = std::mem::take(&mut self.ehlo);
        let sent = self.send(line.as_bytes()).await;
        self.ehlo = line;
        sent?;
        let reply = self.read_reply().await?;
        if reply.code != 250 {
            return Err(self.backend.protocol_error(format!("EHLO {}", reply.code)));
        }
        let parsed = EhloResponse::parse(&mut reply.raw.iter())
            .map_err(|e| self.backend.protocol_error(format!("EHLO reply: {e}")))?;
        Ok(Ehlo {
            parsed,
            raw: reply.raw,
        })
    }

    async fn starttls(mut self, ehlo: &Ehlo, limit: Duration) -> Result<Self, BackendError> {
        if !ehlo.parsed.has_capability(EXT_START_TLS) {
            return Err(self.backend.protocol_error("STARTTLS not offered"));
        }
        self.send(b"STARTTLS\r\n").await?;
        let reply = self.read_reply().await?;
        if reply.code != 220 {
            return Err(self
                .backend
                .protocol_error(format!("STARTTLS {}", reply.code)));
        }
        // Bytes before the handshake could only be an injection.
        if self.lines.pending() > 0 {
            return Err(self.backend.protocol_error("data after STARTTLS reply"));
        }
        let Conn {
            backend,
            ep,
            stream,
            deadline,
            ehlo,
            ..
        } = self;
        let tcp = stream
            .into_plain()
            .ok_or_else(|| backend.protocol_error("TLS already on"))?;
        Ok(Conn {
            backend,
            ep,
            stream: backend.start_tls(tcp, ep, limit).await?,
            lines: Lines::new(MAX_LINE),
            deadline,
            ehlo,
        })
    }

    /// Sends XCLIENT; `true` if the backend took it (it then greets anew
    /// and wants EHLO again). A refusal is not fatal: the backend only
    /// loses the client's address.
    async fn xclient(&mut self, command: &str) -> Result<bool, BackendError> {
        self.send(command.as_bytes()).await?;
        let reply = self.read_reply().await?;
        if reply.code == 220 {
            return Ok(true);
        }
        debug!(backend = %self.backend.name, code = reply.code, "XCLIENT refused");
        Ok(false)
    }

    async fn authenticate(
        mut self,
        creds: &Credentials,
        ehlo: &Ehlo,
    ) -> Result<Login, BackendError> {
        let (mechanism, response) = sasl::initial_response(creds);
        let flag = match creds.kind {
            SecretKind::Password => AUTH_PLAIN,
            SecretKind::XOAuth2 => AUTH_XOAUTH2,
            SecretKind::OAuthBearer => AUTH_OAUTHBEARER,
        };
        let offered =
            ehlo.parsed.has_capability(EXT_AUTH) && ehlo.parsed.auth_mechanisms & flag != 0;
        if !offered {
            return Err(self
                .backend
                .protocol_error(format!("AUTH {mechanism} not offered")));
        }
        let line = Secret::new(format!("AUTH {mechanism} {}\r\n", b64(response.expose())));
        self.send(line.expose().as_bytes()).await?;
        let mut reply = self.read_reply().await?;
        if reply.code == 334 && creds.kind != SecretKind::Password {
            // An OAuth server's error challenge (RFC 7628 §3.2.3): answered
            // so that its final refusal follows.
            let abort = format!("{}\r\n", b64(sasl::oauth_abort(creds.kind)));
            self.send(abort.as_bytes()).await?;
            reply = self.read_reply().await?;
        }
        match reply.code {
            235 => Ok(Login::Ok {
                stream: self.stream,
                rest: self.lines.into_rest(),
            }),
            // "Closing the channel" is not a verdict on the credentials.
            421 => Err(self.backend.protocol_error("AUTH 421: service closing")),
            400..=599 => Ok(Login::Refused {
                temporary: reply.code < 500,
                reply: reply.raw,
            }),
            code => Err(self.backend.protocol_error(format!("AUTH {code}"))),
        }
    }
}

/// A backend's EHLO reply.
struct Ehlo {
    parsed: EhloResponse<String>,
    raw: Vec<u8>,
}

impl Ehlo {
    /// The attributes named on the `XCLIENT` line, upper case; `None`
    /// when XCLIENT is not offered (smtp-proto does not know it).
    fn xclient(&self) -> Option<Vec<String>> {
        self.raw.split(|&b| b == b'\n').find_map(|line| {
            let text = std::str::from_utf8(line.get(4..)?).ok()?.trim_end();
            let mut words = text.split_ascii_whitespace();
            if !words.next()?.eq_ignore_ascii_case("XCLIENT") {
                return None;
            }
            Some(words.map(str::to_ascii_uppercase).collect())
        })
    }
}

/// `XCLIENT ADDR=… [PORT=…]` with what the backend accepts, or `None` if
/// it offers no XCLIENT. ADDR follows Postfix's syntax (`IPV6:` prefix).
/// The client's name goes in the EHLO that follows, which would replace
/// an XCLIENT `HELO=`.
fn xclient_command(ehlo: &Ehlo, client: &ClientInfo<'_>) -> Option<String> {
    let attrs = ehlo.xclient()?;
    let has = |a: &str| attrs.iter().any(|x| x == a);
    if !has("ADDR") {
        return None;
    }
    let mut line = match client.peer.ip().to_canonical() {
        IpAddr::V4(ip) => format!("XCLIENT ADDR={ip}"),
        IpAddr::V6(ip) => format!("XCLIENT ADDR=IPV6:{ip}"),
    };
    if has("PORT") {
        line.push_str(&format!(" PORT={}", client.peer.port()));
    }
    line.push_str("\r\n");
    Some(line)
}

/// The client's EHLO name if it is a plain domain or address literal
/// (RFC 5321 §4.1.1.1), else ponte's own: it goes into a command line.
fn ehlo_name(helo: Option<&str>) -> &str {
    let usable = |h: &&str| {
        (1..=255).contains(&h.len())
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
    };
    helo.filter(usable).unwrap_or(EHLO_NAME)
}

/// The code of one reply line and whether it ends the reply (RFC 5321
/// §4.2: `NNN-` continues, `NNN ` or a bare `NNN` ends).
fn reply_line(line: &[u8]) -> Option<(u16, bool)> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match line.get(3) {
        Some(b'-') => Some((code, false)),
        Some(b' ' | b'\r' | b'\n') => Some((code, true)),
        _ => None,
    }
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ehlo(raw: &str) -> Ehlo {
        Ehlo {
            parsed: EhloResponse::parse(&mut raw.as_bytes().iter()).unwrap(),
            raw: raw.as_bytes().to_vec(),
        }
    }

    const DOVECOT: &str = "250-legacy.test\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250-STARTTLS\r\n250-PIPELINING\r\n250 XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD\r\n";

    #[test]
    fn reads_dovecots_ehlo() {
        let e = ehlo(DOVECOT);
        assert!(e.parsed.has_capability(EXT_START_TLS));
        assert!(e.parsed.auth_mechanisms & AUTH_PLAIN != 0);
        assert_eq!(e.xclient().unwrap()[..2], ["ADDR", "PORT"]);
        assert!(ehlo("250-x\r\n250 8BITMIME\r\n").xclient().is_none());
    }

    #[test]
    fn xclient_forwards_address_and_port() {
        let e = ehlo(DOVECOT);
        let client = ClientInfo {
            peer: "[::ffff:192.0.2.7]:5000".parse().unwrap(),
            helo: Some("client.example"),
        };
        assert_eq!(
            xclient_command(&e, &client).unwrap(),
            "XCLIENT ADDR=192.0.2.7 PORT=5000\r\n"
        );
        let client = ClientInfo {
            peer: "[2001:db8::1]:25".parse().unwrap(),
            helo: None,
        };
        assert_eq!(
            xclient_command(&ehlo("250 XCLIENT ADDR\r\n"), &client).unwrap(),
            "XCLIENT ADDR=IPV6:2001:db8::1\r\n"
        );
    }

    #[test]
    fn ehlo_carries_the_clients_name_only_when_it_is_plain() {
        assert_eq!(ehlo_name(Some("client.example")), "client.example");
        assert_eq!(ehlo_name(Some("[192.0.2.7]")), "[192.0.2.7]");
        assert_eq!(ehlo_name(Some("evil\r\nRCPT")), "ponte");
        assert_eq!(ehlo_name(Some("caffè")), "ponte");
        assert_eq!(ehlo_name(None), "ponte");
    }

    #[test]
    fn reply_lines_give_code_and_end() {
        assert_eq!(reply_line(b"250-PIPELINING\r\n"), Some((250, false)));
        assert_eq!(reply_line(b"535 5.7.8 no\r\n"), Some((535, true)));
        assert_eq!(reply_line(b"221\r\n"), Some((221, true)));
        assert_eq!(reply_line(b"2x0 x\r\n"), None);
        assert_eq!(reply_line(b"250x\r\n"), None);
    }
}
