//! The control plane end to end: the admin API flips routes on a running
//! ponte in front of real backends; flips reach open sessions at once;
//! schedules fire on time, also across a restart; imports are all or
//! nothing; state and audit are durable.

mod common;

use std::time::{Duration, Instant};

use common::admin::Api;
use common::net::LineConn;
use common::world::{marker, World, ALICE, BOB, CAROL, DAVE};
use serde_json::{json, Value};

fn login(c: &mut LineConn<std::net::TcpStream>, user: &str, pw: &str) -> common::net::Tagged {
    c.read_line();
    c.imap(
        "a",
        &format!("LOGIN \"{user}\" \"{}\"", pw.replace('"', "\\\"")),
    )
}

fn first_subject(w: &World, user: &str, pw: &str) -> String {
    let mut c = LineConn::tcp(w.addr("imap"));
    let r = login(&mut c, user, pw);
    assert!(r.is_ok(), "login {user}: {}", r.status);
    c.imap("b", "EXAMINE INBOX");
    c.imap("c", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .text()
}

#[test]
fn api_requires_the_token() {
    let w = World::start();
    let mut api = Api::new(w.addr("admin"));
    api.token = None;
    assert_eq!(api.get("/api/status").0, 401);
    api.token = Some("not-the-token-at-all".into());
    assert_eq!(api.get("/api/status").0, 401);
    assert_eq!(api.get("/healthz").0, 200, "health needs no token");
    let (code, body) = Api::new(w.addr("admin")).get("/api/status");
    assert_eq!(code, 200);
    assert_eq!(body["domains"][1]["name"], "pec.example");
    assert_eq!(
        body["domains"][1]["mailboxes"]["migrated"], 1,
        "bob from the seed: {body}"
    );
}

#[test]
fn domain_flip_moves_an_idle_session_off_legacy_at_once() {
    let w = World::start();
    let mut c = LineConn::tcp(w.addr("imap"));
    assert!(login(&mut c, ALICE.address, ALICE.legacy_password.unwrap()).is_ok());
    assert!(c.imap("b", "SELECT INBOX").is_ok());
    c.send("c IDLE");
    assert!(c.read_line().starts_with('+'));
    // dave has no mailbox on the new backend, but the flip still moves him.
    let mut d = LineConn::tcp(w.addr("imap"));
    assert!(login(&mut d, DAVE.address, DAVE.legacy_password.unwrap()).is_ok());

    let started = Instant::now();
    let (code, body) = Api::new(w.addr("admin")).send_json(
        "PUT",
        "/api/domains/pec.example",
        &json!({"state": "migrated"}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (
            body["old"].as_str(),
            body["new"].as_str(),
            body["kicked"].as_u64()
        ),
        (Some("legacy"), Some("migrated"), Some(2))
    );
    let bye = c.read_line();
    assert!(bye.starts_with("* BYE [ALERT]"), "{bye}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The client reconnects to the same address and lands on the new store.
    let s = first_subject(&w, ALICE.address, ALICE.new_password.unwrap());
    assert!(s.contains(&marker("new", ALICE.address)), "{s}");
    // bob was migrated already: the flip did not touch his route.
    let s = first_subject(&w, BOB.address, BOB.new_password.unwrap());
    assert!(s.contains(&marker("new", BOB.address)), "{s}");
}

#[test]
fn mailbox_flip_kicks_only_that_mailbox_and_blackout_is_read_only_with_an_alert() {
    let w = World::start();
    let mut a = LineConn::tcp(w.addr("imap"));
    assert!(login(&mut a, ALICE.address, ALICE.legacy_password.unwrap()).is_ok());
    let mut d = LineConn::tcp(w.addr("imap"));
    assert!(login(&mut d, DAVE.address, DAVE.legacy_password.unwrap()).is_ok());
    let api = Api::new(w.addr("admin"));
    let (code, body) = api.send_json(
        "PUT",
        "/api/mailboxes/Alice@PEC.example",
        &json!({"state": "blackout"}),
    );
    assert_eq!((code, body["kicked"].as_u64()), (200, Some(1)), "{body}");
    assert!(a.read_line().starts_with("* BYE"));
    assert!(d.imap("b", "NOOP").is_ok(), "dave's session is untouched");
    // In blackout the live login gets the legacy box read-only, with an alert.
    let mut c = LineConn::tcp(w.addr("imap"));
    let r = login(&mut c, ALICE.address, ALICE.legacy_password.unwrap());
    assert!(r.is_ok() && r.status.contains("read-only"), "{}", r.status);
    assert!(r.text().contains("* OK [ALERT]"), "{}", r.text());
    assert!(c.imap("b", "SELECT INBOX").status.contains("READ-ONLY"));
    assert!(c
        .imap("c", "STORE 1 +FLAGS (\\Deleted)")
        .status
        .starts_with("NO [NOPERM]"));
    let (_, show) = api.get("/api/mailboxes/alice@pec.example");
    assert_eq!(
        (show["state"].as_str(), show["source"].as_str()),
        (Some("blackout"), Some("mailbox"))
    );
    // Removing the override returns alice to her domain's state.
    let (code, _) = api.call("DELETE", "/api/mailboxes/alice@pec.example", None);
    assert_eq!(code, 200);
    assert!(
        first_subject(&w, ALICE.address, ALICE.legacy_password.unwrap())
            .contains(&marker("legacy", ALICE.address))
    );
    // Unknown domains and states are refused.
    assert_eq!(
        api.send_json(
            "PUT",
            "/api/mailboxes/x@nowhere.example",
            &json!({"state": "migrated"})
        )
        .0,
        404
    );
    assert_eq!(
        api.send_json(
            "PUT",
            "/api/domains/pec.example",
            &json!({"state": "sideways"})
        )
        .0,
        400
    );
}

#[test]
fn scheduled_flip_happens_on_time_and_survives_a_restart() {
    let mut w = World::start();
    let api = Api::new(w.addr("admin"));
    let at = |secs: i64| {
        let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let (code, body) = api.send_json(
        "POST",
        "/api/schedules",
        &json!({"domain": "pec.example", "state": "migrated", "at": at(2)}),
    );
    assert_eq!(code, 201, "{body}");
    let mut c = LineConn::tcp(w.addr("imap"));
    assert!(login(&mut c, DAVE.address, DAVE.legacy_password.unwrap()).is_ok());
    c.send("b IDLE");
    // Kicked when the schedule fires, about 2 s from now.
    let started = Instant::now();
    loop {
        let line = c.read_line();
        if line.starts_with("* BYE") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no BYE: {line}");
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(api.get("/api/schedules").1["schedules"], json!([]));

    // A schedule due while ponte is down is carried out when it starts.
    let (code, _) = api.send_json(
        "POST",
        "/api/schedules",
        &json!({"mailbox": "alice@pec.example", "state": "legacy", "at": at(2)}),
    );
    assert_eq!(code, 201);
    w.ponte.take().unwrap().stop();
    std::thread::sleep(Duration::from_secs(3));
    w.restart();
    let api = Api::new(w.addr("admin"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while api.get("/api/schedules").1["schedules"] != json!([]) {
        assert!(
            Instant::now() < deadline,
            "schedule not applied after restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, show) = api.get("/api/mailboxes/alice@pec.example");
    assert_eq!(show["route"], "legacy", "{show}");
    // The audit log survived the restart and names who did what.
    let (_, audit) = api.get("/api/audit?limit=100");
    let entries = audit["audit"].as_array().unwrap();
    let flip = entries
        .iter()
        .find(|e| e["what"] == "domain pec.example" && e["new"] == "migrated")
        .expect("domain flip audited");
    assert!(
        flip["who"]
            .as_str()
            .unwrap()
            .starts_with("schedule 1 by ops"),
        "{flip}"
    );
    assert!(entries
        .iter()
        .any(|e| e["what"] == "mailbox alice@pec.example"));
}

#[test]
fn import_is_all_or_nothing_and_fast() {
    let w = World::start();
    let api = Api::new(w.addr("admin"));
    let bad = "address,state\nalice@pec.example,migrated\nbroken,migrated\ndave@pec.example,gone\n";
    let (code, body) = api.call("POST", "/api/import", Some(("text/csv", bad)));
    assert_eq!(code, 400, "{body}");
    let details: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(details.len(), 2, "{body}");
    assert!(
        details[0].starts_with("line 3:") && details[1].starts_with("line 4:"),
        "{details:?}"
    );
    assert_eq!(
        api.get("/api/mailboxes/alice@pec.example").1["state"],
        "legacy",
        "nothing applied"
    );

    let mut csv = String::from("address,state\n");
    for i in 0..100_000 {
        csv.push_str(&format!("user{i}@pec.example,migrated\n"));
    }
    csv.push_str("carol@comune.example,legacy\n");
    let file = w.dir.path().join("big.csv");
    std::fs::write(&file, &csv).unwrap();
    let started = Instant::now();
    let (code, body) = api.call(
        "POST",
        "/api/import",
        Some(("text/csv", &format!("@{}", file.display()))),
    );
    let took = started.elapsed();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["rows"], 100_001);
    println!("imported 100,001 rows in {took:?}");
    let (_, status) = api.get("/api/status");
    assert_eq!(
        status["domains"][1]["mailboxes"]["migrated"], 100_001,
        "bob + 100,000"
    );
    // carol's override to legacy (she has no legacy mailbox) is in force.
    let (_, show) = api.get("/api/mailboxes/carol@comune.example");
    assert_eq!(
        (show["route"].as_str(), show["source"].as_str()),
        (Some("legacy"), Some("mailbox"))
    );
}

#[test]
fn metrics_count_sessions_and_logins() {
    let w = World::start();
    let mut c = LineConn::tcp(w.addr("imap"));
    assert!(login(&mut c, CAROL.address, CAROL.new_password.unwrap()).is_ok());
    let mut c2 = LineConn::tcp(w.addr("imap"));
    assert!(!login(&mut c2, "nobody@nowhere.example", "x").is_ok());
    let (code, text) = Api::new(w.addr("admin")).get("/metrics");
    assert_eq!(code, 200);
    let text = text.as_str().unwrap_or_default().to_string();
    for needle in [
        "ponte_logins_total",
        "outcome=\"ok\"",
        "outcome=\"unknown_domain\"",
        "ponte_sessions_logged_in",
        "ponte_backend_login_seconds",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn mailbox_tempmail_deadline_overrides_the_domains() {
    let w = World::start();
    let api = Api::new(w.addr("admin"));
    // dave has no override yet: the domain's deadline applies (none in the test config).
    assert_eq!(
        api.get("/api/mailboxes/dave@pec.example").1["tempmail_until"],
        Value::Null
    );
    let body = json!({"until": "2026-06-28T09:00:00+02:00"});
    let (code, r) = api.send_json("PUT", "/api/mailboxes/dave@pec.example/tempmail", &body);
    assert_eq!(code, 200, "{r}");
    let (_, show) = api.get("/api/mailboxes/dave@pec.example");
    assert_eq!(show["tempmail_until"], "2026-06-28T07:00:00Z");
    assert_eq!(
        (show["state"].as_str(), show["route"].as_str()),
        (Some("legacy"), Some("legacy")),
        "state unchanged"
    );
    // A later state change keeps the deadline; clearing it is audited.
    api.send_json(
        "PUT",
        "/api/mailboxes/dave@pec.example",
        &json!({"state": "migrated"}),
    );
    assert_eq!(
        api.get("/api/mailboxes/dave@pec.example").1["tempmail_until"],
        "2026-06-28T07:00:00Z"
    );
    api.send_json(
        "PUT",
        "/api/mailboxes/dave@pec.example/tempmail",
        &json!({"until": null}),
    );
    assert_eq!(
        api.get("/api/mailboxes/dave@pec.example").1["tempmail_until"],
        Value::Null
    );
    let (_, audit) = api.get("/api/audit?limit=3");
    let last = &audit["audit"][2];
    assert_eq!(
        (last["old"].as_str(), last["new"].as_str()),
        (Some("tempmail until 2026-06-28T07:00:00Z"), None),
        "{audit}"
    );
    assert_eq!(
        api.send_json(
            "PUT",
            "/api/mailboxes/dave@pec.example/tempmail",
            &json!({"until": "soon"})
        )
        .0,
        400
    );
}

#[test]
fn a_kick_closes_the_mailboxs_sessions_and_is_audited_under_the_token_name() {
    let w = World::start();
    let mut c = LineConn::tcp(w.addr("imap"));
    assert!(login(&mut c, ALICE.address, ALICE.legacy_password.unwrap()).is_ok());
    let api = Api::new(w.addr("admin"));
    let (code, body) = api.send_json(
        "POST",
        "/api/kick",
        &json!({"mailbox": "Alice@PEC.example", "reason": "Maintenance, reconnect."}),
    );
    assert_eq!((code, body["kicked"].as_u64()), (200, Some(1)), "{body}");
    let bye = c.read_line();
    assert!(bye.starts_with("* BYE [ALERT] Maintenance"), "{bye}");
    let (_, audit) = api.get("/api/audit?limit=5");
    let last = audit["audit"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            last["who"].as_str(),
            last["what"].as_str(),
            last["old"].as_str(),
            last["new"].as_str()
        ),
        (
            Some("ops"),
            Some("sessions of mailbox alice@pec.example"),
            Some("1 open session"),
            Some("closed")
        ),
        "{audit}"
    );
    // What is no address or domain is refused, never audited.
    let long = format!("{}@pec.example", "a".repeat(9000));
    for bad in [
        json!({"mailbox": long}),
        json!({"mailbox": "alice"}),
        json!({"domain": "a b"}),
    ] {
        let (code, body) = api.send_json("POST", "/api/kick", &bad);
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let (_, after) = api.get("/api/audit?limit=5");
    assert_eq!(after["audit"], audit["audit"], "nothing audited");
}
