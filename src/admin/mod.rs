//! The admin HTTP API (JSON, bearer token), Prometheus `/metrics`, the
//! health endpoints and the dashboard (`/dashboard`), on their own
//! listener (loopback by default). The handlers are thin: the work is in
//! [`crate::control`].

pub mod auth;
pub mod dashboard;
mod handlers;
mod queue;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::control::{Control, ControlError};

/// What the handlers share.
pub struct AdminState {
    pub control: Arc<Control>,
    pub tokens: Vec<auth::Token>,
    pub metrics: Option<PrometheusHandle>,
    /// Sign-in sessions and chart history of the dashboard.
    pub dashboard: dashboard::Dashboard,
}

/// Largest request body: a mailbox list of a few hundred thousand rows.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// The whole admin application.
pub fn app(state: Arc<AdminState>) -> Router {
    let api = Router::new()
        .route("/api/status", get(handlers::status))
        .route("/api/domains/{name}", put(handlers::set_domain))
        .route("/api/mailboxes", get(handlers::list_mailboxes))
        .route(
            "/api/mailboxes/{address}",
            get(handlers::show_mailbox)
                .put(handlers::set_mailbox)
                .delete(handlers::remove_mailbox),
        )
        .route(
            "/api/mailboxes/{address}/tempmail",
            put(handlers::set_tempmail),
        )
        .route("/api/import", post(handlers::import))
        .route(
            "/api/schedules",
            get(handlers::list_schedules).post(handlers::add_schedule),
        )
        .route("/api/schedules/{id}", delete(handlers::remove_schedule))
        .route("/api/sessions", get(handlers::sessions))
        .route("/api/kick", post(handlers::kick))
        .route("/api/audit", get(handlers::audit))
        .route("/api/queue", get(queue::stats))
        .route("/api/queue/messages", get(queue::list))
        .route("/api/queue/{id}", get(queue::show).delete(queue::delete))
        .route("/api/queue/{id}/retry", post(queue::retry))
        .route("/api/queue/{id}/hold", post(queue::hold))
        .route("/api/queue/{id}/release", post(queue::release))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .merge(api)
        .merge(dashboard::routes(state.clone()))
        .route("/metrics", get(handlers::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(handlers::readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// An error as the API shows it: `{"error": "...", "details": [...]}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let status = match &e {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Invalid(_) | ControlError::BadRows(_) => StatusCode::BAD_REQUEST,
            // The request is fine; this ponte is not set up for it.
            ControlError::NoSpool => StatusCode::CONFLICT,
            // A fleet's PostgreSQL is down: routing goes on, changes wait.
            ControlError::Store(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Store(_)
            | ControlError::Spool(_)
            | ControlError::Unaudited { .. }
            | ControlError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let details = match &e {
            ControlError::BadRows(rows) => rows.clone(),
            _ => Vec::new(),
        };
        ApiError {
            status,
            message: e.to_string(),
            details,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.details.is_empty() {
            json!({ "error": self.message })
        } else {
            json!({ "error": self.message, "details": self.details })
        };
        (self.status, Json(body)).into_response()
    }
}
