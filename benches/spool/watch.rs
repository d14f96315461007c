//! The watchdog and what it stops, and CPU use from /proc: one process
//! (ponte, all its threads) or a whole process group with a breakdown by
//! process name (Postfix's master and its children).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::procs::{group_pids, kill, machine_ticks, proc_comm, proc_stat};

/// Set by the watchdog: every sender checks it and gives up.
static ABORT: AtomicBool = AtomicBool::new(false);

pub fn aborted() -> bool {
    ABORT.load(Ordering::Relaxed)
}

/// What the watchdog stops if the run overstays.
#[derive(Default)]
struct Victims {
    ponte: Option<u32>,
    /// Postfix's config directory and its master's process group.
    postfix: Option<(PathBuf, u32)>,
    /// The run's temporary directory (queue files are large).
    dir: Option<PathBuf>,
}

static VICTIMS: Mutex<Option<Victims>> = Mutex::new(None);

fn victims<T>(f: impl FnOnce(&mut Victims) -> T) -> T {
    let mut v = VICTIMS.lock().unwrap_or_else(|e| e.into_inner());
    f(v.get_or_insert_with(Victims::default))
}

pub fn set_ponte(pid: Option<u32>) {
    victims(|v| v.ponte = pid);
}

pub fn set_postfix(p: Option<(PathBuf, u32)>) {
    victims(|v| v.postfix = p);
}

pub fn set_dir(dir: Option<PathBuf>) {
    victims(|v| v.dir = dir);
}

/// After `limit`: sets the abort flag (senders stop within one I/O
/// timeout, the main thread unwinds and stops ponte and Postfix itself);
/// 20 s later stops them here, removes the directory and exits.
pub fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("spool bench: still running after {limit:?}, aborting");
        ABORT.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(20));
        eprintln!("spool bench: still running 20 s after the abort; stopping ponte and Postfix");
        let v = victims(std::mem::take);
        if let Some(pid) = v.ponte {
            kill(pid, libc::SIGKILL);
        }
        if let Some((conf, pgid)) = v.postfix {
            crate::postfix::stop_now(&conf, pgid);
        }
        if let Some(dir) = v.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(3);
    });
}

/// Whose CPU a sample reads.
#[derive(Clone, Copy)]
pub enum Who {
    /// One process, all its threads.
    Process(u32),
    /// Every member of a process group, plus what they reaped.
    Group(u32),
}

#[derive(Clone)]
pub struct Sample {
    at: Instant,
    /// pid → (name, utime + stime) of the measured processes.
    procs: HashMap<u32, (String, u64)>,
    /// cutime + cstime of the measured processes: children that exited
    /// and were reaped (Postfix's master reaps its daemons).
    reaped: u64,
    client: u64,
    busy: u64,
    total: u64,
}

pub fn sample(who: Who) -> Sample {
    let pids = match who {
        Who::Process(pid) => vec![pid],
        Who::Group(pgid) => group_pids(pgid),
    };
    let mut procs = HashMap::new();
    let mut reaped = 0;
    for pid in pids {
        if let Some((_, _, own, children)) = proc_stat(pid) {
            procs.insert(pid, (proc_comm(pid), own));
            if matches!(who, Who::Group(_)) {
                reaped += children;
            }
        }
    }
    let (busy, total) = machine_ticks();
    Sample {
        at: Instant::now(),
        procs,
        reaped,
        client: proc_stat(std::process::id()).map_or(0, |s| s.2),
        busy,
        total,
    }
}

/// CPU used between two samples.
#[derive(Clone, Default)]
pub struct Usage {
    pub secs: f64,
    /// The measured server, ms.
    pub server_ms: f64,
    /// By process name (groups only), ms.
    pub parts: BTreeMap<String, f64>,
    /// This process (the senders), ms.
    pub client_ms: f64,
    /// Machine busy, % of all cores.
    pub busy_pct: f64,
    /// Busy, but neither the server nor the senders (other processes,
    /// interrupts), % of all cores.
    pub other_pct: f64,
}

pub const EXITED: &str = "(exited, reaped by master)";

pub fn between(a: &Sample, b: &Sample, ticks: f64, cores: usize) -> Usage {
    let ms = |t: u64| t as f64 * 1000.0 / ticks;
    let mut parts: BTreeMap<String, f64> = BTreeMap::new();
    let mut server = 0u64;
    for (pid, (comm, t1)) in &b.procs {
        let t0 = a.procs.get(pid).map_or(0, |p| p.1);
        let d = t1.saturating_sub(t0);
        server += d;
        *parts.entry(comm.clone()).or_default() += ms(d);
    }
    // A process that exited in between: its whole life is now in the
    // reaped time, of which its time before `a` was already counted.
    let gone: u64 = a
        .procs
        .iter()
        .filter(|(pid, _)| !b.procs.contains_key(pid))
        .map(|(_, p)| p.1)
        .sum();
    let exited = b.reaped.saturating_sub(a.reaped).saturating_sub(gone);
    if exited > 0 {
        parts.insert(EXITED.into(), ms(exited));
    }
    server += exited;
    let secs = (b.at - a.at).as_secs_f64();
    let busy_pct = 100.0 * b.busy.saturating_sub(a.busy) as f64
        / b.total.saturating_sub(a.total).max(1) as f64;
    let (server_ms, client_ms) = (ms(server), ms(b.client.saturating_sub(a.client)));
    let window_ms = secs * 1000.0 * cores as f64;
    Usage {
        secs,
        server_ms,
        parts,
        client_ms,
        busy_pct,
        other_pct: (busy_pct - 100.0 * (server_ms + client_ms) / window_ms.max(1.0)).max(0.0),
    }
}
