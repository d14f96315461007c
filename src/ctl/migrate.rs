//! `ponte ctl migrate-store`: copies a whole state (domains, mailbox
//! overrides, tempmail deadlines, schedules, the audit log with its
//! sequence numbers) from one store to another, embedded or PostgreSQL,
//! either way. It works on the stores themselves, not over the API: stop
//! the ponte that uses the embedded store first (redb refuses a second
//! opener anyway).

use std::path::Path;
use std::sync::Arc;

use super::Failure;
use crate::route::{PgStore, RedbStore, StateStore};

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Where the state is now: the embedded store's directory
    /// (state.path) or postgres://user@host:port/database.
    #[arg(long)]
    pub from: String,
    /// Where it goes: postgres://… or a directory.
    #[arg(long)]
    pub to: String,
    /// Replace whatever the target already holds.
    #[arg(long)]
    pub force: bool,
}

/// Copies the state and prints what was copied.
pub fn run(args: &MigrateArgs) -> Result<(), Failure> {
    if args.from == args.to {
        return Err(Failure::Usage("--from and --to are the same store".into()));
    }
    let from = open(&args.from)?;
    let dump = from.dump().map_err(|e| failed(&args.from, e))?;
    let to = open(&args.to)?;
    let existing = to.dump().map_err(|e| failed(&args.to, e))?;
    if !existing.is_empty() && !args.force {
        return Err(Failure::Api {
            message: format!(
                "{} already holds state ({} domains, {} mailboxes, {} schedules, {} audit entries); \
                 --force replaces it",
                args.to,
                existing.domains.len(),
                existing.mailboxes.len(),
                existing.schedules.len(),
                existing.audit.len()
            ),
            details: Vec::new(),
        });
    }
    to.restore(&dump).map_err(|e| failed(&args.to, e))?;
    println!(
        "copied {} domains, {} mailboxes, {} tempmail deadlines, {} schedules, {} audit entries",
        dump.domains.len(),
        dump.mailboxes.len(),
        dump.tempmail.len(),
        dump.schedules.len(),
        dump.audit.len()
    );
    Ok(())
}

fn is_url(spec: &str) -> bool {
    spec.starts_with("postgres://") || spec.starts_with("postgresql://")
}

fn open(spec: &str) -> Result<Arc<dyn StateStore>, Failure> {
    if is_url(spec) {
        let store =
            PgStore::open(spec, "ponte-ctl-migrate-store", None).map_err(|e| failed(spec, e))?;
        Ok(store)
    } else {
        let store = RedbStore::open(Path::new(spec)).map_err(|e| failed(spec, e))?;
        Ok(store)
    }
}

fn failed(spec: &str, e: crate::error::StoreError) -> Failure {
    // Never print a password given in the URL.
    let shown = match url::Url::parse(spec) {
        Ok(mut u) if is_url(spec) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        // Not a URL the parser takes (several hosts, say): hide the whole
        // user-information part.
        _ => match (spec.find("://"), spec.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &spec[..scheme], &spec[at + 1..])
            }
            _ => spec.to_string(),
        },
    };
    Failure::Api {
        message: format!("{shown}: {e}"),
        details: Vec::new(),
    }
}
