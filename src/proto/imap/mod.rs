//! One IMAP session, top to bottom: pre-auth with the client, route the
//! login, log in to the backend with the same credentials, answer the
//! client with the backend's own OK, then splice until the end.

mod backend;
pub mod framer;
mod preauth;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use self::backend::{ClientInfo, Login};
use self::preauth::{Attempt, Front, FrontError, TlsPolicy};
use crate::net::bridge::{self, End, Stops};
use crate::net::stream::Stream;
use crate::registry::Info;
use crate::route::{Route, RouteError, Target};
use crate::secret::Credentials;
use crate::server::{ConnInfo, Ctx};

/// How a session ended, for the closing log line.
#[derive(Debug)]
pub enum Outcome {
    /// The client left (or was dropped) before logging in.
    NoLogin(String),
    /// Logged in and spliced; bytes each way and why it ended.
    Spliced { up: u64, down: u64, end: End },
}

/// A login that succeeded at the backend: what the bridge needs.
struct Session {
    route: Route,
    tag: String,
    backend: Stream,
    reply: Vec<u8>,
    backend_rest: Vec<u8>,
}

/// What the client is told when a login does not go through.
enum Refusal {
    /// Send this tagged reply and let the client try again.
    Retry(String),
    /// Same, but it counts as a failed authentication.
    Failed(String),
}

pub async fn serve(stream: Stream, conn: &ConnInfo, ctx: &Ctx) -> Outcome {
    let limits = &ctx.config.limits;
    let policy = TlsPolicy {
        mode: conn.listener.tls,
        config: ctx.tls.clone(),
    };
    let deadline = Instant::now() + limits.preauth_timeout;
    let mut front = Front::new(stream, policy, deadline, limits.max_preauth_bytes);
    let session = match authenticate(&mut front, conn, ctx).await {
        Ok(Some(s)) => s,
        Ok(None) => return Outcome::NoLogin("logout".into()),
        Err(e) => return Outcome::NoLogin(e.to_string()),
    };
    let Some((client, client_rest)) = front.into_parts() else {
        return Outcome::NoLogin("stream lost".into());
    };
    splice(client, client_rest, session, conn, ctx).await
}

/// Serves pre-auth commands until a login succeeds at a backend.
async fn authenticate(
    front: &mut Front,
    conn: &ConnInfo,
    ctx: &Ctx,
) -> Result<Option<Session>, FrontError> {
    front.greet().await?;
    let mut failures = 0;
    loop {
        let Some(attempt) = front.next_login().await? else {
            return Ok(None);
        };
        let tag = attempt.tag.clone();
        match try_login(attempt, front, conn, ctx).await {
            Ok(session) => return Ok(Some(session)),
            Err(Refusal::Retry(text)) => front.write(format!("{tag} {text}").as_bytes()).await?,
            Err(Refusal::Failed(text)) => {
                failures += 1;
                front.write(format!("{tag} {text}").as_bytes()).await?;
                if failures >= ctx.config.limits.max_auth_failures {
                    front
                        .write(b"* BYE Too many authentication failures.\r\n")
                        .await?;
                    return Err(FrontError::Closed);
                }
            }
        }
    }
}

const AUTH_FAILED: &str = "NO [AUTHENTICATIONFAILED] Authentication failed.\r\n";
const UNAVAILABLE: &str =
    "NO [UNAVAILABLE] Mail server temporarily unavailable, try again later.\r\n";

/// Routes the login and, for a live route, logs in at the backend.
async fn try_login(
    attempt: Attempt,
    front: &Front,
    conn: &ConnInfo,
    ctx: &Ctx,
) -> Result<Session, Refusal> {
    let span = tracing::Span::current();
    let Attempt { tag, creds } = attempt;
    let default_domain = conn.listener.default_domain.as_deref();
    let route = match ctx.router.resolve(&creds.user, default_domain) {
        Ok(r) => r,
        Err(RouteError::UnknownDomain) => {
            info!(user = %creds.user, outcome = "unknown domain", "login refused");
            // Same pace as a wrong password, so a probe learns nothing.
            tokio::time::sleep(ctx.config.limits.auth_failure_delay).await;
            return Err(Refusal::Failed(AUTH_FAILED.into()));
        }
        Err(RouteError::Store(e)) => {
            warn!(error = %e, "route lookup failed");
            return Err(Refusal::Retry(UNAVAILABLE.into()));
        }
    };
    span.record("mailbox", route.address.as_str());
    span.record("route", route.target.label());
    let backend_name = match &route.target {
        Target::Live { backend } => backend.clone(),
        Target::Unavailable { notice } => {
            info!(state = %route.state, "login refused: mailbox unavailable");
            return Err(Refusal::Retry(format!(
                "NO [UNAVAILABLE] {}\r\n",
                one_line(notice)
            )));
        }
        Target::Refused { notice } => {
            info!(state = %route.state, "login refused: mailbox not served");
            return Err(Refusal::Failed(format!(
                "NO [CONTACTADMIN] {}\r\n",
                one_line(notice)
            )));
        }
    };
    let Some(backend) = ctx.backends.get(&backend_name) else {
        warn!(backend = %backend_name, "route names an unknown backend");
        return Err(Refusal::Retry(UNAVAILABLE.into()));
    };
    let session_id = format!("ponte-{}", conn.id);
    let client = ClientInfo {
        peer: conn.peer,
        local: conn.local,
        session: &session_id,
        id: &front.client_id,
    };
    // The backend knows the mailbox by its full address, whatever form
    // (bare local part, mixed case) the client typed.
    let creds = Credentials {
        user: route.address.clone(),
        password: creds.password,
    };
    let limits = &ctx.config.limits;
    match backend::login(
        backend,
        &creds,
        &client,
        limits.connect_timeout,
        limits.login_timeout,
    )
    .await
    {
        Ok(Login::Ok {
            stream,
            reply,
            rest,
        }) => Ok(Session {
            route,
            tag,
            backend: stream,
            reply,
            backend_rest: rest,
        }),
        Ok(Login::Refused { reply }) => {
            info!(outcome = "backend refused", "login refused");
            Err(Refusal::Failed(
                String::from_utf8_lossy(&reply).into_owned(),
            ))
        }
        Err(e) => {
            warn!(error = %e, "backend unavailable");
            Err(Refusal::Retry(UNAVAILABLE.into()))
        }
    }
}

/// The live path: the backend's OK under the client's tag, whatever either
/// side pipelined, then bytes both ways.
async fn splice(
    mut client: Stream,
    client_rest: Vec<u8>,
    mut s: Session,
    conn: &ConnInfo,
    ctx: &Ctx,
) -> Outcome {
    let registration = ctx.registry.register(Info {
        address: s.route.address.clone(),
        domain: s.route.domain.clone(),
        route: s.route.target.label().to_string(),
        listener: conn.listener.name.clone(),
        peer: conn.peer,
    });
    info!("logged in");
    let mut hello = Vec::with_capacity(s.tag.len() + 1 + s.reply.len() + s.backend_rest.len());
    hello.extend_from_slice(s.tag.as_bytes());
    hello.push(b' ');
    hello.extend_from_slice(&s.reply);
    hello.extend_from_slice(&s.backend_rest);
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
        kick: registration.entry.kick_token(),
        shutdown: &ctx.hard_stop,
        idle: ctx.config.limits.idle_timeout,
    };
    let done = bridge::splice(&mut client, &mut s.backend, stops).await;
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
        End::Closed | End::Error(_) => None,
    };
    if let Some(text) = goodbye {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            client.write_all(text.as_bytes()).await?;
            client.shutdown().await
        })
        .await;
    }
    debug!(end = ?done.end, "bridge ended");
    Outcome::Spliced {
        up: done.up + client_rest.len() as u64,
        down: done.down + hello.len() as u64,
        end: done.end,
    }
}

/// Text from configuration or an admin, safe inside one response line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
