//! The admin API of the inbound queue: figures per domain and mailbox,
//! the message list, one message's envelope and headers, and retry, hold,
//! release and delete. Also the queue's gauges for `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Who;
use super::{AdminState, ApiError};
use crate::control::queue::Shown;
use crate::control::{Control, ControlError};
use crate::route::now_unix;
use crate::spool::{Envelope, Filter, QueueStats, Recipient, SpoolId, Status};

type Api = Result<Json<Value>, ApiError>;
type St = State<Arc<AdminState>>;

/// Messages listed when the request names no limit.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 100_000;

fn rfc3339(unix: i64) -> Value {
    Value::String(crate::route::rfc3339(unix))
}

/// An id from the path: 16 hex digits, else 400.
fn parse_id(text: &str) -> Result<SpoolId, ApiError> {
    text.parse().map_err(|e| {
        ApiError::bad_request(format!(
            "{e} (a queue id is 16 hex digits, as `ponte ctl queue list` shows)"
        ))
    })
}

#[derive(Deserialize)]
pub struct Narrow {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    mailbox: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    /// `fleet=1`: every node's figures, as each last published them.
    #[serde(default)]
    fleet: Option<String>,
}

impl Narrow {
    /// At most one of `domain` and `mailbox`, lower case.
    fn filter(&self) -> Result<Filter, ApiError> {
        match (&self.domain, &self.mailbox) {
            (None, None) => Ok(Filter::All),
            (Some(d), None) => Ok(Filter::Domain(d.trim().to_ascii_lowercase())),
            (None, Some(m)) => Ok(Filter::Mailbox(m.trim().to_lowercase())),
            _ => Err(ApiError::bad_request(
                "give at most one of domain and mailbox",
            )),
        }
    }
}

/// `GET /api/queue`: the whole queue's figures and, per recipient domain
/// and mailbox, those of the messages still to deliver there. `domain`
/// or `mailbox` narrows the two lists (not the total).
pub async fn stats(State(s): St, Query(q): Query<Narrow>) -> Api {
    if q.fleet.as_deref().is_some_and(|f| f == "1" || f == "true") {
        return fleet(&s.control).await;
    }
    let filter = q.filter()?;
    let stats = s.control.queue_stats().await?;
    let now = now_unix();
    let keep_domain = |d: &str| match &filter {
        Filter::All => true,
        Filter::Domain(want) => d == want,
        Filter::Mailbox(m) => crate::spool::domain_of(m) == d,
    };
    let keep_mailbox = |a: &str| match &filter {
        Filter::All => true,
        Filter::Domain(want) => crate::spool::domain_of(a) == *want,
        Filter::Mailbox(m) => a == m,
    };
    let domains: Vec<Value> = stats
        .domains
        .iter()
        .filter(|(d, _)| keep_domain(d))
        .map(|(d, f)| with_key("domain", d, f.to_json(now)))
        .collect();
    let mailboxes: Vec<Value> = stats
        .mailboxes
        .iter()
        .filter(|(a, _)| keep_mailbox(a))
        .map(|(a, f)| with_key("address", a, f.to_json(now)))
        .collect();
    Ok(Json(json!({
        "total": stats.total.to_json(now),
        "domains": domains,
        "mailboxes": mailboxes,
    })))
}

/// `{key: name}` followed by the fields of `rest` (an object).
fn with_key(key: &str, name: &str, rest: Value) -> Value {
    let mut out = serde_json::Map::new();
    out.insert(key.into(), name.into());
    if let Value::Object(fields) = rest {
        out.extend(fields);
    }
    Value::Object(out)
}

/// `GET /api/queue/messages`: messages in arrival order, those with a
/// recipient in `domain` or `mailbox` if given, at most `limit`.
pub async fn list(State(s): St, Query(q): Query<Narrow>) -> Api {
    let filter = q.filter()?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let entries = s.control.queue_list(filter).await?;
    let now = now_unix();
    let left_off = entries.len().saturating_sub(limit);
    let messages: Vec<Value> = entries
        .iter()
        .take(limit)
        .map(|e| message(e.id, &e.envelope, now))
        .collect();
    Ok(Json(json!({ "messages": messages, "left_off": left_off })))
}

fn message(id: SpoolId, env: &Envelope, now: i64) -> Value {
    json!({
        "id": id.to_string(),
        "from": env.mail_from,
        "recipients": env.recipients.iter().map(recipient).collect::<Vec<_>>(),
        "size": env.size,
        "arrived": rfc3339(env.arrived),
        "age_seconds": (now - env.arrived).max(0),
        "held": env.held,
        "message_id": env.message_id,
    })
}

fn recipient(r: &Recipient) -> Value {
    let (status, last_error) = match &r.status {
        Status::Pending => ("pending", None),
        Status::Delivered => ("delivered", None),
        Status::Failed {
            reason,
            permanent: false,
        } => ("deferred", Some(reason)),
        Status::Failed {
            reason,
            permanent: true,
        } => ("failed", Some(reason)),
    };
    json!({
        "address": r.address,
        "status": status,
        "attempts": r.attempts,
        "last_attempt": r.last_attempt.map_or(Value::Null, rfc3339),
        "last_error": last_error,
    })
}

/// `GET /api/queue/{id}`: the envelope, each recipient's status and the
/// message's header fields (never the body).
pub async fn show(State(s): St, Path(id): Path<String>) -> Api {
    let id = parse_id(&id)?;
    let Shown {
        id,
        envelope,
        headers,
    } = s.control.queue_show(id).await?;
    let mut out = message(id, &envelope, now_unix());
    let fields: Vec<Value> = headers
        .fields
        .iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
    if let Value::Object(o) = &mut out {
        o.insert(
            "client".into(),
            json!(envelope.client.map(|c| c.to_string())),
        );
        o.insert("helo".into(), json!(envelope.helo));
        o.insert("trace_id".into(), json!(envelope.trace_id));
        o.insert("subject".into(), json!(headers.subject));
        o.insert("headers".into(), Value::Array(fields));
        o.insert("headers_truncated".into(), json!(headers.truncated));
    }
    Ok(Json(out))
}

pub async fn retry(State(s): St, Extension(who): Extension<Who>, Path(id): Path<String>) -> Api {
    let id = parse_id(&id)?;
    let reset = s.control.queue_retry(id, &who.0).await?;
    Ok(Json(json!({ "id": id.to_string(), "reset": reset })))
}

pub async fn hold(st: St, who: Extension<Who>, id: Path<String>) -> Api {
    set_hold(st, who, id, true).await
}

pub async fn release(st: St, who: Extension<Who>, id: Path<String>) -> Api {
    set_hold(st, who, id, false).await
}

async fn set_hold(
    State(s): St,
    Extension(who): Extension<Who>,
    Path(id): Path<String>,
    held: bool,
) -> Api {
    let id = parse_id(&id)?;
    let changed = s.control.queue_hold(id, held, &who.0).await?;
    Ok(Json(
        json!({ "id": id.to_string(), "held": held, "changed": changed }),
    ))
}

pub async fn delete(State(s): St, Extension(who): Extension<Who>, Path(id): Path<String>) -> Api {
    let id = parse_id(&id)?;
    let env = s.control.queue_delete(id, &who.0).await?;
    let undelivered = env
        .recipients
        .iter()
        .filter(|r| !r.status.is_done())
        .count();
    Ok(Json(json!({
        "id": id.to_string(),
        "deleted": true,
        "from": env.mail_from,
        "recipients": env.recipients.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(),
        "undelivered": undelivered,
    })))
}

/// Sets the spool gauges from the queue's figures, just before `/metrics`
/// renders them. Computed at scrape time rather than by a timer: the
/// figures come from the spool's in-memory index (no disk I/O), a scrape
/// every 15–60 s is the only reader, and a timer would do the same work
/// with nobody reading it and show values up to one period old.
pub async fn refresh_gauges(control: &Control) {
    let stats = match control.queue_stats().await {
        Ok(stats) => stats,
        // No inbound listener: no spool, no gauges.
        Err(ControlError::NoSpool) => return,
        Err(e) => {
            tracing::warn!(error = %e, "spool gauges not updated");
            return;
        }
    };
    let t = &stats.total;
    metrics::gauge!("ponte_spool_messages").set(t.messages as f64);
    metrics::gauge!("ponte_spool_bytes").set(t.bytes as f64);
    metrics::gauge!("ponte_spool_held_messages").set(t.held as f64);
    // 0 for an empty queue: a gauge cannot be absent once set.
    let age = t.oldest_age(now_unix()).unwrap_or(0);
    metrics::gauge!("ponte_spool_oldest_age_seconds").set(age as f64);
}

/// `GET /api/queue?fleet=1`: each node's sessions and spool totals, as it
/// last published them (every few seconds), with the heartbeat's age, and
/// the whole fleet's queue in total and per recipient domain. A ponte on
/// the embedded store answers `409`: it has no fleet.
async fn fleet(control: &Arc<Control>) -> Api {
    let nodes = control
        .blocking(|c| Ok(c.ctx().router.store().fleet()?))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "no fleet: this ponte keeps its state in the embedded store ([state] url is not set)",
            )
        })?;
    let now = now_unix();
    // The fleet's queue: every node's totals and recipient domains added up.
    let mut total = QueueStats::default();
    let mut domains: BTreeMap<String, QueueStats> = BTreeMap::new();
    for n in &nodes {
        if let Some(q) = published(&n.queue, n.heartbeat) {
            total.merge(&q);
        }
        for row in n.queue["domains"].as_array().into_iter().flatten() {
            if let (Some(d), Some(q)) = (row["domain"].as_str(), published(row, n.heartbeat)) {
                domains.entry(d.to_string()).or_default().merge(&q);
            }
        }
    }
    let domains: Vec<Value> = domains
        .iter()
        .map(|(d, q)| with_key("domain", d, q.to_json(now)))
        .collect();
    let list: Vec<Value> = nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.node,
                "admin": n.admin,
                "started": rfc3339(n.started),
                "heartbeat": rfc3339(n.heartbeat),
                "heartbeat_age_seconds": (now - n.heartbeat).max(0),
                "sessions": n.sessions,
                "queue": n.queue,
                "stopped": n.stopped.map(rfc3339),
            })
        })
        .collect();
    Ok(Json(json!({
        "nodes": list,
        "total": total.to_json(now),
        "domains": domains,
    })))
}

/// Figures a node published, its oldest arrival put on this node's clock
/// (`heartbeat` is when it published them, on this clock).
fn published(v: &Value, heartbeat: i64) -> Option<QueueStats> {
    Some(QueueStats {
        messages: v["messages"].as_u64()?,
        bytes: v["bytes"].as_u64()?,
        held: v["held"].as_u64().unwrap_or(0),
        oldest: v["oldest_age_seconds"].as_i64().map(|age| heartbeat - age),
    })
}
