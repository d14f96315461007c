//! The IMAP client side towards a backend: greeting, STARTTLS if asked,
//! then `ID` (the client's address, RFC 2971, honoured by Dovecot from
//! `login_trusted_networks`) and `AUTHENTICATE PLAIN` with the client's
//! credentials, pipelined in one write to save round trips. The backend's
//! own tagged answer is what the client gets.

use std::net::SocketAddr;
use std::time::Duration;

use imap_codec::imap_types::response::{Code, Data, GreetingKind, Response, Status, StatusKind};
use imap_codec::{GreetingCodec, ResponseCodec};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::framer::{Frame, Framer};
use super::preauth::b64;
use crate::error::BackendError;
use crate::net::backend::Backend;
use crate::net::stream::Stream;
use crate::proto::sasl;
use crate::secret::Credentials;

/// Who the client is, for the backend's logs and policies.
pub struct ClientInfo<'a> {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub session: &'a str,
    pub id: &'a [(String, String)],
}

pub enum Login {
    /// Logged in: the stream, the backend's `[ALERT]`s, its tagged OK
    /// without the tag (`OK [CAPABILITY …] Logged in\r\n`) and whatever
    /// it sent after it.
    Ok {
        stream: Stream,
        alerts: Vec<u8>,
        reply: Vec<u8>,
        rest: Vec<u8>,
    },
    /// The backend refused: its `[ALERT]`s and its tagged answer without
    /// the tag. `temporary` when it says so (`[UNAVAILABLE]`): not the
    /// client's fault.
    Refused {
        alerts: Vec<u8>,
        reply: Vec<u8>,
        temporary: bool,
    },
}

/// Responses before login are small; a backend that sends more is broken.
const MAX_RESPONSE: u32 = 64 * 1024;

/// A connection to a backend's IMAP service, read in whole responses;
/// also used after login by `lookup`.
pub(super) struct Conn<'a> {
    pub(super) backend: &'a Backend,
    pub(super) stream: Stream,
    pub(super) framer: Framer,
    pub(super) deadline: Instant,
}

/// Connects, optionally upgrades with STARTTLS, forwards the client's
/// address and logs in with the client's credentials.
pub async fn login(
    backend: &Backend,
    creds: &Credentials,
    client: &ClientInfo<'_>,
    connect_timeout: Duration,
    login_timeout: Duration,
) -> Result<Login, BackendError> {
    let ep = backend
        .imap
        .as_ref()
        .ok_or_else(|| BackendError::NoEndpoint {
            backend: backend.name.clone(),
            protocol: "imap",
        })?;
    let stream = backend.connect(ep, connect_timeout).await?;
    let mut conn = Conn {
        backend,
        stream,
        framer: Framer::new(MAX_RESPONSE),
        deadline: Instant::now() + connect_timeout,
    };
    let mut caps = conn.greeting().await?;
    if ep.starttls {
        // RFC 9051 §6.2.1: capabilities from before TLS are forgotten, so
        // that a man in the middle cannot strip ID or SASL-IR.
        conn = conn.starttls(connect_timeout).await?;
        caps = conn.capabilities().await?;
    }
    conn.deadline = Instant::now() + login_timeout;
    conn.authenticate(creds, client, &caps).await
}

impl Conn<'_> {
    /// The next whole response (literals included) in the framer, at most
    /// the framer's limit.
    pub(super) async fn read_message(&mut self) -> Result<(), BackendError> {
        loop {
            match self.framer.next_frame() {
                Some(Frame::Message) if self.framer.is_too_long() => {
                    return Err(self.backend.protocol_error("response too long"))
                }
                Some(Frame::Message) => return Ok(()),
                Some(Frame::Literal { .. }) => {}
                None if self.framer.pending() > self.framer.max() as usize => {
                    return Err(self.backend.protocol_error("response too long"))
                }
                None => {
                    let fill = self.framer.fill(&mut self.stream);
                    match tokio::time::timeout_at(self.deadline, fill).await {
                        Ok(Ok(0)) => return Err(self.backend.protocol_error("connection closed")),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(self.backend.io_error(e)),
                        Err(_) => return Err(self.backend.timeout("response")),
                    }
                }
            }
        }
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout_at(self.deadline, write).await {
            Ok(r) => r.map_err(|e| self.backend.io_error(e)),
            Err(_) => Err(self.backend.timeout("write")),
        }
    }

    /// Reads the greeting; returns the capabilities it announced, if any.
    async fn greeting(&mut self) -> Result<Vec<String>, BackendError> {
        self.read_message().await?;
        let greeting = self
            .framer
            .decode(&GreetingCodec::default())
            .map_err(|_| self.backend.protocol_error("unreadable greeting"))?;
        if greeting.kind != GreetingKind::Ok {
            return Err(self
                .backend
                .protocol_error(format!("greeting {:?}", greeting.kind)));
        }
        Ok(match greeting.code {
            Some(Code::Capability(caps)) => caps
                .as_ref()
                .iter()
                .map(|c| c.to_string().to_ascii_uppercase())
                .collect(),
            _ => Vec::new(),
        })
    }

    /// Upgrades the connection with STARTTLS.
    async fn starttls(mut self, limit: Duration) -> Result<Self, BackendError> {
        self.send(b"p0 STARTTLS\r\n").await?;
        let (kind, _) = self.until_tagged("p0").await?;
        if kind != Some(StatusKind::Ok) {
            return Err(self.backend.protocol_error("STARTTLS refused"));
        }
        if self.framer.pending() > 0 {
            return Err(self.backend.protocol_error("data after STARTTLS response"));
        }
        let backend = self.backend;
        let ep = backend
            .imap
            .as_ref()
            .ok_or_else(|| backend.protocol_error("no endpoint"))?;
        let tcp = self
            .stream
            .into_plain()
            .ok_or_else(|| backend.protocol_error("TLS already on"))?;
        Ok(Conn {
            backend,
            stream: backend.start_tls(tcp, ep, limit).await?,
            framer: Framer::new(MAX_RESPONSE),
            deadline: self.deadline,
        })
    }

    async fn authenticate(
        mut self,
        creds: &Credentials,
        client: &ClientInfo<'_>,
        caps: &[String],
    ) -> Result<Login, BackendError> {
        let has = |c: &str| caps.iter().any(|x| x == c);
        let mut out = Vec::with_capacity(512);
        if has("ID") || caps.is_empty() {
            out.extend_from_slice(id_command(client).as_bytes());
        }
        let (mechanism, response) = sasl::initial_response(creds);
        let sasl_ir = has("SASL-IR");
        if sasl_ir {
            out.extend_from_slice(
                format!("p2 AUTHENTICATE {mechanism} {}\r\n", b64(response.expose())).as_bytes(),
            );
        } else {
            out.extend_from_slice(format!("p2 AUTHENTICATE {mechanism}\r\n").as_bytes());
        }
        self.send(&out).await?;
        let mut alerts = Vec::new();
        let mut sent = sasl_ir;
        let (kind, reply) = loop {
            self.read_message().await?;
            let msg = self.framer.message();
            if msg.starts_with(b"+") {
                // The first challenge asks for the response; after it, an
                // OAuth server's challenge is its error (JSON), answered
                // so that the tagged NO follows (RFC 7628 §3.2.3).
                let answer = if sent {
                    sasl::oauth_abort(creds.kind)
                } else {
                    response.expose()
                };
                if sent && creds.kind == crate::secret::SecretKind::Password {
                    return Err(self.backend.protocol_error("unexpected SASL challenge"));
                }
                sent = true;
                let line = format!("{}\r\n", b64(answer));
                self.send(line.as_bytes()).await?;
                continue;
            }
            if let Some(tail) = msg.strip_prefix(b"p2 ") {
                break (status_kind(tail), tail.to_vec());
            }
            if is_alert(msg) {
                alerts.extend_from_slice(msg);
            }
        };
        match kind {
            Some(StatusKind::Ok) => {}
            Some(_) => {
                let temporary = reply
                    .windows(13)
                    .any(|w| w.eq_ignore_ascii_case(b"[UNAVAILABLE]"));
                return Ok(Login::Refused {
                    alerts,
                    reply,
                    temporary,
                });
            }
            None => return Err(self.backend.protocol_error("unreadable login reply")),
        }
        let reply = if has_capability_code(&reply) {
            reply
        } else {
            self.capability_reply(reply).await?
        };
        Ok(Login::Ok {
            stream: self.stream,
            alerts,
            reply,
            rest: self.framer.into_rest(),
        })
    }

    /// Asks for the capabilities (after STARTTLS, or after a login OK
    /// without them), upper case.
    async fn capabilities(&mut self) -> Result<Vec<String>, BackendError> {
        self.send(b"p3 CAPABILITY\r\n").await?;
        let mut caps = Vec::new();
        loop {
            self.read_message().await?;
            let msg = self.framer.message();
            if msg.starts_with(b"p3 ") {
                return Ok(caps);
            }
            if let Ok((_, Response::Data(Data::Capability(c)))) =
                imap_codec::decode::Decoder::decode(&ResponseCodec::default(), msg)
            {
                caps = c
                    .as_ref()
                    .iter()
                    .map(|c| c.to_string().to_ascii_uppercase())
                    .collect();
            }
        }
    }

    /// For a backend that does not put `[CAPABILITY …]` in its login OK:
    /// the OK the client should see, with the capabilities asked for (or
    /// the backend's own OK if it names none).
    async fn capability_reply(&mut self, ok: Vec<u8>) -> Result<Vec<u8>, BackendError> {
        let caps = self.capabilities().await?;
        if caps.is_empty() {
            return Ok(ok);
        }
        Ok(format!("OK [CAPABILITY {}] Logged in\r\n", caps.join(" ")).into_bytes())
    }

    /// Reads up to the tagged response for `tag`: its kind and tail.
    async fn until_tagged(
        &mut self,
        tag: &str,
    ) -> Result<(Option<StatusKind>, Vec<u8>), BackendError> {
        let prefix = format!("{tag} ");
        loop {
            self.read_message().await?;
            if let Some(tail) = self.framer.message().strip_prefix(prefix.as_bytes()) {
                return Ok((status_kind(tail), tail.to_vec()));
            }
        }
    }
}

/// The kind of a tagged status from its first atom (RFC 9051
/// `resp-cond-state`). Only the atom is read: a full decode would reject
/// legal replies whose free text is 8-bit (`OK Accesso eseguito, è`).
fn status_kind(tail: &[u8]) -> Option<StatusKind> {
    let word = tail.split(|&b| b == b' ' || b == b'\r').next()?;
    match word.to_ascii_uppercase().as_slice() {
        b"OK" => Some(StatusKind::Ok),
        b"NO" => Some(StatusKind::No),
        b"BAD" => Some(StatusKind::Bad),
        _ => None,
    }
}

/// An untagged status with an `[ALERT]` (RFC 9051 §7.1: must be shown to
/// the user), which the client gets with the login's answer.
fn is_alert(msg: &[u8]) -> bool {
    // Most untagged replies (`* ID …`, `* CAPABILITY …`) have no code at
    // all: look for the word before paying for a full parse.
    const ALERT: &[u8] = b"[ALERT]";
    if !msg
        .windows(ALERT.len())
        .any(|w| w.eq_ignore_ascii_case(ALERT))
    {
        return false;
    }
    matches!(
        imap_codec::decode::Decoder::decode(&ResponseCodec::default(), msg),
        Ok((_, Response::Status(Status::Untagged(body)))) if matches!(body.code, Some(Code::Alert))
    )
}

/// The capabilities named in a tagged reply's `[CAPABILITY …]` code.
pub fn capabilities_of(tail: &[u8]) -> Vec<String> {
    let mut line = b"t ".to_vec();
    line.extend_from_slice(tail);
    match imap_codec::decode::Decoder::decode(&ResponseCodec::default(), &line) {
        Ok((_, Response::Status(Status::Tagged(t)))) => match t.body.code {
            Some(Code::Capability(caps)) => caps.as_ref().iter().map(|c| c.to_string()).collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Whether a tagged reply (`OK [CAPABILITY …] …`) names the capabilities.
/// Read from the bytes: a full parse of Dovecot's thirty capabilities was
/// the costliest step of a login. Only atoms pass (RFC 9051 `capability`),
/// so the client never gets a code the parser would have refused.
fn has_capability_code(tail: &[u8]) -> bool {
    const CODE: &[u8] = b"[CAPABILITY ";
    let Some(sp) = tail.iter().position(|&b| b == b' ') else {
        return false;
    };
    let rest = &tail[sp + 1..];
    if rest.len() < CODE.len() || !rest[..CODE.len()].eq_ignore_ascii_case(CODE) {
        return false;
    }
    let rest = &rest[CODE.len()..];
    let Some(end) = rest.iter().position(|&b| b == b']') else {
        return false;
    };
    let caps = &rest[..end];
    caps.split(|&b| b == b' ')
        .all(|atom| !atom.is_empty() && atom.iter().all(|&b| is_atom_char(b)))
}

/// RFC 9051 `ATOM-CHAR`: printable ASCII but the atom specials.
fn is_atom_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !b"(){%*\"\\]".contains(&b)
}

/// `ID` with the client's own fields and its address (Dovecot's
/// `x-originating-ip` family, RFC 2971 leaves `x-` keys to servers).
/// Built in one buffer: it is written on every login.
fn id_command(client: &ClientInfo<'_>) -> String {
    let ours = [
        ("x-originating-ip", client.peer.ip().to_string()),
        ("x-originating-port", client.peer.port().to_string()),
        ("x-connected-ip", client.local.ip().to_string()),
        ("x-connected-port", client.local.port().to_string()),
    ];
    let fields = ours
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain([("x-session-ext-id", client.session)])
        .chain(client.id.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // Defence in depth: nothing but printable ASCII goes into the line.
        .filter(|(k, v)| printable(k) && printable(v));
    let mut line = String::with_capacity(256);
    line.push_str("p1 ID (");
    for (i, (k, v)) in fields.enumerate() {
        if i > 0 {
            line.push(' ');
        }
        quote_into(&mut line, k);
        line.push(' ');
        quote_into(&mut line, v);
    }
    line.push_str(")\r\n");
    line
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Appends an IMAP quoted string (RFC 9051 `quoted`): backslash and quote
/// escaped.
fn quote_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_command_cannot_carry_line_breaks() {
        let id = vec![
            ("name".to_string(), "Thunderbird".to_string()),
            ("k\r\np9 LOGIN x y".to_string(), "v".to_string()),
            ("version".to_string(), "1\r\np8 NOOP".to_string()),
        ];
        let client = ClientInfo {
            peer: "192.0.2.7:5000".parse().unwrap(),
            local: "127.0.0.1:993".parse().unwrap(),
            session: "ponte-1",
            id: &id,
        };
        let line = id_command(&client);
        assert_eq!(line.matches("\r\n").count(), 1, "{line:?}");
        assert!(line.ends_with(")\r\n") && line.contains("\"x-originating-ip\" \"192.0.2.7\""));
        assert!(
            line.contains("\"name\" \"Thunderbird\"")
                && !line.contains("p9")
                && !line.contains("p8")
        );
    }

    #[test]
    fn capability_code_is_read_from_the_bytes() {
        assert!(has_capability_code(
            b"OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] Logged in\r\n"
        ));
        assert!(has_capability_code(b"ok [capability IMAP4rev1] x\r\n"));
        assert!(!has_capability_code(b"OK Logged in\r\n"));
        assert!(!has_capability_code(b"OK [ALERT] [CAPABILITY X]\r\n"));
        assert!(!has_capability_code(b"OK [CAPABILITY] x\r\n"));
        assert!(!has_capability_code(b"OK [CAPABILITY A  B] x\r\n"));
        assert!(!has_capability_code(b"OK [CAPABILITY A (B] x\r\n"));
        assert!(!has_capability_code(b"OK [CAPABILITY IMAP4rev1\r\n"));
        assert!(is_alert(b"* OK [ALERT] Mailbox almost full\r\n"));
        assert!(!is_alert(b"* ID (\"name\" \"Dovecot\")\r\n"));
        assert!(!is_alert(b"* NO [ALERT\r\n"));
    }

    #[test]
    fn status_kind_reads_the_first_atom_only() {
        assert_eq!(
            status_kind("OK Accesso eseguito, è\r\n".as_bytes()),
            Some(StatusKind::Ok)
        );
        assert_eq!(
            status_kind(b"no [AUTHENTICATIONFAILED] x\r\n"),
            Some(StatusKind::No)
        );
        assert_eq!(status_kind(b"BAD\r\n"), Some(StatusKind::Bad));
        assert_eq!(status_kind(b"PREAUTH x\r\n"), None);
    }
}
