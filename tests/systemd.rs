//! ponte as a systemd service: the notification protocol spoken to a
//! socket standing in for systemd's (`$NOTIFY_SOCKET`: READY, watchdog
//! pings, RELOADING around SIGHUP, STOPPING on SIGTERM), and the unit file
//! checked by `systemd-analyze verify`. The machine's PID 1 is not
//! systemd here, so the unit is not started for real.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::Process;
use common::world::World;

/// Reads notifications until one contains `want`; all of them read.
fn until(sock: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < within {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg.lines().any(|l| l == want);
        seen.push(msg);
        if done {
            return seen;
        }
    }
    panic!("no {want:?} within {within:?}; got {seen:?}");
}

#[test]
fn ponte_tells_systemd_ready_reloading_stopping_and_pings_the_watchdog() {
    let w = World::backends_only("");
    let path = w.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let (mut p, _addrs) = Process::start_with_env(
        &w,
        &[
            ("NOTIFY_SOCKET", path.to_str().expect("utf-8 path")),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let first = until(&sock, "READY=1", Duration::from_secs(5));
    assert!(
        first.last().unwrap().contains("STATUS=serving"),
        "{first:?}"
    );
    // Half the watchdog interval: two pings well within a second.
    let pings = until(&sock, "WATCHDOG=1", Duration::from_secs(2));
    assert!(pings.len() <= 2, "{pings:?}");
    until(&sock, "WATCHDOG=1", Duration::from_secs(2));

    p.signal(libc::SIGHUP);
    let reload = until(&sock, "RELOADING=1", Duration::from_secs(5));
    let msg = reload.last().unwrap();
    assert!(
        msg.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "systemd needs the time with RELOADING: {msg:?}"
    );
    let done = until(&sock, "READY=1", Duration::from_secs(5));
    assert!(done.last().unwrap().contains("reloaded"), "{done:?}");

    p.terminate();
    until(&sock, "STOPPING=1", Duration::from_secs(5));
    let status = p.wait(Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let Some(bin) = option_env!("CARGO_BIN_EXE_ponte") else {
        panic!("the ponte binary is known to tests only");
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/ponte.service"),
    )
    .expect("read unit");
    // verify checks that the executables exist: point them at this build.
    let unit = unit.replace("/usr/local/bin/ponte", bin);
    let path = dir.path().join("ponte.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze (package systemd)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}
