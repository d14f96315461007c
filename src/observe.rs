//! Logging set-up. Sessions log through `tracing` spans that carry the
//! client address, listener, mailbox and route; credentials are wrapped in
//! `Secret` and never formatted.

use tracing_subscriber::EnvFilter;

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
