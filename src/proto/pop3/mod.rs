//! One POP3 session, top to bottom: pre-auth with the client, route the
//! login, log in to the backend with the same credentials, answer with the
//! backend's own `+OK`, then splice (live) or serve the read-only view
//! (tempmail, blackout).

mod backend;
mod front;
pub mod view;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use self::backend::Login;
use self::front::AUTH_FAILED;
// For the fuzz target: the pre-auth front end, driven over loopback TCP.
#[doc(hidden)]
pub use self::front::Front;
use crate::net::bridge::{self, Boundary, End, Stops};
use crate::net::stream::Stream;
use crate::proto::login::{self, one_line, Denied, Refusal};
#[doc(hidden)]
pub use crate::proto::login::{FrontError, TlsPolicy};
use crate::proto::Outcome;
use crate::registry::Registration;
use crate::route::{Route, Target};
use crate::secret::Credentials;
use crate::server::{ConnInfo, Ctx};

const UNAVAILABLE: &str =
    "-ERR [SYS/TEMP] Mail server temporarily unavailable, try again later.\r\n";
/// RFC 3206: `[SYS/TEMP]`, a temporary condition not the user's fault to
/// fix by retyping (`[AUTH]` would invite another try at once).
const THROTTLED: &str = "-ERR [SYS/TEMP] Too many failed logins, try again in a few minutes.\r\n";

pub(super) struct Session {
    route: Route,
    registration: Registration,
    backend: Stream,
    hello: Vec<u8>,
}

pub async fn serve(stream: Stream, conn: &ConnInfo, ctx: &Ctx) -> Outcome {
    let limits = &ctx.config.limits;
    let policy = TlsPolicy {
        mode: conn.listener.tls,
        config: ctx.tls.clone(),
    };
    let budget = limits.max_preauth_bytes as usize * 4;
    let mut front = Front::new(
        stream,
        policy,
        conn.accepted + limits.preauth_timeout,
        budget,
    );
    front.oauth = conn.listener.oauth;
    front.draining = ctx.draining.clone();
    // Boxed: the login phase's state (parsers, backend login) is several
    // KiB; on the heap it is freed once logged in, instead of sizing the
    // task of every idle session for it.
    let session = match Box::pin(login::authenticate(&mut front, conn, ctx)).await {
        Ok(Some(s)) => s,
        Ok(None) => return Outcome::NoLogin("quit".into()),
        Err(e) => return Outcome::NoLogin(e.to_string()),
    };
    let Some((client, rest)) = front.into_parts() else {
        return Outcome::NoLogin("stream lost".into());
    };
    splice(client, rest, session, conn, ctx).await
}

impl login::Front for Front {
    type Attempt = Credentials;
    type Session = Session;

    async fn greet(&mut self) -> Result<(), FrontError> {
        // The front's own methods: inherent ones come first.
        self.greet().await
    }

    async fn next_login(&mut self) -> Result<Option<Credentials>, FrontError> {
        self.next_login().await
    }

    fn user(creds: &Credentials) -> &str {
        &creds.user
    }

    fn throttled(_: &Credentials) -> Refusal {
        Refusal::Failed(THROTTLED.into())
    }

    async fn try_login(
        &self,
        creds: Credentials,
        conn: &ConnInfo,
        ctx: &Ctx,
    ) -> Result<Session, Refusal> {
        try_login(creds, conn, ctx).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), FrontError> {
        self.write(bytes).await
    }

    // Nothing more to say: the refusal just sent is the last line.
    async fn too_many_failures(&mut self) -> FrontError {
        FrontError::Closed
    }
}

async fn try_login(creds: Credentials, conn: &ConnInfo, ctx: &Ctx) -> Result<Session, Refusal> {
    let route = login::route(&creds.user, conn, ctx)
        .await
        .map_err(|d| match d {
            Denied::UnknownDomain => Refusal::Failed(AUTH_FAILED.into()),
            Denied::Unavailable => Refusal::Retry(UNAVAILABLE.into()),
        })?;
    let creds = login::backend_credentials(&route, creds);
    let (backend_name, refusal) = login::backend_of(&route);
    let refusal = refusal.map(|n| format!("-ERR [SYS/PERM] {}\r\n", one_line(n)));
    let backend_name = backend_name.to_string();
    let registration = login::register(&route, conn, ctx);
    let (stream, reply, rest) = backend_login(&backend_name, &creds, conn, ctx).await?;
    if let Some(line) = refusal {
        info!(state = %route.state, "login refused: mailbox not served here now");
        login::count(conn, ctx, "refused");
        return Err(Refusal::Retry(line));
    }
    let mut hello = match &route.target {
        // POP3 has no alert: the notice goes into the +OK text.
        Target::ReadOnly { alert, .. } => {
            let note = alert
                .as_deref()
                .map(one_line)
                .unwrap_or_else(|| "Read-only view of the old mailbox.".into());
            format!("+OK Logged in, read-only. {note}\r\n").into_bytes()
        }
        _ => reply,
    };
    hello.extend_from_slice(&rest);
    Ok(Session {
        route,
        registration,
        backend: stream,
        hello,
    })
}

async fn backend_login(
    name: &str,
    creds: &Credentials,
    conn: &ConnInfo,
    ctx: &Ctx,
) -> Result<(Stream, Vec<u8>, Vec<u8>), Refusal> {
    let Some(backend) = ctx.backends.get(name) else {
        warn!(backend = %name, "route names an unknown backend");
        return Err(Refusal::Retry(UNAVAILABLE.into()));
    };
    let limits = &ctx.config.limits;
    let started = std::time::Instant::now();
    let result = backend::login(
        backend,
        creds,
        conn.peer,
        limits.connect_timeout,
        limits.login_timeout,
    )
    .await;
    login::time_backend(name, started);
    match result {
        Ok(Login::Ok {
            stream,
            reply,
            rest,
        }) => Ok((stream, reply, rest)),
        Ok(Login::Refused { reply, temporary }) => {
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
            let line = String::from_utf8_lossy(&reply).into_owned();
            Err(if temporary {
                Refusal::Retry(line)
            } else {
                Refusal::Failed(line)
            })
        }
        Err(e) => {
            warn!(error = %e, "backend unavailable");
            login::count(conn, ctx, "backend_error");
            Err(Refusal::Retry(UNAVAILABLE.into()))
        }
    }
}

/// POP3 has no unsolicited responses: a session told to go is closed
/// without a line of ponte's own, and the client reconnects.
struct NoBoundary;

impl Boundary for NoBoundary {
    fn observe(&mut self, _: &[u8]) {}

    fn at_boundary(&self) -> bool {
        false
    }

    fn reachable(&self) -> bool {
        false
    }
}

async fn splice(
    mut client: Stream,
    rest: Vec<u8>,
    mut s: Session,
    conn: &ConnInfo,
    ctx: &Ctx,
) -> Outcome {
    info!(state = %s.route.state, "logged in");
    login::count(conn, ctx, "ok");
    let read_only = matches!(s.route.target, Target::ReadOnly { .. });
    if let Err(e) = client.write_all(&s.hello).await {
        return Outcome::Spliced {
            up: 0,
            down: 0,
            end: End::Error(e),
        };
    }
    let _ = client.flush().await;
    let stops = Stops {
        kick: s.registration.entry.kick_token(),
        shutdown: &ctx.hard_stop,
        idle: ctx.config.limits.idle_timeout,
        until: login::view_deadline(&s.route, conn),
    };
    let done = if read_only {
        view::run(&mut client, &mut s.backend, rest, stops).await
    } else {
        let sent = async {
            s.backend.write_all(&rest).await?;
            s.backend.flush().await
        };
        if let Err(e) = sent.await {
            return Outcome::Spliced {
                up: 0,
                down: 0,
                end: End::Error(e),
            };
        }
        bridge::splice(&mut client, &mut s.backend, stops, &mut NoBoundary).await
    };
    // The read-only view never sends the backend a QUIT (nothing is
    // committed); the live session's QUIT went through the splice.
    let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
    login::count_bytes(conn, done.up, done.down);
    Outcome::Spliced {
        up: done.up,
        down: done.down,
        end: done.end,
    }
}
