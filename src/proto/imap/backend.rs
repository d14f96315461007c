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
    /// Logged in: the stream, the backend's tagged OK without its tag
    /// (`OK [CAPABILITY …] Logged in\r\n`) and whatever it sent after it.
    Ok {
        stream: Stream,
        reply: Vec<u8>,
        rest: Vec<u8>,
    },
    /// The backend refused: its tagged answer without the tag.
    Refused { reply: Vec<u8> },
}

/// Responses before login are small; a backend that sends more is broken.
const MAX_RESPONSE: u32 = 64 * 1024;

struct Conn<'a> {
    backend: &'a Backend,
    stream: Stream,
    framer: Framer,
    deadline: Instant,
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
        conn = conn.starttls(connect_timeout).await?;
        caps.retain(|c| c != "LOGINDISABLED");
    }
    conn.deadline = Instant::now() + login_timeout;
    conn.authenticate(creds, client, &caps).await
}

impl Conn<'_> {
    async fn read_message(&mut self) -> Result<(), BackendError> {
        loop {
            match self.framer.next_frame() {
                Some(Frame::Message) if self.framer.is_too_long() => {
                    return Err(self.backend.protocol_error("response too long"))
                }
                Some(Frame::Message) => return Ok(()),
                Some(Frame::Literal { .. }) => {}
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

    /// Upgrades the connection; the capabilities read before stay in use
    /// (only STARTTLS and LOGINDISABLED change with TLS on a sane server).
    async fn starttls(mut self, limit: Duration) -> Result<Self, BackendError> {
        self.send(b"p0 STARTTLS\r\n").await?;
        let (kind, _) = self.until_tagged("p0").await?;
        if kind != StatusKind::Ok {
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
        let plain = sasl::encode_plain(creds);
        let sasl_ir = has("SASL-IR");
        if sasl_ir {
            out.extend_from_slice(
                format!("p2 AUTHENTICATE PLAIN {}\r\n", b64(plain.expose())).as_bytes(),
            );
        } else {
            out.extend_from_slice(b"p2 AUTHENTICATE PLAIN\r\n");
        }
        self.send(&out).await?;
        let (kind, reply) = loop {
            self.read_message().await?;
            let msg = self.framer.message();
            if msg.starts_with(b"+") && !sasl_ir {
                let line = format!("{}\r\n", b64(plain.expose()));
                self.send(line.as_bytes()).await?;
                continue;
            }
            if let Some(tail) = msg.strip_prefix(b"p2 ") {
                break (status_kind(tail), tail.to_vec());
            }
        };
        if kind != StatusKind::Ok {
            return Ok(Login::Refused { reply });
        }
        let reply = if has_capability_code(&reply) {
            reply
        } else {
            self.capability_reply().await?
        };
        Ok(Login::Ok {
            stream: self.stream,
            reply,
            rest: self.framer.into_rest(),
        })
    }

    /// For a backend that does not put `[CAPABILITY …]` in its login OK:
    /// asks, and builds the OK the client should see.
    async fn capability_reply(&mut self) -> Result<Vec<u8>, BackendError> {
        self.send(b"p3 CAPABILITY\r\n").await?;
        let mut caps = String::new();
        loop {
            self.read_message().await?;
            let msg = self.framer.message();
            if msg.starts_with(b"p3 ") {
                break;
            }
            if let Ok((_, Response::Data(Data::Capability(c)))) =
                imap_codec::decode::Decoder::decode(&ResponseCodec::default(), msg)
            {
                caps = c
                    .as_ref()
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" ");
            }
        }
        Ok(format!("OK [CAPABILITY {caps}] Logged in\r\n").into_bytes())
    }

    /// Reads up to the tagged response for `tag`: its kind and tail.
    async fn until_tagged(&mut self, tag: &str) -> Result<(StatusKind, Vec<u8>), BackendError> {
        let prefix = format!("{tag} ");
        loop {
            self.read_message().await?;
            if let Some(tail) = self.framer.message().strip_prefix(prefix.as_bytes()) {
                return Ok((status_kind(tail), tail.to_vec()));
            }
        }
    }
}

/// Kind of a tagged status from its tail (`OK …`, `NO …`, `BAD …`), read
/// with imap-codec; anything unreadable counts as `BAD`.
fn status_kind(tail: &[u8]) -> StatusKind {
    let mut line = b"t ".to_vec();
    line.extend_from_slice(tail);
    match imap_codec::decode::Decoder::decode(&ResponseCodec::default(), &line) {
        Ok((_, Response::Status(Status::Tagged(t)))) => t.body.kind,
        _ => StatusKind::Bad,
    }
}

fn has_capability_code(tail: &[u8]) -> bool {
    let mut line = b"t ".to_vec();
    line.extend_from_slice(tail);
    matches!(
        imap_codec::decode::Decoder::decode(&ResponseCodec::default(), &line),
        Ok((_, Response::Status(Status::Tagged(t)))) if matches!(t.body.code, Some(Code::Capability(_)))
    )
}

/// `ID` with the client's own fields and its address (Dovecot's
/// `x-originating-ip` family, RFC 2971 leaves `x-` keys to servers).
fn id_command(client: &ClientInfo<'_>) -> String {
    let mut fields = vec![
        ("x-originating-ip".to_string(), client.peer.ip().to_string()),
        (
            "x-originating-port".to_string(),
            client.peer.port().to_string(),
        ),
        ("x-connected-ip".to_string(), client.local.ip().to_string()),
        (
            "x-connected-port".to_string(),
            client.local.port().to_string(),
        ),
        ("x-session-ext-id".to_string(), client.session.to_string()),
    ];
    fields.extend(client.id.iter().cloned());
    let body: Vec<String> = fields
        .iter()
        .filter(|(_, v)| !v.chars().any(char::is_control))
        .map(|(k, v)| format!("{} {}", quote(k), quote(v)))
        .collect();
    format!("p1 ID ({})\r\n", body.join(" "))
}

/// An IMAP quoted string (RFC 9051 `quoted`): backslash and quote escaped.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}
