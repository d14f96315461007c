//! Builds the shared context (store, router, backends, TLS, registry),
//! binds the listeners, runs them, and drains on shutdown: stop accepting,
//! let sessions finish for the grace period, then tell the rest to go.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify};
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
use crate::net::dns::{Dns, DnsOptions};
use crate::net::listener;
use crate::net::throttle::{Policy, Throttle};
use crate::observe::Observed;
use crate::registry::Registry;
use crate::route::fleet::Reply;
use crate::route::{import_seed, Event, PgStore, RedbStore, Router, StateStore};
use crate::spool::{self, worker, Spool};

/// Everything a session needs. One per configuration generation: a
/// reload builds a new one; sessions keep the one they started with. The
/// registry, the store, `draining` and `hard_stop` are shared by all
/// generations.
pub struct Ctx {
    pub config: Config,
    pub listeners: BTreeMap<String, Arc<ListenerConfig>>,
    pub router: Router,
    pub backends: Backends,
    pub registry: Arc<Registry>,
    pub tls: Option<Arc<ServerConfig>>,
    /// Cancelled when shutdown starts: sessions not yet logged in are
    /// told to go (they have nothing in flight to finish).
    pub draining: CancellationToken,
    /// Cancelled when the shutdown grace period is over: bridges still
    /// open say goodbye and close.
    pub hard_stop: CancellationToken,
    /// The inbound spool and the delivery worker's wake-up, shared by all
    /// generations.
    pub inbound: Inbound,
    /// For MX lookups; `None` if no name server is known.
    pub dns: Option<Dns>,
    /// Failed-login throttling, shared by all generations (its policy is
    /// the one ponte started with).
    pub throttle: Arc<Throttle>,
    /// Login counts and backend health for the dashboard, shared by all
    /// generations.
    pub observed: Arc<Observed>,
}

/// What inbound SMTP shares with the delivery worker.
#[derive(Clone)]
pub struct Inbound {
    /// Opened at start when an inbound (`smtp`) listener is configured;
    /// without it inbound sessions answer `451`.
    pub spool: Option<Arc<Spool>>,
    /// Pokes the delivery worker: a message was spooled or a state flipped.
    pub wake: Arc<Notify>,
}

impl Inbound {
    /// Wakes the delivery worker (or makes its next wait return at once).
    pub fn wake_worker(&self) {
        self.wake.notify_one();
    }
}

impl Ctx {
    /// Loads TLS material and backends and brings the store's domain
    /// states in line with `config`.
    fn build(
        config: Config,
        store: Arc<dyn StateStore>,
        registry: Arc<Registry>,
        (draining, hard_stop): (CancellationToken, CancellationToken),
        inbound: Inbound,
        throttle: Arc<Throttle>,
        observed: Arc<Observed>,
    ) -> Result<Ctx, ServerError> {
        // Everything that can fail is loaded before the router brings the
        // store's domain states in line with the file: a refused reload
        // must leave the states as they were.
        let backends = backend::build(&config.backend, &observed.backends)?;
        let tls = crate::net::tls::server_config(&config.tls.certificate)?;
        let router = Router::new(store, config.domain.clone())?;
        let listeners = config
            .listener
            .iter()
            .map(|l| (l.name.clone(), Arc::new(l.clone())))
            .collect();
        let dns = resolver(&config);
        Ok(Ctx {
            dns,
            config,
            listeners,
            router,
            backends,
            registry,
            tls,
            draining,
            hard_stop,
            inbound,
            throttle,
            observed,
        })
    }
}

/// The DNS resolver for MX lookups (`mx://` backends, DSNs to other
/// domains). Without one (no name server configured or in
/// /etc/resolv.conf) those deliveries wait, retried, and ponte says why.
fn resolver(config: &Config) -> Option<Dns> {
    let opts = DnsOptions {
        nameservers: config.outbound.nameservers.clone(),
        ..DnsOptions::default()
    };
    match Dns::new(&opts) {
        Ok(dns) => Some(dns),
        Err(e) => {
            warn!(error = %e, "no DNS resolver: MX deliveries will wait");
            None
        }
    }
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
    backend::build(&config.backend, &Default::default())?;
    Ok(())
}

type ReloadRequest = (Config, oneshot::Sender<Result<(), String>>);

/// Hands a new configuration to a running server (SIGHUP).
#[derive(Clone)]
pub struct ReloadHandle(mpsc::Sender<ReloadRequest>);

impl ReloadHandle {
    /// Applies `config` to new connections; open sessions keep theirs. On
    /// an error the configuration in force stays, and the reason is given.
    pub async fn reload(&self, config: Config) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send((config, tx))
            .await
            .map_err(|_| "server is not running".to_string())?;
        rx.await
            .map_err(|_| "server stopped during the reload".to_string())?
    }
}

/// A server with its listeners bound, ready to run.
pub struct Server {
    current: Arc<ArcSwap<Ctx>>,
    control: Arc<Control>,
    /// Changes other fleet nodes made (a PostgreSQL store only).
    events: mpsc::UnboundedReceiver<(Event, Reply)>,
    listeners: Vec<(String, TcpListener)>,
    admin: Option<(TcpListener, Vec<Token>)>,
    reloads: (mpsc::Sender<ReloadRequest>, mpsc::Receiver<ReloadRequest>),
}

async fn bind_listener(l: &ListenerConfig) -> Result<TcpListener, ServerError> {
    TcpListener::bind(l.bind)
        .await
        .map_err(|source| ServerError::Bind {
            name: l.name.clone(),
            addr: l.bind.to_string(),
            source,
        })
}

impl Server {
    /// Opens the store (importing the seed into an empty one), loads TLS
    /// material and binds every listener. Any failure here is fatal.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let store = open_store(&config).await?;
        if let Some(seed) = &config.state.seed {
            let known = |b: &str| config.backend.contains_key(b);
            let n = import_seed(store.as_ref(), seed, &config.domain, &known)
                .map_err(|e| ConfigError::invalid("state.seed", e.to_string()))?;
            if n > 0 {
                info!(rows = n, file = %seed.display(), "imported mailbox seed");
            }
        }
        let mut listeners = Vec::new();
        for l in &config.listener {
            listeners.push((l.name.clone(), bind_listener(l).await?));
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
        let inbound = Inbound {
            spool: open_spool(&config)?,
            wake: Arc::new(Notify::new()),
        };
        let throttle = Arc::new(Throttle::new(Policy::from_limits(&config.limits)));
        let ctx = Ctx::build(
            config,
            store,
            Registry::new(),
            (CancellationToken::new(), CancellationToken::new()),
            inbound,
            throttle,
            Arc::new(Observed::default()),
        )?;
        let current = Arc::new(ArcSwap::from_pointee(ctx));
        let (tx, events) = mpsc::unbounded_channel();
        current
            .load()
            .router
            .store()
            .watch(Arc::new(move |e: &Event, reply| {
                let _ = tx.send((e.clone(), reply));
            }));
        Ok(Server {
            control: Control::new(current.clone()),
            events,
            current,
            listeners,
            admin,
            reloads: mpsc::channel(4),
        })
    }

    /// Bound addresses by listener name (port 0 in the file becomes real here).
    /// The admin listener, if configured, is named `admin`.
    pub fn local_addrs(&self) -> BTreeMap<String, SocketAddr> {
        let admin = self.admin.iter().map(|(tcp, _)| ("admin".to_string(), tcp));
        self.listeners
            .iter()
            .map(|(name, tcp)| (name.clone(), tcp))
            .chain(admin)
            .filter_map(|(name, tcp)| Some((name, tcp.local_addr().ok()?)))
            .collect()
    }

    /// The context in force now.
    pub fn ctx(&self) -> Arc<Ctx> {
        self.current.load_full()
    }

    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle(self.reloads.0.clone())
    }

    /// Serves until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let Server {
            current,
            control,
            events,
            listeners,
            admin,
            reloads: (_, mut reload_rx),
        } = self;
        let limits = current.load().config.limits.clone();
        let mut running = Running {
            current: current.clone(),
            control: control.clone(),
            loops: BTreeMap::new(),
            accept_loops: TaskTracker::new(),
            sessions: TaskTracker::new(),
            permits: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            per_ip: crate::net::per_ip::PerIp::new(limits.max_connections_per_ip),
            shutdown: shutdown.clone(),
        };
        for (name, tcp) in listeners {
            running.start(name, tcp);
        }
        let admin_addr = admin.as_ref().and_then(|(tcp, _)| tcp.local_addr().ok());
        if let Some((tcp, tokens)) = admin {
            running
                .accept_loops
                .spawn(serve_admin(tcp, tokens, control.clone(), shutdown.clone()));
        }
        running
            .accept_loops
            .spawn(scheduler::run(control.clone(), shutdown.clone()));
        // Other nodes' changes are applied until this node's sessions are
        // gone (a flip elsewhere still closes a draining session).
        let answering = CancellationToken::new();
        let fleet_events = tokio::spawn(fleet_events(control.clone(), events, answering.clone()));
        let fleet = current.load().router.store().status().kind != "embedded";
        let started = crate::route::now_unix();
        if fleet {
            running.accept_loops.spawn(crate::control::fleet::heartbeat(
                control.clone(),
                admin_addr,
                started,
                shutdown.clone(),
            ));
        }
        if let Some(spool) = current.load().inbound.spool.clone() {
            let wake = current.load().inbound.wake.clone();
            running
                .accept_loops
                .spawn(worker::run(current.clone(), spool, wake, shutdown.clone()));
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((config, reply)) = reload_rx.recv() => {
                    let result = running.reload(config).await;
                    match &result {
                        Ok(()) => info!("configuration reloaded"),
                        Err(reason) => warn!(%reason, "configuration reload refused; the old one stays in force"),
                    }
                    let _ = reply.send(result);
                }
            }
        }
        running.drain().await;
        if fleet {
            crate::control::fleet::farewell(&control, admin_addr, started).await;
        }
        answering.cancel();
        let _ = fleet_events.await;
        Ok(())
    }
}

/// The embedded store, or PostgreSQL with `state.url` (a fleet).
async fn open_store(config: &Config) -> Result<Arc<dyn StateStore>, ServerError> {
    let Some(url) = config.state.url.clone() else {
        return Ok(RedbStore::open(&config.state.path)?);
    };
    let node = config.state.node();
    let password = match &config.state.password_file {
        Some(path) => Some(crate::secret::read_password_file(
            path,
            "state.password_file",
        )?),
        None => None,
    };
    // Connecting and loading wait on the network: off the worker threads.
    let store = tokio::task::spawn_blocking(move || PgStore::open(&url, &node, password))
        .await
        .map_err(|e| crate::error::StoreError::new(format!("opening the store: {e}")))??;
    info!(node = %config.state.node(), "state store: PostgreSQL (fleet mode)");
    Ok(store)
}

/// Re-routes this node's sessions after another node's change.
async fn fleet_events(
    control: Arc<Control>,
    mut events: mpsc::UnboundedReceiver<(Event, Reply)>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            e = events.recv() => match e {
                Some((e, reply)) => {
                    let _ = reply.send(control.on_store_event(&e));
                }
                None => return,
            },
        }
    }
}

/// Opens the spool if an inbound listener needs it (recovering from a
/// crash: see `spool::Spool::open_with`).
fn open_spool(config: &Config) -> Result<Option<Arc<Spool>>, ServerError> {
    let inbound = config
        .listener
        .iter()
        .any(|l| l.protocol == crate::config::Protocol::Smtp);
    if !inbound {
        return Ok(None);
    }
    let opts = spool::Options {
        // Room for ponte's own Received: header on top of the SIZE limit.
        max_message_bytes: config.limits.max_message_size + 4096,
        ..spool::Options::default()
    };
    let spool = Spool::open_with(&config.spool.path, opts)?;
    let r = spool.recovery();
    info!(messages = r.messages, path = %config.spool.path.display(), "spool open");
    Ok(Some(Arc::new(spool)))
}

async fn serve_admin(
    tcp: TcpListener,
    tokens: Vec<Token>,
    control: Arc<Control>,
    stop: CancellationToken,
) {
    let admin = control.ctx().config.admin.clone();
    let interval = admin
        .as_ref()
        .map_or(Duration::from_secs(60), |a| a.history_interval);
    let dashboard = crate::admin::dashboard::Dashboard::new(interval, stop.clone());
    dashboard.spawn_sampler(control.clone());
    let state = Arc::new(AdminState {
        control,
        tokens,
        metrics: crate::observe::metrics(),
        dashboard,
    });
    info!(addr = ?tcp.local_addr().ok(), "admin API listening");
    if tcp.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        // The session cookie is `Secure`: a browser keeps it over https or
        // on localhost only, and the admin listener speaks plain http.
        warn!("admin listener is not on loopback: open the dashboard through an https reverse proxy or an SSH tunnel to localhost; over plain http elsewhere the browser will not keep its session");
    }
    let serve =
        axum::serve(tcp, crate::admin::app(state)).with_graceful_shutdown(stop.cancelled_owned());
    if let Err(e) = serve.await {
        warn!(error = %e, "admin API stopped");
    }
}

/// The listeners' accept loops and the sessions they started.
struct Running {
    current: Arc<ArcSwap<Ctx>>,
    control: Arc<Control>,
    /// Accept loop by listener name: its address and its stop token.
    loops: BTreeMap<String, (SocketAddr, CancellationToken)>,
    accept_loops: TaskTracker,
    sessions: TaskTracker,
    permits: Arc<tokio::sync::Semaphore>,
    per_ip: Arc<crate::net::per_ip::PerIp>,
    shutdown: CancellationToken,
}

impl Running {
    fn start(&mut self, name: String, tcp: TcpListener) {
        let Ok(addr) = tcp.local_addr() else {
            warn!(listener = %name, "listener has no address; not started");
            return;
        };
        info!(listener = %name, %addr, "listening");
        let stop = self.shutdown.child_token();
        self.loops.insert(name.clone(), (addr, stop.clone()));
        let l = listener::Listener {
            tcp,
            name,
            current: self.current.clone(),
            permits: self.permits.clone(),
            per_ip: self.per_ip.clone(),
            sessions: self.sessions.clone(),
            stop,
        };
        self.accept_loops.spawn(l.accept_loop());
    }

    /// Builds the new context, binds new or moved listeners, then swaps:
    /// all or nothing.
    async fn reload(&mut self, config: Config) -> Result<(), String> {
        let old = self.current.load_full();
        if config.state.path != old.config.state.path
            || config.state.url != old.config.state.url
            || config.state.node != old.config.state.node
        {
            return Err("state.path, url and node cannot change without a restart".into());
        }
        if config.admin.as_ref().map(|a| a.bind) != old.config.admin.as_ref().map(|a| a.bind) {
            warn!("admin.bind changes take effect at the next restart");
        }
        check_inbound(&config, &old)?;
        let limits = (
            &config.limits.max_connections,
            &config.limits.max_connections_per_ip,
        );
        if limits
            != (
                &old.config.limits.max_connections,
                &old.config.limits.max_connections_per_ip,
            )
        {
            warn!(
                "limits.max_connections and max_connections_per_ip take effect at the next restart"
            );
        }
        // New or moved listeners are bound before anything changes, so a
        // port in use refuses the reload as a whole.
        let mut bound = Vec::new();
        for l in &config.listener {
            let same = self
                .loops
                .get(&l.name)
                .is_some_and(|(addr, _)| bind_matches(*addr, l.bind));
            if !same {
                bound.push((
                    l.name.clone(),
                    bind_listener(l).await.map_err(|e| e.to_string())?,
                ));
            }
        }
        let store = old.router.store().clone();
        // Building writes the file's domain states to the store, which
        // waits on PostgreSQL in a fleet: not on a worker thread.
        let generation = old.clone();
        let ctx = tokio::task::spawn_blocking(move || {
            Ctx::build(
                config,
                store,
                generation.registry.clone(),
                (generation.draining.clone(), generation.hard_stop.clone()),
                generation.inbound.clone(),
                generation.throttle.clone(),
                generation.observed.clone(),
            )
        })
        .await
        .map_err(|e| format!("reload task: {e}"))?
        .map_err(|e| e.to_string())?;
        let keep: Vec<String> = ctx.listeners.keys().cloned().collect();
        // The new limits, over the counters kept so far.
        ctx.throttle
            .set_policy(Policy::from_limits(&ctx.config.limits));
        self.current.store(Arc::new(ctx));
        for (name, (_, stop)) in &self.loops {
            let moved = bound.iter().any(|(n, _)| n == name);
            if moved || !keep.contains(name) {
                info!(listener = %name, "listener stopped");
                stop.cancel();
            }
        }
        self.loops
            .retain(|name, (_, stop)| !stop.is_cancelled() && keep.contains(name));
        for (name, tcp) in bound {
            self.start(name, tcp);
        }
        // Domain states, backends or deadlines in the file may have moved
        // open sessions' routes: those sessions are sent to the new one.
        self.control.reroute_all();
        Ok(())
    }

    /// Stops accepting, lets sessions finish for the grace period, then
    /// tells the rest to go.
    async fn drain(self) {
        self.accept_loops.close();
        self.accept_loops.wait().await;
        self.sessions.close();
        let ctx = self.current.load_full();
        ctx.draining.cancel();
        let grace = ctx.config.limits.shutdown_grace;
        info!(
            sessions = self.sessions.len(),
            ?grace,
            "shutting down: no longer accepting"
        );
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            ctx.hard_stop.cancel();
            if tokio::time::timeout(Duration::from_secs(6), self.sessions.wait())
                .await
                .is_err()
            {
                warn!(
                    sessions = self.sessions.len(),
                    "sessions still open after the grace period"
                );
            }
        }
        info!("stopped");
    }
}

/// The spool is opened at start: a reload cannot add the first inbound
/// listener or move the spool.
fn check_inbound(config: &Config, old: &Ctx) -> Result<(), String> {
    let inbound = config
        .listener
        .iter()
        .any(|l| l.protocol == crate::config::Protocol::Smtp);
    if old.inbound.spool.is_none() && inbound {
        return Err("the first inbound (smtp) listener needs a restart".into());
    }
    if old.inbound.spool.is_some() && config.spool.path != old.config.spool.path {
        return Err("spool.path cannot change without a restart".into());
    }
    Ok(())
}

/// Whether a running listener's address still satisfies a configured
/// bind (port 0 in the file matches whatever port was chosen).
fn bind_matches(running: SocketAddr, configured: SocketAddr) -> bool {
    running.ip() == configured.ip()
        && (configured.port() == 0 || running.port() == configured.port())
}
