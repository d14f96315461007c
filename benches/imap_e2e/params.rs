//! The knobs (environment variables, see benches/README.md), quick mode, and
//! how long a run with them is planned to take.

use std::time::Duration;

use crate::load::Kind;

pub struct Params {
    /// `PONTE_BENCH_QUICK=1`: short everything, for development.
    pub quick: bool,
    pub secs: Duration,
    pub warmup: Duration,
    /// Measured time of the 1-client rows.
    pub serial_secs: Duration,
    pub clients: usize,
    pub fetch_rounds: usize,
    pub fetch_mib: usize,
    /// Login scenarios, in order (empty: none).
    pub kinds: Vec<Kind>,
    /// Measure FETCH.
    pub fetch: bool,
    /// Kinds that also get a 1-client row per side.
    pub serial_kinds: Vec<Kind>,
    /// Dovecot in high-performance mode (see `DOVECOT_TUNING`).
    pub tuned: bool,
    /// Measure IMAP once with the harness's stock Dovecot first.
    pub stock_rows: bool,
    /// Measure nginx's mail proxy.
    pub nginx: bool,
    /// nginx `worker_processes`.
    pub nginx_workers: usize,
    /// Idle-session counts to measure (before the fd-limit cap).
    pub idle_sizes: Vec<usize>,
    /// Idle sessions over implicit TLS too.
    pub idle_tls: bool,
    /// How long the largest idle-session count is held.
    pub idle_hold: Duration,
    /// How long the smaller counts are held.
    pub idle_hold_small: Duration,
}

impl Params {
    /// Environment knobs, clamped so that every loop stays bounded.
    pub fn from_env() -> Params {
        let quick = flag("PONTE_BENCH_QUICK", false);
        let q = |normal: f64, fast: f64| if quick { fast } else { normal };
        let secs = num("PONTE_BENCH_SECS", q(8.0, 2.0), 0.5, 30.0);
        let parts = std::env::var("PONTE_BENCH_PARTS").unwrap_or("logins,fetch,idle".into());
        let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
        let tls = flag("PONTE_BENCH_TLS", true);
        let pop3 = flag("PONTE_BENCH_POP3", true);
        let mut kinds = vec![Kind::Imap];
        if tls {
            kinds.extend([Kind::Imaps, Kind::Starttls]);
        }
        if pop3 {
            kinds.push(Kind::Pop3);
        }
        if !part("logins") {
            kinds.clear();
        }
        let serial_kinds = kinds
            .iter()
            .copied()
            .filter(|k| matches!(k, Kind::Imap | Kind::Imaps))
            .collect();
        let tuned = match std::env::var("PONTE_BENCH_DOVECOT").as_deref() {
            Err(_) | Ok("tuned") => true,
            Ok("stock") => false,
            Ok(v) => panic!("PONTE_BENCH_DOVECOT={v:?}: tuned or stock"),
        };
        let idle_sizes = match std::env::var("PONTE_BENCH_IDLE") {
            Ok(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<usize>()
                        .unwrap_or_else(|_| {
                            panic!("PONTE_BENCH_IDLE={v:?}: comma-separated counts")
                        })
                        .min(100_000)
                })
                .filter(|&n| n > 0)
                .collect(),
            Err(_) if quick => vec![300],
            Err(_) => vec![2_000, 10_000],
        };
        let idle_sizes = if part("idle") { idle_sizes } else { Vec::new() };
        Params {
            quick,
            secs: Duration::from_secs_f64(secs),
            warmup: Duration::from_secs_f64(num("PONTE_BENCH_WARMUP", q(1.0, 0.5), 0.0, 10.0)),
            serial_secs: Duration::from_secs_f64(secs.min(q(3.0, 1.0))),
            clients: num("PONTE_BENCH_CLIENTS", 50.0, 1.0, 90.0) as usize,
            fetch_rounds: num("PONTE_BENCH_FETCH_ROUNDS", q(10.0, 3.0), 1.0, 50.0) as usize,
            fetch_mib: num("PONTE_BENCH_FETCH_MB", 10.0, 1.0, 50.0) as usize,
            stock_rows: tuned && !kinds.is_empty() && flag("PONTE_BENCH_STOCK", !quick),
            kinds,
            serial_kinds,
            fetch: part("fetch"),
            tuned,
            nginx: flag("PONTE_BENCH_NGINX", true),
            nginx_workers: num("PONTE_BENCH_NGINX_WORKERS", 2.0, 1.0, 8.0) as usize,
            idle_sizes,
            idle_tls: tls,
            idle_hold: Duration::from_secs_f64(num(
                "PONTE_BENCH_IDLE_HOLD",
                q(60.0, 3.0),
                1.0,
                300.0,
            )),
            idle_hold_small: Duration::from_secs_f64(num(
                "PONTE_BENCH_IDLE_HOLD_SMALL",
                q(15.0, 3.0),
                1.0,
                300.0,
            )),
        }
    }

    /// How long `n` idle sessions are held.
    pub fn hold_for(&self, n: usize) -> Duration {
        if Some(&n) == self.idle_sizes.iter().max() {
            self.idle_hold
        } else {
            self.idle_hold_small
        }
    }

    /// Rough duration of the whole run with `sides` sides (direct, nginx,
    /// ponte), for the progress line and the watchdog.
    pub fn planned(&self, sides: usize) -> Duration {
        let scenario = |secs: Duration, warmup: Duration| (warmup + secs).as_secs_f64() + 0.6;
        let mut s = 15.0; // start-up, smoke checks, FETCH, shut-down
        let many = scenario(self.secs, self.warmup);
        let one = scenario(
            self.serial_secs,
            self.warmup.min(Duration::from_millis(500)),
        );
        s += sides as f64 * many * (self.kinds.len() + usize::from(self.stock_rows)) as f64;
        s += sides as f64 * one * self.serial_kinds.len() as f64;
        let proxies = sides.saturating_sub(1) as f64;
        let modes = if self.idle_tls { 2.0 } else { 1.0 };
        for &n in &self.idle_sizes {
            // Start-up, establishing (IMAPS ~1,000/s), settling, tear-down.
            let per_run = 4.0 + n as f64 / 700.0 + self.hold_for(n).as_secs_f64();
            s += proxies * modes * per_run;
        }
        Duration::from_secs_f64(s)
    }
}

fn num(name: &str, default: f64, min: f64, max: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{name}={v:?}: not a number"))
            .clamp(min, max),
        Err(_) => default,
    }
}

fn flag(name: &str, default: bool) -> bool {
    num(name, if default { 1.0 } else { 0.0 }, 0.0, 1.0) != 0.0
}
