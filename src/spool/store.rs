//! The spool's files and its in-memory index.
//!
//! # Two files per message, and the commit point
//!
//! A message is two files: `msg/<id>` holds the data exactly as received
//! and is never rewritten; `env/<id>` holds the envelope (JSON) and is
//! replaced whole on every status change. Two files rather than one (a
//! header block before the body, as Postfix's queue files have) because
//! a status update then rewrites a few hundred bytes instead of the whole
//! message (a 25 MB message to 50 recipients would be copied 50 times),
//! and because the data file stays the signed PEC bytes, ready to be
//! streamed to the backend without a header block to skip.
//!
//! **The envelope file is the commit point**: a message exists in the
//! spool if and only if `env/<id>` exists. Every write goes to `tmp/`, is
//! fsynced, renamed into place, and the target directory is fsynced, in
//! this order:
//!
//! 1. `store`: data to `tmp/<id>.msg` → fsync → rename to `msg/<id>` →
//!    fsync `msg/`; then envelope to `tmp/<id>.env` → fsync → rename to
//!    `env/<id>` → fsync `env/`; only then does `store` return `Ok` (and
//!    the SMTP layer answer `250`).
//! 2. `set_status`, `hold`: new envelope to `tmp/` → fsync → rename over
//!    `env/<id>` → fsync `env/`. rename(2) is atomic: after a crash the
//!    envelope is the old one or the new one, never a mix.
//! 3. `remove`: unlink `env/<id>` → fsync `env/` (the message is gone) →
//!    unlink `msg/<id>`.
//!
//! Why that order makes every crash safe (durability itself cannot be
//! tested here; the tests check that the fsyncs and renames happen in this
//! order): the data's content and name are on disk (steps 1's first
//! fsyncs) before the envelope's name can be, so a committed envelope
//! always has its data. A crash before the envelope's rename leaves data
//! without an envelope: the client got no `250` and will send again, so
//! `open` deletes it and nothing is lost. A crash in `remove` between the
//! two unlinks leaves data without an envelope of a message that was
//! finished: `open` deletes it, and it is never delivered twice. Leftovers
//! in `tmp/` are never a message and are deleted at open. An envelope
//! without its data (or with data of the wrong size) cannot come from a
//! crash, only from outside damage: `open` moves it to `corrupt/` and logs
//! it, rather than deleting mail or failing the whole spool.
//!
//! One process owns a spool directory at a time.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::id::IdGen;
use super::recover::{Index, Layout};
use super::seen::SeenLog;
use super::{domain_of, fsio, Envelope, SpoolError, SpoolId, Stats, Status};
use crate::route::now_unix;

/// Limits of a spool.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest message `store` accepts and `load` reads.
    pub max_message_bytes: u64,
    /// How long a delivery is remembered for duplicate suppression.
    pub seen_ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_message_bytes: 64 * 1024 * 1024,
            seen_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What `open` found and cleaned up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Messages in the spool.
    pub messages: usize,
    /// Unfinished writes deleted from `tmp/`.
    pub tmp_removed: usize,
    /// Data files without an envelope (never committed, or finished and
    /// half removed), deleted.
    pub orphans_removed: usize,
    /// Entries moved to `corrupt/` for the admin.
    pub quarantined: usize,
}

/// Which messages `list_for` returns: those with a recipient (in any
/// state) in the domain, or with that mailbox, both case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    All,
    Domain(String),
    Mailbox(String),
}

impl Filter {
    fn matches(&self, env: &Envelope) -> bool {
        match self {
            Filter::All => true,
            Filter::Domain(d) => env
                .recipients
                .iter()
                .any(|r| domain_of(&r.address).eq_ignore_ascii_case(d)),
            Filter::Mailbox(m) => env.recipient(m).is_some(),
        }
    }
}

/// One spooled message, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: SpoolId,
    pub envelope: Envelope,
}

/// An indexed message. `gone` is set (under its lock) by `remove`, so that
/// a `set_status` that looked the slot up just before cannot write the
/// envelope back after it was deleted.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) env: Envelope,
    pub(super) gone: bool,
}

pub(super) type SlotRef = Arc<Mutex<Slot>>;

/// The durable inbound spool. See the module documentation for the files
/// and their order of writes. Blocking: async callers use
/// `spawn_blocking`.
#[derive(Debug)]
pub struct Spool {
    dirs: Layout,
    opts: Options,
    ids: IdGen,
    index: Mutex<Index>,
    seen: Mutex<SeenLog>,
    recovery: Recovery,
}

// A panic while holding a lock leaves the data behind it consistent (every
// change is committed to disk before memory is touched), so a poisoned
// lock is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` with default limits.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Spool::open_with(dir, Options::default())
    }

    /// Opens the spool in `dir`, recovering from a crash: clears `tmp/`,
    /// deletes data without an envelope, sets aside damaged entries, and
    /// loads the index.
    pub fn open_with(dir: &Path, opts: Options) -> Result<Spool, SpoolError> {
        let dirs = Layout {
            tmp: dir.join("tmp"),
            msg: dir.join("msg"),
            env: dir.join("env"),
            corrupt: dir.join("corrupt"),
        };
        for d in [&dirs.tmp, &dirs.msg, &dirs.env] {
            fs::create_dir_all(d).map_err(SpoolError::io("create directory", d))?;
        }
        fsio::sync_dir(dir)?;
        let mut recovery = Recovery {
            tmp_removed: dirs.clear_tmp()?,
            ..Recovery::default()
        };
        let (index, highest) = dirs.load_index(&mut recovery)?;
        recovery.messages = index.len();
        // Opened after tmp/ is cleared: its compaction writes through tmp/.
        let ttl = i64::try_from(opts.seen_ttl.as_secs()).unwrap_or(i64::MAX);
        let seen = SeenLog::open(
            dir.join("seen.log"),
            dirs.tmp.join("seen.log"),
            ttl,
            now_unix(),
        )?;
        Ok(Spool {
            ids: IdGen::new(highest.max(seen.max_id())),
            dirs,
            opts,
            index: Mutex::new(index),
            seen: Mutex::new(seen),
            recovery,
        })
    }

    /// What `open` found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Stores a message durably and returns its id; the SMTP layer may
    /// answer `250` once this returns `Ok`. `data` is kept byte for byte.
    /// The stored envelope is `env` with `size` and `message_id` (read
    /// from `data`) filled in.
    pub fn store(&self, env: &Envelope, data: &[u8]) -> Result<SpoolId, SpoolError> {
        let size = data.len() as u64;
        if size > self.opts.max_message_bytes {
            return Err(SpoolError::TooLarge {
                size,
                limit: self.opts.max_message_bytes,
            });
        }
        let id = self.ids.next();
        let mut env = env.clone();
        env.size = size;
        env.message_id = message_id(data);
        let data_path = self.dirs.msg.join(id.to_string());
        fsio::commit(&self.dirs.tmp.join(format!("{id}.msg")), &data_path, data)?;
        if let Err(e) = self.write_envelope(id, &env) {
            // Not committed: the data is an orphan, removed now or at open.
            let _ = fs::remove_file(&data_path);
            return Err(e);
        }
        let slot = Arc::new(Mutex::new(Slot { env, gone: false }));
        lock(&self.index).insert(id, slot);
        Ok(id)
    }

    /// The commit: writes `env/<id>` atomically and durably.
    fn write_envelope(&self, id: SpoolId, env: &Envelope) -> Result<(), SpoolError> {
        let path = self.dirs.env.join(id.to_string());
        let mut json = serde_json::to_vec(env).map_err(|source| SpoolError::Envelope {
            path: path.clone(),
            source,
        })?;
        json.push(b'\n');
        fsio::commit(&self.dirs.tmp.join(format!("{id}.env")), &path, &json)
    }

    fn slot(&self, id: SpoolId) -> Result<SlotRef, SpoolError> {
        lock(&self.index)
            .get(&id)
            .cloned()
            .ok_or(SpoolError::NotFound(id))
    }

    /// Every message, in arrival order.
    pub fn list(&self) -> Vec<Entry> {
        self.list_for(&Filter::All)
    }

    /// The messages `filter` matches, in arrival order.
    pub fn list_for(&self, filter: &Filter) -> Vec<Entry> {
        self.first(filter, usize::MAX).0
    }

    /// The first `n` messages `filter` matches, in arrival order, and how
    /// many match in all: only those `n` envelopes are copied (a page of
    /// a large queue).
    pub fn first(&self, filter: &Filter, n: usize) -> (Vec<Entry>, usize) {
        // Clone the slot handles first: never hold the index lock while
        // taking a slot's (remove takes them the other way round).
        let slots: Vec<(SpoolId, SlotRef)> = lock(&self.index)
            .iter()
            .map(|(id, s)| (*id, Arc::clone(s)))
            .collect();
        let mut shown = Vec::new();
        let mut matched = 0;
        for (id, slot) in slots {
            let slot = lock(&slot);
            if slot.gone || !filter.matches(&slot.env) {
                continue;
            }
            matched += 1;
            if shown.len() < n {
                shown.push(Entry {
                    id,
                    envelope: slot.env.clone(),
                });
            }
        }
        (shown, matched)
    }

    /// A message's envelope and data. The data is read from its file, at
    /// most `max_message_bytes`, and must be the size the envelope says.
    pub fn load(&self, id: SpoolId) -> Result<(Envelope, Vec<u8>), SpoolError> {
        let path = self.dirs.msg.join(id.to_string());
        let (env, file) = {
            let slot = self.slot(id)?;
            let slot = lock(&slot);
            if slot.gone {
                return Err(SpoolError::NotFound(id));
            }
            // Opened under the lock: a concurrent remove cannot unlink it
            // first; once open, the read works even if it is unlinked.
            let file = File::open(&path).map_err(SpoolError::io("open", &path))?;
            (slot.env.clone(), file)
        };
        let data = read_bounded(file, &path, env.size, self.opts.max_message_bytes)?;
        Ok((env, data))
    }

    /// Sets one recipient's status, atomically and durably. A delivery is
    /// also recorded for duplicate suppression (before the envelope: if
    /// the envelope write is lost, `seen` still tells the worker).
    pub fn set_status(&self, id: SpoolId, rcpt: &str, status: Status) -> Result<(), SpoolError> {
        let now = now_unix();
        self.update(id, |env| {
            let message_id = env.message_id.clone();
            let r = known(env, id, rcpt)?;
            if status != Status::Pending {
                r.attempts = r.attempts.saturating_add(1);
                r.last_attempt = Some(now);
            }
            if let (Status::Delivered, Some(mid)) = (&status, message_id) {
                lock(&self.seen).record(&mid, &r.address, id, now)?;
            }
            r.status = status;
            r.sending = None;
            Ok(())
        })
    }

    /// Marks `rcpts` as being sent now, durably, before their delivery
    /// starts: after a crash, their outcome is known to be in doubt (see
    /// [`Recipient::sending`](super::Recipient)).
    pub fn mark_sending(&self, id: SpoolId, rcpts: &[String]) -> Result<(), SpoolError> {
        let now = now_unix();
        self.update(id, |env| {
            for rcpt in rcpts {
                known(env, id, rcpt)?.sending = Some(now);
            }
            Ok(())
        })
    }

    /// Records that `rcpts`' permanent failures are reported (or need no
    /// report): with every recipient done, the message can be removed.
    pub fn mark_notified(&self, id: SpoolId, rcpts: &[String]) -> Result<(), SpoolError> {
        self.update(id, |env| {
            for rcpt in rcpts {
                if let Some(r) = env.recipient_mut(rcpt) {
                    r.notified = true;
                }
            }
            Ok(())
        })
    }

    /// The admin's retry: every recipient not delivered goes back to
    /// pending with no backoff (a permanent failure too: the admin fixed
    /// its cause). Returns how many recipients were reset.
    pub fn retry(&self, id: SpoolId) -> Result<usize, SpoolError> {
        let mut reset = 0;
        self.update(id, |env| {
            for r in &mut env.recipients {
                if r.status != Status::Delivered {
                    reset += usize::from(r.status != Status::Pending || r.last_attempt.is_some());
                    r.status = Status::Pending;
                    r.last_attempt = None;
                }
            }
            Ok(())
        })?;
        Ok(reset)
    }

    /// Holds (`true`) or releases (`false`) a message: the delivery worker
    /// skips held messages.
    pub fn hold(&self, id: SpoolId, held: bool) -> Result<(), SpoolError> {
        self.update(id, |env| {
            env.held = held;
            Ok(())
        })
    }

    /// Whether an admin holds the message.
    pub fn held(&self, id: SpoolId) -> Result<bool, SpoolError> {
        let slot = self.slot(id)?;
        let slot = lock(&slot);
        if slot.gone {
            return Err(SpoolError::NotFound(id));
        }
        Ok(slot.env.held)
    }

    /// Applies `change` to a copy of the envelope, commits it, and only
    /// then updates memory: a failed write changes nothing.
    fn update(
        &self,
        id: SpoolId,
        change: impl FnOnce(&mut Envelope) -> Result<(), SpoolError>,
    ) -> Result<(), SpoolError> {
        let slot = self.slot(id)?;
        let mut slot = lock(&slot);
        if slot.gone {
            return Err(SpoolError::NotFound(id));
        }
        let mut env = slot.env.clone();
        change(&mut env)?;
        if env != slot.env {
            self.write_envelope(id, &env)?;
            slot.env = env;
        }
        Ok(())
    }

    /// Removes a finished message (every recipient delivered or failed for
    /// good); `NotDone` otherwise.
    pub fn remove(&self, id: SpoolId) -> Result<(), SpoolError> {
        self.delete(id, false)
    }

    /// Removes a message whatever its recipients' state: the admin's
    /// delete (the caller audits it).
    pub fn discard(&self, id: SpoolId) -> Result<(), SpoolError> {
        self.delete(id, true)
    }

    fn delete(&self, id: SpoolId, force: bool) -> Result<(), SpoolError> {
        let slot = self.slot(id)?;
        {
            let mut slot = lock(&slot);
            if slot.gone {
                return Err(SpoolError::NotFound(id));
            }
            if !force && !slot.env.is_done() {
                return Err(SpoolError::NotDone(id));
            }
            // The envelope goes first and durably: from here on the
            // message no longer exists, whatever happens to the data file.
            let env_path = self.dirs.env.join(id.to_string());
            fs::remove_file(&env_path).map_err(SpoolError::io("remove", &env_path))?;
            slot.gone = true;
            fsio::sync_dir(&self.dirs.env)?;
            let data_path = self.dirs.msg.join(id.to_string());
            // No fsync of msg/ needed: a data file that comes back after
            // a crash has no envelope and is deleted at open.
            if let Err(e) = fs::remove_file(&data_path) {
                tracing::warn!(%id, error = %e, "spool: data file left for the next open");
            }
        }
        lock(&self.index).remove(&id);
        Ok(())
    }

    /// `message_id` was delivered to `rcpt` within the last `seen_ttl`:
    /// a duplicate of it must not be delivered there again.
    pub fn seen(&self, message_id: &str, rcpt: &str) -> bool {
        lock(&self.seen).seen(message_id, rcpt, now_unix())
    }

    /// Forgets deliveries older than `seen_ttl` and compacts their log.
    /// Also done at open and, at most hourly, when deliveries are recorded.
    pub fn prune_seen(&self) -> Result<(), SpoolError> {
        lock(&self.seen).prune(now_unix())
    }

    /// Counts, bytes, held and oldest arrival, in total and per recipient
    /// domain and mailbox.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for entry in self.list() {
            stats.add(&entry.envelope);
        }
        stats
    }
}

/// The recipient `rcpt` of message `id`, or the error that names both.
fn known<'a>(
    env: &'a mut Envelope,
    id: SpoolId,
    rcpt: &str,
) -> Result<&'a mut super::Recipient, SpoolError> {
    env.recipient_mut(rcpt)
        .ok_or_else(|| SpoolError::UnknownRecipient {
            id,
            rcpt: rcpt.to_string(),
        })
}

/// The Message-ID, without angle brackets, if the header block has one.
fn message_id(data: &[u8]) -> Option<String> {
    let parser = mail_parser::MessageParser::new().header_id(mail_parser::HeaderName::MessageId);
    let message = parser.parse_headers(data)?;
    message
        .message_id()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
}

/// Reads all of `file`, which must be `expected` bytes and at most `limit`.
fn read_bounded(file: File, path: &Path, expected: u64, limit: u64) -> Result<Vec<u8>, SpoolError> {
    let len = file.metadata().map_err(SpoolError::io("stat", path))?.len();
    if len > limit {
        return Err(SpoolError::TooLarge { size: len, limit });
    }
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(SpoolError::io("read", path))?;
    let actual = data.len() as u64;
    if actual != expected {
        return Err(SpoolError::Corrupt {
            path: path.to_path_buf(),
            expected,
            actual,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::spool::fsio::journal;

    fn envelope(rcpts: &[&str]) -> Envelope {
        let client = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
        Envelope::new(
            "sender@far.example",
            rcpts.iter().copied(),
            client,
            "mx.far.example",
        )
    }

    /// A message as the SMTP layer hands it over: CRLF lines, a Received
    /// header prepended, a line that is only a dot-stuffed dot.
    fn message(mid: &str, body: &str) -> Vec<u8> {
        format!(
            "Received: from mx.far.example ([192.0.2.7])\r\n\tby ponte; Mon, 1 Jun 2026 09:00:00 +0200\r\n\
             Message-ID: <{mid}>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n{body}\r\n..\r\n \t\r\n"
        )
        .into_bytes()
    }

    fn ids(spool: &Spool) -> Vec<SpoolId> {
        spool.list().into_iter().map(|e| e.id).collect()
    }

    #[test]
    fn stored_messages_list_and_load_with_identical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let data = message("m1@far.example", "hello");
        let env = envelope(&["a@pec.example", "b@pec.example"]);
        let id = spool.store(&env, &data).unwrap();

        let list = spool.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, id);
        let stored = &list[0].envelope;
        assert_eq!(stored.size, data.len() as u64);
        assert_eq!(stored.message_id.as_deref(), Some("m1@far.example"));
        assert_eq!(stored.recipients, env.recipients);
        assert_eq!(stored.client, env.client);
        assert_eq!(stored.helo, "mx.far.example");

        let (loaded_env, loaded) = spool.load(id).unwrap();
        assert_eq!(loaded, data);
        assert_eq!(&loaded_env, stored);
        assert_eq!(
            fs::read(dir.path().join("msg").join(id.to_string())).unwrap(),
            data
        );
    }

    #[test]
    fn a_message_without_headers_is_stored_without_message_id() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let data = b"\r\nno header block at all\r\n";
        let id = spool.store(&envelope(&["a@pec.example"]), data).unwrap();
        let (env, loaded) = spool.load(id).unwrap();
        assert_eq!(env.message_id, None);
        assert_eq!(loaded, data);
    }

    #[test]
    fn ids_keep_arrival_order_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = Vec::new();
        for round in 0..3 {
            let spool = Spool::open(dir.path()).unwrap();
            assert_eq!(spool.recovery().messages, all.len());
            for i in 0..3 {
                let data = message(&format!("{round}.{i}@x"), "b");
                all.push(spool.store(&envelope(&["a@pec.example"]), &data).unwrap());
            }
            assert_eq!(ids(&spool), all);
        }
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, all);
    }

    #[test]
    fn ids_stay_ahead_of_an_id_from_the_future_after_reopen() {
        // As if the clock went back between two runs.
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.store(&envelope(&["a@pec.example"]), b"x").unwrap();
        drop(spool);
        let future = SpoolId::from_raw(id.as_u64() + 3_600_000_000);
        for sub in ["env", "msg"] {
            let d = dir.path().join(sub);
            fs::rename(d.join(id.to_string()), d.join(future.to_string())).unwrap();
        }
        let spool = Spool::open(dir.path()).unwrap();
        let next = spool.store(&envelope(&["a@pec.example"]), b"y").unwrap();
        assert!(next > future);
        assert_eq!(ids(&spool), vec![future, next]);
    }

    #[test]
    fn an_unfinished_write_is_removed_at_open_and_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let kept = spool.store(&envelope(&["a@pec.example"]), b"kept").unwrap();
        drop(spool);
        // A crash before the data's rename: only tmp/ has it.
        let tmp = dir.path().join("tmp");
        fs::write(tmp.join("00000000000000ff.msg"), b"half a mess").unwrap();
        fs::write(tmp.join("00000000000000ff.env"), b"{\"mail_from\":").unwrap();
        // A crash between the data's rename and the envelope's: data alone.
        let orphan = SpoolId::from_raw(kept.as_u64() + 1);
        let orphan_path = dir.path().join("msg").join(orphan.to_string());
        fs::write(&orphan_path, b"never acknowledged").unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        let r = spool.recovery();
        assert_eq!((r.messages, r.tmp_removed, r.orphans_removed), (1, 2, 1));
        assert_eq!(ids(&spool), vec![kept]);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        assert!(!orphan_path.exists());
        assert!(matches!(spool.load(orphan), Err(SpoolError::NotFound(_))));
        // The orphan's id is not handed out again.
        let next = spool.store(&envelope(&["a@pec.example"]), b"z").unwrap();
        assert!(next > orphan);
    }

    #[test]
    fn an_envelope_without_its_data_is_set_aside_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let lost = spool.store(&envelope(&["a@pec.example"]), b"one").unwrap();
        let short = spool.store(&envelope(&["a@pec.example"]), b"two").unwrap();
        let fine = spool
            .store(&envelope(&["a@pec.example"]), b"three")
            .unwrap();
        drop(spool);
        fs::remove_file(dir.path().join("msg").join(lost.to_string())).unwrap();
        fs::write(dir.path().join("msg").join(short.to_string()), b"t").unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.recovery().quarantined, 2);
        assert_eq!(ids(&spool), vec![fine]);
        let corrupt = dir.path().join("corrupt");
        assert!(corrupt.join(format!("{lost}.env")).exists());
        assert_eq!(
            fs::read(corrupt.join(format!("{short}.msg"))).unwrap(),
            b"t"
        );
    }

    #[test]
    fn status_updates_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool
            .store(&envelope(&["a@pec.example", "b@pec.example"]), b"x")
            .unwrap();
        spool
            .set_status(id, "A@PEC.example", Status::Delivered)
            .unwrap();
        let failed = Status::Failed {
            reason: "452 4.2.2 mailbox full".into(),
            permanent: false,
        };
        spool
            .set_status(id, "b@pec.example", failed.clone())
            .unwrap();
        assert!(matches!(
            spool.set_status(id, "c@pec.example", Status::Delivered),
            Err(SpoolError::UnknownRecipient { .. })
        ));
        drop(spool);

        let spool = Spool::open(dir.path()).unwrap();
        let (env, _) = spool.load(id).unwrap();
        assert_eq!(env.recipients[0].status, Status::Delivered);
        assert_eq!(env.recipients[1].status, failed);
        assert_eq!(env.recipients[1].attempts, 1);
        assert!(env.recipients[1].last_attempt.is_some());
        assert!(!env.is_done());
    }

    #[test]
    fn remove_waits_for_every_recipient_and_deletes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool
            .store(&envelope(&["a@pec.example", "b@pec.example"]), b"x")
            .unwrap();
        spool
            .set_status(id, "a@pec.example", Status::Delivered)
            .unwrap();
        assert!(matches!(spool.remove(id), Err(SpoolError::NotDone(_))));
        let bounced = Status::Failed {
            reason: "550 5.1.1 no such user".into(),
            permanent: true,
        };
        spool.set_status(id, "b@pec.example", bounced).unwrap();
        spool.remove(id).unwrap();

        assert!(spool.list().is_empty());
        assert!(matches!(spool.load(id), Err(SpoolError::NotFound(_))));
        assert!(matches!(
            spool.set_status(id, "a@pec.example", Status::Pending),
            Err(SpoolError::NotFound(_))
        ));
        for sub in ["env", "msg"] {
            assert!(!dir.path().join(sub).join(id.to_string()).exists());
        }
        drop(spool);
        assert!(Spool::open(dir.path()).unwrap().list().is_empty());
    }

    #[test]
    fn discard_removes_a_message_with_pending_recipients() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.store(&envelope(&["a@pec.example"]), b"x").unwrap();
        spool.discard(id).unwrap();
        assert!(spool.list().is_empty());
        assert!(matches!(spool.discard(id), Err(SpoolError::NotFound(_))));
    }

    #[test]
    fn held_messages_stay_held_across_reopen_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.store(&envelope(&["a@pec.example"]), b"x").unwrap();
        assert!(!spool.held(id).unwrap());
        spool.hold(id, true).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.held(id).unwrap());
        assert!(spool.list()[0].envelope.held);
        spool.hold(id, false).unwrap();
        assert!(!spool.held(id).unwrap());
    }

    #[test]
    fn a_delivered_message_id_is_recognised_as_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let data = message("dup@far.example", "x");
        let rcpts = ["a@pec.example", "b@pec.example"];
        let first = spool.store(&envelope(&rcpts), &data).unwrap();
        assert!(!spool.seen("dup@far.example", "a@pec.example"));
        spool
            .set_status(first, "a@pec.example", Status::Delivered)
            .unwrap();
        assert!(spool.seen("dup@far.example", "A@pec.example"));
        assert!(!spool.seen("dup@far.example", "b@pec.example"));
        assert!(!spool.seen("other@far.example", "a@pec.example"));
        drop(spool);

        // The sender queues the same message again: a new spool entry,
        // but the recipient that already has it is recognised.
        let spool = Spool::open(dir.path()).unwrap();
        let again = spool.store(&envelope(&rcpts), &data).unwrap();
        assert_ne!(again, first);
        let mid = spool.load(again).unwrap().0.message_id.unwrap();
        assert!(spool.seen(&mid, "a@pec.example"));
        assert!(!spool.seen(&mid, "b@pec.example"));
        spool.prune_seen().unwrap();
        assert!(spool.seen(&mid, "a@pec.example"));
    }

    #[test]
    fn concurrent_stores_get_distinct_ordered_ids() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let per_thread: Vec<Vec<SpoolId>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let spool = &spool;
                    s.spawn(move || {
                        (0..25)
                            .map(|i| {
                                let data = message(&format!("{t}.{i}@x"), "b");
                                spool.store(&envelope(&["a@pec.example"]), &data).unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for ids in &per_thread {
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
        }
        let all: HashSet<SpoolId> = per_thread.iter().flatten().copied().collect();
        assert_eq!(all.len(), 200);
        let listed = ids(&spool);
        assert_eq!(listed.len(), 200);
        assert!(listed.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ids(&Spool::open(dir.path()).unwrap()), listed);
    }

    #[test]
    fn a_25_mb_message_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut data = message("big@far.example", "");
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while data.len() < 25 * 1024 * 1024 {
            // xorshift: incompressible bytes, CR, LF and NUL included.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        let id = spool.store(&envelope(&["a@pec.example"]), &data).unwrap();
        let (env, loaded) = spool.load(id).unwrap();
        assert_eq!(env.size, data.len() as u64);
        assert_eq!(env.message_id.as_deref(), Some("big@far.example"));
        assert!(loaded == data);
    }

    #[test]
    fn a_message_over_the_limit_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            max_message_bytes: 10,
            ..Options::default()
        };
        let spool = Spool::open_with(dir.path(), opts).unwrap();
        assert!(matches!(
            spool.store(&envelope(&["a@pec.example"]), &[b'x'; 11]),
            Err(SpoolError::TooLarge {
                size: 11,
                limit: 10
            })
        ));
        spool
            .store(&envelope(&["a@pec.example"]), &[b'x'; 10])
            .unwrap();
        assert_eq!(spool.list().len(), 1);
        assert_eq!(fs::read_dir(dir.path().join("msg")).unwrap().count(), 1);
    }

    // Durability itself cannot be observed without pulling the plug; what
    // can be checked is that every fsync and rename happens, in the order
    // the module documentation argues is crash-safe.
    #[test]
    fn store_syncs_the_data_before_committing_the_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        journal::take();
        let id = spool.store(&envelope(&["a@pec.example"]), b"x").unwrap();
        let (d, name) = (dir.path(), id.to_string());
        let expected = vec![
            ("fsync", d.join("tmp").join(format!("{name}.msg"))),
            ("rename", d.join("msg").join(&name)),
            ("fsync dir", d.join("msg")),
            ("fsync", d.join("tmp").join(format!("{name}.env"))),
            ("rename", d.join("env").join(&name)),
            ("fsync dir", d.join("env")),
        ];
        assert_eq!(journal::take(), expected);

        spool
            .set_status(id, "a@pec.example", Status::Delivered)
            .unwrap();
        let expected = vec![
            ("fsync", d.join("tmp").join(format!("{name}.env"))),
            ("rename", d.join("env").join(&name)),
            ("fsync dir", d.join("env")),
        ];
        assert_eq!(journal::take(), expected);

        spool.remove(id).unwrap();
        assert_eq!(journal::take(), vec![("fsync dir", d.join("env"))]);
    }

    #[test]
    fn lists_and_counts_by_domain_and_mailbox() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let a = spool
            .store(&envelope(&["a@pec.example", "x@other.example"]), b"12345")
            .unwrap();
        let b = spool.store(&envelope(&["b@pec.example"]), b"123").unwrap();
        spool
            .set_status(a, "x@other.example", Status::Delivered)
            .unwrap();

        let ids_for =
            |f: Filter| -> Vec<SpoolId> { spool.list_for(&f).into_iter().map(|e| e.id).collect() };
        assert_eq!(ids_for(Filter::Domain("PEC.example".into())), vec![a, b]);
        assert_eq!(ids_for(Filter::Mailbox("b@pec.example".into())), vec![b]);
        assert_eq!(ids_for(Filter::Domain("other.example".into())), vec![a]);
        assert!(ids_for(Filter::Domain("none.example".into())).is_empty());

        let stats = spool.stats();
        assert_eq!((stats.total.messages, stats.total.bytes), (2, 8));
        let pec = &stats.domains["pec.example"];
        assert_eq!((pec.messages, pec.bytes), (2, 8));
        assert!(pec.oldest.is_some());
        assert_eq!(stats.mailboxes["a@pec.example"].bytes, 5);
        // Delivered there: nothing waits for other.example any more.
        assert!(!stats.domains.contains_key("other.example"));
    }
}
