//! The admin API's handlers: parse, call the control plane, answer JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Who;
use super::{AdminState, ApiError};
use crate::control::{Control, ControlError, Selector};
use crate::route::{MailboxState, Schedule, Subject, Target};

type Api = Result<Json<Value>, ApiError>;
type St = State<Arc<AdminState>>;

fn rfc3339(unix: i64) -> Value {
    Value::String(crate::route::rfc3339(unix))
}

fn parse_time(field: &str, text: &str) -> Result<i64, ApiError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| {
            ApiError::bad_request(format!(
                "{field}: {e} (expected RFC 3339, e.g. 2026-04-28T08:00:00+02:00)"
            ))
        })
}

/// Runs a control-plane change on the blocking pool: a store write waits
/// for fsync (embedded) or for PostgreSQL (a fleet, possibly behind
/// another node's long import), never on a worker thread that serves
/// mail sessions.
async fn blocking<T, F>(s: &AdminState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Control) -> Result<T, ControlError> + Send + 'static,
{
    s.control.blocking(f).await.map_err(ApiError::from)
}

fn state_arg(text: &str) -> Result<MailboxState, ApiError> {
    text.parse().map_err(ApiError::bad_request)
}

pub async fn status(State(s): St) -> Api {
    let ctx = s.control.ctx();
    let store = ctx.router.store();
    let mut domains = Vec::new();
    for (name, cfg) in &ctx.config.domain {
        let rec = store
            .domain(name)
            .map_err(crate::control::ControlError::from)?;
        let mut counts: BTreeMap<&str, usize> = ["legacy", "blackout", "migrated", "excluded"]
            .into_iter()
            .map(|k| (k, 0))
            .collect();
        for (_, m) in store
            .mailboxes(Some(name))
            .map_err(crate::control::ControlError::from)?
        {
            *counts.entry(m.state.as_str()).or_default() += 1;
        }
        domains.push(json!({
            "name": name,
            "state": rec.as_ref().map_or(cfg.state, |r| r.state),
            "set_by": rec.as_ref().map_or(crate::route::CONFIG, |r| r.set_by.as_str()),
            "legacy": cfg.legacy,
            "new": cfg.new,
            "tempmail_until": cfg.tempmail_until.map_or(Value::Null, |t| rfc3339(t.unix_timestamp())),
            "notice": cfg.notice,
            "mailboxes": counts,
        }));
    }
    let schedules = store
        .schedules()
        .map_err(crate::control::ControlError::from)?
        .len();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "sessions": ctx.registry.len(),
        "schedules": schedules,
        "domains": domains,
        "store": store.status(),
    })))
}

#[derive(Deserialize)]
pub struct StateBody {
    state: String,
    #[serde(default)]
    backend: Option<String>,
}

pub async fn set_domain(
    State(s): St,
    Extension(who): Extension<Who>,
    Path(name): Path<String>,
    Json(body): Json<StateBody>,
) -> Api {
    let state = state_arg(&body.state)?;
    let domain = name.clone();
    let flip = blocking(&s, move |c| c.set_domain(&domain, state, &who.0)).await?;
    Ok(Json(flip.kicked.to_json(json!({
        "domain": name.to_ascii_lowercase(),
        "old": flip.old,
        "new": flip.new,
    }))))
}

#[derive(Deserialize)]
pub struct DomainQuery {
    #[serde(default)]
    domain: Option<String>,
}

pub async fn list_mailboxes(State(s): St, Query(q): Query<DomainQuery>) -> Api {
    let domain = q.domain.map(|d| d.to_ascii_lowercase());
    let ctx = s.control.ctx();
    let store = ctx.router.store();
    let rows = store
        .mailboxes(domain.as_deref())
        .map_err(crate::control::ControlError::from)?;
    let list: Vec<Value> = rows
        .into_iter()
        .map(|(address, m)| {
            json!({
                "address": address, "state": m.state, "backend": m.backend, "set_by": m.set_by,
                "updated": rfc3339(m.updated), "tempmail_until": store.tempmail_until(&address).ok().flatten().map_or(Value::Null, rfc3339),
            })
        })
        .collect();
    Ok(Json(json!({ "mailboxes": list })))
}

pub async fn show_mailbox(State(s): St, Path(address): Path<String>) -> Api {
    let a = s.control.managed_address(&address)?;
    let ctx = s.control.ctx();
    let own = ctx
        .router
        .store()
        .mailbox(&a)
        .map_err(crate::control::ControlError::from)?;
    let route = ctx
        .router
        .resolve(&a, None)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let backend = match &route.target {
        Target::Live { backend } => Some(backend.clone()),
        _ => None,
    };
    Ok(Json(json!({
        "address": a,
        "state": route.state,
        "source": if own.is_some() { "mailbox" } else { "domain" },
        "route": route.target.label(),
        "backend": backend,
        "tempmail_until": tempmail_until(&ctx, &a).map_or(Value::Null, rfc3339),
    })))
}

/// The mailbox's tempmail deadline in force: its own, else its domain's.
fn tempmail_until(ctx: &crate::server::Ctx, address: &str) -> Option<i64> {
    let view = crate::config::View::Tempmail;
    ctx.router
        .resolve_for(address, None, view)
        .ok()?
        .tempmail_until
}

#[derive(Deserialize)]
pub struct TempmailBody {
    until: Option<String>,
}

/// Sets a mailbox's own tempmail deadline (`null` clears it).
pub async fn set_tempmail(
    State(s): St,
    Extension(who): Extension<Who>,
    Path(address): Path<String>,
    Json(body): Json<TempmailBody>,
) -> Api {
    let until = body
        .until
        .as_deref()
        .map(|t| parse_time("until", t))
        .transpose()?;
    let a = address.clone();
    blocking(&s, move |c| c.set_tempmail(&a, until, &who.0)).await?;
    Ok(Json(
        json!({ "address": address.to_lowercase(), "tempmail_until": until.map_or(Value::Null, rfc3339) }),
    ))
}

pub async fn set_mailbox(
    State(s): St,
    Extension(who): Extension<Who>,
    Path(address): Path<String>,
    Json(body): Json<StateBody>,
) -> Api {
    let state = state_arg(&body.state)?;
    let a = address.clone();
    let flip = blocking(&s, move |c| c.set_mailbox(&a, state, body.backend, &who.0)).await?;
    Ok(Json(flip.kicked.to_json(json!({
        "address": address.to_lowercase(),
        "old": flip.old,
        "new": flip.new,
    }))))
}

pub async fn remove_mailbox(
    State(s): St,
    Extension(who): Extension<Who>,
    Path(address): Path<String>,
) -> Api {
    let a = address.clone();
    let (removed, kicked) = blocking(&s, move |c| c.remove_mailbox(&a, &who.0)).await?;
    Ok(Json(kicked.to_json(
        json!({ "address": address.to_lowercase(), "removed": removed }),
    )))
}

pub async fn import(State(s): St, Extension(who): Extension<Who>, body: String) -> Api {
    // Parsing and the store write are blocking work: keep them off the
    // runtime's worker threads that serve mail sessions.
    let done = blocking(&s, move |c| c.import(&body, &who.0)).await?;
    Ok(Json(done.kicked.to_json(
        json!({ "rows": done.rows, "changed": done.changed }),
    )))
}

fn schedule_json(s: &Schedule) -> Value {
    json!({
        "id": s.id,
        "subject": s.subject,
        "state": s.state,
        "at": rfc3339(s.at),
        "by": s.by,
        "created": rfc3339(s.created),
    })
}

pub async fn list_schedules(State(s): St) -> Api {
    let mut list = s
        .control
        .ctx()
        .router
        .store()
        .schedules()
        .map_err(crate::control::ControlError::from)?;
    list.sort_by_key(|s| (s.at, s.id));
    Ok(Json(
        json!({ "schedules": list.iter().map(schedule_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
pub struct ScheduleBody {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    mailbox: Option<String>,
    state: String,
    at: String,
}

pub async fn add_schedule(
    State(s): St,
    Extension(who): Extension<Who>,
    Json(body): Json<ScheduleBody>,
) -> Result<impl IntoResponse, ApiError> {
    let subject = match (body.domain, body.mailbox) {
        (Some(d), None) => Subject::Domain(d),
        (None, Some(m)) => Subject::Mailbox(m),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of domain or mailbox",
            ))
        }
    };
    let state = state_arg(&body.state)?;
    let at = parse_time("at", &body.at)?;
    let schedule = blocking(&s, move |c| c.add_schedule(subject, state, at, &who.0)).await?;
    Ok((StatusCode::CREATED, Json(schedule_json(&schedule))))
}

pub async fn remove_schedule(
    State(s): St,
    Extension(who): Extension<Who>,
    Path(id): Path<u64>,
) -> Api {
    let removed = blocking(&s, move |c| c.remove_schedule(id, &who.0)).await?;
    Ok(Json(json!({ "removed": removed })))
}

pub async fn sessions(State(s): St) -> Api {
    let list: Vec<Value> = s
        .control
        .ctx()
        .registry
        .list()
        .iter()
        .map(|e| {
            let since = e
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            json!({
                "id": e.id, "address": e.address, "domain": e.domain, "route": e.route,
                "listener": e.listener, "peer": e.peer.to_string(), "since": rfc3339(since),
            })
        })
        .collect();
    Ok(Json(json!({ "sessions": list })))
}

#[derive(Deserialize)]
pub struct KickBody {
    #[serde(default)]
    mailbox: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn kick(State(s): St, Extension(who): Extension<Who>, Json(body): Json<KickBody>) -> Api {
    let selector = match (body.mailbox, body.domain, body.id) {
        (Some(m), None, None) => Selector::Mailbox(m),
        (None, Some(d), None) => Selector::Domain(d),
        (None, None, Some(id)) => Selector::Id(id),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of mailbox, domain or id",
            ))
        }
    };
    let reason = body
        .reason
        .unwrap_or_else(|| "Closed by the administrator; please reconnect.".into());
    let kicked = blocking(&s, move |c| c.kick(&selector, &reason, &who.0)).await?;
    Ok(Json(kicked.to_json(json!({}))))
}

#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    limit: Option<usize>,
}

pub async fn audit(State(s): St, Query(q): Query<AuditQuery>) -> Api {
    let limit = q.limit.unwrap_or(50).min(10_000);
    // A fleet reads the audit log from PostgreSQL.
    let entries = blocking(&s, move |c| Ok(c.ctx().router.store().audit(limit)?)).await?;
    let list: Vec<Value> = entries
        .iter()
        .map(|a| json!({ "seq": a.seq, "at": rfc3339(a.at), "who": a.who, "what": a.what, "old": a.old, "new": a.new }))
        .collect();
    Ok(Json(json!({ "audit": list })))
}

pub async fn metrics(State(s): St) -> impl IntoResponse {
    match &s.metrics {
        Some(h) => {
            super::queue::refresh_gauges(&s.control).await;
            (StatusCode::OK, h.render())
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n".to_string(),
        ),
    }
}

/// Ready when the state store answers.
pub async fn readyz(State(s): St) -> impl IntoResponse {
    match s.control.ctx().router.store().mailbox_count() {
        Ok(_) => (StatusCode::OK, "ready\n".to_string()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("state store: {e}\n"),
        ),
    }
}
