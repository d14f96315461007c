//! The admin dashboard: server-rendered pages on the admin listener to see
//! a migration at a glance and act on it (flips, a mailbox back to its
//! domain's state, a mailbox's tempmail deadline, schedules, kicks, CSV
//! imports, queue holds) without a terminal.
//!
//! Security, in one place:
//! - sign-in with an admin token through a form; the browser then holds
//!   only a server-side session's random id (cookie `HttpOnly; Secure;
//!   SameSite=Strict; Path=/dashboard`), never the token, never in a URL;
//! - every POST passes an `Origin`/`Sec-Fetch-Site` check (a cross-site
//!   post gets 403 before anything else) and carries the session's CSRF
//!   token;
//! - every change is a review page first (GET, changes nothing), then a
//!   POST that calls the same control-plane methods as the API, under the
//!   token's name (the audit log's `who`);
//! - everything shown is HTML-escaped, and a strict Content-Security-Policy
//!   allows only the embedded stylesheet and script.

mod actions;
mod assets;
mod chart;
mod csrf;
mod handlers;
mod history;
mod html;
mod live;
mod overview;
mod own;
mod pages;
mod review;
mod session;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use history::History;
pub use session::Sessions;

use super::AdminState;
use crate::control::Control;

/// The dashboard's own state inside [`AdminState`].
pub struct Dashboard {
    pub sessions: Sessions,
    pub history: Arc<History>,
    /// Live-update streams open, all sessions together.
    streams: Arc<AtomicUsize>,
    /// The live sections last rendered for the streams, and when.
    rendered: Mutex<Option<(Instant, Arc<String>)>>,
    /// Cancelled at shutdown: live-update streams end, so that they do not
    /// hold up the admin listener's graceful stop.
    stop: CancellationToken,
}

/// Live-update streams open at once, all sessions together.
const MAX_STREAMS: usize = 32;
/// Largest dashboard form body as sent (URL-encoded): an import of
/// `MAX_IMPORT` bytes as sent, and its CSRF field. Over it, the form's
/// rejection gets the same "too large" page as the import's own check.
const MAX_FORM: usize = session::MAX_IMPORT + 1024;

impl Dashboard {
    /// A dashboard whose charts sample every `interval`, until `stop`.
    pub fn new(interval: Duration, stop: CancellationToken) -> Dashboard {
        Dashboard {
            stop,
            sessions: Sessions::default(),
            history: Arc::new(History::new(interval)),
            streams: Arc::new(AtomicUsize::new(0)),
            rendered: Mutex::new(None),
        }
    }

    /// Samples the charts' figures until the dashboard's stop.
    pub fn spawn_sampler(&self, control: Arc<Control>) {
        tokio::spawn(self.history.clone().run(control, self.stop.clone()));
    }
}

/// The dashboard's routes, under `/dashboard`.
pub fn routes(state: Arc<AdminState>) -> Router<Arc<AdminState>> {
    Router::new()
        .route("/dashboard", get(handlers::main))
        .route("/dashboard/", get(|| async { redirect("/dashboard") }))
        .route(
            "/dashboard/login",
            get(handlers::login_form).post(handlers::login),
        )
        .route("/dashboard/logout", post(handlers::logout))
        .route("/dashboard/confirm", get(handlers::confirm))
        .route("/dashboard/do", post(handlers::perform))
        .route("/dashboard/import", post(handlers::import))
        .route("/dashboard/events", get(live::events))
        .route("/dashboard/assets/{file}", get(assets::serve))
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::from_fn(same_origin_posts))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// 303 to `to`.
fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// Refuses a POST that a browser says comes from another site, before
/// any session or form is looked at.
async fn same_origin_posts(req: Request, next: Next) -> Response {
    if req.method() == Method::POST && !csrf::same_origin(req.headers()) {
        tracing::warn!(path = %req.uri().path(), "dashboard: cross-site POST refused");
        return handlers::refused(StatusCode::FORBIDDEN, "Cross-site request refused.");
    }
    next.run(req).await
}

/// Only the embedded assets, no framing, no referrer to other sites, no
/// caching of pages that show mailbox addresses. (`no-referrer` would
/// also make browsers send `Origin: null` on the dashboard's own form
/// posts, which the origin check refuses.)
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}
