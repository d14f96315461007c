//! Dashboard sign-in sessions, kept server-side. The browser holds only a
//! random 256-bit id in an HttpOnly cookie: the admin token is typed once
//! into the login form and never stored in the browser or put in a URL.
//!
//! The map is keyed by the SHA-256 of the id, so a lookup's timing says
//! nothing about the ids held. It is bounded: at most [`MAX_SESSIONS`],
//! each ending after [`LIFETIME`], or after [`IDLE`] without a request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

/// Sessions held at once; the least recently used goes first when full.
pub const MAX_SESSIONS: usize = 64;
/// A session ends this long after sign-in, used or not.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// A session ends after this long without a request. An open page's live
/// updates count as use: a dashboard watched on migration day stays
/// signed in (up to `LIFETIME`).
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// Live-update streams one session may hold open (a few tabs).
pub const MAX_STREAMS: usize = 4;
/// Largest CSV import, counted as the browser sends it (URL-encoded);
/// also bounds the text kept between its review and confirmation.
pub const MAX_IMPORT: usize = 16 * 1024 * 1024;

/// The cookie's name.
pub const COOKIE: &str = "ponte_dashboard";

type Key = [u8; 32];

/// A signed-in browser as the handlers see it.
#[derive(Debug, Clone)]
pub struct Signed {
    key: Key,
    /// The token's name: what the audit log records.
    pub name: String,
    /// The per-session CSRF token every form carries.
    pub csrf: String,
}

struct Session {
    name: String,
    csrf: String,
    created: Instant,
    seen: Instant,
    streams: Arc<AtomicUsize>,
    /// A message for the next page (the outcome of an action).
    flash: Option<String>,
    /// An import reviewed but not yet confirmed: its nonce and text.
    import: Option<(String, Arc<String>)>,
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.created) > LIFETIME || now.duration_since(self.seen) > IDLE
    }
}

/// Every signed-in browser.
pub struct Sessions {
    map: Mutex<HashMap<Key, Session>>,
    rng: SystemRandom,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        }
    }
}

/// Holds one of a session's live-update slots while a stream is open.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn key_of(cookie: &str) -> Key {
    let d = digest::digest(&digest::SHA256, cookie.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// 256 random bits as hex.
    pub fn random_hex(&self) -> Option<String> {
        let mut b = [0u8; 32];
        self.rng.fill(&mut b).ok()?;
        Some(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    /// Starts a session for the token named `name`; returns the cookie
    /// value. `None` only if the system's random source fails.
    pub fn create(&self, name: &str) -> Option<String> {
        let id = self.random_hex()?;
        let csrf = self.random_hex()?;
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| !s.expired(now));
        while map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| *k)?;
            map.remove(&oldest);
        }
        map.insert(
            key_of(&id),
            Session {
                name: name.to_string(),
                csrf,
                created: now,
                seen: now,
                streams: Arc::new(AtomicUsize::new(0)),
                flash: None,
                import: None,
            },
        );
        Some(id)
    }

    /// The session of this cookie value, if it is live; counts as use.
    pub fn find(&self, cookie: &str) -> Option<Signed> {
        let key = key_of(cookie);
        let now = Instant::now();
        let mut map = self.lock();
        let s = map.get_mut(&key)?;
        if s.expired(now) {
            map.remove(&key);
            return None;
        }
        s.seen = now;
        Some(Signed {
            key,
            name: s.name.clone(),
            csrf: s.csrf.clone(),
        })
    }

    /// Signs out.
    pub fn remove(&self, who: &Signed) {
        self.lock().remove(&who.key);
    }

    /// Whether the session is still live (a stream checks at each tick).
    pub fn alive(&self, who: &Signed) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        match map.get_mut(&who.key) {
            Some(s) if !s.expired(now) => {
                s.seen = now;
                true
            }
            _ => false,
        }
    }

    /// One of the session's live-update slots, or `None` if all are taken.
    pub fn open_stream(&self, who: &Signed) -> Option<StreamSlot> {
        let map = self.lock();
        let streams = map.get(&who.key)?.streams.clone();
        let taken = streams.fetch_add(1, Ordering::Relaxed);
        let slot = StreamSlot(streams);
        (taken < MAX_STREAMS).then_some(slot)
    }

    pub fn set_flash(&self, who: &Signed, text: String) {
        if let Some(s) = self.lock().get_mut(&who.key) {
            s.flash = Some(text);
        }
    }

    pub fn take_flash(&self, who: &Signed) -> Option<String> {
        self.lock().get_mut(&who.key)?.flash.take()
    }

    /// Keeps a reviewed import until it is confirmed; returns its nonce.
    pub fn stash_import(&self, who: &Signed, csv: String) -> Option<String> {
        let nonce = self.random_hex()?;
        let mut map = self.lock();
        let s = map.get_mut(&who.key)?;
        s.import = Some((nonce.clone(), Arc::new(csv)));
        Some(nonce)
    }

    /// The import reviewed under `nonce` (once).
    pub fn take_import(&self, who: &Signed, nonce: &str) -> Option<Arc<String>> {
        let mut map = self.lock();
        let s = map.get_mut(&who.key)?;
        match &s.import {
            Some((n, _)) if super::csrf::same(n.as_bytes(), nonce.as_bytes()) => {
                s.import.take().map(|(_, csv)| csv)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_cookie_and_bounded() {
        let s = Sessions::default();
        let id = s.create("ops").unwrap();
        assert_eq!(id.len(), 64);
        let who = s.find(&id).unwrap();
        assert_eq!(who.name, "ops");
        assert_eq!(who.csrf.len(), 64);
        assert_ne!(who.csrf, id);
        assert!(s.find("not-a-session").is_none());
        for _ in 0..MAX_SESSIONS + 5 {
            s.create("noc").unwrap();
        }
        assert_eq!(s.lock().len(), MAX_SESSIONS);
        s.remove(&who);
        assert!(s.find(&id).is_none());
    }

    #[test]
    fn streams_per_session_are_capped_and_given_back() {
        let s = Sessions::default();
        let who = s.find(&s.create("ops").unwrap()).unwrap();
        let slots: Vec<_> = (0..MAX_STREAMS).map(|_| s.open_stream(&who)).collect();
        assert!(slots.iter().all(Option::is_some));
        assert!(s.open_stream(&who).is_none());
        drop(slots);
        assert!(s.open_stream(&who).is_some());
    }

    #[test]
    fn a_stashed_import_is_taken_once_with_its_nonce() {
        let s = Sessions::default();
        let who = s.find(&s.create("ops").unwrap()).unwrap();
        let nonce = s.stash_import(&who, "a@b,legacy".into()).unwrap();
        assert!(s.take_import(&who, "wrong").is_none());
        assert_eq!(s.take_import(&who, &nonce).unwrap().as_str(), "a@b,legacy");
        assert!(s.take_import(&who, &nonce).is_none());
    }
}
