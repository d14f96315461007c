//! One IMAP session, top to bottom: pre-auth with the client, route the
//! login, log in to the backend with the same credentials, answer the
//! client with the backend's own OK, then splice until the end.

mod backend;
pub mod boundary;
pub mod framer;
pub mod lookup;
mod preauth;
pub mod readonly;
mod view;

// For the fuzz target and benches: the read-only view's command limit.
#[doc(hidden)]
pub use self::view::MAX_COMMAND;
// For the fuzz target: the ID field filter of the pre-auth phase.
#[doc(hidden)]
pub use self::preauth::{id_field, MAX_ID_VALUE};

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use self::backend::{ClientInfo, Login};
use self::boundary::ResponseBoundary;
use self::preauth::{Attempt, Front};
use self::readonly::Filter;
use crate::net::bridge::{self, End, Stops};
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
    /// Sent to the client before the bridge starts: the backend's alerts,
    /// its OK under the client's tag, and what it sent after.
    hello: Vec<u8>,
    /// For a read-only route: the command filter the session goes through.
    filter: Option<Filter>,
}

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
    // Boxed: the login phase's state (parsers, backend login) is several
    // KiB; on the heap it is freed once logged in, instead of sizing the
    // task of every idle session for it.
    let session = match Box::pin(login::authenticate(&mut front, conn, ctx)).await {
        Ok(Some(s)) => s,
        Ok(None) => return Outcome::NoLogin("logout".into()),
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

    fn throttled(attempt: &Attempt) -> Refusal {
        Refusal::Failed(format!("{} {THROTTLED}", attempt.tag))
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
        let bye = self.write(b"* BYE Too many authentication failures.\r\n");
        bye.await.err().unwrap_or(FrontError::Closed)
    }
}

const AUTH_FAILED: &str = "NO [AUTHENTICATIONFAILED] Authentication failed.\r\n";
/// RFC 5530: a temporary condition; the client may try again later.
const THROTTLED: &str = "NO [UNAVAILABLE] Too many failed logins, try again in a few minutes.\r\n";
const UNAVAILABLE: &str =
    "NO [UNAVAILABLE] Mail server temporarily unavailable, try again later.\r\n";

/// Routes the login and logs in at the backend the route names. Mailboxes
/// that are not served (excluded, a closed tempmail view) are refused only
/// after the legacy backend accepted the password.
async fn try_login(
    attempt: Attempt,
    front: &Front,
    conn: &ConnInfo,
    ctx: &Ctx,
) -> Result<Session, Refusal> {
    let Attempt { tag, creds } = attempt;
    let route = login::route(&creds.user, conn, ctx)
        .await
        .map_err(|denied| match denied {
            Denied::UnknownDomain => Refusal::Failed(format!("{tag} {AUTH_FAILED}")),
            Denied::Unavailable => Refusal::Retry(format!("{tag} {UNAVAILABLE}")),
        })?;
    let creds = login::backend_credentials(&route, creds);
    let (backend_name, refusal) = login::backend_of(&route);
    let refusal = refusal.map(|notice| format!("{tag} NO [CONTACTADMIN] {}\r\n", one_line(notice)));
    let backend_name = backend_name.to_string();
    let registration = login::register(&route, conn, ctx);
    let (stream, alerts, reply, rest) =
        backend_login(&tag, &backend_name, &creds, front, conn, ctx).await?;
    if let Some(text) = refusal {
        info!(state = %route.state, "login refused: mailbox not served here now");
        login::count(conn, ctx, "refused");
        return Err(Refusal::Retry(text));
    }
    let mut hello = alerts;
    let mut filter = None;
    let reply = match &route.target {
        Target::ReadOnly { alert, .. } => {
            if let Some(a) = alert {
                hello.extend_from_slice(format!("* OK [ALERT] {}\r\n", one_line(a)).as_bytes());
            }
            let f = Filter::new(&backend::capabilities_of(&reply));
            let ok = format!(
                "OK [CAPABILITY {}] Logged in, read-only.\r\n",
                f.capabilities()
            )
            .into_bytes();
            filter = Some(f);
            ok
        }
        _ => reply,
    };
    hello.extend_from_slice(tag.as_bytes());
    hello.push(b' ');
    hello.extend_from_slice(&reply);
    hello.extend_from_slice(&rest);
    Ok(Session {
        route,
        registration,
        backend: stream,
        hello,
        filter,
    })
}

/// Logs in at the named backend: the stream, alerts, tagged reply and rest.
async fn backend_login(
    tag: &str,
    backend_name: &str,
    creds: &Credentials,
    front: &Front,
    conn: &ConnInfo,
    ctx: &Ctx,
) -> Result<(Stream, Vec<u8>, Vec<u8>, Vec<u8>), Refusal> {
    let Some(backend) = ctx.backends.get(backend_name) else {
        warn!(backend = %backend_name, "route names an unknown backend");
        return Err(Refusal::Retry(format!("{tag} {UNAVAILABLE}")));
    };
    let session_id = format!("ponte-{}", conn.id);
    let client = ClientInfo {
        peer: conn.peer,
        local: conn.local,
        session: &session_id,
        id: &front.client_id,
    };
    let limits = &ctx.config.limits;
    let started = std::time::Instant::now();
    let login = backend::login(
        backend,
        creds,
        &client,
        limits.connect_timeout,
        limits.login_timeout,
    )
    .await;
    login::time_backend(backend_name, started);
    match login {
        Ok(Login::Ok {
            stream,
            alerts,
            reply,
            rest,
        }) => Ok((stream, alerts, reply, rest)),
        Ok(Login::Refused {
            alerts,
            reply,
            temporary,
        }) => {
            info!(outcome = "backend refused", temporary, "login refused");
            login::count(
                conn,
                ctx,
                if temporary {
                    "backend_unavailable"
                } else {
                    "auth_failed"
                },
            );
            let text = format!(
                "{}{tag} {}",
                String::from_utf8_lossy(&alerts),
                String::from_utf8_lossy(&reply)
            );
            Err(if temporary {
                Refusal::Retry(text)
            } else {
                Refusal::Failed(text)
            })
        }
        Err(e) => {
            warn!(error = %e, "backend unavailable");
            login::count(conn, ctx, "backend_error");
            Err(Refusal::Retry(format!("{tag} {UNAVAILABLE}")))
        }
    }
}

/// After login: the backend's OK under the client's tag, then bytes both
/// ways (live) or through the read-only filter (tempmail, blackout).
async fn splice(
    mut client: Stream,
    client_rest: Vec<u8>,
    mut s: Session,
    conn: &ConnInfo,
    ctx: &Ctx,
) -> Outcome {
    info!(state = %s.route.state, "logged in");
    login::count(conn, ctx, "ok");
    let registration = s.registration;
    let hello = s.hello;
    // What the client pipelined behind its login goes straight on only on
    // a live route; the read-only filter judges it like any command.
    let rest_len = client_rest.len() as u64;
    let (filter, direct_rest, filtered_rest) = match s.filter {
        Some(f) => (Some(f), Vec::new(), client_rest),
        None => (None, client_rest, Vec::new()),
    };
    let greet = async {
        client.write_all(&hello).await?;
        client.flush().await?;
        s.backend.write_all(&direct_rest).await?;
        s.backend.flush().await
    };
    if let Err(e) = greet.await {
        return Outcome::Spliced {
            up: 0,
            down: 0,
            end: End::Error(e),
        };
    }
    // Only its length is needed from here on; an idle session need not
    // keep the backend's login reply (~400 bytes).
    let hello_len = hello.len() as u64;
    drop(hello);
    let stops = Stops {
        kick: registration.entry.kick_token(),
        shutdown: &ctx.hard_stop,
        idle: ctx.config.limits.idle_timeout,
        until: login::view_deadline(&s.route, conn),
    };
    let done = match filter {
        // Boxed: the read-only view is the cold branch; inline, every live
        // session's future would keep room for its state too (~240 bytes).
        Some(f) => {
            Box::pin(view::run(
                &mut client,
                &mut s.backend,
                filtered_rest,
                f,
                stops,
            ))
            .await
        }
        None => {
            bridge::splice(
                &mut client,
                &mut s.backend,
                stops,
                &mut ResponseBoundary::default(),
            )
            .await
        }
    };
    let goodbye = match &done.end {
        End::Kicked => {
            let reason = registration
                .entry
                .reason()
                .unwrap_or_else(|| "Your mailbox has moved.".into());
            Some(format!("* BYE [ALERT] {}\r\n", one_line(&reason)))
        }
        End::Shutdown => Some("* BYE Server shutting down, please reconnect.\r\n".to_string()),
        End::Idle => Some("* BYE Autologout; idle for too long.\r\n".to_string()),
        End::Expired => {
            Some("* BYE [ALERT] The read-only view of your old mailbox has closed.\r\n".to_string())
        }
        End::Closed | End::Error(_) => None,
    };
    // Mid-response (the backend never reached the end of its message) a
    // BYE would corrupt what the client is receiving: close instead.
    let goodbye = goodbye.filter(|_| done.at_boundary);
    if let Some(text) = goodbye {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            client.write_all(text.as_bytes()).await?;
            client.shutdown().await
        })
        .await;
    }
    debug!(end = ?done.end, "bridge ended");
    login::count_bytes(conn, done.up, done.down);
    Outcome::Spliced {
        up: done.up + rest_len,
        down: done.down + hello_len,
        end: done.end,
    }
}
