//! The `ponte` command: `serve` runs the proxy (SIGTERM drains, SIGHUP
//! reloads the configuration), `check` validates a configuration file,
//! `ctl` talks to a running proxy's admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "ponte", version, about = "Mail proxy for provider migrations")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, default_value = "conf/ponte.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    Check {
        #[arg(long, default_value = "conf/ponte.toml")]
        config: PathBuf,
    },
    /// Talk to a running ponte's admin API.
    Ctl(ponte::ctl::Args),
}

fn main() -> ExitCode {
    let args = Args::parse();
    ponte::observe::init();
    match args.command {
        Command::Ctl(args) => ponte::ctl::run(args),
        Command::Check { config } => {
            match ponte::Config::load(&config).and_then(|c| ponte::server::check(&c)) {
                Ok(()) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&config, e),
            }
        }
        Command::Serve { config } => {
            let cfg = match ponte::Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(&config, e),
            };
            serve(cfg, config)
        }
    }
}

fn serve(cfg: ponte::Config, path: PathBuf) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ponte: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let server = match ponte::Server::bind(cfg).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ponte: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        ponte::service::ready("serving");
        ponte::service::spawn_watchdog(shutdown.clone());
        tokio::spawn(signals(shutdown.clone()));
        tokio::spawn(reload_on_hangup(server.reload_handle(), path));
        match server.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ponte: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGHUP re-reads the configuration file; a bad file is refused with the
/// reason logged, and the configuration in force stays.
async fn reload_on_hangup(handle: ponte::server::ReloadHandle, path: PathBuf) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!(file = %path.display(), "SIGHUP: reloading the configuration");
            ponte::service::reloading();
            let result = match ponte::Config::load(&path) {
                Ok(cfg) => handle.reload(cfg).await,
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => ponte::service::reloaded("serving; configuration reloaded"),
                Err(reason) => {
                    tracing::warn!(%reason, "reload refused; the configuration in force stays");
                    ponte::service::reloaded("serving; last reload refused, see the log");
                }
            }
        }
    }
}

/// SIGTERM or Ctrl-C starts a graceful shutdown.
async fn signals(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutdown requested");
            ponte::service::stopping();
            shutdown.cancel();
            return;
        }
    }
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    ponte::service::stopping();
    shutdown.cancel();
}

fn fail(path: &std::path::Path, e: ponte::error::ConfigError) -> ExitCode {
    eprintln!("ponte: {}: {e}", path.display());
    ExitCode::from(2)
}
