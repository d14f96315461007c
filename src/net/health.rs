//! Backend health as the dashboard shows it: per backend, the latency of
//! the last connect (TCP, and TLS where the endpoint has it), when it
//! was, and the connect errors (count, last text and time).
//!
//! Kept cheap on the login path: a successful connect stores two atomics
//! (no lock, no allocation); only an error takes the backend's mutex to
//! keep its text. The table outlives configuration generations, so a
//! reload does not forget a backend's history.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::route::now_unix;

/// One backend's connect record.
#[derive(Debug, Default)]
pub struct Health {
    /// Microseconds of the last successful connect; 0 before the first.
    last_micros: AtomicU64,
    /// Unix seconds of the last successful connect; 0 before the first.
    last_ok: AtomicI64,
    connects: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<(String, i64)>>,
}

/// A copy of one backend's record, for display.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub last_latency: Option<Duration>,
    pub last_ok: Option<i64>,
    pub connects: u64,
    pub errors: u64,
    /// The last error's text and Unix time.
    pub last_error: Option<(String, i64)>,
}

impl Health {
    /// A connect (and TLS handshake, if any) that worked, and how long it took.
    pub fn record_ok(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.last_micros.store(micros, Ordering::Relaxed);
        self.last_ok.store(now_unix(), Ordering::Relaxed);
        self.connects.fetch_add(1, Ordering::Relaxed);
    }

    /// A connect or handshake that failed or timed out.
    pub fn record_error(&self, error: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((error.to_string(), now_unix()));
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let micros = self.last_micros.load(Ordering::Relaxed);
        let ok = self.last_ok.load(Ordering::Relaxed);
        Snapshot {
            last_latency: (micros > 0).then(|| Duration::from_micros(micros)),
            last_ok: (ok > 0).then_some(ok),
            connects: self.connects.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|l| l.clone()),
        }
    }
}

/// Every backend's record, by name.
#[derive(Debug, Default)]
pub struct Table {
    backends: Mutex<BTreeMap<String, Arc<Health>>>,
}

impl Table {
    /// The record of backend `name`, created on first use (at build time,
    /// not per connect).
    pub fn get(&self, name: &str) -> Arc<Health> {
        let mut map = match self.backends.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(name.to_string()).or_default().clone()
    }

    /// Each backend's record, by name.
    pub fn snapshot(&self) -> Vec<(String, Snapshot)> {
        let map = match self.backends.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.iter().map(|(n, h)| (n.clone(), h.snapshot())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_latency_and_errors_per_backend() {
        let t = Table::default();
        let h = t.get("legacy");
        assert_eq!(h.snapshot(), Snapshot::default());
        h.record_ok(Duration::from_millis(3));
        h.record_error(&"connection refused");
        assert!(Arc::ptr_eq(&h, &t.get("legacy")));
        let all = t.snapshot();
        assert_eq!(all.len(), 1);
        let s = &all[0].1;
        assert_eq!(s.last_latency, Some(Duration::from_millis(3)));
        assert_eq!((s.connects, s.errors), (1, 1));
        assert_eq!(s.last_error.as_ref().unwrap().0, "connection refused");
    }
}
