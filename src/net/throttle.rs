//! Authentication-failure throttling, per client address and per account,
//! so that password guessing costs the guesser time and never reaches the
//! backends in bulk.
//!
//! Each address and each account has a failure score that decays over
//! `window` (halved every `window / 2`: old failures fade, a burst counts
//! in full). Before a login is tried:
//!
//! - address score ≥ `refuse_after` → refused at once with a temporary
//!   error (the backend is not asked);
//! - account score ≥ `account_refuse_after` → the same, unless this
//!   address logged in to that account successfully before (so a user
//!   whose account is under attack from elsewhere keeps working);
//! - otherwise the answer to a *failed* attempt is delayed, growing with
//!   the scores past `delay_after` (doubling, up to `max_delay`).
//!
//! Memory is bounded: at most `max_entries` addresses and accounts each;
//! when full, entries whose score has decayed to nothing go first, then
//! the lowest scores.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

/// The policy, from `[limits]`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub window: Duration,
    pub delay_after: f64,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub refuse_after: f64,
    pub account_refuse_after: f64,
    pub max_entries: usize,
}

impl Policy {
    /// The policy `[limits]` sets: the first delay is `auth_failure_delay`.
    pub fn from_limits(limits: &crate::config::Limits) -> Policy {
        let t = &limits.throttle;
        Policy {
            window: t.window,
            delay_after: f64::from(t.delay_after),
            base_delay: limits.auth_failure_delay,
            max_delay: t.max_delay,
            refuse_after: f64::from(t.refuse_after),
            account_refuse_after: f64::from(t.account_refuse_after),
            max_entries: 100_000,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            window: Duration::from_secs(15 * 60),
            delay_after: 3.0,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(15),
            refuse_after: 30.0,
            account_refuse_after: 50.0,
            max_entries: 100_000,
        }
    }
}

/// What to do with a login attempt before trying it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    /// Try it; if it fails, wait this long before answering.
    Try { delay_on_failure: Duration },
    /// Refuse it now, temporarily, without asking the backend.
    Refuse,
}

#[derive(Debug, Clone, Copy)]
struct Score {
    value: f64,
    at: Instant,
}

impl Score {
    fn now(&self, now: Instant, half_life: Duration) -> f64 {
        let halves = now.saturating_duration_since(self.at).as_secs_f64()
            / half_life.as_secs_f64().max(0.001);
        self.value * 0.5f64.powf(halves)
    }
}

#[derive(Default)]
struct Tables {
    addresses: HashMap<IpAddr, Score>,
    accounts: HashMap<String, Score>,
    /// (account, address) pairs that logged in successfully.
    known: HashMap<(String, IpAddr), Instant>,
}

pub struct Throttle {
    /// Swapped by a reload; the counters stay (an attacker's score does
    /// not reset because an admin tuned the limits).
    policy: ArcSwap<Policy>,
    tables: Mutex<Tables>,
}

impl Throttle {
    pub fn new(policy: Policy) -> Throttle {
        Throttle {
            policy: ArcSwap::from_pointee(policy),
            tables: Mutex::new(Tables::default()),
        }
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The `[limits]` of a reloaded configuration.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    fn half_life(&self) -> Duration {
        self.policy.load().window / 2
    }

    /// The gate for a login to `account` (lower case) from `ip`.
    pub fn check(&self, ip: IpAddr, account: &str) -> Gate {
        let now = Instant::now();
        let hl = self.half_life();
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let policy = self.policy.load();
        let by_ip = t.addresses.get(&ip).map_or(0.0, |s| s.now(now, hl));
        let known = t.known.contains_key(&(account.to_string(), ip));
        let by_account = if known {
            0.0
        } else {
            t.accounts.get(account).map_or(0.0, |s| s.now(now, hl))
        };
        if by_ip >= policy.refuse_after || by_account >= policy.account_refuse_after {
            return Gate::Refuse;
        }
        let over = (by_ip.max(by_account) - policy.delay_after).max(0.0);
        Gate::Try {
            delay_on_failure: delay(&policy, over),
        }
    }

    /// Counts a failed login (wrong password, unknown domain or user).
    pub fn failed(&self, ip: IpAddr, account: &str) {
        let now = Instant::now();
        let hl = self.half_life();
        let max = self.policy.load().max_entries;
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        bump(&mut t.addresses, ip, now, hl, max);
        bump(&mut t.accounts, account.to_string(), now, hl, max);
    }

    /// Counts a successful login: this address is known for the account.
    pub fn succeeded(&self, ip: IpAddr, account: &str) {
        let now = Instant::now();
        let max = self.policy.load().max_entries;
        let mut t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if t.known.len() >= max {
            // Forget the oldest half: a forgotten pair only loses its
            // exemption from the account limit.
            let mut ages: Vec<Instant> = t.known.values().copied().collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            t.known.retain(|_, at| *at > cut);
        }
        t.known.insert((account.to_string(), ip), now);
    }

    /// How many addresses and accounts are tracked (for tests and metrics).
    pub fn tracked(&self) -> (usize, usize) {
        let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        (t.addresses.len(), t.accounts.len())
    }
}

/// The base delay doubled per failure over the threshold, capped.
fn delay(policy: &Policy, over: f64) -> Duration {
    if over <= 0.0 {
        return Duration::ZERO;
    }
    let factor = 2f64.powf(over.min(30.0) - 1.0);
    policy.base_delay.mul_f64(factor).min(policy.max_delay)
}

/// Adds one failure to `key`'s decayed score, making room first if full.
fn bump<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Score>,
    key: K,
    now: Instant,
    half_life: Duration,
    max: usize,
) {
    if !map.contains_key(&key) && map.len() >= max {
        map.retain(|_, s| s.now(now, half_life) >= 0.5);
        if map.len() >= max {
            // Still full of live scores: drop the lowest tenth.
            let mut scores: Vec<f64> = map.values().map(|s| s.now(now, half_life)).collect();
            scores.sort_by(|a, b| a.total_cmp(b));
            let cut = scores[scores.len() / 10];
            map.retain(|_, s| s.now(now, half_life) > cut);
        }
    }
    let value = map.get(&key).map_or(0.0, |s| s.now(now, half_life)) + 1.0;
    map.insert(key, Score { value, at: now });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            window: Duration::from_secs(600),
            delay_after: 3.0,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            refuse_after: 10.0,
            account_refuse_after: 20.0,
            max_entries: 1000,
        }
    }

    const ATTACKER: &str = "192.0.2.66";

    #[tokio::test(start_paused = true)]
    async fn a_reloaded_policy_applies_to_the_scores_kept() {
        let t = Throttle::new(policy());
        let ip: IpAddr = ATTACKER.parse().unwrap();
        for _ in 0..5 {
            t.failed(ip, "a@pec.example");
        }
        assert!(matches!(t.check(ip, "a@pec.example"), Gate::Try { .. }));
        t.set_policy(Policy {
            refuse_after: 4.0,
            ..policy()
        });
        assert!(matches!(t.check(ip, "a@pec.example"), Gate::Refuse));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_from_one_address_are_delayed_then_refused_and_fade() {
        let t = Throttle::new(policy());
        let ip: IpAddr = ATTACKER.parse().unwrap();
        let mut delays = Vec::new();
        for _ in 0..10 {
            match t.check(ip, "alice@x") {
                Gate::Try { delay_on_failure } => delays.push(delay_on_failure),
                Gate::Refuse => panic!("refused too early"),
            }
            t.failed(ip, "alice@x");
        }
        assert_eq!(&delays[..4], &[Duration::ZERO; 4]);
        assert_eq!(delays[4], Duration::from_millis(100));
        assert_eq!(delays[5], Duration::from_millis(200));
        assert_eq!(delays[9], Duration::from_secs(2), "capped");
        assert_eq!(
            t.check(ip, "bob@x"),
            Gate::Refuse,
            "the address, any account"
        );
        // Another address is untouched by the address score.
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(
            matches!(t.check(other, "bob@x"), Gate::Try { delay_on_failure } if delay_on_failure.is_zero())
        );
        // Two half-lives later the score is a quarter: tried again.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(matches!(t.check(ip, "bob@x"), Gate::Try { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_under_attack_stays_open_from_addresses_it_used_before() {
        let t = Throttle::new(policy());
        let home: IpAddr = "198.51.100.5".parse().unwrap();
        t.succeeded(home, "alice@x");
        for i in 0..25u8 {
            // A botnet: each address fails a few times only.
            let ip = IpAddr::from([203, 0, 113, i]);
            t.failed(ip, "alice@x");
        }
        let stranger: IpAddr = "203.0.113.200".parse().unwrap();
        assert_eq!(t.check(stranger, "alice@x"), Gate::Refuse);
        assert!(
            matches!(t.check(home, "alice@x"), Gate::Try { delay_on_failure } if delay_on_failure.is_zero())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tables_stay_bounded() {
        let mut p = policy();
        p.max_entries = 100;
        let t = Throttle::new(p);
        for i in 0..10_000u32 {
            t.failed(IpAddr::from(i.to_be_bytes()), &format!("u{i}@x"));
        }
        let (ips, accounts) = t.tracked();
        assert!(ips <= 100 && accounts <= 100, "{ips} {accounts}");
    }
}
