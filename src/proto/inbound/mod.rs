//! Inbound SMTP (RFC 5321): mail from other providers to the old MX
//! name. No AUTH; STARTTLS when the listener has `tls = "starttls"`. Each
//! recipient is routed by its mailbox state (see `rcpt.rs`); after DATA
//! the message is relayed synchronously to the one live backend all its
//! recipients share, or stored in the spool for the delivery worker
//! (`deliver.rs`). Commands are framed under a line limit, parsed with
//! smtp-proto, and read under a timeout; DATA is bounded by `SIZE`.

mod data;
// For the fuzz target: the DATA reader's receiver, as `read_data` starts it.
#[doc(hidden)]
pub use self::data::{data_receiver, DataEnd};
mod deliver;
mod rcpt;
mod trace;

use std::time::Duration;

use smtp_proto::{MailFrom, Request, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use self::deliver::Transaction;
use crate::config::TlsMode;
use crate::net::stream::Stream;
use crate::proto::smtp::lines::Lines;
use crate::proto::Outcome;
use crate::server::{ConnInfo, Ctx};

/// Why a session ended other than by QUIT.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client closed the connection")]
    Closed,
    #[error("timeout")]
    Timeout,
    #[error("line too long")]
    LineTooLong,
    #[error("message over the size limit")]
    TooBig,
    #[error("server shutting down")]
    Shutdown,
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// RFC 5321 §4.5.3.1.4 says 512 octets; room for extension parameters.
const MAX_LINE: usize = 2048;
/// RFC 5321 §4.5.3.1.8: at least 100 must be accepted.
const MAX_RECIPIENTS: usize = 100;
/// How long a goodbye may take once the session is over anyway.
const GOODBYE_LIMIT: Duration = Duration::from_secs(1);

const OK: &str = "250 2.0.0 OK\r\n";
const BAD_SEQUENCE: &str = "503 5.5.1 Bad sequence of commands\r\n";

/// What one command led to.
enum Step {
    Continue,
    Quit,
}

pub async fn serve(stream: Stream, conn: &ConnInfo, ctx: &Ctx) -> Outcome {
    let mut s = Session {
        stream: Some(stream),
        lines: Lines::new(MAX_LINE),
        conn,
        ctx,
        helo: None,
        tx: None,
        messages: 0,
    };
    let end = match s.run().await {
        Ok(()) => "quit".to_string(),
        Err(e) => e.to_string(),
    };
    Outcome::Inbound {
        messages: s.messages,
        end,
    }
}

struct Session<'a> {
    stream: Option<Stream>,
    lines: Lines,
    conn: &'a ConnInfo,
    ctx: &'a Ctx,
    /// The client's EHLO/HELO name since the last reset (STARTTLS).
    helo: Option<String>,
    tx: Option<Transaction>,
    messages: u32,
}

impl Session<'_> {
    async fn run(&mut self) -> Result<(), SessionError> {
        let greeting = format!("220 {} ESMTP ready\r\n", self.hostname());
        self.write(greeting.as_bytes()).await?;
        loop {
            let line = self.read_command().await?;
            if let Step::Quit = self.handle(&line).await? {
                return Ok(());
            }
        }
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

    fn is_tls(&self) -> bool {
        self.stream.as_ref().is_some_and(Stream::is_tls)
    }

    fn timeout(&self) -> Duration {
        self.ctx.config.limits.preauth_timeout
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        let limit = self.timeout();
        let stream = self.stream.as_mut().ok_or(SessionError::Closed)?;
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SessionError::Timeout),
        }
    }

    async fn reply(&mut self, text: &str) -> Result<Step, SessionError> {
        self.write(text.as_bytes()).await?;
        Ok(Step::Continue)
    }

    /// A last reply before the close: best effort, briefly.
    async fn goodbye(&mut self, text: &str) {
        if let Some(stream) = self.stream.as_mut() {
            let _ = tokio::time::timeout(GOODBYE_LIMIT, async {
                stream.write_all(text.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
        }
    }

    /// The next command line; a shutdown past its grace period ends the
    /// session here, between commands (RFC 5321 §3.8: 421).
    async fn read_command(&mut self) -> Result<Vec<u8>, SessionError> {
        loop {
            match self.lines.next_line() {
                Ok(Some(line)) => return Ok(line.to_vec()),
                Ok(None) => {}
                Err(_) => {
                    self.goodbye("500 5.5.6 Line too long\r\n").await;
                    return Err(SessionError::LineTooLong);
                }
            }
            let stop = self.ctx.hard_stop.clone();
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    self.goodbye("421 4.3.2 Server shutting down, try again later\r\n").await;
                    return Err(SessionError::Shutdown);
                }
                r = self.fill() => r?,
            }
        }
    }

    /// Reads more from the client under the command timeout.
    async fn fill(&mut self) -> Result<(), SessionError> {
        let limit = self.timeout();
        let stream = self.stream.as_mut().ok_or(SessionError::Closed)?;
        match tokio::time::timeout(limit, self.lines.fill(stream)).await {
            Ok(Ok(0)) => Err(SessionError::Closed),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                self.goodbye("421 4.4.2 Timeout, closing connection\r\n")
                    .await;
                Err(SessionError::Timeout)
            }
        }
    }

    async fn handle(&mut self, line: &[u8]) -> Result<Step, SessionError> {
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r.into_owned(),
            Err(smtp_proto::Error::UnknownCommand) => {
                return self.reply("500 5.5.2 Command unrecognized\r\n").await
            }
            Err(_) => return self.reply("501 5.5.4 Syntax error\r\n").await,
        };
        match request {
            Request::Ehlo { host } => self.ehlo(host).await,
            Request::Helo { host } => {
                self.helo = Some(host);
                self.tx = None;
                let text = format!("250 {}\r\n", self.hostname());
                self.reply(&text).await
            }
            Request::StartTls => self.starttls().await,
            Request::Mail { from } => self.mail(from).await,
            Request::Rcpt { to } => self.rcpt(to.address).await,
            Request::Data => self.data().await,
            // Its chunk follows unannounced (RFC 3030 §2) and would be read
            // as commands: CHUNKING is never offered, so end the session.
            Request::Bdat { .. } => {
                self.goodbye("503 5.5.1 CHUNKING not offered\r\n").await;
                Err(SessionError::Protocol("BDAT"))
            }
            Request::Rset => {
                self.tx = None;
                self.reply(OK).await
            }
            Request::Noop { .. } => self.reply(OK).await,
            Request::Vrfy { .. } => {
                self.reply("252 2.5.0 Cannot VRFY user, but will accept the message\r\n")
                    .await
            }
            Request::Help { .. } => self.reply("214 2.0.0 See RFC 5321\r\n").await,
            Request::Quit => {
                self.goodbye("221 2.0.0 Bye\r\n").await;
                Ok(Step::Quit)
            }
            Request::Auth { .. }
            | Request::Expn { .. }
            | Request::Burl { .. }
            | Request::Lhlo { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. } => self.reply("502 5.5.1 Command not implemented\r\n").await,
        }
    }

    /// SMTPUTF8 is not offered: the backend's support for it is not known.
    async fn ehlo(&mut self, host: String) -> Result<Step, SessionError> {
        self.helo = Some(host);
        self.tx = None;
        let mut lines = vec![
            self.hostname(),
            "PIPELINING".into(),
            "8BITMIME".into(),
            format!("SIZE {}", self.ctx.config.limits.max_message_size),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.conn.listener.tls == TlsMode::Starttls && !self.is_tls() {
            lines.push("STARTTLS".into());
        }
        let last = lines.len() - 1;
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
            .collect();
        self.reply(&text).await
    }

    async fn starttls(&mut self) -> Result<Step, SessionError> {
        if self.is_tls() {
            return self.reply("503 5.5.1 TLS already active\r\n").await;
        }
        let config = match (&self.ctx.tls, self.conn.listener.tls) {
            (Some(c), TlsMode::Starttls) => c.clone(),
            _ => return self.reply("502 5.5.1 STARTTLS not available\r\n").await,
        };
        self.write(b"220 2.0.0 Ready to start TLS\r\n").await?;
        // Anything pipelined behind STARTTLS came in clear text and may
        // have been injected: drop it and start over (RFC 3207 §4.2).
        self.lines.clear();
        self.helo = None;
        self.tx = None;
        let tcp = self
            .stream
            .take()
            .and_then(Stream::into_plain)
            .ok_or(SessionError::Closed)?;
        match crate::net::tls::accept(config, tcp, tokio::time::Instant::now() + self.timeout())
            .await
        {
            Ok(stream) => {
                self.stream = Some(stream);
                Ok(Step::Continue)
            }
            Err(crate::net::tls::Handshake::Failed(e)) => Err(SessionError::Tls(e)),
            Err(crate::net::tls::Handshake::TimedOut) => Err(SessionError::Timeout),
        }
    }

    async fn mail(&mut self, from: MailFrom<String>) -> Result<Step, SessionError> {
        if self.helo.is_none() || self.tx.is_some() {
            return self.reply(BAD_SEQUENCE).await;
        }
        // Refused before any data is sent (RFC 1870 §6.1).
        if from.size as u64 > self.ctx.config.limits.max_message_size {
            return self
                .reply("552 5.3.4 Message size exceeds fixed maximum message size\r\n")
                .await;
        }
        if from.flags & (MAIL_SMTPUTF8 | MAIL_BODY_BINARYMIME) != 0 {
            return self.reply("555 5.5.4 Parameter not supported\r\n").await;
        }
        if !plain_address(&from.address) {
            return self.reply("501 5.1.7 Bad sender address syntax\r\n").await;
        }
        self.tx = Some(Transaction {
            mail_from: from.address,
            recipients: Vec::new(),
        });
        self.reply("250 2.1.0 OK\r\n").await
    }

    async fn rcpt(&mut self, address: String) -> Result<Step, SessionError> {
        let Some(tx) = self.tx.as_mut() else {
            return self.reply(BAD_SEQUENCE).await;
        };
        if address.is_empty() || !plain_address(&address) {
            return self
                .reply("501 5.1.3 Bad recipient address syntax\r\n")
                .await;
        }
        if tx.recipients.len() >= MAX_RECIPIENTS {
            return self.reply("452 4.5.3 Too many recipients\r\n").await;
        }
        match rcpt::decide(&self.ctx.router, &address) {
            Ok(disposition) => {
                debug!(rcpt = %address, ?disposition, "recipient accepted");
                // The same mailbox twice gets the message once.
                if !tx
                    .recipients
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(&address))
                {
                    tx.recipients.push(address);
                }
                self.reply("250 2.1.5 OK\r\n").await
            }
            Err(reply) => {
                info!(rcpt = %address, reply = reply.trim_end(), "recipient refused");
                self.reply(reply).await
            }
        }
    }

    async fn data(&mut self) -> Result<Step, SessionError> {
        if self.tx.as_ref().is_none_or(|tx| tx.recipients.is_empty()) {
            return self.reply("554 5.5.1 No valid recipients\r\n").await;
        }
        self.write(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n")
            .await?;
        let body = self.read_data().await?;
        let Some(tx) = self.tx.take() else {
            return self.reply(BAD_SEQUENCE).await;
        };
        self.messages += 1;
        let id = trace::trace_id(self.conn.id, self.messages);
        let trace = trace::Trace {
            helo: self.helo.as_deref(),
            client: self.conn.peer.ip(),
            by: &self.hostname(),
            tls: self.is_tls(),
            id: &id,
        };
        let mut message = trace.header(time::OffsetDateTime::now_utc()).into_bytes();
        message.extend_from_slice(&body);
        drop(body);
        let reply =
            deliver::finish(self.ctx, self.conn, self.helo.as_deref(), tx, message, id).await;
        self.reply(&reply).await
    }
}

/// An address ponte can put back into a command line: printable ASCII
/// (SMTPUTF8 is not offered), no spaces or angle brackets. smtp-proto has
/// parsed it; this keeps anything odd out of the backend's command stream.
#[doc(hidden)]
pub fn plain_address(address: &str) -> bool {
    address.len() <= 320
        && address
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_addresses_go_into_backend_commands() {
        assert!(plain_address("a.b+c@pec.example"));
        assert!(plain_address(""), "the null reverse path");
        assert!(!plain_address("a\r\nRCPT TO:<x@y>"));
        assert!(!plain_address("a b@x"));
        assert!(!plain_address("caffè@x"));
        assert!(!plain_address("a>@x"));
    }

    #[test]
    fn smtp_proto_reads_the_envelope_the_session_relies_on() {
        let parse = |s: &str| Request::parse(&mut s.as_bytes().iter()).map(|r| r.into_owned());
        match parse("MAIL FROM:<> SIZE=1000 BODY=8BITMIME\r\n") {
            Ok(Request::Mail { from }) => {
                assert_eq!((from.address.as_str(), from.size), ("", 1000));
                assert!(from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0);
            }
            other => panic!("{other:?}"),
        }
        match parse("RCPT TO:<Alice@PEC.example>\r\n") {
            Ok(Request::Rcpt { to }) => assert_eq!(to.address, "Alice@PEC.example"),
            other => panic!("{other:?}"),
        }
        assert!(parse("MAIL FROM:<a@b> SMTPUTF8\r\n")
            .is_ok_and(|r| matches!(r, Request::Mail { from } if from.flags & MAIL_SMTPUTF8 != 0)));
    }
}
