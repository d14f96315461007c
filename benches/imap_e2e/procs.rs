//! Processes: CPU time and memory (PSS) from /proc, the CPU probe sampled
//! around every measurement window, the file-descriptor limit, and the
//! watchdog that ends a wedged run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// /proc/<pid>/stat fields after the command name: (ppid, pgrp, utime +
/// stime, cutime + cstime), in clock ticks.
pub fn proc_stat(pid: u32) -> Option<(u32, u32, u64, u64)> {
    stat_fields(&format!("/proc/{pid}/stat"))
}

fn stat_fields(path: &str) -> Option<(u32, u32, u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    Some((n(1)? as u32, n(2)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// utime + stime of one thread of this process.
pub fn thread_ticks(tid: u32) -> u64 {
    stat_fields(&format!("/proc/self/task/{tid}/stat")).map_or(0, |s| s.2)
}

pub fn proc_comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Our child process named `comm` (the Dovecot master, which the harness
/// started in its own process group).
pub fn find_child(comm: &str) -> Option<u32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .find(|&pid| proc_stat(pid).is_some_and(|s| s.0 == me) && proc_comm(pid) == comm)
}

/// The members of a process group (nginx's master and workers).
pub fn group_pids(pgid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.1 == pgid))
        .collect()
}

/// CPU of a whole process group: each member's own time plus what its
/// reaped children used (Dovecot's master reaps its short-lived imap and
/// imap-login processes, so their time lands in its cutime).
pub fn group_ticks(pgid: u32) -> u64 {
    all_pids()
        .into_iter()
        .filter_map(proc_stat)
        .filter(|s| s.1 == pgid)
        .map(|s| s.2 + s.3)
        .sum()
}

/// Proportional set size of the processes, summed, in KiB (`Pss:` of
/// /proc/<pid>/smaps_rollup: shared pages count once across them).
pub fn pss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .filter_map(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("Pss:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .sum()
}

/// Share of the machine busy between two [`machine_ticks`] samples.
pub fn busy_pct(a: (u64, u64), b: (u64, u64)) -> f64 {
    100.0 * b.0.saturating_sub(a.0) as f64 / b.1.saturating_sub(a.1).max(1) as f64
}

/// Busy and total ticks of the whole machine (/proc/stat `cpu` line).
pub fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (children,
/// Dovecot, nginx and ponte, inherit it) and returns the hard limit. Going
/// past the hard limit needs CAP_SYS_RESOURCE.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_max
}

pub fn kill(pid: u32, signal: libc::c_int) {
    if pid > 1 {
        // SAFETY: kill(2) has no memory-safety preconditions; callers pass
        // our own children or process groups we created.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

pub fn kill_group(pgid: u32, signal: libc::c_int) {
    if pgid > 1 {
        // SAFETY: as above; a negative pid addresses a process group.
        unsafe {
            libc::kill(-(pgid as libc::pid_t), signal);
        }
    }
}

/// Reaps what is left of a killed process group (its members are
/// reparented to us: the Dovecot harness makes this process a subreaper);
/// gives up after a second.
pub fn reap_group(pgid: u32) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        // SAFETY: waitpid with a null status pointer is allowed.
        let pid =
            unsafe { libc::waitpid(-(pgid as libc::pid_t), std::ptr::null_mut(), libc::WNOHANG) };
        match pid {
            0 => std::thread::sleep(Duration::from_millis(2)),
            p if p > 0 => {}
            _ => return,
        }
    }
}

// ------------------------------------------------------------------ watchdog

/// What the watchdog kills: our ponte processes and the nginx and Dovecot
/// process groups, kept up to date as proxies are started and stopped.
#[derive(Default)]
pub struct Victims {
    pids: Mutex<Vec<u32>>,
    groups: Mutex<Vec<u32>>,
}

impl Victims {
    pub fn add_pid(&self, pid: u32) {
        lock(&self.pids).push(pid);
    }

    pub fn add_group(&self, pgid: u32) {
        lock(&self.groups).push(pgid);
    }

    /// Forgets a pid or group that was stopped (pids can be reused).
    pub fn remove(&self, id: u32) {
        lock(&self.pids).retain(|&p| p != id);
        lock(&self.groups).retain(|&p| p != id);
    }

    fn kill_all(&self) {
        for &pid in lock(&self.pids).iter() {
            kill(pid, libc::SIGKILL);
        }
        for &g in lock(&self.groups).iter() {
            kill_group(g, libc::SIGKILL);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills every victim and exits if the run is still going after `limit`.
pub fn spawn_watchdog(limit: Duration, v: Arc<Victims>) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("imap_e2e: still running after {limit:?}; killing ponte, nginx and Dovecot");
        v.kill_all();
        std::process::exit(3);
    });
}

// --------------------------------------------------------------- CPU probe

/// What to sample around a measurement window.
pub struct Probe {
    pub ponte: u32,
    /// nginx's process group (master and workers).
    pub nginx: Option<u32>,
    /// Dovecot's process group.
    pub dovecot: Option<u32>,
    /// The auth_http responder's thread (in this process).
    pub auth_tid: Option<u32>,
    pub ticks: f64,
}

#[derive(Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    ponte: u64,
    nginx: u64,
    dovecot: u64,
    process: u64,
    auth: u64,
    busy: u64,
    total: u64,
}

/// CPU used in a window, in milliseconds; shares of the whole machine
/// (all cores) in percent.
#[derive(Clone, Copy, Default)]
pub struct CpuUse {
    pub ponte_ms: f64,
    /// nginx master and workers.
    pub nginx_ms: f64,
    pub dovecot_ms: f64,
    /// The load generator: this process less the auth_http thread.
    pub client_ms: f64,
    /// nginx's auth_http responder (a thread of this process).
    pub auth_ms: f64,
    pub busy_pct: f64,
    /// Busy, but not in any of the above: interrupts and softirq not
    /// charged to a process, and other processes.
    pub other_pct: f64,
}

impl Probe {
    pub fn sample(&self) -> CpuSample {
        let (busy, total) = machine_ticks();
        CpuSample {
            at: Instant::now(),
            ponte: proc_stat(self.ponte).map_or(0, |s| s.2),
            nginx: self.nginx.map_or(0, group_ticks),
            dovecot: self.dovecot.map_or(0, group_ticks),
            process: proc_stat(std::process::id()).map_or(0, |s| s.2),
            auth: self.auth_tid.map_or(0, thread_ticks),
            busy,
            total,
        }
    }

    pub fn between(&self, a: CpuSample, b: CpuSample) -> CpuUse {
        let ms = |x: u64, y: u64| y.saturating_sub(x) as f64 * 1000.0 / self.ticks;
        let auth_ms = ms(a.auth, b.auth);
        let u = CpuUse {
            ponte_ms: ms(a.ponte, b.ponte),
            nginx_ms: ms(a.nginx, b.nginx),
            dovecot_ms: ms(a.dovecot, b.dovecot),
            client_ms: (ms(a.process, b.process) - auth_ms).max(0.0),
            auth_ms,
            busy_pct: busy_pct((a.busy, a.total), (b.busy, b.total)),
            other_pct: 0.0,
        };
        let window_ms = (b.at - a.at).as_secs_f64() * 1000.0 * cores() as f64;
        let ours = u.ponte_ms + u.nginx_ms + u.dovecot_ms + u.client_ms + u.auth_ms;
        CpuUse {
            other_pct: (u.busy_pct - 100.0 * ours / window_ms.max(1.0)).max(0.0),
            ..u
        }
    }
}
