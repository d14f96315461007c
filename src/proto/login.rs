//! What every protocol does between the client's credentials and its own
//! backend login: the pre-auth login loop (greet, throttle the attempts,
//! close after too many failures), route the login, say what is refused
//! and why, list the session so that a flip can reach it, count the
//! outcome. The protocols only phrase the answers in their own words.
//! Also what their pre-auth fronts share: the error they end with, the
//! TLS policy and STARTTLS upgrade, and reads and writes bounded by the
//! pre-auth deadline.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_rustls::rustls::ServerConfig;
use tracing::{info, warn};

use crate::config::TlsMode;
use crate::net::stream::Stream;
use crate::net::throttle::Gate;
use crate::net::tls::Handshake;

use crate::registry::{Info, Registration};
use crate::route::{normalize, Route, RouteError, Target};
use crate::secret::Credentials;
use crate::server::{ConnInfo, Ctx};

/// Why a login goes no further than routing.
pub enum Denied {
    /// Not a managed domain: answered like a wrong password.
    UnknownDomain,
    /// The state store failed: a temporary error.
    Unavailable,
}

/// What the client is told when a login does not go through.
pub(super) enum Refusal {
    /// Send this reply and let the client try again.
    Retry(String),
    /// Same, but it counts as a failed authentication.
    Failed(String),
}

/// A protocol's pre-auth front, as the login loop drives it.
pub(super) trait Front {
    /// A login the client asked for.
    type Attempt;
    /// A login that succeeded at a backend: what the session goes on with.
    type Session;

    async fn greet(&mut self) -> Result<(), FrontError>;

    /// Serves commands until the client asks to log in (`Some`) or leaves
    /// (`None`).
    async fn next_login(&mut self) -> Result<Option<Self::Attempt>, FrontError>;

    /// The user name the throttle counts the attempt under.
    fn user(attempt: &Self::Attempt) -> &str;

    /// The reply to an attempt the throttle refuses.
    fn throttled(attempt: &Self::Attempt) -> Refusal;

    /// Routes the attempt and logs in at the backend its route names.
    async fn try_login(
        &self,
        attempt: Self::Attempt,
        conn: &ConnInfo,
        ctx: &Ctx,
    ) -> Result<Self::Session, Refusal>;

    async fn write(&mut self, bytes: &[u8]) -> Result<(), FrontError>;

    /// Says the protocol's goodbye after too many failed logins; what it
    /// returns is the error the session ends with.
    async fn too_many_failures(&mut self) -> FrontError;
}

/// Serves pre-auth commands until a login succeeds at a backend (`Some`)
/// or the client leaves (`None`).
pub(super) async fn authenticate<F: Front>(
    front: &mut F,
    conn: &ConnInfo,
    ctx: &Ctx,
) -> Result<Option<F::Session>, FrontError> {
    front.greet().await?;
    let mut failures = 0;
    loop {
        let Some(attempt) = front.next_login().await? else {
            return Ok(None);
        };
        let user = F::user(&attempt).to_string();
        let refused = F::throttled(&attempt);
        let login = throttled(
            &user,
            conn,
            ctx,
            || refused,
            front.try_login(attempt, conn, ctx),
            |r| matches!(r, Refusal::Failed(_)),
        );
        match login.await {
            Ok(session) => return Ok(Some(session)),
            Err(Refusal::Retry(text)) => front.write(text.as_bytes()).await?,
            Err(Refusal::Failed(text)) => {
                failures += 1;
                front.write(text.as_bytes()).await?;
                if failures >= ctx.config.limits.max_auth_failures {
                    return Err(front.too_many_failures().await);
                }
            }
        }
    }
}

/// Too many failed logins from this address or for this account: refused
/// for a while, temporarily, without asking a backend.
struct Throttled;

/// A login attempt the throttle let through; its outcome is reported
/// back with [`Ticket::failed`] or [`Ticket::succeeded`].
struct Ticket<'a> {
    ctx: &'a Ctx,
    ip: IpAddr,
    account: String,
    delay: Duration,
}

/// Asks the throttle about a login as `user` from this connection's
/// client address.
fn gate<'a>(user: &str, conn: &ConnInfo, ctx: &'a Ctx) -> Result<Ticket<'a>, Throttled> {
    let ip = conn.peer.ip().to_canonical();
    let default_domain = conn.listener.default_domain.as_deref();
    let account = normalize(user, default_domain).unwrap_or_else(|| user.to_ascii_lowercase());
    match ctx.throttle.check(ip, &account) {
        Gate::Try { delay_on_failure } => Ok(Ticket {
            ctx,
            ip,
            account,
            delay: delay_on_failure,
        }),
        Gate::Refuse => {
            info!(outcome = "throttled", "login refused: too many failures");
            count(conn, ctx, "throttled");
            Err(Throttled)
        }
    }
}

/// Runs one login `attempt` as `user` under the throttle: refused at once
/// with `throttled()` if the address or account is over its limit; a
/// failure (`is_failure`) is recorded and answered after the throttle's
/// delay, a success clears the way for this address.
async fn throttled<T, E>(
    user: &str,
    conn: &ConnInfo,
    ctx: &Ctx,
    throttled: impl FnOnce() -> E,
    attempt: impl std::future::Future<Output = Result<T, E>>,
    is_failure: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let Ok(ticket) = gate(user, conn, ctx) else {
        return Err(throttled());
    };
    let result = attempt.await;
    match &result {
        Ok(_) => ticket.succeeded(),
        Err(e) if is_failure(e) => ticket.failed().await,
        Err(_) => {}
    }
    result
}

impl Ticket<'_> {
    /// The login failed (wrong password, unknown domain or user): counted,
    /// and answered only after the throttle's delay.
    async fn failed(self) {
        self.ctx.throttle.failed(self.ip, &self.account);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }

    fn succeeded(self) {
        self.ctx.throttle.succeeded(self.ip, &self.account);
    }
}

/// The route of a login on this listener. An unknown domain is answered
/// at the pace of a wrong password, so that probes learn nothing.
pub async fn route(user: &str, conn: &ConnInfo, ctx: &Ctx) -> Result<Route, Denied> {
    let default_domain = conn.listener.default_domain.as_deref();
    match ctx
        .router
        .resolve_for(user, default_domain, conn.listener.view)
    {
        Ok(r) => {
            let span = tracing::Span::current();
            span.record("mailbox", r.address.as_str());
            span.record("route", r.target.label());
            Ok(r)
        }
        Err(RouteError::UnknownDomain) => {
            // Only the domain part: people type passwords into user fields.
            let domain = user.rsplit_once('@').map_or("", |(_, d)| d);
            info!(domain = ?domain, outcome = "unknown domain", "login refused");
            count(conn, ctx, "unknown_domain");
            tokio::time::sleep(ctx.config.limits.auth_failure_delay).await;
            Err(Denied::UnknownDomain)
        }
        Err(RouteError::Store(e)) => {
            warn!(error = %e, "route lookup failed");
            count(conn, ctx, "store_error");
            Err(Denied::Unavailable)
        }
    }
}

/// The backend to log in at, and the notice to refuse with afterwards if
/// the route does not serve the mailbox (the password is checked first,
/// so that nobody learns a mailbox's state without it).
pub fn backend_of(route: &Route) -> (&str, Option<&str>) {
    match &route.target {
        Target::Live { backend } | Target::ReadOnly { backend, .. } => (backend, None),
        Target::Refused { notice, check } => (check, Some(notice)),
    }
}

/// The credentials for the backend: it knows the mailbox by its full
/// address, whatever form (bare local part, mixed case) the client typed.
pub fn backend_credentials(route: &Route, creds: Credentials) -> Credentials {
    Credentials {
        user: route.address.clone(),
        password: creds.password,
        authzid: None,
        kind: creds.kind,
    }
}

/// Lists the session from routing on, so that a flip during the backend
/// login still reaches it.
pub fn register(route: &Route, conn: &ConnInfo, ctx: &Ctx) -> Registration {
    ctx.registry.register(Info {
        address: route.address.clone(),
        domain: route.domain.clone(),
        route: route.target.label().to_string(),
        state: route.state,
        listener: conn.listener.name.clone(),
        view: conn.listener.view,
        deadline: route
            .tempmail_until
            .filter(|_| conn.listener.view == crate::config::View::Tempmail),
        peer: conn.peer,
    })
}

/// When a tempmail session must end: its view's deadline (a live
/// session, even read-only in a blackout, has none).
pub fn view_deadline(route: &Route, conn: &ConnInfo) -> Option<tokio::time::Instant> {
    if conn.listener.view != crate::config::View::Tempmail {
        return None;
    }
    let left = route.tempmail_until? - crate::route::now_unix();
    let left = std::time::Duration::from_secs(left.max(0) as u64);
    Some(tokio::time::Instant::now() + left)
}

/// Counts a login outcome per listener (metrics) and for the dashboard.
pub fn count(conn: &ConnInfo, ctx: &Ctx, outcome: &'static str) {
    ctx.observed.count_login(outcome == "ok");
    metrics::counter!("ponte_logins_total", "listener" => conn.listener.name.clone(), "outcome" => outcome)
        .increment(1);
}

/// Counts a session's bytes each way per listener.
pub fn count_bytes(conn: &ConnInfo, up: u64, down: u64) {
    let listener = conn.listener.name.clone();
    metrics::counter!("ponte_bytes_total", "listener" => listener.clone(), "direction" => "up")
        .increment(up);
    metrics::counter!("ponte_bytes_total", "listener" => listener, "direction" => "down")
        .increment(down);
}

/// Records how long a backend login took.
pub fn time_backend(backend: &str, started: std::time::Instant) {
    metrics::histogram!("ponte_backend_login_seconds", "backend" => backend.to_string())
        .record(started.elapsed().as_secs_f64());
}

/// Text from configuration or an admin, safe inside one response line.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What a pre-auth front's wait for the client's next bytes ended with.
pub enum Waited<T> {
    Read(T),
    /// The pre-auth deadline passed.
    Timeout,
    /// Shutdown started: the front says goodbye and closes.
    Draining,
}

/// Waits for `read` (the client's next bytes) until `deadline`, or until
/// shutdown starts: a session not logged in has nothing to finish.
pub async fn client_bytes<T>(
    read: impl std::future::Future<Output = T>,
    deadline: tokio::time::Instant,
    draining: &tokio_util::sync::CancellationToken,
) -> Waited<T> {
    tokio::select! {
        biased;
        _ = draining.cancelled() => Waited::Draining,
        r = tokio::time::timeout_at(deadline, read) => match r {
            Ok(v) => Waited::Read(v),
            Err(_) => Waited::Timeout,
        },
    }
}

/// Why a pre-auth front ended without a login.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("client closed the connection")]
    Closed,
    #[error("pre-auth timeout")]
    Timeout,
    #[error("pre-auth byte budget exceeded")]
    TooMuch,
    #[error("server shutting down")]
    Shutdown,
    #[error("line too long")]
    LineTooLong,
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// How the listener wants TLS handled.
pub struct TlsPolicy {
    pub mode: TlsMode,
    pub config: Option<Arc<ServerConfig>>,
}

/// Turns a front's plain connection into TLS once its STARTTLS reply is
/// out, under the pre-auth deadline. The front drops what the client
/// pipelined behind the command itself: it came in clear text.
pub async fn start_tls(
    stream: &mut Option<Stream>,
    config: Arc<ServerConfig>,
    deadline: tokio::time::Instant,
) -> Result<(), FrontError> {
    let tcp = stream
        .take()
        .and_then(Stream::into_plain)
        .ok_or(FrontError::Closed)?;
    match crate::net::tls::accept(config, tcp, deadline).await {
        Ok(tls) => {
            *stream = Some(tls);
            Ok(())
        }
        Err(Handshake::Failed(e)) => Err(FrontError::Tls(e)),
        Err(Handshake::TimedOut) => Err(FrontError::Timeout),
    }
}

/// Writes a front's reply and flushes it, under the pre-auth deadline.
pub async fn write(
    stream: Option<&mut Stream>,
    deadline: tokio::time::Instant,
    bytes: &[u8],
) -> Result<(), FrontError> {
    // Only a failed STARTTLS handshake leaves a front without a stream,
    // and that ends the session.
    let stream = stream.ok_or(FrontError::Closed)?;
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    match tokio::time::timeout_at(deadline, write).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(FrontError::Timeout),
    }
}
