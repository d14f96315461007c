//! The POP3 server side up to authentication (RFC 1939 AUTHORIZATION
//! state, CAPA from RFC 2449, STLS from RFC 2595, AUTH from RFC 5034,
//! response codes from RFC 2449/3206): greeting, CAPA, STLS, USER/PASS,
//! AUTH PLAIN and LOGIN, QUIT. APOP is refused: it cannot be proxied.
//!
//! Hand-written on purpose: no maintained crate parses POP3 on the server
//! side, and the whole grammar is one bounded line per command, a keyword
//! and space-separated arguments (RFC 1939 §3).

use base64::Engine;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::TlsMode;
use crate::net::stream::Stream;
use crate::proto::login::{self, FrontError, TlsPolicy, Waited};
use crate::proto::sasl;
use crate::secret::Credentials;

/// Longest command line (RFC 2449 allows 255 octets; SASL responses are
/// longer, base64 of a PLAIN response with a long password).
const MAX_LINE: usize = 2048;

pub struct Front {
    stream: Option<Stream>,
    buf: Vec<u8>,
    tls: TlsPolicy,
    deadline: Instant,
    budget: usize,
    user: Option<String>,
    /// Offer and take XOAUTH2 and OAUTHBEARER (the listener's `oauth`).
    pub oauth: bool,
    /// Cancelled when shutdown starts (`Ctx::draining`).
    pub draining: CancellationToken,
}

/// What one command led to.
enum Step {
    Continue,
    Login(Credentials),
    Quit,
}

impl Front {
    pub fn new(stream: Stream, tls: TlsPolicy, deadline: Instant, budget: usize) -> Front {
        Front {
            stream: Some(stream),
            buf: Vec::new(),
            tls,
            deadline,
            budget,
            user: None,
            oauth: false,
            draining: CancellationToken::new(),
        }
    }

    fn is_tls(&self) -> bool {
        self.stream.as_ref().is_some_and(Stream::is_tls)
    }

    /// Credentials only over TLS on a listener that requires it.
    fn login_disabled(&self) -> bool {
        self.tls.mode == TlsMode::Starttls && !self.is_tls()
    }

    pub async fn greet(&mut self) -> Result<(), FrontError> {
        self.write(b"+OK ponte POP3 ready.\r\n").await
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), FrontError> {
        login::write(self.stream.as_mut(), self.deadline, bytes).await
    }

    /// Serves commands until the client gives credentials (`Some`) or quits.
    pub async fn next_login(&mut self) -> Result<Option<Credentials>, FrontError> {
        loop {
            let line = self.read_line().await?;
            match self.handle(&line).await? {
                Step::Continue => {}
                Step::Login(c) => return Ok(Some(c)),
                Step::Quit => return Ok(None),
            }
        }
    }

    /// The stream and whatever the client pipelined behind its login.
    pub fn into_parts(self) -> Option<(Stream, Vec<u8>)> {
        Some((self.stream?, self.buf))
    }

    /// One command line, without its CRLF (a bare LF is accepted).
    async fn read_line(&mut self) -> Result<String, FrontError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line);
                return Ok(line.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buf.len() > MAX_LINE {
                self.write(b"-ERR Line too long.\r\n").await?;
                return Err(FrontError::TooMuch);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), FrontError> {
        let deadline = self.deadline;
        let stream = self.stream.as_mut().ok_or(FrontError::Closed)?;
        let mut chunk = [0u8; 1024];
        let n = match login::client_bytes(stream.read(&mut chunk), deadline, &self.draining).await {
            Waited::Read(r) => r?,
            Waited::Timeout => {
                let _ = self.write(b"-ERR Disconnected for inactivity.\r\n").await;
                return Err(FrontError::Timeout);
            }
            // No command is pending, but a client reads this before the
            // close and knows to come back (RFC 2449's SYS/TEMP).
            Waited::Draining => {
                let _ = self
                    .write(b"-ERR [SYS/TEMP] Server shutting down, please reconnect.\r\n")
                    .await;
                return Err(FrontError::Shutdown);
            }
        };
        if n == 0 {
            return Err(FrontError::Closed);
        }
        self.budget = self.budget.saturating_sub(n);
        if self.budget == 0 {
            self.write(b"-ERR Too much data before login.\r\n").await?;
            return Err(FrontError::TooMuch);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn handle(&mut self, line: &str) -> Result<Step, FrontError> {
        let (keyword, args) = line.split_once(' ').unwrap_or((line, ""));
        match keyword.to_ascii_uppercase().as_str() {
            "CAPA" => self.reply(&self.capabilities()).await,
            "STLS" => self.stls().await,
            "USER" => self.user(args).await,
            "PASS" => self.pass(args).await,
            "AUTH" => self.auth(args).await,
            "APOP" => {
                self.reply("-ERR APOP is not supported; use USER/PASS or AUTH.\r\n")
                    .await
            }
            "QUIT" => {
                self.write(b"+OK Bye.\r\n").await?;
                Ok(Step::Quit)
            }
            "" => self.reply("-ERR Empty command.\r\n").await,
            _ => self.reply("-ERR Unknown command.\r\n").await,
        }
    }

    async fn reply(&mut self, text: &str) -> Result<Step, FrontError> {
        self.write(text.as_bytes()).await?;
        Ok(Step::Continue)
    }

    fn capabilities(&self) -> String {
        let mut caps = String::from("+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
        if self.login_disabled() {
            caps.push_str("STLS\r\n");
        } else {
            caps.push_str(if self.oauth {
                "USER\r\nSASL PLAIN LOGIN XOAUTH2 OAUTHBEARER\r\n"
            } else {
                "USER\r\nSASL PLAIN LOGIN\r\n"
            });
        }
        caps.push_str("IMPLEMENTATION ponte\r\n.\r\n");
        caps
    }

    async fn stls(&mut self) -> Result<Step, FrontError> {
        let config = match (&self.tls.config, self.tls.mode, self.is_tls()) {
            (Some(c), TlsMode::Starttls, false) => c.clone(),
            _ => return self.reply("-ERR STLS not available.\r\n").await,
        };
        self.write(b"+OK Begin TLS negotiation.\r\n").await?;
        // Whatever came pipelined behind STLS was sent in clear text and
        // may have been injected: it is dropped (RFC 2595 §4).
        self.buf.clear();
        self.user = None;
        login::start_tls(&mut self.stream, config, self.deadline).await?;
        Ok(Step::Continue)
    }

    async fn user(&mut self, name: &str) -> Result<Step, FrontError> {
        if self.login_disabled() {
            return self.reply(PLAINTEXT_DISALLOWED).await;
        }
        if name.is_empty() {
            return self.reply("-ERR No user name given.\r\n").await;
        }
        self.user = Some(name.to_string());
        self.reply("+OK\r\n").await
    }

    async fn pass(&mut self, password: &str) -> Result<Step, FrontError> {
        if self.login_disabled() {
            return self.reply(PLAINTEXT_DISALLOWED).await;
        }
        let Some(user) = self.user.take() else {
            return self.reply("-ERR USER first.\r\n").await;
        };
        self.login(sasl::credentials(user.as_bytes(), password.as_bytes()))
            .await
    }

    async fn login(
        &mut self,
        creds: Result<Credentials, sasl::SaslError>,
    ) -> Result<Step, FrontError> {
        match creds {
            Ok(c) => Ok(Step::Login(c)),
            Err(_) => self.reply(AUTH_FAILED).await,
        }
    }

    /// AUTH (RFC 5034): PLAIN and LOGIN, with or without an initial
    /// response; a bare AUTH lists the mechanisms (Outlook asks so).
    async fn auth(&mut self, args: &str) -> Result<Step, FrontError> {
        let mut words = args.split_whitespace();
        let mechanism = words.next().map(str::to_ascii_uppercase);
        let initial = words.next().map(str::to_string);
        let Some(mechanism) = mechanism else {
            return self
                .reply(if self.oauth {
                    "+OK\r\nPLAIN\r\nLOGIN\r\nXOAUTH2\r\nOAUTHBEARER\r\n.\r\n"
                } else {
                    "+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"
                })
                .await;
        };
        if self.login_disabled() {
            return self.reply(PLAINTEXT_DISALLOWED).await;
        }
        let creds = match mechanism.as_str() {
            "PLAIN" => match self.sasl_step(initial, "").await? {
                Some(data) => sasl::decode_plain(&data),
                None => return self.reply("-ERR Authentication canceled.\r\n").await,
            },
            "LOGIN" => {
                let Some(user) = self.sasl_step(initial, "VXNlcm5hbWU6").await? else {
                    return self.reply("-ERR Authentication canceled.\r\n").await;
                };
                let Some(pass) = self.sasl_step(None, "UGFzc3dvcmQ6").await? else {
                    return self.reply("-ERR Authentication canceled.\r\n").await;
                };
                sasl::credentials(&user, &pass)
            }
            "XOAUTH2" | "OAUTHBEARER" if self.oauth => match self.sasl_step(initial, "").await? {
                Some(data) if mechanism == "XOAUTH2" => sasl::decode_xoauth2(&data),
                Some(data) => sasl::decode_oauthbearer(&data),
                None => return self.reply("-ERR Authentication canceled.\r\n").await,
            },
            _ => {
                return self
                    .reply("-ERR Unsupported authentication mechanism.\r\n")
                    .await
            }
        };
        self.login(creds).await
    }

    /// One SASL round: the initial response (`=` is empty) or a `+`
    /// challenge and the client's line. `None` if cancelled (`*`) or not
    /// base64.
    async fn sasl_step(
        &mut self,
        initial: Option<String>,
        challenge: &str,
    ) -> Result<Option<Vec<u8>>, FrontError> {
        let line = match initial {
            Some(ir) => ir,
            None => {
                self.write(format!("+ {challenge}\r\n").as_bytes()).await?;
                self.read_line().await?
            }
        };
        if line == "*" {
            return Ok(None);
        }
        if line == "=" {
            return Ok(Some(Vec::new()));
        }
        Ok(base64::engine::general_purpose::STANDARD
            .decode(line.trim())
            .ok())
    }
}

pub const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed.\r\n";
const PLAINTEXT_DISALLOWED: &str =
    "-ERR [AUTH] Plaintext authentication is disallowed before STLS.\r\n";
