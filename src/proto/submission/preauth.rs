//! The SMTP submission server side up to authentication (RFC 6409, AUTH
//! RFC 4954, STARTTLS RFC 3207): greeting, EHLO/HELO, STARTTLS, AUTH
//! PLAIN/LOGIN, NOOP, RSET, QUIT; everything that needs a mailbox gets
//! `530`. Every command line is framed under a length limit and parsed
//! with smtp-proto; the whole phase runs under one deadline and one byte
//! budget. It yields login attempts; the session decides whether they
//! succeed.

use std::time::Duration;

use base64::Engine;
use smtp_proto::{
    Error as ParseError, Request, AUTH_LOGIN, AUTH_OAUTHBEARER, AUTH_PLAIN, AUTH_XOAUTH2,
};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::TlsMode;
use crate::net::stream::Stream;
use crate::proto::login::{self, FrontError, TlsPolicy, Waited};
use crate::proto::sasl;
use crate::proto::smtp::lines::Lines;
use crate::secret::{Credentials, Secret};

/// A login the client asked for.
#[derive(Debug)]
pub struct Attempt {
    pub creds: Credentials,
}

/// What one command led to.
enum Step {
    Continue,
    Login(Attempt),
    Quit,
}

/// RFC 4954 §4: an `AUTH` line may be up to 12288 octets (a PLAIN initial
/// response with a long password); other commands are far shorter.
const MAX_LINE: usize = 12288;

/// How long a goodbye may take to write once the session is over anyway.
const GOODBYE_LIMIT: Duration = Duration::from_secs(1);

const AUTH_REQUIRED: &str = "530 5.7.0 Authentication required\r\n";
const STARTTLS_FIRST: &str = "530 5.7.0 Must issue a STARTTLS command first\r\n";
const CANCELED: &str = "501 5.7.0 Authentication canceled\r\n";
const UNDECODABLE: &str = "501 5.5.2 Cannot decode response\r\n";
pub const CREDENTIALS_INVALID: &str = "535 5.7.8 Authentication credentials invalid\r\n";

pub struct Front {
    stream: Option<Stream>,
    lines: Lines,
    tls: TlsPolicy,
    deadline: Instant,
    budget: usize,
    /// The client's EHLO/HELO name since the last reset (STARTTLS).
    helo: Option<String>,
    /// Offer and take XOAUTH2 and OAUTHBEARER (the listener's `oauth`).
    pub oauth: bool,
    /// Cancelled when shutdown starts (`Ctx::draining`).
    pub draining: CancellationToken,
}

impl Front {
    pub fn new(stream: Stream, tls: TlsPolicy, deadline: Instant, max_preauth: u32) -> Front {
        let max_preauth = max_preauth as usize;
        Front {
            stream: Some(stream),
            lines: Lines::new(MAX_LINE.min(max_preauth)),
            tls,
            deadline,
            // Room for a handful of commands at the size limit, no more.
            budget: max_preauth * 4,
            helo: None,
            oauth: false,
            draining: CancellationToken::new(),
        }
    }

    /// The name the client gave in EHLO/HELO, for the backend's trace.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    fn is_tls(&self) -> bool {
        self.stream.as_ref().is_some_and(Stream::is_tls)
    }

    /// Credentials only over TLS on a listener that offers STARTTLS
    /// (RFC 3207 §4, RFC 8314 §3.3).
    fn auth_allowed(&self) -> bool {
        self.tls.mode != TlsMode::Starttls || self.is_tls()
    }

    /// The name ponte answers as: the one the client asked for over TLS
    /// (SNI, already checked by rustls), else a neutral one.
    fn hostname(&self) -> String {
        self.stream
            .as_ref()
            .and_then(Stream::sni)
            .unwrap_or("ponte")
            .to_string()
    }

    pub async fn greet(&mut self) -> Result<(), FrontError> {
        let greeting = format!("220 {} ESMTP ready\r\n", self.hostname());
        self.write(greeting.as_bytes()).await
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), FrontError> {
        login::write(self.stream.as_mut(), self.deadline, bytes).await
    }

    /// A last reply before the close: best effort, briefly.
    pub async fn goodbye(&mut self, text: &str) {
        if let Some(stream) = self.stream.as_mut() {
            let _ = tokio::time::timeout(GOODBYE_LIMIT, async {
                stream.write_all(text.as_bytes()).await?;
                stream.flush().await
            })
            .await;
        }
    }

    /// Serves commands until the client asks to log in (`Some`) or quits
    /// (`None`).
    pub async fn next_login(&mut self) -> Result<Option<Attempt>, FrontError> {
        loop {
            let line = self.read_line().await?;
            match self.handle(&line).await? {
                Step::Continue => {}
                Step::Login(a) => return Ok(Some(a)),
                Step::Quit => return Ok(None),
            }
        }
    }

    /// Gives back the stream and whatever the client pipelined after its
    /// `AUTH` (and SASL responses).
    pub fn into_parts(self) -> Option<(Stream, Vec<u8>)> {
        Some((self.stream?, self.lines.into_rest()))
    }

    /// The next whole line, line end included.
    async fn read_line(&mut self) -> Result<Vec<u8>, FrontError> {
        loop {
            match self.lines.next_line() {
                Ok(Some(line)) => return Ok(line.to_vec()),
                Ok(None) => self.fill().await?,
                // RFC 5321 §4.5.3.1.4; not worth reading on before login.
                Err(_) => {
                    self.goodbye("500 5.5.6 Line too long\r\n").await;
                    return Err(FrontError::LineTooLong);
                }
            }
        }
    }

    async fn fill(&mut self) -> Result<(), FrontError> {
        let deadline = self.deadline;
        let stream = self.stream.as_mut().ok_or(FrontError::Closed)?;
        let n = match login::client_bytes(self.lines.fill(stream), deadline, &self.draining).await {
            Waited::Read(r) => r?,
            Waited::Timeout => {
                self.goodbye("421 4.4.2 Timeout, closing connection\r\n")
                    .await;
                return Err(FrontError::Timeout);
            }
            // RFC 5321 §3.8: a server that must shut down answers 421.
            Waited::Draining => {
                self.goodbye("421 4.3.2 Server shutting down, try again later\r\n")
                    .await;
                return Err(FrontError::Shutdown);
            }
        };
        if n == 0 {
            return Err(FrontError::Closed);
        }
        self.budget = self.budget.saturating_sub(n);
        if self.budget == 0 {
            self.goodbye("421 4.7.0 Too much data before authentication\r\n")
                .await;
            return Err(FrontError::TooMuch);
        }
        Ok(())
    }

    async fn handle(&mut self, line: &[u8]) -> Result<Step, FrontError> {
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r.into_owned(),
            Err(ParseError::UnknownCommand) => {
                return self.reply("500 5.5.2 Command unrecognized\r\n").await
            }
            Err(_) => return self.reply("501 5.5.4 Syntax error\r\n").await,
        };
        match request {
            Request::Ehlo { host } => self.ehlo(host).await,
            Request::Helo { host } => {
                self.helo = Some(host);
                let text = format!("250 {}\r\n", self.hostname());
                self.reply(&text).await
            }
            Request::StartTls => self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, Secret::new(initial_response)).await,
            Request::Mail { .. }
            | Request::Rcpt { .. }
            | Request::Data
            | Request::Burl { .. }
            | Request::Vrfy { .. }
            | Request::Expn { .. } => self.reply(AUTH_REQUIRED).await,
            // Its chunk follows at once, unannounced (RFC 3030 §2): it
            // would be read as commands. CHUNKING is never offered.
            Request::Bdat { .. } => {
                self.goodbye(AUTH_REQUIRED).await;
                Err(FrontError::Protocol("BDAT before authentication"))
            }
            Request::Noop { .. } | Request::Rset => self.reply("250 2.0.0 OK\r\n").await,
            Request::Help { .. } => {
                self.reply("214 2.0.0 Authenticate, then send your message\r\n")
                    .await
            }
            Request::Quit => {
                self.write(b"221 2.0.0 Bye\r\n").await?;
                Ok(Step::Quit)
            }
            Request::Lhlo { .. } | Request::Etrn { .. } | Request::Atrn { .. } => {
                self.reply("502 5.5.1 Command not implemented\r\n").await
            }
        }
    }

    async fn reply(&mut self, text: &str) -> Result<Step, FrontError> {
        self.write(text.as_bytes()).await?;
        Ok(Step::Continue)
    }

    /// Offers only what ponte itself honours before login; after it the
    /// backend answers everything, and it supports these too.
    async fn ehlo(&mut self, host: String) -> Result<Step, FrontError> {
        self.helo = Some(host);
        let mut lines = vec![
            self.hostname(),
            "PIPELINING".into(),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.tls.mode == TlsMode::Starttls && !self.is_tls() {
            lines.push("STARTTLS".into());
        }
        if self.auth_allowed() {
            lines.push(if self.oauth {
                "AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER".into()
            } else {
                "AUTH PLAIN LOGIN".into()
            });
        }
        let last = lines.len() - 1;
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
            .collect();
        self.reply(&text).await
    }

    async fn starttls(&mut self) -> Result<Step, FrontError> {
        if self.is_tls() {
            return self.reply("503 5.5.1 TLS already active\r\n").await;
        }
        let config = match (&self.tls.config, self.tls.mode) {
            (Some(c), TlsMode::Starttls) => c.clone(),
            _ => return self.reply("502 5.5.1 STARTTLS not available\r\n").await,
        };
        self.write(b"220 2.0.0 Ready to start TLS\r\n").await?;
        // Anything pipelined behind STARTTLS came in clear text and may have
        // been injected: drop it, and forget the EHLO (RFC 3207 §4.2).
        self.lines.clear();
        self.helo = None;
        login::start_tls(&mut self.stream, config, self.deadline).await?;
        Ok(Step::Continue)
    }

    async fn auth(&mut self, mechanism: u64, ir: Secret<String>) -> Result<Step, FrontError> {
        if self.helo.is_none() {
            return self.reply("503 5.5.1 Send EHLO first\r\n").await;
        }
        if !self.auth_allowed() {
            return self.reply(STARTTLS_FIRST).await;
        }
        let ir = (!ir.expose().is_empty()).then_some(ir);
        let creds = match mechanism {
            AUTH_PLAIN => match self.sasl_step(ir, "").await? {
                Sasl::Data(data) => sasl::decode_plain(data.expose()),
                Sasl::Refused(text) => return self.reply(text).await,
            },
            AUTH_LOGIN => {
                let user = match self.sasl_step(ir, "VXNlcm5hbWU6").await? {
                    Sasl::Data(d) => d,
                    Sasl::Refused(text) => return self.reply(text).await,
                };
                let pass = match self.sasl_step(None, "UGFzc3dvcmQ6").await? {
                    Sasl::Data(d) => d,
                    Sasl::Refused(text) => return self.reply(text).await,
                };
                sasl::credentials(user.expose(), pass.expose())
            }
            AUTH_XOAUTH2 | AUTH_OAUTHBEARER if self.oauth => match self.sasl_step(ir, "").await? {
                Sasl::Data(data) if mechanism == AUTH_XOAUTH2 => {
                    sasl::decode_xoauth2(data.expose())
                }
                Sasl::Data(data) => sasl::decode_oauthbearer(data.expose()),
                Sasl::Refused(text) => return self.reply(text).await,
            },
            _ => {
                return self
                    .reply("504 5.5.4 Unrecognized authentication type\r\n")
                    .await
            }
        };
        match creds {
            Ok(creds) => Ok(Step::Login(Attempt { creds })),
            Err(_) => self.reply(CREDENTIALS_INVALID).await,
        }
    }

    /// One SASL round (RFC 4954 §4): the initial response if the client
    /// sent one, else a `334 challenge` and the client's next line.
    async fn sasl_step(
        &mut self,
        ir: Option<Secret<String>>,
        challenge: &str,
    ) -> Result<Sasl, FrontError> {
        let response = match ir {
            Some(ir) => ir.expose().as_bytes().to_vec(),
            None => {
                self.write(format!("334 {challenge}\r\n").as_bytes())
                    .await?;
                self.read_line().await?
            }
        };
        Ok(decode_response(&response))
    }
}

/// A SASL response as the client sent it, decoded.
#[doc(hidden)]
pub enum Sasl {
    Data(Secret<Vec<u8>>),
    /// Canceled or undecodable: the reply to give.
    Refused(&'static str),
}

/// Base64 of a SASL response line; `=` is an empty response, `*` cancels.
#[doc(hidden)]
pub fn decode_response(line: &[u8]) -> Sasl {
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    match text {
        b"*" => Sasl::Refused(CANCELED),
        b"=" => Sasl::Data(Secret::new(Vec::new())),
        _ => match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(data) => Sasl::Data(Secret::new(data)),
            Err(_) => Sasl::Refused(UNDECODABLE),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: Sasl) -> Option<Vec<u8>> {
        match s {
            Sasl::Data(d) => Some(d.expose().clone()),
            Sasl::Refused(_) => None,
        }
    }

    #[test]
    fn sasl_responses_decode_cancel_and_empty() {
        assert_eq!(
            data(decode_response(b"AGFAYgBwdw==\r\n")).as_deref(),
            Some(&b"\0a@b\0pw"[..])
        );
        assert_eq!(data(decode_response(b"=\r\n")).as_deref(), Some(&b""[..]));
        assert!(matches!(decode_response(b"*\r\n"), Sasl::Refused(CANCELED)));
        assert!(matches!(
            decode_response(b"not base64!\r\n"),
            Sasl::Refused(UNDECODABLE)
        ));
    }

    #[test]
    fn smtp_proto_reads_what_the_front_relies_on() {
        let parse = |s: &str| Request::parse(&mut s.as_bytes().iter()).map(|r| r.into_owned());
        assert_eq!(
            parse("AUTH PLAIN =\r\n"),
            Ok(Request::Auth {
                mechanism: AUTH_PLAIN,
                initial_response: "=".into()
            })
        );
        assert_eq!(
            parse("auth login\r\n"),
            Ok(Request::Auth {
                mechanism: AUTH_LOGIN,
                initial_response: String::new()
            })
        );
        assert!(matches!(
            parse("AUTH CRAM-MD5\r\n"),
            Ok(Request::Auth { mechanism, .. }) if mechanism != AUTH_PLAIN && mechanism != AUTH_LOGIN
        ));
        assert_eq!(parse("XYZZY\r\n"), Err(ParseError::UnknownCommand));
        assert_eq!(parse("\r\n"), Err(ParseError::UnknownCommand));
        assert!(parse("EHLO\r\n").is_err());
        assert_eq!(parse("starttls\r\n"), Ok(Request::StartTls));
    }
}
