//! The inbound queue from the admin's side: `ponte ctl queue` (the real
//! binary) and the admin API against a running ponte whose inbound
//! listener spools mail for a domain in blackout, in front of real
//! Dovecot backends. Counts, hold, release, delete, retry, the audit
//! trail, the spool gauges on `/metrics`, and the refusals.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::admin::Api;
use common::dovecot::Dovecot;
use common::net::LineConn;
use common::ponte::Ponte;
use common::world::{World, ALICE, BOB};
use serde_json::{json, Value};

const SENDER: &str = "mittente@sender.example";

/// Runs `ponte ctl --url <admin> --token-file <world>/admin.token ARGS`.
fn ctl(w: &World, args: &[&str]) -> Output {
    let url = format!("http://{}", w.addr("admin"));
    Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_ponte"))
        .arg("ctl")
        .args(["--url", &url, "--token-file"])
        .arg(w.dir.path().join("admin.token"))
        .args(args)
        .env_remove("PONTE_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run ponte ctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `ctl ARGS`, which must exit with `code`; its standard output.
#[track_caller]
fn ctl_ok(w: &World, args: &[&str], code: i32) -> String {
    let o = ctl(w, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(code),
        "ctl {args:?}\nstdout:\n{}\nstderr:\n{err}",
        stdout(&o)
    );
    if code == 0 {
        stdout(&o)
    } else {
        err.into_owned()
    }
}

fn ctl_json(w: &World, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl_ok(w, &all, 0);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

/// Sends message `tag` to `rcpt` through the inbound listener over plain
/// SMTP; the final reply must be 250.
fn send(w: &World, tag: &str, rcpt: &str) {
    let mut c = LineConn::tcp(w.addr("inbound"));
    assert!(c.read_line().starts_with("220 "));
    for (line, want) in [
        ("HELO mx.sender.example".to_string(), "250 "),
        (format!("MAIL FROM:<{SENDER}>"), "250 "),
        (format!("RCPT TO:<{rcpt}>"), "250 "),
        ("DATA".to_string(), "354 "),
    ] {
        c.send(&line);
        let reply = c.read_line();
        assert!(reply.starts_with(want), "{line}: {reply}");
    }
    c.send_raw(
        format!(
            "From: {SENDER}\r\nTo: {rcpt}\r\nSubject: queue test {tag}\r\n\
             Message-ID: <{tag}@sender.example>\r\n\r\nbody of {tag}\r\n.\r\n"
        )
        .as_bytes(),
    );
    let reply = c.read_line();
    assert!(reply.starts_with("250 "), "{tag}: {reply}");
    c.send("QUIT");
}

/// Whether message `tag` is in `user`'s INBOX on `d` (new/ or cur/).
fn stored(d: &Dovecot, user: &str, tag: &str) -> bool {
    let needle = format!("<{tag}@sender.example>");
    ["new", "cur"].iter().any(|sub| {
        std::fs::read_dir(d.maildir(user).join(sub))
            .map(|dir| {
                dir.flatten().any(|f| {
                    let bytes = std::fs::read(f.path()).unwrap_or_default();
                    String::from_utf8_lossy(&bytes).contains(&needle)
                })
            })
            .unwrap_or(false)
    })
}

/// Waits for `cond`; panics with `what` after `within`.
#[track_caller]
fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Committed spool entries (envelope files).
fn spooled(w: &World) -> Vec<PathBuf> {
    std::fs::read_dir(w.dir.path().join("spool").join("env"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The queue id of message `tag`, from `ponte ctl --json queue list`.
fn id_of(w: &World, tag: &str) -> String {
    let list = ctl_json(w, &["queue", "list"]);
    let mid = format!("{tag}@sender.example");
    list["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["message_id"] == mid.as_str()))
        .and_then(|m| m["id"].as_str())
        .unwrap_or_else(|| panic!("{tag} not in the queue: {list}"))
        .to_string()
}

/// The line of `text` that starts with `prefix`.
#[track_caller]
fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{text}"))
}

fn columns(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn held_mail_waits_while_the_rest_is_delivered_and_every_admin_action_is_audited() {
    let w = World::start();
    ctl_ok(&w, &["domain", "set", "pec.example", "blackout"], 0);
    // bob follows the domain again (the seed migrated him).
    ctl_ok(&w, &["mailbox", "rm", BOB.address], 0);
    send(&w, "q1", ALICE.address);
    send(&w, "q2", BOB.address);
    send(&w, "q3", ALICE.address);
    assert_eq!(spooled(&w).len(), 3);

    let counts = ctl_ok(&w, &["queue"], 0);
    let pec = columns(line(&counts, "pec.example"));
    assert_eq!(pec[1], "3", "{counts}");
    assert!(line(&counts, "total: 3 messages").contains("0 held"));
    assert!(!counts.contains("alice@"), "mailboxes only on request");
    let counts = ctl_ok(&w, &["queue", "--mailboxes"], 0);
    assert_eq!(columns(line(&counts, "alice@pec.example"))[1], "2");
    assert_eq!(columns(line(&counts, "bob@pec.example"))[1], "1");
    let json = ctl_json(&w, &["queue", "--mailboxes"]);
    assert_eq!(json["total"]["messages"], 3);
    assert_eq!(json["domains"][0]["domain"], "pec.example");
    assert!(json["domains"][0]["oldest"].as_str().is_some(), "{json}");
    assert!(json["domains"][0]["oldest_age_seconds"].as_i64() >= Some(0));

    let q2 = id_of(&w, "q2");
    let list = ctl_ok(&w, &["queue", "list", "--mailbox", BOB.address], 0);
    assert_eq!(list.lines().count(), 2, "header and bob's one:\n{list}");
    assert!(
        line(&list, &q2).contains("bob@pec.example (pending)"),
        "{list}"
    );
    let shown = ctl_ok(&w, &["queue", "show", &q2], 0);
    for needle in [
        "subject     queue test q2",
        "Message-ID: <q2@sender.example>",
        "Received: from mx.sender.example",
    ] {
        assert!(shown.contains(needle), "{needle} in:\n{shown}");
    }
    assert!(!shown.contains("body of q2"), "never the body:\n{shown}");
    assert_eq!(
        columns(line(&shown, "bob@pec.example"))[..3],
        ["bob@pec.example", "pending", "0"]
    );

    // bob's message is held; the flip delivers alice's two and not it.
    assert_eq!(
        ctl_ok(&w, &["queue", "hold", &q2], 0),
        format!("{q2}: held\n")
    );
    assert_eq!(
        ctl_ok(&w, &["queue", "hold", &q2], 0),
        format!("{q2}: already held\n")
    );
    assert!(line(&ctl_ok(&w, &["queue"], 0), "total: 3").contains("1 held"));
    ctl_ok(&w, &["domain", "set", "pec.example", "migrated"], 0);
    for tag in ["q1", "q3"] {
        wait_for(tag, Duration::from_secs(10), || {
            stored(&w.new, ALICE.address, tag)
        });
    }
    wait_for("alice's two gone", Duration::from_secs(5), || {
        spooled(&w).len() == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!stored(&w.new, BOB.address, "q2"), "held mail stays");
    assert_eq!(id_of(&w, "q2"), q2);

    assert_eq!(
        ctl_ok(&w, &["queue", "release", &q2], 0),
        format!("{q2}: released\n")
    );
    wait_for("q2 after release", Duration::from_secs(10), || {
        stored(&w.new, BOB.address, "q2")
    });
    wait_for("empty queue", Duration::from_secs(5), || {
        spooled(&w).is_empty()
    });
    assert!(ctl_ok(&w, &["queue"], 0).starts_with("total: 0 messages"));

    // One more, spooled in blackout, deleted before the flip: never delivered.
    ctl_ok(&w, &["domain", "set", "pec.example", "blackout"], 0);
    send(&w, "q4", ALICE.address);
    let q4 = id_of(&w, "q4");
    let out = ctl_ok(&w, &["queue", "delete", &q4], 0);
    assert_eq!(
        out,
        format!(
            "{q4}: deleted (from {SENDER} to {}; 1 undelivered)\n",
            ALICE.address
        )
    );
    assert!(spooled(&w).is_empty());
    let err = ctl_ok(&w, &["queue", "show", &q4], 1);
    assert!(
        err.contains(&format!("no message {q4} in the queue")),
        "{err}"
    );
    ctl_ok(&w, &["domain", "set", "pec.example", "migrated"], 0);
    std::thread::sleep(Duration::from_millis(700));
    assert!(!stored(&w.new, ALICE.address, "q4"));

    let audit = ctl_ok(&w, &["audit", "--limit", "20"], 0);
    let deleted = format!("from {SENDER} to {} -> -", ALICE.address);
    // Once each: the second hold changed nothing and is not audited.
    for (id, change) in [
        (&q2, "queued -> held"),
        (&q2, "held -> queued"),
        (&q4, deleted.as_str()),
    ] {
        assert_eq!(audited(&audit, id, change), 1, "{change} in:\n{audit}");
    }
}

/// How many rows of `ponte ctl audit` say that `ops` made `change` to
/// queue message `id`.
fn audited(audit: &str, id: &str, change: &str) -> usize {
    let what = format!("queue message {id}");
    audit
        .lines()
        .map(columns)
        .filter(|c| c.len() == 5 && c[2] == "ops" && c[3] == what && c[4] == change)
        .count()
}

/// The world's configuration plus a backend whose LMTP port refuses
/// connections, for temporary delivery failures.
fn config_with_a_down_backend(w: &World) -> String {
    let port = common::net::free_port();
    format!(
        "{}\n[backend.down]\ninbound = \"lmtp://127.0.0.1:{port}\"\n",
        w.config()
    )
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

fn scrape(api: &Api) -> String {
    let (code, text) = api.get("/metrics");
    assert_eq!(code, 200);
    text.as_str().unwrap_or_default().to_string()
}

#[test]
fn retry_skips_the_backoff_gauges_follow_the_queue_and_bad_requests_are_refused() {
    let mut w = World::backends_only("");
    w.ponte = Some(Ponte::start(&config_with_a_down_backend(&w)));
    let api = Api::new(w.addr("admin"));
    let set = |body: Value| {
        let (code, b) = api.send_json("PUT", "/api/mailboxes/alice@pec.example", &body);
        assert_eq!(code, 200, "{b}");
    };
    set(json!({"state": "blackout"}));
    send(&w, "r1", ALICE.address);
    let (code, list) = api.get("/api/queue/messages");
    assert_eq!(code, 200, "{list}");
    let id = list["messages"][0]["id"].as_str().expect("id").to_string();
    let size = list["messages"][0]["size"].as_f64().expect("size");

    let m = scrape(&api);
    assert_eq!(metric(&m, "ponte_spool_messages"), 1.0);
    assert_eq!(metric(&m, "ponte_spool_bytes"), size);
    assert_eq!(metric(&m, "ponte_spool_held_messages"), 0.0);
    assert!(metric(&m, "ponte_spool_oldest_age_seconds") < 60.0);
    let (code, _) = api.call("POST", &format!("/api/queue/{id}/hold"), None);
    assert_eq!(code, 200);
    assert_eq!(metric(&scrape(&api), "ponte_spool_held_messages"), 1.0);
    let (code, b) = api.call("POST", &format!("/api/queue/{id}/release"), None);
    assert_eq!((code, &b["changed"]), (200, &json!(true)));

    // The backend is down: a temporary failure, retried after a backoff.
    set(json!({"state": "migrated", "backend": "down"}));
    let rcpt = || api.get(&format!("/api/queue/{id}")).1["recipients"][0].clone();
    wait_for("a deferred attempt", Duration::from_secs(10), || {
        rcpt()["status"] == "deferred"
    });
    let r = rcpt();
    assert_eq!(r["attempts"], 1, "{r}");
    assert!(
        r["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{r}"
    );
    // Back on the new backend, the message still sits out its backoff...
    set(json!({"state": "migrated"}));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!stored(&w.new, ALICE.address, "r1"));
    assert_eq!(rcpt()["attempts"], 1);
    // ... until the admin retries it.
    let out = ctl_ok(&w, &["queue", "retry", &id], 0);
    assert_eq!(
        out,
        format!("{id}: 1 recipient reset, delivery retried now\n")
    );
    wait_for("r1 after retry", Duration::from_secs(5), || {
        stored(&w.new, ALICE.address, "r1")
    });
    wait_for("empty queue", Duration::from_secs(5), || {
        spooled(&w).is_empty()
    });
    let m = scrape(&api);
    assert_eq!(metric(&m, "ponte_spool_messages"), 0.0);
    assert_eq!(metric(&m, "ponte_spool_bytes"), 0.0);
    for outcome in ["deferred", "delivered"] {
        let series = format!("ponte_inbound_deliveries_total{{outcome=\"{outcome}\"}}");
        assert!(metric(&m, &series) >= 1.0);
    }
    let audit = ctl_ok(&w, &["audit"], 0);
    let retried = "- -> retry now (1 recipient reset)";
    assert_eq!(audited(&audit, &id, retried), 1, "{audit}");

    // Malformed ids are 400, unknown ones 404, whatever the method.
    let unknown = "0000000000000001";
    for (method, path, code) in [
        ("GET", "/api/queue/xyz".to_string(), 400),
        ("POST", "/api/queue/12345/hold".to_string(), 400),
        ("DELETE", "/api/queue/000000000000000g".to_string(), 400),
        ("GET", format!("/api/queue/{unknown}"), 404),
        ("POST", format!("/api/queue/{unknown}/retry"), 404),
        ("POST", format!("/api/queue/{unknown}/hold"), 404),
        ("POST", format!("/api/queue/{unknown}/release"), 404),
        ("DELETE", format!("/api/queue/{unknown}"), 404),
        ("GET", "/api/queue?domain=a&mailbox=b".to_string(), 400),
    ] {
        let (got, body) = api.call(method, &path, None);
        assert_eq!(got, code, "{method} {path}: {body}");
        assert!(body["error"].as_str().is_some(), "{body}");
    }
    assert_eq!(ctl(&w, &["queue", "show", "xyz"]).status.code(), Some(2));
    assert_eq!(
        ctl(&w, &["queue", "delete", unknown]).status.code(),
        Some(1)
    );

    // No token, no queue.
    let mut anonymous = Api::new(w.addr("admin"));
    anonymous.token = None;
    for (method, path) in [
        ("GET", "/api/queue".to_string()),
        ("GET", "/api/queue/messages".to_string()),
        ("GET", format!("/api/queue/{id}")),
        ("POST", format!("/api/queue/{id}/retry")),
        ("POST", format!("/api/queue/{id}/hold")),
        ("POST", format!("/api/queue/{id}/release")),
        ("DELETE", format!("/api/queue/{id}")),
    ] {
        assert_eq!(
            anonymous.call(method, &path, None).0,
            401,
            "{method} {path}"
        );
    }

    // A ponte without an inbound listener has no queue, and says so.
    w.ponte.take().expect("ponte").stop();
    let inbound = "[[listener]]\nname = \"inbound\"\nprotocol = \"smtp\"\n\
                   bind = \"127.0.0.1:0\"\ntls = \"starttls\"\n";
    let config = w.config();
    assert!(config.contains(inbound));
    w.ponte = Some(Ponte::start(&config.replacen(inbound, "", 1)));
    let (code, body) = Api::new(w.addr("admin")).get("/api/queue");
    assert_eq!(code, 409, "{body}");
    let err = ctl_ok(&w, &["queue"], 1);
    assert!(err.contains("no inbound (smtp) listener"), "{err}");
}
