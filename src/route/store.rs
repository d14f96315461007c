//! The durable state store: domain states and per-mailbox overrides.
//!
//! [`StateStore`] is the small interface the router needs; [`RedbStore`] is
//! the embedded, crash-safe implementation (one file, transactional). A
//! fleet backend (PostgreSQL) implements the same trait later. Lookups sit
//! on the login path, so implementations must answer from memory or local
//! disk, never the network.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::MailboxState;
use crate::error::StoreError;

/// A domain's current default state, and who set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub state: MailboxState,
    /// `config` when it comes from the configuration file, else the admin.
    pub set_by: String,
    /// Unix seconds.
    pub updated: i64,
}

/// A mailbox's override of its domain's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxRecord {
    pub state: MailboxState,
    pub set_by: String,
    pub updated: i64,
}

/// Where routing state lives. Addresses and domains are lower case.
pub trait StateStore: Send + Sync {
    fn domain(&self, name: &str) -> Result<Option<DomainRecord>, StoreError>;
    fn put_domain(&self, name: &str, rec: &DomainRecord) -> Result<(), StoreError>;
    fn domains(&self) -> Result<Vec<(String, DomainRecord)>, StoreError>;
    fn mailbox(&self, address: &str) -> Result<Option<MailboxRecord>, StoreError>;
    fn mailbox_count(&self) -> Result<u64, StoreError>;
    /// Writes all rows in one transaction: all or nothing.
    fn put_mailboxes(&self, rows: &[(String, MailboxRecord)]) -> Result<(), StoreError>;
    fn remove_mailbox(&self, address: &str) -> Result<bool, StoreError>;
}

const DOMAINS: TableDefinition<&str, &[u8]> = TableDefinition::new("domains");
const MAILBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("mailboxes");

/// The embedded store: a redb file `state.redb` in the configured directory.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(dir: &Path) -> Result<Arc<RedbStore>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("create {}: {e}", dir.display())))?;
        let file = dir.join("state.redb");
        let db = Database::create(&file)
            .map_err(|e| StoreError(format!("open {}: {e}", file.display())))?;
        // Create the tables once so that read transactions always find them.
        let txn = db.begin_write().map_err(StoreError::new)?;
        txn.open_table(DOMAINS).map_err(StoreError::new)?;
        txn.open_table(MAILBOXES).map_err(StoreError::new)?;
        txn.commit().map_err(StoreError::new)?;
        Ok(Arc::new(RedbStore { db }))
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::new)?;
        let t = txn.open_table(table).map_err(StoreError::new)?;
        match t.get(key).map_err(StoreError::new)? {
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(StoreError::new),
            None => Ok(None),
        }
    }

    fn put_all<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        rows: &[(String, T)],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(StoreError::new)?;
        {
            let mut t = txn.open_table(table).map_err(StoreError::new)?;
            for (k, v) in rows {
                let bytes = serde_json::to_vec(v).map_err(StoreError::new)?;
                t.insert(k.as_str(), bytes.as_slice())
                    .map_err(StoreError::new)?;
            }
        }
        txn.commit().map_err(StoreError::new)
    }
}

impl StateStore for RedbStore {
    fn domain(&self, name: &str) -> Result<Option<DomainRecord>, StoreError> {
        self.get(DOMAINS, name)
    }

    fn put_domain(&self, name: &str, rec: &DomainRecord) -> Result<(), StoreError> {
        self.put_all(DOMAINS, &[(name.to_string(), rec.clone())])
    }

    fn domains(&self) -> Result<Vec<(String, DomainRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::new)?;
        let t = txn.open_table(DOMAINS).map_err(StoreError::new)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(StoreError::new)? {
            let (k, v) = row.map_err(StoreError::new)?;
            let rec = serde_json::from_slice(v.value()).map_err(StoreError::new)?;
            out.push((k.value().to_string(), rec));
        }
        Ok(out)
    }

    fn mailbox(&self, address: &str) -> Result<Option<MailboxRecord>, StoreError> {
        self.get(MAILBOXES, address)
    }

    fn mailbox_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::new)?;
        let t = txn.open_table(MAILBOXES).map_err(StoreError::new)?;
        t.len().map_err(StoreError::new)
    }

    fn put_mailboxes(&self, rows: &[(String, MailboxRecord)]) -> Result<(), StoreError> {
        self.put_all(MAILBOXES, rows)
    }

    fn remove_mailbox(&self, address: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(StoreError::new)?;
        let existed = {
            let mut t = txn.open_table(MAILBOXES).map_err(StoreError::new)?;
            let removed = t.remove(address).map_err(StoreError::new)?;
            removed.is_some()
        };
        txn.commit().map_err(StoreError::new)?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(state: MailboxState) -> MailboxRecord {
        MailboxRecord {
            state,
            set_by: "test".into(),
            updated: 0,
        }
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path()).unwrap();
            s.put_mailboxes(&[("a@x.example".into(), rec(MailboxState::Migrated))])
                .unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(
            s.mailbox("a@x.example").unwrap().unwrap().state,
            MailboxState::Migrated
        );
        assert_eq!(s.mailbox_count().unwrap(), 1);
        assert!(s.remove_mailbox("a@x.example").unwrap());
        assert!(s.mailbox("a@x.example").unwrap().is_none());
    }
}
