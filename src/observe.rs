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
