//! Builds the shared context (store, router, backends, TLS, registry),
//! binds the listeners, runs them, and drains on shutdown: stop accepting,
//! let sessions finish for the grace period, then tell the rest to go.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::auth::{load_tokens, Token};
use crate::admin::AdminState;
use crate::config::{Config, ListenerConfig};
use crate::control::{scheduler, Control};
use crate::error::{ConfigError, ServerError};
use crate::net::backend::{self, Backends};
use crate::net::listener;
use crate::registry::Registry;
use crate::route::{import_seed, RedbStore, Router};

/// Everything a session needs, shared by all of them.
pub struct Ctx {
    pub config: Config,
    pub router: Router,
    pub backends: Backends,
    pub registry: Arc<Registry>,
    pub tls: Option<Arc<ServerConfig>>,
    /// Cancelled when the shutdown grace period is over: bridges still
    /// open say goodbye and close.
    pub hard_stop: CancellationToken,
}

/// One accepted connection.
pub struct ConnInfo {
    pub id: u64,
    /// When it was accepted: the pre-auth deadline counts from here.
    pub accepted: tokio::time::Instant,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub listener: Arc<ListenerConfig>,
}

/// Loads what `bind` would load from files (certificates, keys, CA
/// bundles) without binding or opening the store: `ponte check`.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    crate::net::tls::server_config(&config.tls.certificate)?;
    backend::build(&config.backend)?;
    Ok(())
}

/// A server with its listeners bound, ready to run.
pub struct Server {
    ctx: Arc<Ctx>,
    control: Arc<Control>,
    listeners: Vec<(Arc<ListenerConfig>, TcpListener)>,
    admin: Option<(TcpListener, Vec<Token>)>,
}

impl Server {
    /// Opens the store (importing the seed into an empty one), loads TLS
    /// material and binds every listener. Any failure here is fatal.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let store = RedbStore::open(&config.state.path)?;
        if let Some(seed) = &config.state.seed {
            let known = |b: &str| config.backend.contains_key(b);
            let n = import_seed(store.as_ref(), seed, &config.domain, &known)
                .map_err(|e| ConfigError::invalid("state.seed", e.to_string()))?;
            if n > 0 {
                info!(rows = n, file = %seed.display(), "imported mailbox seed");
            }
        }
        let router = Router::new(store, config.domain.clone())?;
        let backends = backend::build(&config.backend)?;
        let tls = crate::net::tls::server_config(&config.tls.certificate)?;
        let mut listeners = Vec::new();
        for l in &config.listener {
            let tcp = TcpListener::bind(l.bind)
                .await
                .map_err(|source| ServerError::Bind {
                    name: l.name.clone(),
                    addr: l.bind.to_string(),
                    source,
                })?;
            listeners.push((Arc::new(l.clone()), tcp));
        }
        let admin = match &config.admin {
            Some(a) => {
                let tokens = load_tokens(&a.token_file)?;
                let tcp = TcpListener::bind(a.bind)
                    .await
                    .map_err(|source| ServerError::Bind {
                        name: "admin".into(),
                        addr: a.bind.to_string(),
                        source,
                    })?;
                Some((tcp, tokens))
            }
            None => None,
        };
        let ctx = Arc::new(Ctx {
            config,
            router,
            backends,
            registry: Registry::new(),
            tls,
            hard_stop: CancellationToken::new(),
        });
        Ok(Server {
            control: Control::new(ctx.clone()),
            ctx,
            listeners,
            admin,
        })
    }

    /// Bound addresses by listener name (port 0 in the file becomes real here).
    /// The admin listener, if configured, is named `admin`.
    pub fn local_addrs(&self) -> BTreeMap<String, SocketAddr> {
        let admin = self.admin.iter().map(|(tcp, _)| ("admin".to_string(), tcp));
        self.listeners
            .iter()
            .map(|(l, tcp)| (l.name.clone(), tcp))
            .chain(admin)
            .filter_map(|(name, tcp)| Some((name, tcp.local_addr().ok()?)))
            .collect()
    }

    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Serves until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let sessions = TaskTracker::new();
        let accept_loops = TaskTracker::new();
        let limits = &self.ctx.config.limits;
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        let per_ip = crate::net::per_ip::PerIp::new(limits.max_connections_per_ip);
        for (cfg, tcp) in self.listeners {
            info!(listener = %cfg.name, addr = ?tcp.local_addr().ok(), protocol = cfg.protocol.name(), "listening");
            let l = listener::Listener {
                tcp,
                cfg,
                ctx: self.ctx.clone(),
                permits: permits.clone(),
                per_ip: per_ip.clone(),
                sessions: sessions.clone(),
                stop: shutdown.clone(),
            };
            accept_loops.spawn(l.accept_loop());
        }
        if let Some((tcp, tokens)) = self.admin {
            let state = Arc::new(AdminState {
                control: self.control.clone(),
                tokens,
                metrics: crate::observe::metrics(),
            });
            info!(addr = ?tcp.local_addr().ok(), "admin API listening");
            let stop = shutdown.clone();
            accept_loops.spawn(async move {
                let serve = axum::serve(tcp, crate::admin::app(state))
                    .with_graceful_shutdown(stop.cancelled_owned());
                if let Err(e) = serve.await {
                    warn!(error = %e, "admin API stopped");
                }
            });
        }
        accept_loops.spawn(scheduler::run(self.control.clone(), shutdown.clone()));
        accept_loops.close();
        shutdown.cancelled().await;
        accept_loops.wait().await;
        sessions.close();
        let grace = self.ctx.config.limits.shutdown_grace;
        info!(
            sessions = sessions.len(),
            ?grace,
            "shutting down: no longer accepting"
        );
        if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
            self.ctx.hard_stop.cancel();
            if tokio::time::timeout(Duration::from_secs(5), sessions.wait())
                .await
                .is_err()
            {
                warn!(
                    sessions = sessions.len(),
                    "sessions still open after the grace period"
                );
            }
        }
        info!("stopped");
        Ok(())
    }
}
