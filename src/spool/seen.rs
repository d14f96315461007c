//! What was delivered, by Message-ID and recipient, so that a duplicate
//! (the same message queued again by a sender that never saw our `250`)
//! is recognised and not delivered twice.
//!
//! An append-only file of JSON lines, fsynced per line. It stays bounded:
//! entries older than the TTL are dropped at open and at most hourly
//! afterwards, by rewriting the file atomically (tmp, fsync, rename, fsync
//! directory). A line torn by a crash is skipped at open and compacted
//! away; losing it can only cause a duplicate, which at-least-once allows.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{fsio, SpoolError, SpoolId};

/// How often, at most, `record` compacts the file.
const PRUNE_EVERY_SECS: i64 = 3600;

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    at: i64,
    id: SpoolId,
    rcpt: String,
    mid: String,
}

#[derive(Debug)]
struct Seen {
    at: i64,
    id: SpoolId,
}

#[derive(Debug)]
pub(crate) struct SeenLog {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    ttl: i64,
    last_prune: i64,
    entries: HashMap<(String, String), Seen>,
}

fn key(mid: &str, rcpt: &str) -> (String, String) {
    (mid.to_string(), rcpt.to_ascii_lowercase())
}

impl SeenLog {
    /// Loads `path`, drops what is older than `ttl` seconds, and rewrites
    /// the file if anything was dropped or unreadable.
    pub(crate) fn open(
        path: PathBuf,
        tmp: PathBuf,
        ttl: i64,
        now: i64,
    ) -> Result<Self, SpoolError> {
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(SpoolError::io("read", &path)(e)),
        };
        let mut entries = HashMap::new();
        let mut stale = false;
        for raw in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Line>(raw) {
                Ok(l) if l.at > now - ttl => {
                    entries.insert(key(&l.mid, &l.rcpt), Seen { at: l.at, id: l.id });
                }
                _ => stale = true,
            }
        }
        stale |= !text.is_empty() && !text.ends_with(b"\n");
        let file = open_append(&path)?;
        let mut log = SeenLog {
            path,
            tmp,
            file,
            ttl,
            last_prune: now,
            entries,
        };
        if stale {
            log.rewrite()?;
        }
        Ok(log)
    }

    /// `mid` was delivered to `rcpt` within the TTL.
    pub(crate) fn seen(&self, mid: &str, rcpt: &str, now: i64) -> bool {
        self.entries
            .get(&key(mid, rcpt))
            .is_some_and(|s| s.at > now - self.ttl)
    }

    /// Records (durably) that `mid` of spool entry `id` reached `rcpt`.
    pub(crate) fn record(
        &mut self,
        mid: &str,
        rcpt: &str,
        id: SpoolId,
        now: i64,
    ) -> Result<(), SpoolError> {
        let line = Line {
            at: now,
            id,
            rcpt: rcpt.to_ascii_lowercase(),
            mid: mid.to_string(),
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|source| SpoolError::Envelope {
            path: self.path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        self.file
            .write_all(&bytes)
            .map_err(SpoolError::io("append", &self.path))?;
        fsio::sync_file(&self.file, &self.path)?;
        self.entries.insert(key(mid, rcpt), Seen { at: now, id });
        if now - self.last_prune >= PRUNE_EVERY_SECS {
            self.prune(now)?;
        }
        Ok(())
    }

    /// Drops entries older than the TTL and compacts the file.
    pub(crate) fn prune(&mut self, now: i64) -> Result<(), SpoolError> {
        let ttl = self.ttl;
        self.entries.retain(|_, s| s.at > now - ttl);
        self.last_prune = now;
        self.rewrite()
    }

    /// The highest spool id recorded: delivered messages are removed from
    /// the spool, and their ids must not be handed out again.
    pub(crate) fn max_id(&self) -> Option<SpoolId> {
        self.entries.values().map(|s| s.id).max()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn rewrite(&mut self) -> Result<(), SpoolError> {
        let mut lines: Vec<_> = self.entries.iter().collect();
        lines.sort_by_key(|(_, s)| (s.at, s.id));
        let mut bytes = Vec::new();
        for ((mid, rcpt), s) in lines {
            let line = Line {
                at: s.at,
                id: s.id,
                rcpt: rcpt.clone(),
                mid: mid.clone(),
            };
            serde_json::to_writer(&mut bytes, &line).map_err(|source| SpoolError::Envelope {
                path: self.path.clone(),
                source,
            })?;
            bytes.push(b'\n');
        }
        fsio::commit(&self.tmp, &self.path, &bytes)?;
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(SpoolError::io("open", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn open(dir: &Path, now: i64) -> SeenLog {
        SeenLog::open(dir.join("seen.log"), dir.join("seen.tmp"), 7 * DAY, now).unwrap()
    }

    #[test]
    fn recorded_deliveries_survive_reopen_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000;
        let mut log = open(dir.path(), t0);
        log.record("m1@x", "A@y.example", SpoolId::from_raw(7), t0)
            .unwrap();
        assert!(log.seen("m1@x", "a@y.example", t0));
        assert!(!log.seen("m1@x", "b@y.example", t0));
        assert!(!log.seen("m2@x", "a@y.example", t0));
        drop(log);

        let log = open(dir.path(), t0 + DAY);
        assert!(log.seen("m1@x", "a@y.example", t0 + DAY));
        assert_eq!(log.max_id(), Some(SpoolId::from_raw(7)));
        drop(log);

        let log = open(dir.path(), t0 + 8 * DAY);
        assert!(!log.seen("m1@x", "a@y.example", t0 + 8 * DAY));
        assert_eq!(log.len(), 0);
        // Pruned from the file too, not only from memory.
        let text = std::fs::read_to_string(dir.path().join("seen.log")).unwrap();
        assert!(text.is_empty());
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000;
        let mut log = open(dir.path(), t0);
        log.record("m1@x", "a@y.example", SpoolId::from_raw(1), t0)
            .unwrap();
        drop(log);
        let path = dir.path().join("seen.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"at":1800000000,"id":"00"#).unwrap();
        drop(f);

        let mut log = open(dir.path(), t0);
        assert_eq!(log.len(), 1);
        log.record("m2@x", "a@y.example", SpoolId::from_raw(2), t0)
            .unwrap();
        drop(log);
        let log = open(dir.path(), t0);
        assert!(log.seen("m1@x", "a@y.example", t0));
        assert!(log.seen("m2@x", "a@y.example", t0));
    }
}
