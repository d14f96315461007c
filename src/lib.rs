//! ponte: a mail proxy that keeps a mail service's hostnames stable while
//! its mailboxes move from a legacy provider to a new one. See DESIGN.md.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod control;
pub mod ctl;
pub mod error;
pub mod net;
pub mod observe;
pub mod proto;
pub mod registry;
pub mod route;
pub mod secret;
pub mod server;
pub mod service;
pub mod spool;

pub use config::Config;
pub use server::Server;

use tokio_util::sync::CancellationToken;

/// Binds everything the configuration names and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), error::ServerError> {
    Server::bind(config).await?.run(shutdown).await
}
