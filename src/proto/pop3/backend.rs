//! The POP3 client side towards a backend: greeting, STLS if asked, CAPA,
//! the client's address with XCLIENT where offered (Dovecot, from
//! `login_trusted_networks`), then AUTH PLAIN with the client's
//! credentials (USER/PASS if the backend has no SASL PLAIN).

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::config::Protocol;
use crate::error::BackendError;
use crate::net::backend::Backend;
use crate::net::stream::Stream;
use crate::proto::sasl;
use crate::secret::{Credentials, SecretKind};

pub enum Login {
    /// Logged in: the stream, the backend's `+OK` line and what followed.
    Ok {
        stream: Stream,
        reply: Vec<u8>,
        rest: Vec<u8>,
    },
    /// Refused: the backend's `-ERR` line; `temporary` for `[SYS/TEMP]`
    /// and `[IN-USE]` (RFC 2449/3206): not the client's fault.
    Refused { reply: Vec<u8>, temporary: bool },
}

/// Lines before login are short; a backend that sends more is broken.
const MAX_LINE: usize = 8 * 1024;

struct Conn<'a> {
    backend: &'a Backend,
    stream: Stream,
    buf: Vec<u8>,
    deadline: Instant,
}

pub async fn login(
    backend: &Backend,
    creds: &Credentials,
    peer: SocketAddr,
    connect_timeout: Duration,
    login_timeout: Duration,
) -> Result<Login, BackendError> {
    let ep = backend.endpoint(Protocol::Pop3)?;
    let stream = backend.connect(ep, connect_timeout).await?;
    let mut conn = Conn {
        backend,
        stream,
        buf: Vec::new(),
        deadline: Instant::now() + connect_timeout,
    };
    conn.expect_ok("greeting").await?;
    if ep.starttls {
        conn.send(b"STLS\r\n").await?;
        conn.expect_ok("STLS").await?;
        if !conn.buf.is_empty() {
            return Err(backend.protocol_error("data after the STLS reply"));
        }
        let tcp = conn
            .stream
            .into_plain()
            .ok_or_else(|| backend.protocol_error("TLS already on"))?;
        conn.stream = backend.start_tls(tcp, ep, connect_timeout).await?;
    }
    conn.deadline = Instant::now() + login_timeout;
    let caps = conn.capabilities().await?;
    if caps.iter().any(|c| c == "XCLIENT") {
        conn.send(format!("XCLIENT ADDR={} PORT={}\r\n", peer.ip(), peer.port()).as_bytes())
            .await?;
        conn.expect_ok("XCLIENT").await?;
    }
    conn.authenticate(creds, &caps).await
}

impl Conn<'_> {
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

    /// One response line, with its line end.
    async fn line(&mut self) -> Result<Vec<u8>, BackendError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                return Ok(self.buf.drain(..=i).collect());
            }
            if self.buf.len() > MAX_LINE {
                return Err(self.backend.protocol_error("response line too long"));
            }
            let mut chunk = [0u8; 2048];
            let read = tokio::time::timeout_at(self.deadline, self.stream.read(&mut chunk));
            match read.await {
                Ok(Ok(0)) => return Err(self.backend.protocol_error("connection closed")),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(self.backend.io_error(e)),
                Err(_) => return Err(self.backend.timeout("response")),
            }
        }
    }

    async fn expect_ok(&mut self, step: &str) -> Result<Vec<u8>, BackendError> {
        let line = self.line().await?;
        if line.starts_with(b"+OK") {
            Ok(line)
        } else {
            Err(self.backend.protocol_error(format!(
                "{step}: {}",
                String::from_utf8_lossy(&line).trim_end()
            )))
        }
    }

    /// CAPA (RFC 2449), upper case; empty if the backend has none.
    async fn capabilities(&mut self) -> Result<Vec<String>, BackendError> {
        self.send(b"CAPA\r\n").await?;
        if !self.line().await?.starts_with(b"+OK") {
            return Ok(Vec::new());
        }
        let mut caps = Vec::new();
        loop {
            let line = self.line().await?;
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if text == "." {
                return Ok(caps);
            }
            caps.push(text.to_ascii_uppercase());
        }
    }

    async fn authenticate(
        mut self,
        creds: &Credentials,
        caps: &[String],
    ) -> Result<Login, BackendError> {
        let sasl_plain = caps
            .iter()
            .any(|c| c.starts_with("SASL") && c.split(' ').any(|m| m == "PLAIN"));
        let reply = if creds.kind != SecretKind::Password {
            self.oauth(creds).await?
        } else if sasl_plain {
            let ir = base64::engine::general_purpose::STANDARD
                .encode(sasl::encode_plain(creds).expose());
            self.send(format!("AUTH PLAIN {ir}\r\n").as_bytes()).await?;
            self.line().await?
        } else if line_safe(creds.user.as_bytes()) && line_safe(creds.password.expose()) {
            self.send(format!("USER {}\r\n", creds.user).as_bytes())
                .await?;
            let user = self.line().await?;
            if !user.starts_with(b"+OK") {
                user
            } else {
                let mut pass = b"PASS ".to_vec();
                pass.extend_from_slice(creds.password.expose());
                pass.extend_from_slice(b"\r\n");
                self.send(&pass).await?;
                self.line().await?
            }
        } else {
            // A line break in SASL-given credentials would inject commands
            // into USER/PASS: refuse like a wrong password.
            b"-ERR [AUTH] Authentication failed.\r\n".to_vec()
        };
        if reply.starts_with(b"+OK") {
            return Ok(Login::Ok {
                stream: self.stream,
                reply,
                rest: self.buf,
            });
        }
        if !reply.starts_with(b"-ERR") {
            return Err(self.backend.protocol_error("unreadable login reply"));
        }
        let text = String::from_utf8_lossy(&reply).to_ascii_uppercase();
        let temporary = text.contains("[SYS/TEMP]") || text.contains("[IN-USE]");
        Ok(Login::Refused { reply, temporary })
    }
}

impl Conn<'_> {
    /// AUTH with the client's OAuth mechanism and token; a `+` challenge
    /// after it is the server's error, answered so that `-ERR` follows.
    async fn oauth(&mut self, creds: &Credentials) -> Result<Vec<u8>, BackendError> {
        let (mechanism, response) = sasl::initial_response(creds);
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        self.send(format!("AUTH {mechanism} {}\r\n", b64(response.expose())).as_bytes())
            .await?;
        let reply = self.line().await?;
        if !reply.starts_with(b"+ ") && reply != b"+\r\n" {
            return Ok(reply);
        }
        self.send(format!("{}\r\n", b64(sasl::oauth_abort(creds.kind))).as_bytes())
            .await?;
        self.line().await
    }
}

fn line_safe(bytes: &[u8]) -> bool {
    !bytes.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
}
