//! The IMAP server side up to authentication (RFC 9051 / RFC 3501 not
//! authenticated state): greeting, CAPABILITY, NOOP, ID, STARTTLS, LOGIN,
//! AUTHENTICATE PLAIN/LOGIN (with SASL-IR), LOGOUT. Every client message is
//! framed and parsed with imap-codec; the whole phase runs under one
//! deadline and one byte budget. It yields login attempts; the session
//! decides whether they succeed.

use base64::Engine;
use imap_codec::fragmentizer::DecodeMessageError;
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::LiteralMode;
use imap_codec::{AuthenticateDataCodec, CommandCodec};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::framer::{Frame, Framer};
use crate::config::TlsMode;
use crate::net::stream::Stream;
use crate::proto::login::{self, FrontError, TlsPolicy, Waited};
use crate::proto::sasl::{self, Mechanism};
use crate::secret::Credentials;

/// A login the client asked for, with the tag to answer it under.
#[derive(Debug)]
pub struct Attempt {
    pub tag: String,
    pub creds: Credentials,
}

/// What one client message led to.
enum Step {
    Continue,
    Login(Attempt),
    Logout,
}

pub struct Front {
    stream: Option<Stream>,
    framer: Framer,
    tls: TlsPolicy,
    deadline: Instant,
    budget: usize,
    /// The client's own `ID` fields, passed on to the backend.
    pub client_id: Vec<(String, String)>,
    /// Offer and take XOAUTH2 and OAUTHBEARER (the listener's `oauth`).
    pub oauth: bool,
    /// Cancelled when shutdown starts (`Ctx::draining`).
    pub draining: CancellationToken,
}

const MAX_ID_FIELDS: usize = 30;
#[doc(hidden)]
pub const MAX_ID_VALUE: usize = 1024;

impl Front {
    pub fn new(stream: Stream, tls: TlsPolicy, deadline: Instant, max_message: u32) -> Front {
        Front {
            stream: Some(stream),
            framer: Framer::new(max_message),
            tls,
            deadline,
            // Room for a handful of commands at the size limit, no more.
            budget: max_message as usize * 4,
            client_id: Vec::new(),
            oauth: false,
            draining: CancellationToken::new(),
        }
    }

    fn is_tls(&self) -> bool {
        self.stream.as_ref().is_some_and(Stream::is_tls)
    }

    /// Plain-text credentials are refused until STARTTLS on a listener that
    /// requires it (LOGINDISABLED, RFC 9051 §6.2.3).
    fn login_disabled(&self) -> bool {
        self.tls.mode == TlsMode::Starttls && !self.is_tls()
    }

    fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev1 SASL-IR ID");
        if self.tls.mode == TlsMode::Starttls && !self.is_tls() {
            caps.push_str(" STARTTLS LOGINDISABLED");
        } else {
            caps.push_str(" AUTH=PLAIN AUTH=LOGIN");
            if self.oauth {
                caps.push_str(" AUTH=XOAUTH2 AUTH=OAUTHBEARER");
            }
        }
        caps
    }

    pub async fn greet(&mut self) -> Result<(), FrontError> {
        let greeting = format!("* OK [CAPABILITY {}] ponte ready.\r\n", self.capabilities());
        self.write(greeting.as_bytes()).await
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), FrontError> {
        login::write(self.stream.as_mut(), self.deadline, bytes).await
    }

    /// Serves commands until the client asks to log in (`Some`) or leaves
    /// (`None`).
    pub async fn next_login(&mut self) -> Result<Option<Attempt>, FrontError> {
        loop {
            self.read_message().await?;
            match self.handle_message().await? {
                Step::Continue => {}
                Step::Login(a) => return Ok(Some(a)),
                Step::Logout => return Ok(None),
            }
        }
    }

    /// Gives back the stream and whatever the client pipelined after its
    /// login command.
    pub fn into_parts(self) -> Option<(Stream, Vec<u8>)> {
        let rest = self.framer.into_rest();
        Some((self.stream?, rest))
    }

    /// Reads until one whole message is framed, answering literal
    /// announcements on the way.
    async fn read_message(&mut self) -> Result<(), FrontError> {
        loop {
            match self.framer.next_frame() {
                Some(Frame::Message) => return Ok(()),
                Some(Frame::Literal { mode, length }) => self.on_literal(mode, length).await?,
                None => self.fill().await?,
            }
        }
    }

    /// Reads one SASL response line (RFC 9051 §6.2.2: base64 or `*`).
    /// `false` if the client announced a literal instead, which a SASL
    /// response cannot be: it is refused, never invited.
    async fn read_sasl_line(&mut self) -> Result<bool, FrontError> {
        loop {
            let frame = self.framer.next_frame();
            // Over the limit the framer's raw copy is out of step (it holds
            // more than the message it hands out): end, as for a command,
            // rather than pass misframed bytes on after a later login.
            if frame.is_some() && self.framer.is_too_long() {
                self.write(b"* BYE Line too long.\r\n").await?;
                return Err(FrontError::TooMuch);
            }
            match frame {
                Some(Frame::Message) => return Ok(true),
                Some(Frame::Literal {
                    mode: LiteralMode::Sync,
                    ..
                }) => {
                    self.framer.skip_message();
                    return Ok(false);
                }
                // Already on its way: framed as part of this message, which
                // then fails to decode as a SASL response.
                Some(Frame::Literal { .. }) => {}
                None => self.fill().await?,
            }
        }
    }

    async fn fill(&mut self) -> Result<(), FrontError> {
        if self.framer.pending() > self.budget {
            self.write(b"* BYE Too much data before login.\r\n").await?;
            return Err(FrontError::TooMuch);
        }
        let deadline = self.deadline;
        let Some(stream) = self.stream.as_mut() else {
            return Err(FrontError::Closed);
        };
        let framer = &mut self.framer;
        let read = login::client_bytes(framer.fill(stream), deadline, &self.draining).await;
        let n = match read {
            Waited::Read(r) => r?,
            Waited::Timeout => {
                let _ = self
                    .write(b"* BYE Autologout; idle for too long.\r\n")
                    .await;
                return Err(FrontError::Timeout);
            }
            Waited::Draining => {
                let _ = self
                    .write(b"* BYE Server shutting down, please reconnect.\r\n")
                    .await;
                return Err(FrontError::Shutdown);
            }
        };
        if n == 0 {
            return Err(FrontError::Closed);
        }
        self.budget = self.budget.saturating_sub(n);
        if self.budget == 0 {
            self.write(b"* BYE Too much data before login.\r\n").await?;
            return Err(FrontError::TooMuch);
        }
        Ok(())
    }

    async fn on_literal(&mut self, mode: LiteralMode, length: u32) -> Result<(), FrontError> {
        // A line already over the limit is cut in the framer's buffer:
        // skipping it would leave the framer's byte count wrong.
        if self.framer.is_too_long() {
            self.write(b"* BYE Line too long.\r\n").await?;
            return Err(FrontError::TooMuch);
        }
        if length <= self.framer.max() {
            if mode == LiteralMode::Sync {
                self.write(b"+ Ready for literal data\r\n").await?;
            }
            return Ok(());
        }
        match mode {
            // Not invited, so never sent: refuse and go on (RFC 7888 §4).
            LiteralMode::Sync => {
                let tag = self.framer.tag().unwrap_or_else(|| "*".into());
                self.framer.skip_message();
                self.write(format!("{tag} BAD [TOOBIG] Literal too large.\r\n").as_bytes())
                    .await
            }
            // Already on its way: not worth reading before login.
            LiteralMode::NonSync => {
                self.write(b"* BYE [TOOBIG] Literal too large.\r\n").await?;
                Err(FrontError::TooMuch)
            }
        }
    }

    async fn handle_message(&mut self) -> Result<Step, FrontError> {
        if self.framer.is_too_long() {
            self.write(b"* BYE Line too long.\r\n").await?;
            return Err(FrontError::TooMuch);
        }
        let parsed = match self.framer.decode(&CommandCodec::default()) {
            Ok(cmd) => Ok((cmd.tag.as_ref().to_string(), cmd.body)),
            Err(DecodeMessageError::DecodingRemainder { message, .. }) => {
                Err(Some(message.tag.as_ref().to_string()))
            }
            Err(_) => Err(self.framer.tag()),
        };
        let (tag, body) = match parsed {
            Ok(ok) => ok,
            Err(tag) => {
                let tag = tag.unwrap_or_else(|| "*".into());
                self.write(format!("{tag} BAD Syntax error.\r\n").as_bytes())
                    .await?;
                return Ok(Step::Continue);
            }
        };
        match body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.reply(format!(
                    "* CAPABILITY {caps}\r\n{tag} OK Capability completed.\r\n"
                ))
                .await
            }
            CommandBody::Noop => self.reply(format!("{tag} OK NOOP completed.\r\n")).await,
            CommandBody::Logout => {
                self.write(
                    format!("* BYE Logging out.\r\n{tag} OK Logout completed.\r\n").as_bytes(),
                )
                .await?;
                Ok(Step::Logout)
            }
            CommandBody::Id { parameters } => {
                self.client_id = parameters
                    .unwrap_or_default()
                    .iter()
                    .take(MAX_ID_FIELDS)
                    .filter_map(|(k, v)| id_field(k.as_ref(), v.0.as_ref().map(|v| v.as_ref())))
                    .collect();
                self.reply(format!(
                    "* ID (\"name\" \"ponte\")\r\n{tag} OK ID completed.\r\n"
                ))
                .await
            }
            CommandBody::StartTLS => self.starttls(tag).await,
            CommandBody::Login { username, password } => {
                let creds = sasl::credentials(username.as_ref(), password.declassify().as_ref());
                self.login(tag, creds.map_err(|_| ())).await
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                let ir = initial_response.map(|s| s.declassify().to_vec());
                let mech = match mechanism {
                    AuthMechanism::Plain => Some(Mechanism::Plain),
                    AuthMechanism::Login => Some(Mechanism::Login),
                    AuthMechanism::XOAuth2 if self.oauth => Some(Mechanism::XOAuth2),
                    AuthMechanism::OAuthBearer if self.oauth => Some(Mechanism::OAuthBearer),
                    _ => None,
                };
                self.authenticate(tag, mech, ir).await
            }
            _ => {
                self.reply(format!("{tag} BAD Command not valid before login.\r\n"))
                    .await
            }
        }
    }

    async fn reply(&mut self, text: String) -> Result<Step, FrontError> {
        self.write(text.as_bytes()).await?;
        Ok(Step::Continue)
    }

    async fn login(
        &mut self,
        tag: String,
        creds: Result<Credentials, ()>,
    ) -> Result<Step, FrontError> {
        if self.login_disabled() {
            return self
                .reply(format!(
                    "{tag} NO [PRIVACYREQUIRED] Use STARTTLS first.\r\n"
                ))
                .await;
        }
        match creds {
            Ok(creds) => Ok(Step::Login(Attempt { tag, creds })),
            Err(()) => {
                self.reply(format!(
                    "{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
                ))
                .await
            }
        }
    }

    async fn starttls(&mut self, tag: String) -> Result<Step, FrontError> {
        let config = match (&self.tls.config, self.tls.mode, self.is_tls()) {
            (Some(c), TlsMode::Starttls, false) => c.clone(),
            _ => {
                return self
                    .reply(format!("{tag} BAD STARTTLS not available.\r\n"))
                    .await
            }
        };
        self.write(format!("{tag} OK Begin TLS negotiation now.\r\n").as_bytes())
            .await?;
        // Anything pipelined behind STARTTLS came in clear text and may have
        // been injected: drop it with the old framer (RFC 9051 §6.2.1).
        self.framer = Framer::new(self.framer.max());
        login::start_tls(&mut self.stream, config, self.deadline).await?;
        Ok(Step::Continue)
    }

    async fn authenticate(
        &mut self,
        tag: String,
        mech: Option<Mechanism>,
        ir: Option<Vec<u8>>,
    ) -> Result<Step, FrontError> {
        let Some(mech) = mech else {
            return self
                .reply(format!(
                    "{tag} NO Unsupported authentication mechanism.\r\n"
                ))
                .await;
        };
        if self.login_disabled() {
            return self
                .reply(format!(
                    "{tag} NO [PRIVACYREQUIRED] Use STARTTLS first.\r\n"
                ))
                .await;
        }
        let creds = match mech {
            Mechanism::Plain => {
                let Some(data) = self.sasl_step(ir, "").await? else {
                    return self.cancelled(tag).await;
                };
                sasl::decode_plain(&data).map_err(|_| ())
            }
            Mechanism::Login => {
                let Some(user) = self.sasl_step(ir, "VXNlcm5hbWU6").await? else {
                    return self.cancelled(tag).await;
                };
                let Some(pass) = self.sasl_step(None, "UGFzc3dvcmQ6").await? else {
                    return self.cancelled(tag).await;
                };
                sasl::credentials(&user, &pass).map_err(|_| ())
            }
            Mechanism::XOAuth2 | Mechanism::OAuthBearer => {
                let Some(data) = self.sasl_step(ir, "").await? else {
                    return self.cancelled(tag).await;
                };
                if mech == Mechanism::XOAuth2 {
                    sasl::decode_xoauth2(&data).map_err(|_| ())
                } else {
                    sasl::decode_oauthbearer(&data).map_err(|_| ())
                }
            }
        };
        self.login(tag, creds).await
    }

    async fn cancelled(&mut self, tag: String) -> Result<Step, FrontError> {
        self.reply(format!("{tag} BAD Authentication canceled.\r\n"))
            .await
    }

    /// One SASL round: the initial response if the client sent one, else a
    /// `+ challenge` and the client's next line. `None` when the client
    /// cancels with `*` or sends something that is not base64.
    async fn sasl_step(
        &mut self,
        ir: Option<Vec<u8>>,
        challenge: &str,
    ) -> Result<Option<Vec<u8>>, FrontError> {
        if let Some(data) = ir {
            return Ok(Some(data));
        }
        self.write(format!("+ {challenge}\r\n").as_bytes()).await?;
        if !self.read_sasl_line().await? {
            return Ok(None);
        }
        Ok(
            match self.framer.decode(&AuthenticateDataCodec::default()) {
                Ok(AuthenticateData::Continue(data)) => Some(data.declassify().to_vec()),
                Ok(AuthenticateData::Cancel) | Err(_) => None,
            },
        )
    }
}

/// Keeps an `ID` field the backend may see, bounded in size. The client
/// cannot set the `x-*` fields ponte uses to forward its address.
///
/// Only the field names RFC 2971 §3.3 defines pass, and only printable
/// ASCII values: the fields are written into a command to the backend, so
/// a CR or LF here would inject commands before login.
#[doc(hidden)]
pub fn id_field(key: &[u8], value: Option<&[u8]>) -> Option<(String, String)> {
    const FIELDS: [&str; 11] = [
        "name",
        "version",
        "os",
        "os-version",
        "vendor",
        "support-url",
        "address",
        "date",
        "command",
        "arguments",
        "environment",
    ];
    let key = std::str::from_utf8(key).ok()?.to_ascii_lowercase();
    let value = value?;
    if !FIELDS.contains(&key.as_str())
        || value.len() > MAX_ID_VALUE
        || !value.iter().all(|b| (0x20..0x7f).contains(b))
    {
        return None;
    }
    Some((key, String::from_utf8_lossy(value).into_owned()))
}

/// Base64 of a SASL response, for the backend.
pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Found by the `imap_preauth` fuzz target: a SASL response line over
    /// the limit left the framer's raw copy out of step, so the bytes
    /// pipelined after a later login (passed on to the backend) began with
    /// the rest of that line instead of the client's next command.
    #[tokio::test]
    async fn an_oversized_sasl_response_ends_the_session() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let policy = TlsPolicy {
            mode: TlsMode::None,
            config: None,
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut front = Front::new(Stream::Plain(server), policy, deadline, 32);
        let long = "X".repeat(40);
        client
            .write_all(
                format!("a AUTHENTICATE PLAIN\r\n{long}\r\nb LOGIN alice pw\r\nc NOOP\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let result = front.next_login().await;
        assert!(matches!(result, Err(FrontError::TooMuch)), "{result:?}");
        drop(front);
        let mut answers = String::new();
        client.read_to_string(&mut answers).await.unwrap();
        assert!(answers.ends_with("* BYE Line too long.\r\n"), "{answers:?}");
    }
}
