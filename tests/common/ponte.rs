//! Runs the real ponte server in-process, through its public API, on its
//! own runtime thread, so that tests can drive it with blocking clients
//! (Python, curl, raw sockets). Listeners bind port 0; the bound addresses
//! come back from `Server::local_addrs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ponte::server::Ctx;
use ponte::{Config, Server};
use tokio_util::sync::CancellationToken;

pub struct Ponte {
    pub addrs: BTreeMap<String, SocketAddr>,
    pub ctx: Arc<Ctx>,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Ponte {
    /// Starts ponte with this configuration text; panics with the reason
    /// if it does not come up.
    pub fn start(toml: &str) -> Ponte {
        let config = Config::from_toml(toml).unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
        let shutdown = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                match Server::bind(config).await {
                    Ok(server) => {
                        let _ = tx.send(Ok((server.local_addrs(), server.ctx().clone())));
                        server.run(token).await.expect("ponte run");
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        });
        // A hang detector, not a timing check: binding takes ~0.1 s, but
        // a clean-checkout CI run once saw the machine stall for over 10 s.
        let (addrs, ctx) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("ponte did not report its listeners")
            .unwrap_or_else(|e| panic!("ponte failed to start: {e}"));
        Ponte {
            addrs,
            ctx,
            shutdown,
            thread: Some(thread),
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .addrs
            .get(listener)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }

    /// Graceful shutdown; returns once the server has drained.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ponte {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
