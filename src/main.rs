//! The `ponte` command: `serve` runs the proxy (SIGTERM drains, SIGHUP
//! reloads the configuration), `check` validates a configuration file,
//! `ctl` talks to a running proxy's admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, Signal, SignalKind};
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
        // The handlers are installed before the listeners accept anything:
        // a client (or systemd) that sees the greeting may send SIGHUP or
        // SIGTERM at once, and the default action of both is to die.
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ponte: cannot install the signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let server = match ponte::Server::bind(cfg).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ponte: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(shut_down_on_terminate(signals.terminate, shutdown.clone()));
        tokio::spawn(reload_on_hangup(
            signals.hangup,
            server.reload_handle(),
            path,
        ));
        ponte::service::ready("serving");
        ponte::service::spawn_watchdog(shutdown.clone());
        match server.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ponte: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The signals `serve` acts on, registered with the runtime. (ponte is
/// Unix-only: splice, signals, systemd.)
struct Signals {
    hangup: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }
}

/// SIGTERM or Ctrl-C starts a graceful shutdown.
async fn shut_down_on_terminate(mut term: Signal, shutdown: CancellationToken) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
    ponte::service::stopping();
    shutdown.cancel();
}

/// SIGHUP re-reads the configuration file; a bad file is refused with the
/// reason logged, and the configuration in force stays.
async fn reload_on_hangup(mut hup: Signal, handle: ponte::server::ReloadHandle, path: PathBuf) {
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

fn fail(path: &std::path::Path, e: ponte::error::ConfigError) -> ExitCode {
    eprintln!("ponte: {}: {e}", path.display());
    ExitCode::from(2)
}
