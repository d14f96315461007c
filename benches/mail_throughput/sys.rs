//! What the bench reads from the system and the `ponte` process it runs:
//! CPU time from `/proc`, how busy the machine is, and a watchdog.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::net::wait_greeting;

/// Set by the watchdog; every client loop checks it and gives up.
pub static ABORT: AtomicBool = AtomicBool::new(false);
/// The running ponte's pid (0: none), for the watchdog.
static PONTE_PID: AtomicU32 = AtomicU32::new(0);

/// Clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`; 100
/// if that fails, which is what Linux uses everywhere).
pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in
    // parentheses: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The machine's (busy, total) jiffies, from the `cpu` line of /proc/stat;
/// idle and iowait count as not busy.
#[derive(Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    pub fn now() -> MachineCpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let line = stat.lines().next().unwrap_or_default();
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8) // user nice system idle iowait irq softirq steal
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        MachineCpu {
            busy: total.saturating_sub(idle),
            total,
        }
    }

    /// Percentage of all cores busy since `earlier`.
    pub fn busy_since(&self, earlier: &MachineCpu) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Kills the run if it overstays: first sets [`ABORT`] (clients stop within
/// one read timeout, the main thread unwinds and stops Dovecot and ponte),
/// then, 30 s later, exits the process outright.
pub fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("mail_throughput: over {limit:?}, aborting");
        ABORT.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(30));
        let pid = PONTE_PID.load(Ordering::SeqCst);
        if pid != 0 {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        eprintln!("mail_throughput: still running 30 s after the abort, exiting");
        std::process::exit(2);
    });
}

/// The release `ponte` binary serving `config`, killed on drop.
pub struct PonteProc {
    child: Child,
    stderr: PathBuf,
}

impl PonteProc {
    /// Starts `ponte serve --config <config>` with `RUST_LOG=warn` and no
    /// `PONTE_*` variable (ponte reads those as configuration overrides), and
    /// waits for the POP3 greeting on `ready`.
    pub fn start(dir: &Path, config: &Path, ready: SocketAddr) -> Result<PonteProc, String> {
        let Some(bin) = option_env!("CARGO_BIN_EXE_ponte") else {
            return Err("the ponte binary is known to tests and benches only".into());
        };
        let stderr = dir.join("ponte.stderr");
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--config").arg(config);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PONTE_") {
                cmd.env_remove(k);
            }
        }
        let err = std::fs::File::create(&stderr).map_err(|e| format!("ponte.stderr: {e}"))?;
        let child = cmd
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn ponte: {e}"))?;
        let mut p = PonteProc { child, stderr };
        let greeting = wait_greeting(ready, "+OK", Duration::from_secs(10));
        match (greeting, p.child.try_wait()) {
            (Ok(_), Ok(None)) => {
                PONTE_PID.store(p.pid(), Ordering::SeqCst);
                Ok(p)
            }
            (r, _) => Err(format!("ponte did not start: {r:?}\n{}", p.log())),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for PonteProc {
    fn drop(&mut self) {
        PONTE_PID.store(0, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `within` for `cond`, polling every `every`.
pub fn poll_until(within: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}
