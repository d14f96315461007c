//! Spool ids: time-based and strictly increasing, so that sorting ids (or
//! their file names) gives arrival order.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One spooled message: microseconds since the Unix epoch at arrival,
/// bumped past the last id handed out. Shown and named on disk as 16 hex
/// digits, so that the text order is the numeric order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct SpoolId(u64);

impl SpoolId {
    /// The id's value: microseconds since the Unix epoch (approximately:
    /// ids run ahead of the clock when more than one arrives per µs).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    #[cfg(test)]
    pub(crate) fn from_raw(v: u64) -> SpoolId {
        SpoolId(v)
    }
}

impl fmt::Display for SpoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Not 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a spool id: {0:?}")]
pub struct BadId(String);

impl FromStr for SpoolId {
    type Err = BadId;

    fn from_str(s: &str) -> Result<Self, BadId> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadId(s.to_string()));
        }
        u64::from_str_radix(s, 16)
            .map(SpoolId)
            .map_err(|_| BadId(s.to_string()))
    }
}

impl From<SpoolId> for String {
    fn from(id: SpoolId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for SpoolId {
    type Error = BadId;

    fn try_from(s: String) -> Result<Self, BadId> {
        s.parse()
    }
}

/// Hands out ids. Seeded at open with the highest id found on disk, so
/// that ids stay ordered across restarts even if the clock went back.
#[derive(Debug)]
pub(crate) struct IdGen {
    last: AtomicU64,
}

impl IdGen {
    pub(crate) fn new(last: Option<SpoolId>) -> IdGen {
        IdGen {
            last: AtomicU64::new(last.map_or(0, |id| id.0)),
        }
    }

    /// The next id: now in µs, or one past the last id if that is later.
    pub(crate) fn next(&self) -> SpoolId {
        self.next_at(now_micros())
    }

    pub(crate) fn next_at(&self, now: u64) -> SpoolId {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let id = now.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, id, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return SpoolId(id),
                Err(seen) => last = seen,
            }
        }
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_sortable_hex_and_parse_back() {
        let a = SpoolId(0x1234);
        let b = SpoolId(0x1_0000_0000);
        assert_eq!(a.to_string(), "0000000000001234");
        assert!(a.to_string() < b.to_string());
        assert_eq!("0000000000001234".parse::<SpoolId>(), Ok(a));
        assert!("1234".parse::<SpoolId>().is_err());
        assert!("000000000000123g".parse::<SpoolId>().is_err());
        assert!("+000000000001234".parse::<SpoolId>().is_err());
    }

    #[test]
    fn ids_stay_ahead_of_the_last_one_when_the_clock_goes_back() {
        let gen = IdGen::new(Some(SpoolId(5_000)));
        assert_eq!(gen.next_at(1_000), SpoolId(5_001));
        assert_eq!(gen.next_at(1_000), SpoolId(5_002));
        assert_eq!(gen.next_at(9_000), SpoolId(9_000));
        assert_eq!(gen.next_at(9_000), SpoolId(9_001));
    }
}
