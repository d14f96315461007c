//! `ponte ctl`: the command-line client of the admin API. Every command
//! becomes one HTTP call (`plan`), sent with the token (`client`) to the
//! address found in the configuration (`target`); the answer is printed as
//! an aligned table (`render`) or, with `--json`, as the API's JSON.
//!
//! Exit codes: 0 success, 1 the API refused, 2 usage or configuration error,
//! 3 the API cannot be reached.

mod client;
mod json;
mod migrate;
mod plan;
mod queue;
mod render;
mod table;
mod target;
mod token;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Subcommand};

pub use migrate::MigrateArgs;
pub use plan::{Body, Call, Method, View};
pub use queue::{QueueArgs, QueueCommand, QueueView};
pub use table::Table;
pub use token::parse_token;

/// Global options of `ponte ctl` and the command to run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file holding the admin address and token file.
    #[arg(long, global = true, default_value = "conf/ponte.toml")]
    pub config: PathBuf,
    /// Admin API address (http://host:port); overrides admin.bind.
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// File holding the admin token; overrides admin.token_file.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The commands of `ponte ctl`.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Domains, their states and mailbox overrides; session and schedule totals.
    Status,
    /// Change a domain's state.
    Domain {
        #[command(subcommand)]
        action: DomainCommand,
    },
    /// Per-mailbox overrides.
    Mailbox {
        #[command(subcommand)]
        action: MailboxCommand,
    },
    /// Import `address,state[,backend]` rows from a CSV file (`-` for stdin).
    Import { file: PathBuf },
    /// Scheduled state changes.
    Schedule {
        #[command(subcommand)]
        action: ScheduleCommand,
    },
    /// Open client sessions.
    Sessions,
    /// Close client sessions.
    Kick(KickArgs),
    /// The inbound queue: mail spooled for mailboxes in blackout. Counts
    /// per domain without a subcommand.
    Queue(QueueArgs),
    /// Recent state changes, newest last.
    Audit {
        /// How many entries to show.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Copy the whole state between the embedded store and PostgreSQL
    /// (either way), working on the stores directly, not over the API.
    MigrateStore(MigrateArgs),
}

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Set a domain's state.
    Set {
        domain: String,
        /// legacy, blackout, migrated or excluded.
        state: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MailboxCommand {
    /// Override one mailbox's state.
    Set {
        address: String,
        /// legacy, blackout, migrated or excluded.
        state: String,
        /// Backend for this mailbox instead of the domain's.
        #[arg(long)]
        backend: Option<String>,
    },
    /// A mailbox's effective state and route.
    Show { address: String },
    /// Set this mailbox's own end of the tempmail view (RFC 3339), or
    /// `none` to follow its domain's again.
    Tempmail { address: String, until: String },
    /// Remove a mailbox's override: it follows its domain again.
    Rm { address: String },
    /// Mailbox overrides.
    List {
        /// Only this domain's mailboxes.
        #[arg(long)]
        domain: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Pending scheduled changes.
    List,
    /// Schedule a state change at AT (RFC 3339, e.g. 2026-04-28T08:00:00+02:00).
    Add(ScheduleAdd),
    /// Cancel a scheduled change.
    Rm { id: u64 },
}

#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("subject").required(true).args(["domain", "mailbox"])))]
pub struct ScheduleAdd {
    /// Change this domain's state.
    #[arg(long)]
    pub domain: Option<String>,
    /// Change this mailbox's state.
    #[arg(long)]
    pub mailbox: Option<String>,
    /// legacy, blackout, migrated or excluded.
    pub state: String,
    /// When, in RFC 3339 (2026-04-28T08:00:00+02:00).
    pub at: String,
}

#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("who").required(true).args(["mailbox", "domain", "id"])))]
pub struct KickArgs {
    /// Every session of this mailbox.
    #[arg(long)]
    pub mailbox: Option<String>,
    /// Every session of this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// Session id, as `ponte ctl sessions` shows it.
    #[arg(long)]
    pub id: Option<u64>,
    /// Reason recorded with the kick.
    #[arg(long)]
    pub reason: Option<String>,
}

/// Why a command failed; each kind has its own exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The API answered 4xx/5xx (exit 1).
    Api {
        message: String,
        details: Vec<String>,
    },
    /// Bad arguments or configuration (exit 2).
    Usage(String),
    /// The API could not be reached (exit 3).
    Unreachable(String),
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Api { .. } => 1,
            Failure::Usage(_) => 2,
            Failure::Unreachable(_) => 3,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Api { message, .. } => f.write_str(message),
            Failure::Usage(m) | Failure::Unreachable(m) => f.write_str(m),
        }
    }
}

/// Runs one `ponte ctl` command and reports how it went.
pub fn run(args: Args) -> ExitCode {
    match execute(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            report(&failure);
            ExitCode::from(failure.code())
        }
    }
}

fn execute(args: &Args) -> Result<(), Failure> {
    if let CtlCommand::MigrateStore(m) = &args.command {
        return migrate::run(m);
    }
    let call = plan::plan(&args.command)?;
    let target = target::resolve(args)?;
    let reply = client::send(&target, &call)?;
    if args.json {
        print_lines(&json::pretty(&reply.body));
    }
    if !(200..300).contains(&reply.status) {
        return Err(render::api_error(reply.status, &reply.body));
    }
    if !args.json {
        print_lines(&render::render(call.view, &reply.body)?);
    }
    Ok(())
}

fn report(failure: &Failure) {
    eprintln!("ponte ctl: {}", table::clean(&failure.to_string()));
    if let Failure::Api { details, .. } = failure {
        for line in details {
            eprintln!("{}", table::clean(line));
        }
    }
}

/// Prints text line by line, with control characters made harmless.
fn print_lines(text: &str) {
    for line in text.lines() {
        println!("{}", table::clean(line));
    }
}
