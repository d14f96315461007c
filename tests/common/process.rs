//! The `ponte` binary run as an operator runs it: `serve --config` on the
//! world's configuration file, logs on stderr into a file, signals for
//! shutdown (SIGTERM) and reload (SIGHUP). Killed on drop.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::net::wait_greeting;
use super::world::World;

pub struct Process {
    child: Child,
    log: PathBuf,
    /// The configuration file it serves.
    pub config: PathBuf,
}

impl Process {
    /// Starts `ponte serve` and waits for the `imap` listener's greeting.
    /// The ports are picked free beforehand, so another process may take
    /// one first: then it tries again with new ones.
    pub fn start(w: &World) -> (Process, BTreeMap<String, SocketAddr>) {
        Self::start_with_env(w, &[])
    }

    /// [`Process::start`] with extra environment variables.
    pub fn start_with_env(
        w: &World,
        env: &[(&str, &str)],
    ) -> (Process, BTreeMap<String, SocketAddr>) {
        for _ in 0..4 {
            match Self::try_start(w, env) {
                Ok(started) => return started,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("ponte did not start:\n{log}"),
            }
        }
        Self::try_start(w, env).unwrap_or_else(|log| panic!("ponte did not start:\n{log}"))
    }

    fn try_start(
        w: &World,
        env: &[(&str, &str)],
    ) -> Result<(Process, BTreeMap<String, SocketAddr>), String> {
        let (config, addrs) = w.config_file();
        let log = w.dir.path().join("ponte.log");
        // Set by cargo for tests and benches, not for examples (the demo).
        let Some(bin) = option_env!("CARGO_BIN_EXE_ponte") else {
            panic!("the ponte binary is known to tests and benches only");
        };
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .env("PONTE_LOG", "trace")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn ponte");
        let mut p = Process { child, log, config };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if wait_greeting(addrs["imap"], "* OK", Duration::from_millis(200)).is_ok() {
                return Ok((p, addrs));
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("exited with {status}\n{}", p.log()));
            }
        }
        Err(format!("no greeting within 10 s\n{}", p.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until it contains `needle` (5 s at most).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // The test crate may use unsafe; ponte itself forbids it.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits for the exit; panics after `within`.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ponte did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
