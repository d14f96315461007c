//! A throwaway PostgreSQL cluster on a loopback port: Debian's binaries
//! (/usr/lib/postgresql/<version>/bin, not PATH), `initdb` into a
//! tempdir, then `postgres` with fsync off. PostgreSQL refuses to run as
//! root, so as root it runs as the `postgres` user (Debian's package
//! creates it) through `setpriv`, which execs: the child is the
//! postmaster itself, and signals reach it. Stopped (fast shutdown,
//! clients disconnected) and started again by the tests that need
//! PostgreSQL down; killed on drop.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

/// The newest installed version's bin directory.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (apt-get install postgresql; see .ci/install)")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().expect("no PostgreSQL version with initdb").1
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions (the test crate may use unsafe).
    unsafe { libc::geteuid() == 0 }
}

/// `cmd` as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ]);
        c.arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A role that logs in with a password only.
pub const PASSWORD_ROLE: &str = "ponte_pw";
pub const ROLE_PASSWORD: &str = "Fleet-Pa55word-9f3e";

impl Postgres {
    /// A new cluster, running.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("ponte-pg-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("sock")).expect("socket dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown the cluster directory to postgres");
        }
        let out = as_postgres(&bin.join("initdb"))
            .current_dir(dir.path())
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // One role that must give a password (SCRAM), as production would;
        // everything else trusts loopback. The first matching line wins.
        let hba = dir.path().join("data").join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        std::fs::write(
            &hba,
            format!("host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n{rest}"),
        )
        .expect("write pg_hba.conf");
        let mut pg = Postgres {
            dir,
            bin,
            port: super::net::free_port(),
            child: None,
        };
        pg.start_again();
        let out = Command::new(pg.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!(
                "CREATE ROLE {PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{ROLE_PASSWORD}'"
            ))
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "create the password role: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    /// `postgres://…` for the role that must give [`ROLE_PASSWORD`] (not
    /// in the URL).
    pub fn password_url(&self) -> String {
        format!(
            "postgres://{PASSWORD_ROLE}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// `postgres://…` for ponte's `[state] url`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Starts the stopped server again on the same port and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("log file");
        let child = as_postgres(&self.bin.join("postgres"))
            .current_dir(self.dir.path())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path().join("sock"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "1"])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("postgres exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fast shutdown: clients are disconnected, the server exits.
    pub fn stop(&mut self) {
        self.signal_and_wait(libc::SIGINT, Duration::from_secs(20));
    }

    fn signal_and_wait(&mut self, sig: i32, within: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown: the postmaster takes its backends with it.
        self.signal_and_wait(libc::SIGQUIT, Duration::from_secs(5));
    }
}
