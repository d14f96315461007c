//! nginx's mail proxy (Debian's `nginx-full` with `libnginx-mod-mail`) as a
//! child process in its own process group, with a generated configuration
//! in a tempdir: nothing under /etc, /run or /var is read or written.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::net::{free_ports, wait_greeting};
use crate::load::Kind;
use crate::procs;

pub const MODULE: &str = "/usr/lib/nginx/modules/ngx_mail_module.so";

/// Sizing of the worker processes.
#[derive(Clone, Copy)]
pub struct Sizing {
    /// `worker_processes`.
    pub workers: usize,
    /// `worker_connections` (client and backend connections of one worker).
    pub connections: u64,
    /// `worker_rlimit_nofile`.
    pub nofile: u64,
}

pub struct NginxProc {
    child: Option<Child>,
    dir: PathBuf,
    pub imap: SocketAddr,
    pub imaps: SocketAddr,
    pub starttls: SocketAddr,
    pub pop3: SocketAddr,
}

/// The nginx binary, if nginx and its mail module are installed.
pub fn binary() -> Option<PathBuf> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    Path::new(MODULE).exists().then_some(bin)
}

pub fn version() -> String {
    binary()
        .and_then(|b| Command::new(b).arg("-v").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .and_then(|s| s.strip_prefix("nginx version: ").map(str::to_string))
        .unwrap_or_else(|| "(version unknown)".into())
}

impl NginxProc {
    /// Starts nginx in `dir` (created if needed) and waits for the IMAP
    /// greeting. Panics with its error log if it does not come up.
    pub fn start(
        dir: &Path,
        cert: &Path,
        key: &Path,
        auth_http: SocketAddr,
        sizing: Sizing,
    ) -> NginxProc {
        let bin = binary().expect("nginx with the mail module (see .ci/install)");
        std::fs::create_dir_all(dir).expect("create nginx dir");
        let mut last = String::new();
        // The ports are free a moment before nginx binds them: retry a race.
        for _ in 0..3 {
            let ports = free_ports(4);
            let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
            let listeners = [addr(0), addr(1), addr(2), addr(3)];
            let conf = dir.join("nginx.conf");
            let text = config_text(dir, cert, key, auth_http, listeners, sizing);
            std::fs::write(&conf, text).expect("write nginx.conf");
            let _ = std::fs::remove_file(dir.join("error.log"));
            let out = std::fs::File::create(dir.join("nginx.stderr")).expect("nginx.stderr");
            let child = Command::new(&bin)
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.join("error.log"))
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup nginx.stderr"))
                .stderr(out)
                .process_group(0)
                .spawn()
                .expect("spawn nginx");
            let mut proc = NginxProc {
                child: Some(child),
                dir: dir.to_path_buf(),
                imap: addr(0),
                imaps: addr(1),
                starttls: addr(2),
                pop3: addr(3),
            };
            let ready = wait_greeting(proc.imap, "* OK IMAP4 ready", Duration::from_secs(10));
            let alive = proc
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if ready.is_ok() && alive {
                return proc;
            }
            proc.stop_inner();
            last = format!("{ready:?}\n{}", proc.log());
        }
        panic!("nginx did not start: {last}");
    }

    /// The master's pid, which is also the process group of the workers.
    pub fn pgid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn addr(&self, kind: Kind) -> SocketAddr {
        match kind {
            Kind::Imap => self.imap,
            Kind::Imaps => self.imaps,
            Kind::Starttls => self.starttls,
            Kind::Pop3 => self.pop3,
        }
    }

    /// Master and workers.
    pub fn pids(&self) -> Vec<u32> {
        procs::group_pids(self.pgid())
    }

    /// The error log and anything nginx printed.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("nginx.stderr"), read("error.log"))
    }

    /// Fast shutdown (SIGTERM to the master), SIGKILL to the group after
    /// 5 s. Returns the log.
    pub fn stop(mut self) -> String {
        self.stop_inner();
        self.log()
    }

    fn stop_inner(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id();
        procs::kill(pgid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        procs::kill_group(pgid, libc::SIGKILL);
        let _ = child.wait();
        procs::reap_group(pgid);
    }
}

impl Drop for NginxProc {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// One `server` per listener, as an administration would write it: plain
/// IMAP, IMAPS, IMAP with STARTTLS required, plain POP3. Everything else is
/// nginx's default (`proxy_buffer` one page, no SSL session cache).
fn config_text(
    dir: &Path,
    cert: &Path,
    key: &Path,
    auth_http: SocketAddr,
    [imap, imaps, starttls, pop3]: [SocketAddr; 4],
    sizing: Sizing,
) -> String {
    let d = dir.display();
    format!(
        r#"# Generated by benches/imap_e2e (nginx.rs).
load_module {MODULE};
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
error_log {d}/error.log warn;

events {{
    worker_connections {connections};
}}

mail {{
    server_name localhost;
    auth_http {auth_http}/auth;
    proxy on;
    proxy_pass_error_message on;
    imap_auth login plain;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;

    server {{
        listen {imap};
        protocol imap;
    }}
    server {{
        listen {imaps} ssl;
        protocol imap;
    }}
    server {{
        listen {starttls};
        protocol imap;
        starttls only;
    }}
    server {{
        listen {pop3};
        protocol pop3;
    }}
}}
"#,
        workers = sizing.workers,
        nofile = sizing.nofile,
        connections = sizing.connections,
        cert = cert.display(),
        key = key.display(),
    )
}
