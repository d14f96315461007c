//! Fleet mode: several ponte nodes sharing one migration state in a real
//! PostgreSQL (a throwaway cluster on a loopback port), in front of the
//! same real Dovecot backends. A flip on one node reaches the sessions of
//! another within a second; a schedule is carried out exactly once, also
//! with a node down; with PostgreSQL down, logins keep their last known
//! routes and flips are refused with a clear error until it is back.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::admin::Api;
use common::net::LineConn;
use common::ponte::Ponte;
use common::postgres::Postgres;
use common::world::{marker, World, ALICE, BOB, DAVE, LISTENERS};
use serde_json::{json, Value};

/// Propagation bound the issue asks for.
const WITHIN: Duration = Duration::from_secs(1);

struct Fleet {
    // Dropped in this order: nodes first, then backends and PostgreSQL.
    nodes: Vec<Option<Ponte>>,
    world: World,
    pg: Postgres,
}

impl Fleet {
    fn start(n: usize) -> Fleet {
        let pg = Postgres::start();
        let world = World::backends_only("");
        let nodes = (0..n)
            .map(|i| Some(Ponte::start(&world.fleet_config(&pg.url(), &node_name(i)))))
            .collect();
        Fleet { nodes, world, pg }
    }

    fn node(&self, i: usize) -> &Ponte {
        self.nodes[i].as_ref().expect("node running")
    }

    fn api(&self, i: usize) -> Api {
        Api::new(self.node(i).addr("admin"))
    }
}

/// A node run as the `ponte serve` binary, so that it can be killed
/// (SIGKILL, no goodbye to PostgreSQL). Killed on drop too.
struct Killable {
    child: Child,
    admin: SocketAddr,
}

impl Killable {
    fn start(w: &World, url: &str, node: &str) -> Killable {
        let mut text = w.fleet_config(url, node);
        let mut addrs = std::collections::BTreeMap::new();
        for name in LISTENERS {
            let addr = common::net::loopback(common::net::free_port());
            text = text.replacen("bind = \"127.0.0.1:0\"", &format!("bind = \"{addr}\""), 1);
            addrs.insert(name, addr);
        }
        let config = w.dir.path().join(format!("{node}.toml"));
        std::fs::write(&config, text).expect("write config");
        let log = std::fs::File::create(w.dir.path().join(format!("{node}.log"))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_ponte"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ponte");
        common::net::wait_greeting(addrs["imap"], "* OK", Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{node} did not start: {e}"));
        Killable {
            child,
            admin: addrs["admin"],
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

fn node_name(i: usize) -> String {
    format!("node-{}", (b'a' + i as u8) as char)
}

fn login(c: &mut LineConn<TcpStream>, user: &str, pw: &str) {
    let greeting = c.read_line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let pw = pw.replace('"', "\\\"");
    let r = c.imap("a", &format!("LOGIN \"{user}\" \"{pw}\""));
    assert!(r.status.starts_with("OK"), "login {user}: {}", r.status);
}

/// A logged-in session on `node` sitting in IDLE on its INBOX.
fn idling(node: &Ponte, user: &str, pw: &str) -> LineConn<TcpStream> {
    let mut c = LineConn::tcp(node.addr("imap"));
    login(&mut c, user, pw);
    assert!(c.imap("b", "SELECT INBOX").is_ok());
    c.send("c IDLE");
    let go = c.read_line();
    assert!(go.starts_with('+'), "{go}");
    c
}

/// Reads until `* BYE`, failing after `within` (measured from `since`);
/// returns the BYE line and when it came.
fn wait_bye(c: &mut LineConn<TcpStream>, since: Instant, within: Duration) -> (String, Duration) {
    c.get_mut()
        .set_read_timeout(Some(within + Duration::from_secs(1)))
        .expect("read timeout");
    loop {
        let line = c
            .try_read_line()
            .unwrap_or_else(|e| panic!("no BYE within {within:?}: {e}"));
        if line.starts_with("* BYE") {
            return (line, since.elapsed());
        }
        assert!(
            since.elapsed() < within + Duration::from_secs(1),
            "no BYE; last line {line:?}"
        );
    }
}

/// The subject of the first INBOX message, logged in as `user` on `node`.
fn first_subject(node: &Ponte, user: &str, pw: &str) -> String {
    let mut c = LineConn::tcp(node.addr("imap"));
    login(&mut c, user, pw);
    assert!(c.imap("b", "EXAMINE INBOX").is_ok());
    let r = c.imap("c", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
    assert!(r.is_ok(), "{}", r.status);
    c.imap("z", "LOGOUT");
    r.text()
}

/// Polls `f` every 50 ms until it is true; panics after `within`.
fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn store_up(api: &Api) -> Option<bool> {
    let (code, status) = api.get("/api/status");
    assert_eq!(code, 200, "{status}");
    status["store"]["up"].as_bool()
}

fn set_mailbox(api: &Api, address: &str, state: &str) -> (u16, Value) {
    api.send_json(
        "PUT",
        &format!("/api/mailboxes/{address}"),
        &json!({ "state": state }),
    )
}

fn audit(api: &Api) -> Vec<Value> {
    let (code, body) = api.get("/api/audit?limit=1000");
    assert_eq!(code, 200, "{body}");
    body["audit"].as_array().cloned().unwrap_or_default()
}

/// Adds a schedule through `api`: `subject` (`{"domain": …}` or
/// `{"mailbox": …}`) to `state`, due `secs` from now. Returns its id and
/// when it is due (Unix seconds).
fn schedule_in(api: &Api, subject: Value, state: &str, secs: i64) -> (u64, i64) {
    let at = time::OffsetDateTime::now_utc().unix_timestamp() + secs;
    let at_text = time::OffsetDateTime::from_unix_timestamp(at)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mut body = subject;
    body["state"] = json!(state);
    body["at"] = json!(at_text);
    let (code, s) = api.send_json("POST", "/api/schedules", &body);
    assert_eq!(code, 201, "{s}");
    (s["id"].as_u64().expect("schedule id"), at)
}

/// Runs `ponte ctl ARGS` against `node`'s admin API.
fn ctl(w: &World, node: &Ponte, args: &[&str]) -> Output {
    let url = format!("http://{}", node.addr("admin"));
    Command::new("timeout")
        .arg("30")
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

#[test]
fn a_flip_on_one_node_closes_an_idle_session_on_another_within_a_second() {
    let f = Fleet::start(3);
    let (a, c) = (0, 2);
    let pw = ALICE.legacy_password.unwrap();
    assert!(first_subject(f.node(c), ALICE.address, pw).contains(&marker("legacy", ALICE.address)));
    let mut idle = idling(f.node(c), ALICE.address, pw);
    let flipped = Instant::now();
    let (code, body) = set_mailbox(&f.api(a), ALICE.address, "migrated");
    assert_eq!(code, 200, "{body}");
    let (bye, took) = wait_bye(&mut idle, flipped, WITHIN);
    println!("flip on node-a -> BYE on node-c after {took:?}: {bye}");
    assert!(took < WITHIN, "BYE after {took:?}");
    assert!(bye.contains("moved"), "{bye}");
    // The client reconnects to node C and lands on the new backend.
    let new_pw = ALICE.new_password.unwrap();
    let subject = first_subject(f.node(c), ALICE.address, new_pw);
    assert!(subject.contains(&marker("new", ALICE.address)), "{subject}");
    // Every node routes the same way and shows the same audit log.
    for i in 0..3 {
        let (code, m) = f.api(i).get(&format!("/api/mailboxes/{}", ALICE.address));
        assert_eq!(
            (code, m["route"].as_str()),
            (200, Some("new")),
            "node {i}: {m}"
        );
    }
    let flips: Vec<Value> = audit(&f.api(1))
        .into_iter()
        .filter(|e| e["what"] == format!("mailbox {}", ALICE.address))
        .collect();
    assert_eq!(flips.len(), 1, "{flips:?}");
    assert_eq!(flips[0]["new"], "migrated");
    // The fleet view: every node's heartbeat, within the period.
    wait_nodes(&f.api(1), 3);
    let out = ctl(&f.world, f.node(0), &["queue", "--fleet"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for i in 0..3 {
        assert!(text.contains(&node_name(i)), "{text}");
    }
    // Closing a mailbox's sessions by hand on node A closes them on node C.
    let mut idle = idling(f.node(c), ALICE.address, new_pw);
    let asked = Instant::now();
    let reason = "Password reset; please sign in again.";
    let out = ctl(
        &f.world,
        f.node(a),
        &["kick", "--mailbox", ALICE.address, "--reason", reason],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (bye, took) = wait_bye(&mut idle, asked, WITHIN);
    println!("ponte ctl kick on node-a -> BYE on node-c after {took:?}: {bye}");
    assert!(bye.contains(reason), "{bye}");
    let kicks: Vec<Value> = audit(&f.api(2))
        .into_iter()
        .filter(|e| e["what"] == format!("sessions of mailbox {}", ALICE.address))
        .collect();
    assert_eq!(kicks.len(), 1, "{kicks:?}");
}

/// Waits until `api`'s fleet view lists `n` nodes.
fn wait_nodes(api: &Api, n: usize) {
    wait_until(
        "the nodes in the fleet view",
        Duration::from_secs(8),
        || {
            let (code, body) = api.get("/api/queue?fleet=1");
            code == 200 && body["nodes"].as_array().is_some_and(|l| l.len() == n)
        },
    );
}

#[test]
fn a_change_answers_with_every_nodes_closed_sessions_and_names_a_silent_node() {
    // Nodes A and B in this process, node Z a `ponte serve` process that
    // is then paused (alive to PostgreSQL, answering nothing); at the end
    // B stops cleanly and is no longer waited for.
    let mut f = Fleet::start(2);
    let mut z = Killable::start(&f.world, &f.pg.url(), "node-z");
    wait_nodes(&f.api(0), 3);
    let (alice, bob) = (ALICE.legacy_password.unwrap(), BOB.new_password.unwrap());
    // Alice on A and on B: a flip on A closes one here and one on B.
    let mut on_a = idling(f.node(0), ALICE.address, alice);
    let mut on_b = idling(f.node(1), ALICE.address, alice);
    let (code, body) = set_mailbox(&f.api(0), ALICE.address, "blackout");
    assert_eq!(code, 200, "{body}");
    println!("flip answer: {body}");
    assert_eq!(body["kicked"], 2, "{body}");
    assert_eq!(
        body["fleet"],
        json!({ "here": 1, "nodes": { "node-b": 1, "node-z": 0 }, "silent": [] }),
        "{body}"
    );
    for c in [&mut on_a, &mut on_b] {
        wait_bye(c, Instant::now(), WITHIN);
    }
    // A kick through `ponte ctl` says the same in words.
    let mut on_b = idling(f.node(1), BOB.address, bob);
    let out = ctl(&f.world, f.node(0), &["kick", "--mailbox", BOB.address]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.trim_end(),
        "1 session closed: 0 on this node, 1 on node-b, 0 on node-z"
    );
    wait_bye(&mut on_b, Instant::now(), WITHIN);
    // Node Z paused: its heartbeat is recent, so it is expected, and the
    // answer names it rather than counting it as none.
    let mut on_b = idling(f.node(1), BOB.address, bob);
    let pid = z.child.id().to_string();
    let stop = Command::new("kill").args(["-STOP", &pid]).status();
    assert!(stop.is_ok_and(|s| s.success()), "SIGSTOP node-z");
    let (code, body) = set_mailbox(&f.api(0), BOB.address, "blackout");
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert_eq!(code, 200, "{body}");
    println!("flip answer with node-z paused: {body}");
    assert_eq!(body["kicked"], 1, "{body}");
    assert_eq!(
        body["fleet"],
        json!({ "here": 0, "nodes": { "node-b": 1 }, "silent": ["node-z"] }),
        "{body}"
    );
    wait_bye(&mut on_b, Instant::now(), WITHIN);
    // A change of several payloads (an import of three mailboxes) is
    // answered once per node, with the sum (node Z answers again).
    let mut alice_b = idling(f.node(1), ALICE.address, alice);
    let mut bob_b = idling(f.node(1), BOB.address, BOB.legacy_password.unwrap());
    let csv = format!(
        "{},legacy\n{},migrated\n{},blackout\n",
        ALICE.address, BOB.address, DAVE.address
    );
    let (code, body) = f
        .api(0)
        .call("POST", "/api/import", Some(("text/csv", &csv)));
    assert_eq!(code, 200, "{body}");
    println!("import answer: {body}");
    assert_eq!(
        body["fleet"],
        json!({ "here": 0, "nodes": { "node-b": 2, "node-z": 0 }, "silent": [] }),
        "{body}"
    );
    for c in [&mut alice_b, &mut bob_b] {
        wait_bye(c, Instant::now(), WITHIN);
    }
    // Node B stopped cleanly: it says so, and is no longer waited for.
    f.nodes[1].take().expect("node B").stop();
    let (code, body) = set_mailbox(&f.api(0), BOB.address, "legacy");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["fleet"],
        json!({ "here": 0, "nodes": { "node-z": 0 }, "silent": [] }),
        "{body}"
    );
    let (_, view) = f.api(0).get("/api/queue?fleet=1");
    let b = view["nodes"]
        .as_array()
        .and_then(|l| l.iter().find(|n| n["node"] == "node-b"))
        .cloned()
        .unwrap_or_default();
    assert!(b["stopped"].is_string(), "{view}");
    assert_eq!(b["sessions"]["total"], 0, "{view}");
    let out = ctl(&f.world, f.node(0), &["queue", "--fleet"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("node-b") && l.contains("stopped")),
        "{text}"
    );
    z.kill();
}

#[test]
fn a_schedule_is_carried_out_once_with_a_node_killed_just_before_it_is_due() {
    // Node Z is a `ponte serve` process; nodes A and B run in this process.
    let f = Fleet::start(2);
    let mut z = Killable::start(&f.world, &f.pg.url(), "node-z");
    let pw = ALICE.legacy_password.unwrap();
    let mut idle = idling(f.node(1), ALICE.address, pw);
    // Due in 3 s, added on node Z, which is then killed just before.
    let (id, at) = schedule_in(
        &Api::new(z.admin),
        json!({ "domain": "pec.example" }),
        "migrated",
        3,
    );
    // The other nodes know of it (NOTIFY) before it is due.
    wait_until("schedule seen on node B", Duration::from_secs(2), || {
        let (_, l) = f.api(1).get("/api/schedules");
        l["schedules"].as_array().is_some_and(|l| l.len() == 1)
    });
    let left = at - time::OffsetDateTime::now_utc().unix_timestamp();
    let until_due = Duration::from_secs(left.max(1) as u64);
    std::thread::sleep(until_due.saturating_sub(Duration::from_millis(700)));
    z.kill();
    let killed = Instant::now();
    let (bye, took) = wait_bye(&mut idle, killed, Duration::from_secs(5));
    println!("schedule {id}: node-z killed, BYE on node-b {took:?} later: {bye}");
    // Carried out once: one domain change and one schedule removal, by the schedule.
    let who = format!("schedule {id} by ops");
    let entries = audit(&f.api(0));
    let what: Vec<&str> = entries
        .iter()
        .filter(|e| e["who"] == who.as_str())
        .map(|e| e["what"].as_str().unwrap_or(""))
        .collect();
    let removal = format!("schedule {id}: domain pec.example");
    assert_eq!(
        what,
        ["domain pec.example", removal.as_str()],
        "{entries:?}"
    );
    let new_pw = ALICE.new_password.unwrap();
    for i in [0, 1] {
        let (_, l) = f.api(i).get("/api/schedules");
        assert_eq!(
            l["schedules"].as_array().map(Vec::len),
            Some(0),
            "node {i}: {l}"
        );
        let s = first_subject(f.node(i), ALICE.address, new_pw);
        assert!(s.contains(&marker("new", ALICE.address)), "{s}");
    }
}
#[test]
fn postgres_down_keeps_routing_refuses_flips_and_catches_up() {
    let mut f = Fleet::start(2);
    for i in 0..2 {
        wait_until("store up", Duration::from_secs(5), || {
            store_up(&f.api(i)) == Some(true)
        });
    }
    let (bob_new, alice_legacy) = (BOB.new_password.unwrap(), ALICE.legacy_password.unwrap());
    // A session open across the outage, and a schedule falling due in it.
    let mut kept = idling(f.node(1), ALICE.address, alice_legacy);
    let (id, at) = schedule_in(&f.api(0), json!({ "mailbox": DAVE.address }), "blackout", 3);
    let schedule = format!("schedule {id} by ops");
    f.pg.stop();
    for i in 0..2 {
        wait_until("store seen down", Duration::from_secs(5), || {
            store_up(&f.api(i)) == Some(false)
        });
    }
    // Traffic meanwhile: logins keep their last known routes, on both nodes.
    let mut logins = 0;
    while time::OffsetDateTime::now_utc().unix_timestamp() <= at + 1 {
        for i in 0..2 {
            let s = first_subject(f.node(i), BOB.address, bob_new);
            assert!(s.contains(&marker("new", BOB.address)), "{s}");
            let s = first_subject(f.node(i), ALICE.address, alice_legacy);
            assert!(s.contains(&marker("legacy", ALICE.address)), "{s}");
            logins += 2;
        }
    }
    println!("{logins} logins routed while PostgreSQL was down");
    let (code, _) = f.api(0).get("/readyz");
    assert_eq!(code, 200, "routing works: still ready");
    // The due schedule waits for PostgreSQL.
    let (_, m) = f.api(0).get(&format!("/api/mailboxes/{}", DAVE.address));
    assert_eq!(m["route"], "legacy", "{m}");
    // A flip is refused with a clear error, through the API and ponte ctl.
    let (code, body) = set_mailbox(&f.api(0), ALICE.address, "migrated");
    assert_eq!(code, 503, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("state store unavailable"), "{error}");
    assert!(
        error.contains("routing continues from the state loaded at"),
        "{error}"
    );
    let out = ctl(
        &f.world,
        f.node(1),
        &["mailbox", "set", ALICE.address, "migrated"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("state store unavailable"), "{stderr}");
    println!("ponte ctl while PostgreSQL is down: {}", stderr.trim());
    // The session opened before the outage is still served.
    // Dovecot may have sent an untagged `* OK Still here` keepalive while
    // idling (its interval is spread per client), so read to the tag.
    kept.send("DONE");
    let done = kept.imap_until_tagged("c");
    assert!(done.is_ok(), "{}", done.status);
    assert!(kept.imap("d", "NOOP").is_ok());
    kept.send("e IDLE");
    let go = kept.read_line();
    assert!(go.starts_with('+'), "{go}");
    // PostgreSQL back: both nodes reconnect, the schedule is carried out
    // once, and a flip propagates again.
    f.pg.start_again();
    for i in 0..2 {
        wait_until("store back up", Duration::from_secs(10), || {
            store_up(&f.api(i)) == Some(true)
        });
    }
    wait_until(
        "the waiting schedule carried out",
        Duration::from_secs(5),
        || {
            (0..2).all(|i| {
                let (_, m) = f.api(i).get(&format!("/api/mailboxes/{}", DAVE.address));
                m["route"] == "read-only"
            })
        },
    );
    let runs = audit(&f.api(0))
        .iter()
        .filter(|e| {
            e["who"] == schedule.as_str() && e["what"] == format!("mailbox {}", DAVE.address)
        })
        .count();
    assert_eq!(runs, 1, "{schedule}");
    let flipped = Instant::now();
    let (code, body) = set_mailbox(&f.api(0), ALICE.address, "migrated");
    assert_eq!(code, 200, "{body}");
    let (bye, took) = wait_bye(&mut kept, flipped, WITHIN);
    println!("after PostgreSQL came back: BYE on node-b after {took:?}: {bye}");
    assert!(took < WITHIN);
    let new_pw = ALICE.new_password.unwrap();
    let s = first_subject(f.node(1), ALICE.address, new_pw);
    assert!(s.contains(&marker("new", ALICE.address)), "{s}");
}

/// Runs `ponte ctl migrate-store ARGS` (no API involved).
fn migrate_store(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_ponte"))
        .args(["ctl", "migrate-store"])
        .args(args)
        .env_remove("PONTE_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run ponte ctl migrate-store")
}

#[test]
fn migrate_store_copies_an_embedded_state_into_postgres_and_back() {
    use ponte::route::{PgStore, RedbStore, StateStore};

    let pg = Postgres::start();
    let mut w = World::start();
    // Some state in the embedded store: a flip, a tempmail deadline, a schedule.
    let api = Api::new(w.addr("admin"));
    assert_eq!(set_mailbox(&api, ALICE.address, "blackout").0, 200);
    let (code, _) = api.send_json(
        "PUT",
        &format!("/api/mailboxes/{}/tempmail", ALICE.address),
        &json!({ "until": "2030-01-01T00:00:00Z" }),
    );
    assert_eq!(code, 200);
    let (code, _) = api.send_json(
        "POST",
        "/api/schedules",
        &json!({ "domain": "pec.example", "state": "migrated", "at": "2031-01-01T00:00:00Z" }),
    );
    assert_eq!(code, 201);
    w.stop();
    let state_dir = w.dir.path().join("state");
    let before = RedbStore::open(&state_dir).unwrap().dump().unwrap();
    assert!(before.audit.len() >= 4, "{before:?}");

    let from = state_dir.display().to_string();
    let out = migrate_store(&["--from", &from, "--to", &pg.url()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("embedded -> PostgreSQL: {}", text.trim());
    assert!(text.contains("1 schedules"), "{text}");
    let in_pg = PgStore::open(&pg.url(), "test", None)
        .unwrap()
        .dump()
        .unwrap();
    assert_eq!(
        in_pg, before,
        "the copy in PostgreSQL is the embedded state"
    );

    // A target that holds state is refused without --force.
    let out = migrate_store(&["--from", &from, "--to", &pg.url()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--force"), "{err}");

    // A node on PostgreSQL routes by the copied state; new audit entries
    // follow the copied ones.
    let node = Ponte::start(&w.fleet_config(&pg.url(), "node-a"));
    let api = Api::new(node.addr("admin"));
    let (_, m) = api.get(&format!("/api/mailboxes/{}", ALICE.address));
    assert_eq!(m["state"], "blackout", "{m}");
    assert_eq!(set_mailbox(&api, ALICE.address, "migrated").0, 200);
    let entries = audit(&api);
    let seqs: Vec<u64> = entries.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(
        seqs.last().copied(),
        Some(before.audit.len() as u64 + 1),
        "{seqs:?}"
    );
    node.stop();

    // And back, into a fresh embedded store.
    let back = w.dir.path().join("state-back");
    let to = back.display().to_string();
    let out = migrate_store(&["--from", &pg.url(), "--to", &to]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = RedbStore::open(&back).unwrap().dump().unwrap();
    let in_pg = PgStore::open(&pg.url(), "test", None)
        .unwrap()
        .dump()
        .unwrap();
    assert_eq!(after, in_pg);
    assert_eq!(after.audit.len(), before.audit.len() + 1);
}

/// Whether `user`'s INBOX on `d` holds a message with this Message-ID.
fn delivered(d: &common::dovecot::Dovecot, user: &str, message_id: &str) -> bool {
    ["new", "cur"].iter().any(|sub| {
        std::fs::read_dir(d.maildir(user).join(sub))
            .map(|dir| {
                dir.flatten().any(|f| {
                    std::fs::read(f.path())
                        .map(|b| String::from_utf8_lossy(&b).contains(message_id))
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    })
}

/// Sends one message to `rcpt` through `node`'s inbound listener (plain SMTP).
fn send_inbound(node: &Ponte, rcpt: &str, message_id: &str) {
    let mut c = LineConn::tcp(node.addr("inbound"));
    let expect = |c: &mut LineConn<TcpStream>, code: &str| loop {
        let line = c.read_line();
        assert!(line.starts_with(code), "expected {code}: {line}");
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    };
    expect(&mut c, "220");
    c.send("EHLO mx.sender.example");
    expect(&mut c, "250");
    c.send("MAIL FROM:<mittente@sender.example>");
    expect(&mut c, "250");
    c.send(&format!("RCPT TO:<{rcpt}>"));
    expect(&mut c, "250");
    c.send("DATA");
    expect(&mut c, "354");
    c.send(&format!(
        "From: mittente@sender.example\r\nTo: {rcpt}\r\nSubject: fleet\r\nMessage-ID: {message_id}\r\n\r\nspooled on one node\r\n."
    ));
    expect(&mut c, "250");
    c.send("QUIT");
}

#[test]
fn mail_spooled_on_two_nodes_shows_in_the_fleet_queue_and_is_delivered_when_another_node_flips() {
    let f = Fleet::start(3);
    let (a, b, c) = (0, 1, 2);
    assert_eq!(set_mailbox(&f.api(c), ALICE.address, "blackout").0, 200);
    // Nodes A and B know of the blackout (NOTIFY) and spool what arrives for alice.
    for i in [a, b] {
        wait_until("blackout seen", WITHIN, || {
            let (_, m) = f.api(i).get(&format!("/api/mailboxes/{}", ALICE.address));
            m["state"] == "blackout"
        });
    }
    let ids = [
        "<fleet-spool-a@sender.example>",
        "<fleet-spool-b@sender.example>",
    ];
    for (i, id) in [a, b].into_iter().zip(ids) {
        send_inbound(f.node(i), ALICE.address, id);
        let (_, q) = f.api(i).get("/api/queue");
        assert_eq!(q["total"]["messages"], 1, "{q}");
    }
    // The fleet's queue, per domain, as the nodes' heartbeats publish it.
    wait_until(
        "both spooled messages in the fleet view",
        Duration::from_secs(8),
        || {
            let (_, q) = f.api(c).get("/api/queue?fleet=1");
            q["total"]["messages"] == 2
                && q["domains"][0]["domain"] == "pec.example"
                && q["domains"][0]["messages"] == 2
        },
    );
    let out = ctl(&f.world, f.node(c), &["queue", "--fleet"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    println!("ponte ctl queue --fleet:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("pec.example") && l.split_whitespace().nth(1) == Some("2")),
        "{text}"
    );
    assert!(text.contains("fleet: 3 nodes"), "{text}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!ids
        .iter()
        .any(|id| delivered(&f.world.new, ALICE.address, id)));
    // The flip on node C wakes the delivery workers of nodes A and B.
    let flipped = Instant::now();
    assert_eq!(set_mailbox(&f.api(c), ALICE.address, "migrated").0, 200);
    wait_until(
        "delivered from both nodes' spools",
        Duration::from_secs(5),
        || {
            ids.iter()
                .all(|id| delivered(&f.world.new, ALICE.address, id))
        },
    );
    println!(
        "flip on node-c -> the spooled mail of nodes a and b in the new store after {:?}",
        flipped.elapsed()
    );
    assert!(!ids
        .iter()
        .any(|id| delivered(&f.world.legacy, ALICE.address, id)));
}

#[test]
fn a_schedule_due_while_every_node_was_down_runs_when_the_first_comes_back() {
    let mut f = Fleet::start(2);
    let (id, at) = schedule_in(
        &f.api(0),
        json!({ "mailbox": ALICE.address }),
        "migrated",
        2,
    );
    for node in f.nodes.iter_mut() {
        if let Some(p) = node.take() {
            p.stop();
        }
    }
    let left = at - time::OffsetDateTime::now_utc().unix_timestamp();
    std::thread::sleep(Duration::from_secs(left.max(0) as u64 + 1));
    let started = Instant::now();
    let node = Ponte::start(&f.world.fleet_config(&f.pg.url(), "node-c"));
    let api = Api::new(node.addr("admin"));
    let who = format!("schedule {id} by ops");
    wait_until(
        "the late schedule carried out",
        Duration::from_secs(5),
        || audit(&api).iter().any(|e| e["who"] == who.as_str()),
    );
    println!(
        "late schedule carried out {:?} after the first node started",
        started.elapsed()
    );
    let (_, m) = api.get(&format!("/api/mailboxes/{}", ALICE.address));
    assert_eq!(m["route"], "new", "{m}");
}

/// The PostgreSQL password comes from `[state] password_file`, never from
/// the configuration or the URL; a wrong one stops the node at start with
/// PostgreSQL's reason, and the password is not in that message.
#[test]
fn a_node_logs_in_to_postgres_with_a_password_file() {
    use common::postgres::ROLE_PASSWORD;
    let pg = Postgres::start();
    let world = World::backends_only("");
    let config = |password: &str| {
        let file = world
            .dir
            .path()
            .join(format!("pg-{}.secret", password.len()));
        std::fs::write(&file, format!("{password}\n")).expect("password file");
        world.fleet_config(&pg.password_url(), "pw").replacen(
            "node = \"pw\"",
            &format!("node = \"pw\"\npassword_file = \"{}\"", file.display()),
            1,
        )
    };
    let node = Ponte::start(&config(ROLE_PASSWORD));
    let (code, body) = set_mailbox(&Api::new(node.addr("admin")), ALICE.address, "migrated");
    assert_eq!(code, 200, "{body}");
    node.stop();

    let wrong = "not-the-Pa55word";
    let cfg = ponte::config::Config::from_toml(&config(wrong)).expect("config");
    let err = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(ponte::server::Server::bind(cfg))
        .err()
        .expect("a wrong password refuses the start")
        .to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        !err.contains(wrong) && !err.contains(ROLE_PASSWORD),
        "{err}"
    );
}

/// A scheduled state change keeps the backend the mailbox's override
/// names when PostgreSQL writes it, not the one a node last saw.
#[test]
fn a_mailbox_state_change_keeps_the_backend_named_at_write_time() {
    use ponte::route::{Change, MailboxState, PgStore, StateStore};
    let pg = Postgres::start();
    let store = PgStore::open(&pg.url(), "test", None).expect("open");
    let a = "dave@pec.example".to_string();
    store
        .apply(
            &Change::Mailboxes(vec![(a.clone(), MailboxState::Legacy, Some("b2".into()))]),
            "ops",
        )
        .expect("override");
    let applied = store
        .apply(
            &Change::MailboxState {
                address: a.clone(),
                state: MailboxState::Migrated,
            },
            "schedule 1 by ops",
        )
        .expect("state change");
    assert_eq!(applied.replaced, Some(MailboxState::Legacy));
    let rec = store.mailbox(&a).expect("read").expect("override kept");
    assert_eq!(
        (rec.state, rec.backend.as_deref()),
        (MailboxState::Migrated, Some("b2"))
    );
    assert_eq!(applied.audit[0].new.as_deref(), Some("migrated via b2"));
}

/// The configuration's state for a domain is written only while no admin
/// has set one, decided in PostgreSQL's transaction: a node started with
/// an old file does not undo a flip made on another node.
#[test]
fn a_node_with_an_old_file_does_not_undo_an_admins_flip() {
    use ponte::route::{Change, MailboxState, PgStore, StateStore, CONFIG};
    let pg = Postgres::start();
    let store = PgStore::open(&pg.url(), "test", None).expect("open");
    let configured = Change::ConfiguredDomainState {
        domain: "pec.example".into(),
        state: MailboxState::Legacy,
    };
    store.apply(&configured, CONFIG).expect("first start");
    let flip = Change::DomainState {
        domain: "pec.example".into(),
        state: MailboxState::Migrated,
    };
    let applied = store.apply(&flip, "ops").expect("flip");
    // What it replaced, as PostgreSQL's transaction read it.
    assert_eq!(applied.replaced, Some(MailboxState::Legacy));
    // Another node, its file still saying legacy, comes up.
    let other = PgStore::open(&pg.url(), "old-file", None).expect("open");
    let applied = other.apply(&configured, CONFIG).expect("second start");
    assert!(applied.audit.is_empty(), "{:?}", applied.audit);
    let rec = other.domain("pec.example").expect("read").expect("domain");
    assert_eq!(
        (rec.state, rec.set_by.as_str()),
        (MailboxState::Migrated, "ops")
    );
    // And a node started now routes by the flip (its start-up also skips
    // a domain an admin set, on its freshly loaded copy).
    let world = World::backends_only("");
    let node = Ponte::start(&world.fleet_config(&pg.url(), "node-old"));
    let (_, d) = Api::new(node.addr("admin")).get("/api/status");
    let pec = d["domains"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["name"] == "pec.example"));
    assert_eq!(
        pec.map(|x| x["state"].clone()),
        Some(json!("migrated")),
        "{d}"
    );
}

/// Two nodes racing to carry out the same due schedules: each is claimed
/// by exactly one of them, and its change is written once.
#[test]
fn racing_nodes_claim_each_due_schedule_exactly_once() {
    use ponte::route::{Change, MailboxState, PgStore, StateStore, Subject};
    use std::sync::{Arc, Barrier};
    let pg = Postgres::start();
    let stores: Vec<Arc<PgStore>> = ["n1", "n2"]
        .iter()
        .map(|n| PgStore::open(&pg.url(), n, None).expect("open"))
        .collect();
    const N: usize = 20;
    let past = time::OffsetDateTime::now_utc().unix_timestamp() - 1;
    let mut jobs = Vec::new();
    for i in 0..N {
        let address = format!("user{i}@pec.example");
        let added = stores[0]
            .apply(
                &Change::AddSchedule {
                    subject: Subject::Mailbox(address.clone()),
                    state: MailboxState::Migrated,
                    at: past,
                },
                "ops",
            )
            .expect("add schedule");
        jobs.push((added.schedule_id.expect("id"), address));
    }
    let barrier = Arc::new(Barrier::new(2));
    let racers: Vec<_> = stores
        .iter()
        .map(|s| {
            let (s, jobs, barrier) = (s.clone(), jobs.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                jobs.iter()
                    .filter(|(id, address)| {
                        let claim = Change::ClaimSchedule {
                            id: *id,
                            change: Box::new(Change::MailboxState {
                                address: address.clone(),
                                state: MailboxState::Migrated,
                            }),
                        };
                        s.apply(&claim, &format!("schedule {id} by ops"))
                            .expect("claim")
                            .claimed
                    })
                    .count()
            })
        })
        .collect();
    let claimed: Vec<usize> = racers
        .into_iter()
        .map(|r| r.join().expect("racer"))
        .collect();
    println!("claims per node: {claimed:?}");
    assert_eq!(claimed.iter().sum::<usize>(), N, "{claimed:?}");
    let audit = stores[1].audit(1000).expect("audit");
    for (id, address) in &jobs {
        let who = format!("schedule {id} by ops");
        let writes = audit
            .iter()
            .filter(|e| e.who == who && e.what == format!("mailbox {address}"))
            .count();
        assert_eq!(writes, 1, "schedule {id}");
    }
    assert!(stores[0].schedules().expect("schedules").is_empty());
}

/// A large administration's list: 50,000 mailboxes imported on node A
/// are routed by node B, which closes the sessions the import moved
/// (a full reload: more rows changed than a notification names).
#[test]
fn a_fifty_thousand_mailbox_import_on_one_node_routes_on_another() {
    let f = Fleet::start(2);
    let (a, b) = (0, 1);
    let pw = ALICE.legacy_password.unwrap();
    let mut idle = idling(f.node(b), ALICE.address, pw);
    let mut csv = String::from("address,state\n");
    for i in 0..49_999 {
        csv.push_str(&format!("user{i}@pec.example,blackout\n"));
    }
    csv.push_str(&format!("{},migrated\n", ALICE.address));
    let file = f.world.dir.path().join("fleet-big.csv");
    std::fs::write(&file, &csv).expect("write csv");
    let started = Instant::now();
    let (code, body) = f.api(a).call(
        "POST",
        "/api/import",
        Some(("text/csv", &format!("@{}", file.display()))),
    );
    let imported = started.elapsed();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["rows"], 50_000, "{body}");
    let (bye, took) = wait_bye(&mut idle, started, imported + WITHIN);
    println!(
        "50,000 rows imported on node-a: answered after {imported:?}, BYE on node-b after {took:?}: {bye}"
    );
    assert!(took < imported + WITHIN, "BYE after {took:?}");
    let (_, m) = f.api(b).get("/api/mailboxes/user49998@pec.example");
    assert_eq!(m["route"], "read-only", "{m}");
    let (_, status) = f.api(b).get("/api/status");
    let pec = status["domains"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["name"] == "pec.example"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(pec["mailboxes"]["blackout"], 49_999, "{pec}");
    let s = first_subject(f.node(b), ALICE.address, ALICE.new_password.unwrap());
    assert!(s.contains(&marker("new", ALICE.address)), "{s}");
}
