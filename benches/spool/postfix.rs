//! A throwaway Postfix instance (Debian's package) on a loopback port:
//! its own `config_directory` (main.cf and master.cf written here), queue
//! and data directories, all in the run's temporary directory; smtpd on
//! 127.0.0.1 only; every recipient in the bench domain gets the `HOLD`
//! action (`check_recipient_access static:HOLD`), so an accepted message
//! is written to the queue by cleanup (fsync of the queue file before the
//! `250`) and stays in `hold/`: nothing is ever delivered. Started with
//! `postfix -c DIR check` and `postfix -c DIR start` (as root; the daemons
//! run as `mail_owner = postfix`), stopped with `postfix -c DIR stop` on
//! drop, then killed if the master is still there.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::net::{free_port, loopback, wait_greeting};
use crate::procs::{kill_group, proc_stat};
use crate::smtp::DOMAIN;
use crate::watch;

pub const POSTFIX: &str = "/usr/sbin/postfix";

pub struct Postfix {
    pub conf: PathBuf,
    pub queue: PathBuf,
    pub addr: SocketAddr,
    /// The master's pid, which is also its process group (it calls setsid).
    pub master: u32,
    log: PathBuf,
    version: String,
}

impl Postfix {
    /// Sets the instance up under `dir` and starts it (again on a fresh
    /// port if another process took the first one).
    pub fn start(dir: &Path) -> Result<Postfix, String> {
        if !Path::new(POSTFIX).exists() {
            return Err(format!("{POSTFIX} is not installed"));
        }
        let conf = dir.join("conf");
        let queue = dir.join("queue");
        let data = dir.join("data");
        let log = dir.join("maillog");
        for d in [&conf, &queue, &data] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        // The daemons run as `postfix`: they must reach the queue through
        // the temporary directory (0700 by default) and own `data/`.
        let mut p = std::path::PathBuf::new();
        for c in dir.components() {
            p.push(c);
            if p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
                set_mode(&p, 0o755)?;
            }
        }
        run("chown", &["postfix:postfix".as_ref(), data.as_os_str()])?;
        let mut last = String::new();
        for _ in 0..3 {
            let addr = loopback(free_port());
            std::fs::write(conf.join("main.cf"), main_cf(dir, &queue, &data, &log))
                .map_err(|e| format!("main.cf: {e}"))?;
            std::fs::write(conf.join("master.cf"), master_cf(addr))
                .map_err(|e| format!("master.cf: {e}"))?;
            postfix(&conf, "check", &log)?;
            let ready = postfix(&conf, "start", &log)
                .and_then(|()| wait_greeting(addr, "220", Duration::from_secs(10)));
            let master = master_pid(&queue).filter(|&m| alive(m));
            match (ready, master) {
                (Ok(_), Some(master)) => {
                    let pgid = proc_stat(master).map(|s| s.1);
                    watch::set_postfix(Some((conf.clone(), master)));
                    let pf = Postfix {
                        version: version(&conf),
                        conf,
                        queue,
                        addr,
                        master,
                        log,
                    };
                    if pgid != Some(master) {
                        return Err(format!(
                            "Postfix's master {master} is not its own process group ({pgid:?})"
                        ));
                    }
                    return Ok(pf);
                }
                (r, m) => {
                    if let Some(m) = m {
                        stop_now(&conf, m);
                    }
                    last = format!("{r:?}\n{}", tail(&log, 20));
                    let _ = std::fs::remove_file(queue.join("pid/master.pid"));
                    if !last.contains("in use") {
                        break;
                    }
                }
            }
        }
        Err(format!("Postfix did not start: {last}"))
    }

    /// Files in the queue: (in hold/, anywhere else).
    pub fn queued(&self) -> (u64, u64) {
        let mut hold = 0;
        let mut other = 0;
        for q in [
            "incoming", "active", "deferred", "maildrop", "hold", "corrupt",
        ] {
            let n = count_files(&self.queue.join(q), 3);
            if q == "hold" {
                hold += n;
            } else {
                other += n;
            }
        }
        (hold, other)
    }

    /// Lines of the mail log with `warning`, `error`, `fatal` or `panic`.
    pub fn log_problems(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                ["warning:", "error:", "fatal:", "panic:"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .map(str::to_string)
            .collect()
    }

    pub fn version(&self) -> &str {
        &self.version
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        stop_now(&self.conf, self.master);
        watch::set_postfix(None);
    }
}

/// `postfix -c conf stop`, waiting up to 10 s for the master to go, then
/// SIGKILL to its process group.
pub fn stop_now(conf: &Path, master: u32) {
    let mut cmd = Command::new(POSTFIX);
    cmd.arg("-c").arg(conf).arg("stop");
    let _ = run_bounded(cmd, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && alive(master) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(master) {
        eprintln!("Postfix's master {master} still there after `postfix stop`: killing its group");
        kill_group(master, libc::SIGKILL);
    }
}

fn alive(pid: u32) -> bool {
    // A zombie has no /proc/<pid>/stat fields we use past its state, but
    // still has the file: look at the state letter.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

fn main_cf(dir: &Path, queue: &Path, data: &Path, log: &Path) -> String {
    let (q, d, l, dir) = (
        queue.display(),
        data.display(),
        log.display(),
        dir.display(),
    );
    format!(
        "# Generated by benches/spool.rs: a throwaway instance.
compatibility_level = 3.6
queue_directory = {q}
data_directory = {d}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {l}
maillog_file_prefixes = {dir}
myhostname = postfix.bench.invalid
mydomain = bench.invalid
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = {DOMAIN}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# Every accepted message goes to the hold queue and stays there.
smtpd_recipient_restrictions = check_recipient_access static:HOLD
smtpd_peername_lookup = no
alias_maps =
alias_database =
local_recipient_maps =
biff = no
message_size_limit = 52428800
"
    )
}

/// Only the services an accepted, held message touches, plus those Postfix
/// expects to find; no chroot (the queue is in a temporary directory).
fn master_cf(addr: SocketAddr) -> String {
    format!(
        "# Generated by benches/spool.rs.
{addr} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"
    )
}

/// `postfix -c conf <what>`; its messages go to the mail log.
fn postfix(conf: &Path, what: &str, log: &Path) -> Result<(), String> {
    let mut cmd = Command::new(POSTFIX);
    cmd.arg("-c").arg(conf).arg(what);
    match run_bounded(cmd, Duration::from_secs(30)) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("postfix {what} failed:\n{}", tail(log, 20))),
        Err(e) => Err(format!("postfix {what}: {e}")),
    }
}

/// Runs a command to its end or `limit`; whether it exited 0.
fn run_bounded(mut cmd: Command, limit: Duration) -> Result<bool, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.success()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {limit:?}"));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn run(cmd: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let mut c = Command::new(cmd);
    c.args(args);
    match run_bounded(c, Duration::from_secs(10)) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("{cmd} {args:?} failed")),
        Err(e) => Err(format!("{cmd}: {e}")),
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}

fn master_pid(queue: &Path) -> Option<u32> {
    std::fs::read_to_string(queue.join("pid/master.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn version(conf: &Path) -> String {
    Command::new("/usr/sbin/postconf")
        .arg("-c")
        .arg(conf)
        .arg("-h")
        .arg("mail_version")
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn count_files(dir: &Path, depth: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() && depth > 0 => count_files(&e.path(), depth - 1),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
