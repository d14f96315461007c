//! The `ponte` command: `serve` runs the proxy, `check` validates a
//! configuration file.

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
            serve(cfg)
        }
    }
}

fn serve(cfg: ponte::Config) -> ExitCode {
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
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        match ponte::run(cfg, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ponte: {e}");
                ExitCode::FAILURE
            }
        }
    })
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
            shutdown.cancel();
            return;
        }
    }
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

fn fail(path: &std::path::Path, e: ponte::error::ConfigError) -> ExitCode {
    eprintln!("ponte: {}: {e}", path.display());
    ExitCode::from(2)
}
