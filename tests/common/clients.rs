//! Real clients as child processes (Python's imaplib and ssl, curl), each
//! bounded by `timeout(1)` so that a hung session fails the test instead
//! of hanging it.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Seconds any one client run may take.
const CLIENT_SECS: &str = "30";

/// Output of a finished client.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the client succeeded.
    pub fn expect_ok(self, what: &str) -> Run {
        assert!(
            self.ok,
            "{what} failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs a Python script with arguments (`sys.argv[1:]`).
pub fn python(script: &str, args: &[&str]) -> Run {
    let out = Command::new("timeout")
        .args([CLIENT_SECS, "python3", "-c", script])
        .args(args)
        .output()
        .expect("run python3");
    Run::from(out)
}

/// Runs curl with arguments (silent, errors shown).
pub fn curl(args: &[&str]) -> Run {
    let out = Command::new("timeout")
        .args([CLIENT_SECS, "curl", "-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl");
    Run::from(out)
}
