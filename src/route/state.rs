//! A mailbox's place in the migration lifecycle.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// See DESIGN.md, "Mailbox lifecycle".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailboxState {
    /// Not moved yet: lives on the legacy backend.
    Legacy,
    /// Cut-over in progress.
    Blackout,
    /// Lives on the new backend.
    Migrated,
    /// Not migrated on purpose (e.g. inactive).
    Excluded,
}

impl MailboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxState::Legacy => "legacy",
            MailboxState::Blackout => "blackout",
            MailboxState::Migrated => "migrated",
            MailboxState::Excluded => "excluded",
        }
    }
}

impl fmt::Display for MailboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MailboxState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "legacy" => Ok(MailboxState::Legacy),
            "blackout" => Ok(MailboxState::Blackout),
            "migrated" => Ok(MailboxState::Migrated),
            "excluded" => Ok(MailboxState::Excluded),
            other => Err(format!(
                "unknown state {other:?} (expected legacy, blackout, migrated or excluded)"
            )),
        }
    }
}
