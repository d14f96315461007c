//! Logging set-up. Sessions log through `tracing` spans that carry the
//! client address, listener, mailbox and route; credentials are wrapped in
//! `Secret` and never formatted.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;

use crate::net::health;

/// What the dashboard watches besides the registry and the spool: login
/// outcomes since start and each backend's connect health. One per
/// server, shared by all configuration generations (the Prometheus
/// counters are process-wide, and a library user may run several servers).
#[derive(Debug, Default)]
pub struct Observed {
    logins_ok: AtomicU64,
    logins_failed: AtomicU64,
    pub backends: health::Table,
}

impl Observed {
    /// Counts one login outcome: `ok`, or any failure (wrong password,
    /// refused, backend error).
    pub fn count_login(&self, ok: bool) {
        let c = if ok {
            &self.logins_ok
        } else {
            &self.logins_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Logins (ok, failed) since start.
    pub fn logins(&self) -> (u64, u64) {
        (
            self.logins_ok.load(Ordering::Relaxed),
            self.logins_failed.load(Ordering::Relaxed),
        )
    }
}

/// Logs to stderr; `PONTE_LOG` (or `RUST_LOG`) filters, `info` by default.
pub fn init() {
    let filter = EnvFilter::try_from_env("PONTE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The process-wide Prometheus recorder, installed on first use. `None`
/// if another recorder was installed first (a library user's own).
pub fn metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use std::sync::OnceLock;
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}
