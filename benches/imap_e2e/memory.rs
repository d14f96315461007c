//! Memory per idle session: N sessions through a proxy, each logged in,
//! `SELECT INBOX`, then `IDLE` held; the proxy's PSS (all its processes)
//! after they are established minus before, per session; then they are
//! held for a while and the sessions the proxy dropped are counted (closed
//! during the hold, or no answer to `DONE` at the end).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};

use crate::load::{count_error, Conn, Target, CYCLE_TIMEOUT};
use crate::procs::pss_kib;

/// Sessions being established at once.
const ESTABLISH_CONCURRENCY: usize = 100;
/// Sessions sending DONE and LOGOUT at once at the end.
const TEARDOWN_CONCURRENCY: usize = 500;
/// Pause between the last session established and the PSS sample.
const SETTLE: Duration = Duration::from_secs(2);
/// The client's read buffer per session (the load generator's memory only).
const CLIENT_BUF: usize = 1024;

pub struct IdleResult {
    pub requested: usize,
    pub established: usize,
    /// From the first connect to the last session in IDLE.
    pub establish_secs: f64,
    /// Closed by the proxy (or anything behind it) during the hold.
    pub dropped: usize,
    /// Still open at the end but no tagged OK to DONE.
    pub dead_at_end: usize,
    pub pss_before_kib: u64,
    /// [`SETTLE`] after the last session was established.
    pub pss_after_kib: u64,
    /// At the end of the hold.
    pub pss_end_kib: u64,
    /// Number of proxy processes.
    pub procs: usize,
    pub hold: Duration,
    pub errors: BTreeMap<String, u64>,
}

impl IdleResult {
    /// PSS growth per established session, KiB.
    pub fn kib_per_session(&self) -> Option<f64> {
        (self.established > 0).then(|| {
            (self.pss_after_kib as f64 - self.pss_before_kib as f64) / self.established as f64
        })
    }

    /// Dropped during the hold or dead at the end.
    pub fn lost(&self) -> usize {
        self.dropped + self.dead_at_end
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} of {} established in {:.1} s; PSS {} → {} KiB ({} processes), {:.1} KiB/session, {} KiB at the end of the {:.0} s hold; {} dropped, {} dead at the end",
            self.established,
            self.requested,
            self.establish_secs,
            self.pss_before_kib,
            self.pss_after_kib,
            self.procs,
            self.kib_per_session().unwrap_or(f64::NAN),
            self.pss_end_kib,
            self.hold.as_secs_f64(),
            self.dropped,
            self.dead_at_end,
        );
        for (e, n) in &self.errors {
            s.push_str(&format!("\n    {n} x {e}"));
        }
        s
    }
}

enum Outcome {
    NotEstablished(String),
    Dropped(String),
    DeadAtEnd(String),
    /// DONE answered; the LOGOUT error, if any.
    Closed(Option<String>),
}

/// Opens `n` idle sessions on `t` (users taken round-robin), measures the
/// PSS of `pids()` around it, holds them for `hold`, then ends them.
pub async fn idle_scenario(
    t: &Arc<Target>,
    users: &[(String, String)],
    n: usize,
    hold: Duration,
    pids: &dyn Fn() -> Vec<u32>,
) -> IdleResult {
    let before = pss_kib(&pids());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (est_tx, mut est_rx) = mpsc::unbounded_channel::<bool>();
    let up = Arc::new(Semaphore::new(ESTABLISH_CONCURRENCY));
    let down = Arc::new(Semaphore::new(TEARDOWN_CONCURRENCY));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (user, pass) = users[i % users.len()].clone();
            let (t, up, down) = (t.clone(), up.clone(), down.clone());
            let (est_tx, mut stop) = (est_tx.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let permit = up.acquire_owned().await;
                let r = tokio::time::timeout(CYCLE_TIMEOUT, establish(&t, &user, &pass)).await;
                drop(permit);
                let mut c = match r.unwrap_or_else(|_| Err("establish: timeout".into())) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = est_tx.send(false);
                        return Outcome::NotEstablished(e);
                    }
                };
                let _ = est_tx.send(true);
                drop(est_tx);
                loop {
                    tokio::select! {
                        alive = c.discard_incoming() => if !alive {
                            return Outcome::Dropped("closed during the hold".into());
                        },
                        _ = stop.changed() => break,
                    }
                }
                let _permit = down.acquire_owned().await;
                if let Err(e) = done(&mut c).await {
                    return Outcome::DeadAtEnd(e);
                }
                Outcome::Closed(logout(&mut c).await.err())
            })
        })
        .collect();
    drop(est_tx);

    // Establishing: bounded by a budget that grows with n.
    let deadline = t0 + Duration::from_secs(20) + Duration::from_millis(10) * n as u32;
    let (mut ok, mut failed) = (0usize, 0usize);
    while ok + failed < n {
        match tokio::time::timeout_at(deadline.into(), est_rx.recv()).await {
            Ok(Some(true)) => ok += 1,
            Ok(Some(false)) => failed += 1,
            _ => break,
        }
    }
    let establish_secs = t0.elapsed().as_secs_f64();
    let held_from = Instant::now();
    tokio::time::sleep(SETTLE.min(hold)).await;
    let procs = pids();
    let after = pss_kib(&procs);
    tokio::time::sleep_until((held_from + hold).into()).await;
    let end = pss_kib(&pids());
    let _ = stop_tx.send(true);

    let mut r = IdleResult {
        requested: n,
        established: ok,
        establish_secs,
        dropped: 0,
        dead_at_end: 0,
        pss_before_kib: before,
        pss_after_kib: after,
        pss_end_kib: end,
        procs: procs.len(),
        hold,
        errors: BTreeMap::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30) + Duration::from_millis(2) * n as u32;
    for task in tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(deadline.into(), task).await {
            Ok(Ok(Outcome::NotEstablished(e))) => count_error(&mut r.errors, e),
            Ok(Ok(Outcome::Dropped(e))) => {
                r.dropped += 1;
                count_error(&mut r.errors, e);
            }
            Ok(Ok(Outcome::DeadAtEnd(e))) => {
                r.dead_at_end += 1;
                count_error(&mut r.errors, format!("at the end: {e}"));
            }
            Ok(Ok(Outcome::Closed(None))) => {}
            Ok(Ok(Outcome::Closed(Some(e)))) => count_error(&mut r.errors, format!("LOGOUT: {e}")),
            Ok(Err(e)) => count_error(&mut r.errors, format!("client task: {e}")),
            Err(_) => {
                abort.abort();
                count_error(&mut r.errors, "tear-down: overran".into());
            }
        }
    }
    r
}

/// connect, [TLS], LOGIN, SELECT INBOX, IDLE up to the continuation.
async fn establish(t: &Target, user: &str, pass: &str) -> Result<Conn, String> {
    let mut c = t.open_greeted(CLIENT_BUF).await?;
    c.command("a", &format!("LOGIN {user} {pass}")).await?;
    c.command("b", "SELECT INBOX").await?;
    c.send_line("i IDLE").await?;
    c.until_prefix(b"+", "IDLE").await?;
    Ok(c)
}

async fn done(c: &mut Conn) -> Result<(), String> {
    c.send_line("DONE").await?;
    c.until_tagged("i", "DONE").await
}

async fn logout(c: &mut Conn) -> Result<(), String> {
    c.command("z", "LOGOUT").await?;
    c.expect_close().await
}
