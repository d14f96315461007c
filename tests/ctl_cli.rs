//! `ponte ctl` as scripts see it: the real binary against a small fake of
//! the admin API (a thread answering canned JSON per path and recording
//! each request). Checks the token, tables, `--json`, and exit codes 0-3.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

const TOKEN: &str = "tok-3f9a2c";

/// A request as the fake API saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: String,
}

/// Canned answers by `"METHOD /path?query"`; 401 without the right token.
struct FakeApi {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeApi {
    fn start(routes: &[(&str, u16, &str)]) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: HashMap<String, (u16, String)> = routes
            .iter()
            .map(|(k, s, b)| (k.to_string(), (*s, b.to_string())))
            .collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                serve(stream, &routes, &log);
            }
        });
        FakeApi { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, routes: &HashMap<String, (u16, String)>, log: &Mutex<Vec<Seen>>) {
    let Some(req) = read_request(&stream) else {
        return;
    };
    let key = format!("{} {}", req.method, req.path);
    let (status, body) = if req.authorization.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        (401, r#"{"error":"missing or bad token"}"#.to_string())
    } else {
        routes
            .get(&key)
            .cloned()
            .unwrap_or((404, format!(r#"{{"error":"no route {key}"}}"#)))
    };
    log.lock().unwrap().push(req);
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

fn read_request(stream: &TcpStream) -> Option<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        path,
        authorization: headers.remove("authorization"),
        content_type: headers.remove("content-type"),
        body: String::from_utf8(body).unwrap(),
    })
}

const STATUS: &str = r#"{"version":"0.1.0","sessions":2,"schedules":1,"domains":[{"name":"pec.example","state":"legacy","set_by":"config","legacy":"legacy","new":"new","tempmail_until":"2026-06-28T07:00:00Z","notice":null,"mailboxes":{"legacy":0,"blackout":0,"migrated":1,"excluded":0}}]}"#;
const SESSIONS: &str = r#"{"sessions":[{"id":7,"address":"a@pec.example","domain":"pec.example","route":"legacy","listener":"imaps","peer":"192.0.2.1:50000","since":"2026-04-01T10:00:00Z"}]}"#;

/// A scratch directory with a token file.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let s = Scratch {
            dir: tempfile::tempdir().unwrap(),
        };
        s.write("admin.token", &format!("# ops\n\nops:{TOKEN}\nother:zzz\n"));
        s
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn token(&self) -> PathBuf {
        self.dir.path().join("admin.token")
    }
}

fn ctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ponte"))
        .arg("ctl")
        .args(args)
        .env_remove("PONTE_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// `ponte ctl --url … --token-file … ARGS`.
fn ctl_at(api: &FakeApi, scratch: &Scratch, args: &[&str]) -> Output {
    let url = api.url();
    let token = scratch.token();
    let mut all = vec!["--url", &url, "--token-file", token.to_str().unwrap()];
    all.extend_from_slice(args);
    ctl(&all, None)
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

fn assert_no_token(o: &Output) {
    assert!(!stdout(o).contains(TOKEN) && !stderr(o).contains(TOKEN));
}

#[test]
fn status_sends_the_token_and_prints_a_table() {
    let api = FakeApi::start(&[("GET /api/status", 200, STATUS)]);
    let scratch = Scratch::new();
    let out = ctl_at(&api, &scratch, &["status"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.starts_with("DOMAIN       STATE   SET BY  MAILBOX OVERRIDES"),
        "{text}"
    );
    assert!(
        text.contains("pec.example  legacy  config  1 migrated         2026-06-28T07:00:00Z  -\n"),
        "{text}"
    );
    assert!(text.contains("sessions 2, schedules 1"), "{text}");
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer tok-3f9a2c"));
    assert_no_token(&out);
}

#[test]
fn the_configuration_gives_the_address_and_the_token_file() {
    let api = FakeApi::start(&[("GET /api/sessions", 200, SESSIONS)]);
    let scratch = Scratch::new();
    let config = scratch.write(
        "ponte.toml",
        &config_text(Some((api.addr, &scratch.token()))),
    );
    let out = ctl(&["--config", config.to_str().unwrap(), "sessions"], None);
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "ID  ADDRESS        ROUTE   LISTENER  PEER             SINCE\n\
         7   a@pec.example  legacy  imaps     192.0.2.1:50000  2026-04-01T10:00:00Z\n"
    );
    assert_eq!(
        api.seen()[0].authorization.as_deref(),
        Some("Bearer tok-3f9a2c")
    );
}

#[test]
fn json_passes_the_answer_through() {
    let api = FakeApi::start(&[("GET /api/status", 200, STATUS)]);
    let scratch = Scratch::new();
    let out = ctl_at(&api, &scratch, &["--json", "status"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let shown: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sent: serde_json::Value = serde_json::from_str(STATUS).unwrap();
    assert_eq!(shown, sent);
    assert!(
        text.starts_with("{\n  \"version\": \"0.1.0\",\n  \"sessions\": 2,"),
        "{text}"
    );
    // after the command too
    let out = ctl_at(&api, &scratch, &["status", "--json"]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("\"domains\": ["));
}

#[test]
fn changes_send_their_body_and_print_one_line() {
    let api = FakeApi::start(&[
        (
            "PUT /api/domains/pec.example",
            200,
            r#"{"domain":"pec.example","old":"legacy","new":"migrated","kicked":3}"#,
        ),
        (
            "POST /api/schedules",
            201,
            r#"{"id":1,"subject":{"kind":"mailbox","name":"a@pec.example"},"state":"blackout","at":"2026-04-28T06:00:00Z","by":"ops","created":"2026-04-01T10:00:00Z"}"#,
        ),
        ("POST /api/kick", 200, r#"{"kicked":1}"#),
    ]);
    let scratch = Scratch::new();
    let out = ctl_at(
        &api,
        &scratch,
        &["domain", "set", "pec.example", "Migrated"],
    );
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "pec.example: legacy -> migrated (3 sessions closed)\n"
    );
    let args = [
        "schedule",
        "add",
        "--mailbox",
        "a@pec.example",
        "blackout",
        "2026-04-28T08:00:00+02:00",
    ];
    let out = ctl_at(&api, &scratch, &args);
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "schedule 1: mailbox a@pec.example -> blackout at 2026-04-28T06:00:00Z\n"
    );
    let out = ctl_at(&api, &scratch, &["kick", "--id", "7", "--reason", "moved"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "1 session closed\n");
    let bodies: Vec<serde_json::Value> = api
        .seen()
        .iter()
        .map(|s| serde_json::from_str(&s.body).unwrap())
        .collect();
    assert_eq!(bodies[0], serde_json::json!({"state": "migrated"}));
    assert_eq!(
        bodies[1],
        serde_json::json!({"mailbox": "a@pec.example", "state": "blackout", "at": "2026-04-28T08:00:00+02:00"})
    );
    assert_eq!(bodies[2], serde_json::json!({"id": 7, "reason": "moved"}));
    assert!(api
        .seen()
        .iter()
        .all(|s| s.content_type.as_deref() == Some("application/json")));
}

#[test]
fn a_refusal_exits_1_with_the_apis_message() {
    let api = FakeApi::start(&[(
        "GET /api/mailboxes/a@other.example",
        404,
        r#"{"error":"domain other.example is not managed"}"#,
    )]);
    let scratch = Scratch::new();
    let out = ctl_at(&api, &scratch, &["mailbox", "show", "a@other.example"]);
    assert_exit(&out, 1);
    assert_eq!(
        stderr(&out),
        "ponte ctl: domain other.example is not managed\n"
    );
    assert_eq!(stdout(&out), "");
    // with --json, the error body is on stdout too
    let out = ctl_at(
        &api,
        &scratch,
        &["--json", "mailbox", "show", "a@other.example"],
    );
    assert_exit(&out, 1);
    assert!(stdout(&out).contains("\"error\": \"domain other.example is not managed\""));
    // a wrong token is refused by the API
    scratch.write("admin.token", "wrong-token\n");
    let out = ctl_at(&api, &scratch, &["status"]);
    assert_exit(&out, 1);
    assert_eq!(stderr(&out), "ponte ctl: missing or bad token\n");
    assert_eq!(
        api.seen()[2].authorization.as_deref(),
        Some("Bearer wrong-token")
    );
}

#[test]
fn import_errors_list_every_bad_row() {
    let api = FakeApi::start(&[(
        "POST /api/import",
        400,
        r#"{"error":"2 bad row(s)","details":["line 3: unknown state \"moved\"","line 9: not an address: \"bob\""]}"#,
    )]);
    let scratch = Scratch::new();
    let csv = "address,state\na@pec.example,migrated\nb@pec.example,moved\n";
    let url = api.url();
    let token = scratch.token();
    let args = [
        "--url",
        &url,
        "--token-file",
        token.to_str().unwrap(),
        "import",
        "-",
    ];
    let out = ctl(&args, Some(csv));
    assert_exit(&out, 1);
    assert_eq!(
        stderr(&out),
        "ponte ctl: 2 bad row(s)\nline 3: unknown state \"moved\"\nline 9: not an address: \"bob\"\n"
    );
    let seen = &api.seen()[0];
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/api/import")
    );
    assert_eq!(seen.content_type.as_deref(), Some("text/csv"));
    assert_eq!(seen.body, csv);
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    let api = FakeApi::start(&[]);
    let scratch = Scratch::new();
    let cases: [&[&str]; 4] = [
        &["domain", "set", "pec.example", "moved"],
        &["mailbox", "set", "a@pec.example", "gone"],
        &[
            "schedule",
            "add",
            "--domain",
            "pec.example",
            "blackout",
            "2026-04-28 08:00",
        ],
        &["kick"],
    ];
    for args in cases {
        let out = ctl_at(&api, &scratch, args);
        assert_exit(&out, 2);
    }
    let out = ctl_at(&api, &scratch, &["domain", "set", "pec.example", "moved"]);
    let err = stderr(&out);
    assert!(err.starts_with("ponte ctl: ") && err.contains("moved") && err.lines().count() == 1);
    assert!(api.seen().is_empty(), "nothing reaches the API");

    let no_admin = scratch.write("plain.toml", &config_text(None));
    let out = ctl(&["--config", no_admin.to_str().unwrap(), "status"], None);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("no [admin] section"),
        "{}",
        stderr(&out)
    );

    let missing = scratch.dir.path().join("missing.token");
    let out = ctl(
        &[
            "--url",
            &api.url(),
            "--token-file",
            missing.to_str().unwrap(),
            "status",
        ],
        None,
    );
    assert_exit(&out, 2);
    assert!(
        stderr(&out).starts_with("ponte ctl: token file "),
        "{}",
        stderr(&out)
    );

    let out = ctl(&["--config", "/nonexistent/ponte.toml", "status"], None);
    assert_exit(&out, 2);
}

#[test]
fn an_unreachable_api_exits_3() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let scratch = Scratch::new();
    let url = format!("http://127.0.0.1:{port}");
    let token = scratch.token();
    let out = ctl(
        &[
            "--url",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "status",
        ],
        None,
    );
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(
        err.starts_with("ponte ctl: ") && err.lines().count() == 1,
        "{err}"
    );
    assert_no_token(&out);
}

/// A valid configuration, with an [admin] section if given one.
fn config_text(admin: Option<(SocketAddr, &Path)>) -> String {
    let mut text = String::from(
        r#"
[state]
path = "var/state"

[[listener]]
name = "imap"
protocol = "imap"
bind = "127.0.0.1:1143"
default_domain = "pec.example"

[backend.legacy]
imap = "imaps://legacy.example:993"

[backend.new]
imap = "imaps://new.example:993"

[domain."pec.example"]
state = "legacy"
"#,
    );
    if let Some((bind, token)) = admin {
        text.push_str(&format!(
            "\n[admin]\nbind = \"{bind}\"\ntoken_file = {:?}\n",
            token.to_str().unwrap()
        ));
    }
    text
}
