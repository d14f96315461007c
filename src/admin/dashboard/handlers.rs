//! The dashboard's HTTP handlers: sign-in and out, the main page, the
//! review and confirmation of actions, and the CSV import's check.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use serde::Deserialize;
use tracing::{info, warn};

use super::actions::{Action, Form as ActionForm};
use super::html::{csrf_field, esc, page, ROW};
use super::overview::Overview;
use super::session::{Signed, COOKIE, MAX_IMPORT};
use super::{csrf, pages, redirect};
use crate::admin::AdminState;
use crate::control::ControlError;

type St = State<Arc<AdminState>>;

/// Pause before answering a wrong token, to slow guessing.
const WRONG_TOKEN_DELAY: Duration = Duration::from_millis(300);

/// A short HTML page with a status (refusals, errors).
pub fn refused(status: StatusCode, text: &str) -> Response {
    let body = format!(
        "<p class=\"flash bad\" role=\"alert\">{}</p><p><a href=\"/dashboard\">Back to the dashboard</a></p>",
        esc(text)
    );
    (status, Html(page("Refused", None, &body))).into_response()
}

/// A form or query the extractor could not read (a repeated field, a
/// wrong content type, a body over the size limit): the dashboard's own
/// page with the extractor's status, instead of axum's plain text.
fn unreadable(status: StatusCode, detail: &str) -> Response {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large();
    }
    refused(status, &format!("The form could not be read: {detail}"))
}

/// A form body, or the dashboard's refusal page when it cannot be read.
pub struct PageForm<T>(T);

impl<S, T> axum::extract::FromRequest<S> for PageForm<T>
where
    Form<T>: axum::extract::FromRequest<S, Rejection = FormRejection>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        match Form::<T>::from_request(req, state).await {
            Ok(Form(f)) => Ok(PageForm(f)),
            Err(r) => Err(unreadable(r.status(), &r.body_text())),
        }
    }
}

/// A query string, or the dashboard's refusal page when it cannot be read.
pub struct PageQuery<T>(T);

impl<S, T> FromRequestParts<S> for PageQuery<T>
where
    Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(PageQuery(q)),
            Err(r) => Err(unreadable(r.status(), &r.body_text())),
        }
    }
}

/// A form (in practice an import) over the size limit, whichever check
/// caught it.
fn too_large() -> Response {
    refused(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!(
            "Too large for the dashboard: a form (an imported list) may be at most {} MiB as the browser \
             sends it (commas, @ and line breaks are sent as three bytes each). Use `ponte ctl import` for larger lists.",
            MAX_IMPORT / (1024 * 1024)
        ),
    )
}

/// The session cookie's value in the request, if any.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// Requests of a signed-in browser. Without a live session, a page asks
/// for sign-in (303 to the login form); anything else gets 401.
impl FromRequestParts<Arc<AdminState>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Signed, Response> {
        let found = cookie(&parts.headers).and_then(|c| state.dashboard.sessions.find(c));
        match found {
            Some(s) => Ok(s),
            None if parts.method == Method::GET => Err(redirect("/dashboard/login")),
            None => Err(refused(
                StatusCode::UNAUTHORIZED,
                "Not signed in (or the session has ended): sign in again.",
            )),
        }
    }
}

/// Checks the form's CSRF token against the session's.
fn check_csrf(who: &Signed, presented: Option<&str>) -> Result<(), Box<Response>> {
    match presented {
        Some(t) if csrf::same(t.as_bytes(), who.csrf.as_bytes()) => Ok(()),
        _ => {
            warn!(who = %who.name, "dashboard: POST without a valid CSRF token refused");
            Err(Box::new(refused(
                StatusCode::FORBIDDEN,
                "The form's security token is missing or stale: reload the page and try again.",
            )))
        }
    }
}

pub async fn login_form(State(s): St, headers: HeaderMap) -> Response {
    if cookie(&headers).is_some_and(|c| s.dashboard.sessions.find(c).is_some()) {
        return redirect("/dashboard");
    }
    Html(page("Sign in", None, &pages::login(None))).into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

pub async fn login(State(s): St, PageForm(form): PageForm<LoginForm>) -> Response {
    let Some(token) = crate::admin::auth::find(&s.tokens, form.token.trim()) else {
        warn!("dashboard sign-in refused: wrong token");
        tokio::time::sleep(WRONG_TOKEN_DELAY).await;
        let body = pages::login(Some("Wrong token."));
        return (StatusCode::UNAUTHORIZED, Html(page("Sign in", None, &body))).into_response();
    };
    let Some(id) = s.dashboard.sessions.create(&token.name) else {
        return refused(StatusCode::INTERNAL_SERVER_ERROR, "No random source.");
    };
    info!(who = %token.name, "dashboard sign-in");
    // Secure: browsers keep it over https, and on http://localhost or
    // 127.0.0.1 (a secure context), where the admin listener belongs.
    let set = format!("{COOKIE}={id}; Path=/dashboard; HttpOnly; Secure; SameSite=Strict");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, set),
            (header::LOCATION, "/dashboard".into()),
        ],
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    csrf: Option<String>,
}

pub async fn logout(State(s): St, who: Signed, PageForm(form): PageForm<CsrfOnly>) -> Response {
    if let Err(r) = check_csrf(&who, form.csrf.as_deref()) {
        return *r;
    }
    s.dashboard.sessions.remove(&who);
    info!(who = %who.name, "dashboard sign-out");
    let clear = format!("{COOKIE}=; Path=/dashboard; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, clear),
            (header::LOCATION, "/dashboard/login".into()),
        ],
    )
        .into_response()
}

fn backend_names(s: &AdminState) -> Vec<String> {
    s.control.ctx().backends.keys().cloned().collect()
}

pub async fn main(State(s): St, who: Signed) -> Response {
    let overview = match Overview::gather(&s.control).await {
        Ok(o) => o,
        Err(e) => return control_error(&e),
    };
    let flash = s.dashboard.sessions.take_flash(&who);
    let history = s.dashboard.history.samples();
    let body = pages::main(
        &overview,
        &history,
        s.dashboard.history.interval.as_secs(),
        &who.csrf,
        flash.as_deref(),
        &backend_names(&s),
    );
    Html(page(
        "Migration dashboard",
        Some((&who.name, &who.csrf)),
        &body,
    ))
    .into_response()
}

/// An error page with the status the API would give.
fn control_error(e: &ControlError) -> Response {
    let status = match e {
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Invalid(_) | ControlError::BadRows(_) => StatusCode::BAD_REQUEST,
        ControlError::NoSpool => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refused(status, &e.to_string())
}

/// The review page: what will change, and the form that does it.
fn review(
    who: &Signed,
    title: &str,
    what: &str,
    fields: &[(&str, String)],
    button: &str,
) -> Response {
    let mut body = format!("<div class=\"review\">{what}</div>");
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/dashboard/do\" class=\"confirm\">{}",
        csrf_field(&who.csrf)
    );
    for (k, v) in fields {
        let _ = write!(
            body,
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            esc(k),
            esc(v)
        );
    }
    let _ = write!(
        body,
        "<button type=\"submit\" class=\"danger\">{}</button> <a href=\"/dashboard\">Cancel</a></form>",
        esc(button)
    );
    Html(page(title, Some((&who.name, &who.csrf)), &body)).into_response()
}

pub async fn confirm(
    State(s): St,
    who: Signed,
    PageQuery(form): PageQuery<ActionForm>,
) -> Response {
    let action = match Action::parse(&form) {
        Ok(a) => a,
        Err(e) => return refused(StatusCode::BAD_REQUEST, &e),
    };
    match action.describe(&s).await {
        Ok((what, button)) => review(&who, "Confirm", &what, &action.fields(), &button),
        Err(e) => control_error(&e),
    }
}

pub async fn perform(State(s): St, who: Signed, PageForm(form): PageForm<ActionForm>) -> Response {
    if let Err(r) = check_csrf(&who, form.csrf.as_deref()) {
        return *r;
    }
    let action = match Action::parse(&form) {
        Ok(a) => a,
        Err(e) => return refused(StatusCode::BAD_REQUEST, &e),
    };
    let done = match action {
        Action::Import { nonce } => import_now(&s, &who, &nonce).await,
        other => other.perform(&s, &who.name).await,
    };
    match done {
        Ok(text) => {
            s.dashboard.sessions.set_flash(&who, text);
            redirect("/dashboard")
        }
        Err(ControlError::BadRows(rows)) => bad_rows(&who, &rows, None),
        Err(e) => control_error(&e),
    }
}

async fn import_now(
    s: &Arc<AdminState>,
    who: &Signed,
    nonce: &str,
) -> Result<String, ControlError> {
    let csv = s
        .dashboard
        .sessions
        .take_import(who, nonce)
        .ok_or_else(|| {
            ControlError::Invalid(
                "this import was already done or has expired; check the file again".into(),
            )
        })?;
    let name = who.name.clone();
    let done = s.control.blocking(move |c| c.import(&csv, &name)).await?;
    Ok(format!(
        "Imported {} row(s): {} mailbox(es) changed, {}.",
        done.rows, done.changed, done.kicked
    ))
}

#[derive(Deserialize)]
pub struct ImportForm {
    csrf: Option<String>,
    #[serde(default)]
    csv: String,
}

/// Checks an uploaded list without applying it: the per-row error report,
/// or a review of what it will change.
pub async fn import(State(s): St, who: Signed, PageForm(form): PageForm<ImportForm>) -> Response {
    if let Err(r) = check_csrf(&who, form.csrf.as_deref()) {
        return *r;
    }
    // The body limit (`MAX_FORM`) already bounds the text; this keeps
    // what a session stashes bounded whatever that limit becomes.
    if form.csv.len() > MAX_IMPORT {
        return too_large();
    }
    let control = s.control.clone();
    let state = s.clone();
    // A text area's line breaks arrive as CRLF; the parser counts lines
    // the way the admin sees them either way.
    let csv = form.csv;
    let checked = tokio::task::spawn_blocking(move || {
        let ctx = control.ctx();
        let known = |b: &str| ctx.backends.contains_key(b);
        match crate::route::parse_mailbox_csv(&csv, &ctx.config.domain, &known) {
            Ok(rows) => super::review::import(&state, &rows).map(|what| Ok((what, csv))),
            Err(crate::route::SeedError::Rows(bad)) => Ok(Err((bad, csv))),
            Err(other) => Err(ControlError::Invalid(other.to_string())),
        }
    })
    .await;
    match checked {
        Ok(Ok(Ok((what, csv)))) => {
            let Some(nonce) = s.dashboard.sessions.stash_import(&who, csv) else {
                return refused(
                    StatusCode::UNAUTHORIZED,
                    "The session has ended: sign in again.",
                );
            };
            let action = Action::Import { nonce };
            review(
                &who,
                "Confirm the import",
                &what,
                &action.fields(),
                "Import the list",
            )
        }
        Ok(Ok(Err((bad, csv)))) => bad_rows(&who, &bad, Some(&csv)),
        Ok(Err(e)) => control_error(&e),
        Err(e) => control_error(&ControlError::Task(e.to_string())),
    }
}

/// The per-row error report of a refused import, with the list again
/// (`csv`) to fix and check.
fn bad_rows(who: &Signed, rows: &[String], csv: Option<&str>) -> Response {
    let mut body = format!(
        "<p class=\"flash bad\" role=\"alert\" id=\"import-errors\">Nothing was imported: {} bad row(s). Fix them and check the list again.</p>",
        rows.len()
    );
    let mut table = String::new();
    super::html::thead(&mut table, "Bad rows", &["Row", "Problem"]);
    for r in rows {
        let (at, why) = r.split_once(": ").unwrap_or(("", r));
        table.push_str(ROW);
        super::html::td(&mut table, "Row", &esc(at));
        super::html::td(&mut table, "Problem", &esc(why));
        table.push_str("</tr>");
    }
    super::html::tfoot(&mut table);
    body.push_str(&table);
    if let Some(csv) = csv {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/dashboard/import\" class=\"confirm\">{}\
             <label for=\"im-csv\">Rows</label><textarea id=\"im-csv\" name=\"csv\" rows=\"10\" required spellcheck=\"false\">{}</textarea>\
             <button type=\"submit\">Check again</button></form>",
            csrf_field(&who.csrf),
            esc(csv)
        );
    }
    body.push_str("<p><a href=\"/dashboard#import\">Back to the dashboard</a></p>");
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Html(page("Import refused", Some((&who.name, &who.csrf)), &body)),
    )
        .into_response()
}
