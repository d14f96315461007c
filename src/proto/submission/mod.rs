//! One SMTP submission session (RFC 6409), top to bottom: pre-auth with
//! the client, route the login, authenticate at the backend's submission
//! service with the same credentials, answer `235`, then splice until the
//! end. After `235` ponte never reads or rewrites the mail: certified (PEC)
//! messages are signed, and the backend adds the only trace header.

mod backend;
pub mod boundary;
mod preauth;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use self::backend::{ClientInfo, Login};
use self::boundary::ReplyBoundary;
// For the fuzz target: SASL response decoding before login.
#[doc(hidden)]
pub use self::preauth::{decode_response, Sasl};
use self::preauth::{Attempt, Front, CREDENTIALS_INVALID};
use crate::net::bridge::{self, Boundary, End, Stops};
use crate::net::stream::Stream;
use crate::proto::login::{self, one_line, Denied, FrontError, Refusal, TlsPolicy};
use crate::proto::Outcome;
use crate::registry::Registration;
use crate::route::{Route, Target};
use crate::secret::Credentials;
use crate::server::{ConnInfo, Ctx};

/// A login that succeeded at the backend: what the bridge needs.
pub(super) struct Session {
    route: Route,
    /// Listed from routing on, so that a flip during the backend login
    /// still reaches this session.
    registration: Registration,
    backend: Stream,
    /// What the backend sent after its 235 (normally nothing).
    rest: Vec<u8>,
}

const AUTH_OK: &[u8] = b"235 2.7.0 Authentication successful\r\n";
const TEMP_FAILURE: &str = "454 4.7.0 Temporary authentication failure\r\n";
/// RFC 4954 §6: 454 4.7.0 is the temporary authentication failure.
const THROTTLED: &str = "454 4.7.0 Too many failed authentications, try again in a few minutes\r\n";
/// Said during a blackout when no notice is configured.
const BLACKOUT_NOTICE: &str = "This mailbox is being moved to a new provider and cannot send \
     until the move is complete; your message stays in your outbox and will be sent later.";

pub async fn serve(stream: Stream, conn: &ConnInfo, ctx: &Ctx) -> Outcome {
    let limits = &ctx.config.limits;
    let policy = TlsPolicy {
        mode: conn.listener.tls,
        config: ctx.tls.clone(),
    };
    // One deadline for everything before login, the TLS handshake included.
    let deadline = conn.accepted + limits.preauth_timeout;
    let mut front = Front::new(stream, policy, deadline, limits.max_preauth_bytes);
    front.oauth = conn.listener.oauth;
    front.draining = ctx.draining.clone();
    let session = match login::authenticate(&mut front, conn, ctx).await {
        Ok(Some(s)) => s,
        Ok(None) => return Outcome::NoLogin("quit".into()),
        Err(e) => return Outcome::NoLogin(e.to_string()),
    };
    let Some((client, client_rest)) = front.into_parts() else {
        return Outcome::NoLogin("stream lost".into());
    };
    splice(client, client_rest, session, conn, ctx).await
}

impl login::Front for Front {
    type Attempt = Attempt;
    type Session = Session;

    async fn greet(&mut self) -> Result<(), FrontError> {
        // The front's own methods: inherent ones come first.
        self.greet().await
    }

    async fn next_login(&mut self) -> Result<Option<Attempt>, FrontError> {
        self.next_login().await
    }

    fn user(attempt: &Attempt) -> &str {
        &attempt.creds.user
    }

    fn throttled(_: &Attempt) -> Refusal {
        Refusal::Failed(THROTTLED.into())
    }

    async fn try_login(
        &self,
        attempt: Attempt,
        conn: &ConnInfo,
        ctx: &Ctx,
    ) -> Result<Session, Refusal> {
        try_login(attempt, self, conn, ctx).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), FrontError> {
        self.write(bytes).await
    }

    async fn too_many_failures(&mut self) -> FrontError {
        self.goodbye("421 4.7.0 Too many authentication failures\r\n")
            .await;
        FrontError::Closed
    }
}

/// Routes the login and authenticates at the backend the route names.
/// A mailbox that may not send now (blackout, excluded) is refused only
/// after the legacy backend accepted the password, so that nobody learns
/// a mailbox's state or notice without it.
async fn try_login(
    attempt: Attempt,
    front: &Front,
    conn: &ConnInfo,
    ctx: &Ctx,
) -> Result<Session, Refusal> {
    let route =
        login::route(&attempt.creds.user, conn, ctx)
            .await
            .map_err(|denied| match denied {
                Denied::UnknownDomain => Refusal::Failed(CREDENTIALS_INVALID.into()),
                Denied::Unavailable => Refusal::Retry(TEMP_FAILURE.into()),
            })?;
    let creds = login::backend_credentials(&route, attempt.creds);
    let (backend_name, refusal) = match &route.target {
        Target::Live { backend } => (backend.clone(), None),
        // Blackout: the client keeps the message and retries (RFC 5321
        // §4.2.5), until the mailbox lives on the new backend.
        Target::ReadOnly { backend, alert } => {
            let notice = alert.as_deref().unwrap_or(BLACKOUT_NOTICE);
            (
                backend.clone(),
                Some(format!("451 4.3.2 {}\r\n", one_line(notice))),
            )
        }
        Target::Refused { notice, check } => (
            check.clone(),
            Some(format!("550 5.7.1 {}\r\n", one_line(notice))),
        ),
    };
    let registration = login::register(&route, conn, ctx);
    let (backend, rest) = backend_login(&backend_name, &creds, front, conn, ctx).await?;
    if let Some(text) = refusal {
        info!(state = %route.state, "login refused: mailbox may not send now");
        login::count(conn, ctx, "refused");
        return Err(Refusal::Retry(text));
    }
    Ok(Session {
        route,
        registration,
        backend,
        rest,
    })
}

/// Authenticates at the named backend: the stream and what followed 235.
async fn backend_login(
    backend_name: &str,
    creds: &Credentials,
    front: &Front,
    conn: &ConnInfo,
    ctx: &Ctx,
) -> Result<(Stream, Vec<u8>), Refusal> {
    let Some(backend) = ctx.backends.get(backend_name) else {
        warn!(backend = %backend_name, "route names an unknown backend");
        return Err(Refusal::Retry(TEMP_FAILURE.into()));
    };
    let client = ClientInfo {
        peer: conn.peer,
        helo: front.helo(),
    };
    let limits = &ctx.config.limits;
    let started = std::time::Instant::now();
    let result = backend::login(
        backend,
        creds,
        &client,
        limits.connect_timeout,
        limits.login_timeout,
    )
    .await;
    login::time_backend(backend_name, started);
    match result {
        Ok(Login::Ok { stream, rest }) => Ok((stream, rest)),
        Ok(Login::Refused { reply, temporary }) => {
            info!(outcome = "backend refused", temporary, "login refused");
            let outcome = if temporary {
                "backend_unavailable"
            } else {
                "auth_failed"
            };
            login::count(conn, ctx, outcome);
            let text = String::from_utf8_lossy(&reply).into_owned();
            Err(if temporary {
                Refusal::Retry(text)
            } else {
                Refusal::Failed(text)
            })
        }
        Err(e) => {
            warn!(error = %e, "backend unavailable");
            login::count(conn, ctx, "backend_error");
            Err(Refusal::Retry(TEMP_FAILURE.into()))
        }
    }
}

/// After login: ponte's 235, then bytes both ways, unchanged.
async fn splice(
    mut client: Stream,
    client_rest: Vec<u8>,
    mut s: Session,
    conn: &ConnInfo,
    ctx: &Ctx,
) -> Outcome {
    info!(state = %s.route.state, "logged in");
    login::count(conn, ctx, "ok");
    let mut hello = AUTH_OK.to_vec();
    hello.extend_from_slice(&s.rest);
    let mut boundary = ReplyBoundary::default();
    boundary.observe(&hello);
    // What the client pipelined behind its AUTH goes on as it was sent.
    let greet = async {
        client.write_all(&hello).await?;
        client.flush().await?;
        s.backend.write_all(&client_rest).await?;
        s.backend.flush().await
    };
    if let Err(e) = greet.await {
        return Outcome::Spliced {
            up: 0,
            down: 0,
            end: End::Error(e),
        };
    }
    let stops = Stops {
        kick: s.registration.entry.kick_token(),
        shutdown: &ctx.hard_stop,
        idle: ctx.config.limits.idle_timeout,
        until: login::view_deadline(&s.route, conn),
    };
    let done = bridge::splice(&mut client, &mut s.backend, stops, &mut boundary).await;
    // Inside a multi-line reply a 421 would garble it: close instead.
    if let Some(text) = goodbye(&done.end, &s.registration).filter(|_| done.at_boundary) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            client.write_all(text.as_bytes()).await?;
            client.shutdown().await
        })
        .await;
    }
    debug!(end = ?done.end, "bridge ended");
    login::count_bytes(conn, done.up, done.down);
    Outcome::Spliced {
        up: done.up + client_rest.len() as u64,
        down: done.down + hello.len() as u64,
        end: done.end,
    }
}

/// ponte's own last words when the bridge is stopped from outside
/// (RFC 5321 §3.8: 421 closes the channel).
fn goodbye(end: &End, registration: &Registration) -> Option<String> {
    match end {
        End::Kicked => {
            let reason = registration
                .entry
                .reason()
                .unwrap_or_else(|| "Your mailbox has moved, please reconnect.".into());
            Some(format!("421 4.3.0 {}\r\n", one_line(&reason)))
        }
        End::Shutdown => Some("421 4.3.2 Server shutting down, please reconnect\r\n".into()),
        End::Idle => Some("421 4.4.2 Idle for too long, closing connection\r\n".into()),
        End::Expired => Some("421 4.3.0 Session time is up, closing connection\r\n".into()),
        End::Closed | End::Error(_) => None,
    }
}
