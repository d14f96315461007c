//! `ponte ctl` end to end: the real binary against the real admin API of a
//! running ponte in front of real Dovecot backends. A flip made with the
//! command line reaches open sessions and new logins; errors, JSON output,
//! the audit trail and schedules are what scripts see.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::net::LineConn;
use common::world::{marker, World, ALICE, DAVE};
use serde_json::Value;

/// Bound on one `ponte ctl` run.
const CTL_SECS: &str = "20";

/// Runs `ponte ctl --url <admin> --token-file <world>/admin.token ARGS`.
fn ctl(w: &World, args: &[&str]) -> Output {
    let url = format!("http://{}", w.addr("admin"));
    let token = w.dir.path().join("admin.token");
    Command::new("timeout")
        .arg(CTL_SECS)
        .arg(env!("CARGO_BIN_EXE_ponte"))
        .arg("ctl")
        .args(["--url", &url, "--token-file"])
        .arg(&token)
        .args(args)
        .env_remove("PONTE_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run ponte ctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

/// `ctl --json ARGS`, exit 0, parsed.
fn ctl_json(w: &World, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(w, &all);
    assert_exit(&out, 0);
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("ctl {args:?} --json is not JSON ({e}):\n{}", stdout(&out)))
}

fn login(c: &mut LineConn<TcpStream>, user: &str, pw: &str) {
    let greeting = c.read_line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let r = c.imap("a", &format!("LOGIN \"{user}\" \"{pw}\""));
    assert!(r.status.starts_with("OK"), "login {user}: {}", r.status);
}

/// A logged-in session sitting in IDLE on its INBOX.
fn idling(w: &World, user: &str, pw: &str) -> LineConn<TcpStream> {
    let mut c = LineConn::tcp(w.addr("imap"));
    login(&mut c, user, pw);
    assert!(c.imap("b", "SELECT INBOX").is_ok());
    c.send("c IDLE");
    let go = c.read_line();
    assert!(go.starts_with('+'), "{go}");
    c
}

/// Reads until `* BYE`, failing after `within`; returns the BYE line and
/// when it came.
fn wait_bye(c: &mut LineConn<TcpStream>, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    c.get_mut()
        .set_read_timeout(Some(within))
        .expect("read timeout");
    loop {
        let line = c
            .try_read_line()
            .unwrap_or_else(|e| panic!("no BYE within {within:?}: {e}"));
        if line.starts_with("* BYE") {
            return (line, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "no BYE within {within:?}; last line {line:?}"
        );
    }
}

/// The subject of the first INBOX message, logged in as `user`.
fn first_subject(w: &World, user: &str, pw: &str) -> String {
    let mut c = LineConn::tcp(w.addr("imap"));
    login(&mut c, user, pw);
    assert!(c.imap("b", "EXAMINE INBOX").is_ok());
    let r = c.imap("c", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
    assert!(r.is_ok(), "{}", r.status);
    c.imap("z", "LOGOUT");
    r.text()
}

fn domain_state(status: &Value, name: &str) -> Option<String> {
    status["domains"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == name)
        .and_then(|d| d["state"].as_str())
        .map(str::to_string)
}

fn rfc3339_in(secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format time")
}

#[test]
fn domain_set_moves_an_idle_session_and_new_logins_to_the_new_store() {
    let w = World::start();
    let mut c = idling(&w, ALICE.address, ALICE.legacy_password.unwrap());

    let started = Instant::now();
    let out = ctl(&w, &["domain", "set", "pec.example", "migrated"]);
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "pec.example: legacy -> migrated (1 session closed)\n"
    );
    assert_eq!(stderr(&out), "");
    let (bye, _) = wait_bye(&mut c, Duration::from_secs(2));
    let took = started.elapsed();
    assert!(bye.starts_with("* BYE [ALERT]"), "{bye}");
    // The ctl process start is included: the BYE itself is immediate.
    assert!(took < Duration::from_secs(1), "BYE after {took:?}");

    // The client reconnects and lands on the new store, with the password
    // the new provider gave her.
    let s = first_subject(&w, ALICE.address, ALICE.new_password.unwrap());
    assert!(s.contains(&marker("new", ALICE.address)), "{s}");
    // The legacy password no longer opens anything.
    let mut c = LineConn::tcp(w.addr("imap"));
    c.read_line();
    let r = c.imap(
        "a",
        &format!(
            "LOGIN \"{}\" \"{}\"",
            ALICE.address,
            ALICE.legacy_password.unwrap()
        ),
    );
    assert!(
        r.status.starts_with("NO [AUTHENTICATIONFAILED]"),
        "{}",
        r.status
    );
    // The same flip again closes nothing and says so.
    let out = ctl(&w, &["domain", "set", "pec.example", "migrated"]);
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "pec.example: migrated -> migrated (0 sessions closed)\n"
    );
}

#[test]
fn import_errors_status_json_and_audit() {
    let w = World::start();
    let out = ctl(&w, &["domain", "set", "pec.example", "migrated"]);
    assert_exit(&out, 0);

    // One bad row among good ones: nothing is applied, the line is named.
    let csv = w.dir.path().join("rows.csv");
    std::fs::write(
        &csv,
        "address,state\nalice@pec.example,excluded\ndave@pec.example,vanished\n",
    )
    .expect("write csv");
    let out = ctl(&w, &["import", path(&csv)]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() == 2
            && lines[0].starts_with("ponte ctl: ")
            && lines[1].starts_with("line 3:")
            && lines[1].contains("vanished"),
        "{err}"
    );
    assert_eq!(stdout(&out), "");
    let show = ctl_json(&w, &["mailbox", "show", ALICE.address]);
    assert_eq!(show["state"], "migrated", "nothing applied: {show}");
    assert_eq!(show["source"], "domain", "{show}");

    // A good file goes in whole.
    std::fs::write(&csv, "address,state\ndave@pec.example,legacy\n").expect("write csv");
    let out = ctl(&w, &["import", path(&csv)]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).starts_with("1 row, 1 changed"),
        "{}",
        stdout(&out)
    );

    // Status as JSON for scripts.
    let status = ctl_json(&w, &["status"]);
    assert_eq!(
        domain_state(&status, "pec.example").as_deref(),
        Some("migrated"),
        "{status}"
    );
    assert_eq!(
        domain_state(&status, "comune.example").as_deref(),
        Some("migrated"),
        "{status}"
    );
    let pec = status["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "pec.example")
        .unwrap();
    assert_eq!(pec["set_by"], "ops", "{pec}");
    // bob from the seed file, dave from the import.
    assert_eq!(pec["mailboxes"]["migrated"], 1, "{pec}");
    assert_eq!(pec["mailboxes"]["legacy"], 1, "{pec}");
    // dave's override holds against his domain's flip: he is on legacy.
    let s = first_subject(&w, DAVE.address, DAVE.legacy_password.unwrap());
    assert!(s.contains(&marker("legacy", DAVE.address)), "{s}");

    // The audit trail names the token that flipped the domain.
    let out = ctl(&w, &["audit"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.starts_with("SEQ ") && text.contains("WHO"),
        "no table header:\n{text}"
    );
    let flip = text
        .lines()
        .find(|l| l.contains("domain pec.example") && l.contains("legacy -> migrated"))
        .unwrap_or_else(|| panic!("flip not in the audit:\n{text}"));
    assert!(flip.split_whitespace().any(|f| f == "ops"), "{flip}");
    assert!(
        text.lines()
            .any(|l| l.contains("mailbox dave@pec.example") && l.contains("ops")),
        "import not in the audit:\n{text}"
    );
    let audit = ctl_json(&w, &["audit", "--limit", "100"]);
    let entries = audit["audit"].as_array().expect("audit list");
    assert!(
        entries.iter().any(|e| e["who"] == "ops"
            && e["what"] == "domain pec.example"
            && e["old"] == "legacy"
            && e["new"] == "migrated"),
        "{audit}"
    );
}

#[test]
fn scheduled_flip_from_the_command_line_fires_on_time() {
    let w = World::start();
    let mut c = idling(&w, DAVE.address, DAVE.legacy_password.unwrap());
    let at = rfc3339_in(2);
    let out = ctl(
        &w,
        &[
            "schedule",
            "add",
            "--domain",
            "pec.example",
            "migrated",
            &at,
        ],
    );
    let scheduled = Instant::now();
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.starts_with("schedule ") && text.contains(": domain pec.example -> migrated at "),
        "{text}"
    );
    // Pending until it fires.
    let list = ctl_json(&w, &["schedule", "list"]);
    let pending = list["schedules"].as_array().expect("schedules");
    assert_eq!(pending.len(), 1, "{list}");
    assert_eq!(pending[0]["state"], "migrated", "{list}");
    assert_eq!(pending[0]["by"], "ops", "{list}");
    let table = ctl(&w, &["schedule", "list"]);
    assert_exit(&table, 0);
    assert!(
        stdout(&table).contains("domain pec.example"),
        "{}",
        stdout(&table)
    );

    let (bye, _) = wait_bye(&mut c, Duration::from_secs(5));
    let took = scheduled.elapsed();
    assert!(bye.starts_with("* BYE [ALERT]"), "{bye}");
    assert!(took < Duration::from_secs(4), "BYE after {took:?}");
    assert!(
        took > Duration::from_millis(500),
        "kicked before the schedule was due ({took:?})"
    );

    let list = ctl_json(&w, &["schedule", "list"]);
    assert_eq!(list["schedules"], serde_json::json!([]), "{list}");
    let status = ctl_json(&w, &["status"]);
    assert_eq!(
        domain_state(&status, "pec.example").as_deref(),
        Some("migrated"),
        "{status}"
    );
    let audit = ctl_json(&w, &["audit"]);
    let entries = audit["audit"].as_array().expect("audit list");
    assert!(
        entries.iter().any(|e| e["what"] == "domain pec.example"
            && e["new"] == "migrated"
            && e["who"].as_str().is_some_and(|who| who.contains("by ops"))),
        "{audit}"
    );
    // A new login of alice goes to the new store.
    let s = first_subject(&w, ALICE.address, ALICE.new_password.unwrap());
    assert!(s.contains(&marker("new", ALICE.address)), "{s}");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
