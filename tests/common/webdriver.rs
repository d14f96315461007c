//! A real browser for tests: Debian's headless Chromium driven through
//! chromedriver's W3C WebDriver HTTP protocol (JSON over ureq). The
//! driver runs on a free loopback port in its own process group, so that
//! dropping the [`Browser`] ends the driver and every browser process.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The W3C key under which an element reference travels.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// The Tab key, for [`Browser::press`].
pub const TAB: &str = "\u{E004}";
/// The Enter key, for [`Browser::press`].
pub const ENTER: &str = "\u{E007}";
/// Longest wait for an element or a page.
const WAIT: Duration = Duration::from_secs(15);

pub struct Browser {
    driver: Child,
    /// chromedriver's log, shown if the browser does not start.
    logs: tempfile::TempDir,
    base: String,
    session: String,
    agent: ureq::Agent,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of `width` ×
    /// `height` pixels. Panics with the reason if either cannot start.
    pub fn start(width: u32, height: u32) -> Browser {
        Browser::start_in(width, height, None)
    }

    /// As [`Browser::start`], with the browser's local time in the time
    /// zone `tz` (e.g. `Europe/Rome`) instead of the machine's.
    pub fn start_in_zone(width: u32, height: u32, tz: &str) -> Browser {
        Browser::start_in(width, height, Some(tz))
    }

    fn start_in(width: u32, height: u32, tz: Option<&str>) -> Browser {
        let port = super::net::free_port();
        let logs = tempfile::Builder::new()
            .prefix("chromedriver-")
            .tempdir()
            .expect("tempdir");
        let log = logs.path().join("chromedriver.log");
        let mut command = Command::new("chromedriver");
        // The browser inherits the driver's environment.
        if let Some(tz) = tz {
            command.env("TZ", tz);
        }
        let driver = command
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver (apt-get install chromium chromium-driver)");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut b = Browser {
            driver,
            logs,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            agent,
        };
        b.wait_ready();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // Root in a container: no sandbox; no GPU; a fixed window.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run",
                         format!("--window-size={width},{height}")]
            }
        }}});
        let v = b.try_send("POST", "/session", Some(caps));
        b.session = match v.as_ref().ok().and_then(|v| v["sessionId"].as_str()) {
            Some(id) => id.to_string(),
            None => {
                let log = std::fs::read_to_string(b.logs.path().join("chromedriver.log"));
                panic!(
                    "no browser session: {v:?}\nchromedriver log:\n{}",
                    log.unwrap_or_default()
                )
            }
        };
        b
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Ok(mut r) = self.agent.get(format!("{}/status", self.base)).call() {
                let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
                if v["value"]["ready"] == true {
                    return;
                }
            }
            assert!(start.elapsed() < WAIT, "chromedriver not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One WebDriver command; its `value`, or `Err` with the error value.
    fn try_send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}{path}", self.base);
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .content_type("application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        };
        let mut r = sent.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let ok = r.status().is_success();
        let v: Value = r
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_json()
            .unwrap_or(Value::Null);
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_send(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.send(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's HTML as the browser has it now.
    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element `css` selects, waiting for it to appear.
    pub fn find(&self, css: &str) -> String {
        let start = Instant::now();
        let path = format!("/session/{}/element", self.session);
        loop {
            let found = self.try_send(
                "POST",
                &path,
                Some(json!({"using": "css selector", "value": css})),
            );
            match found {
                Ok(v) => {
                    return v[ELEMENT]
                        .as_str()
                        .unwrap_or_else(|| panic!("no element id in {v}"))
                        .to_string()
                }
                Err(e) if start.elapsed() > WAIT => {
                    panic!("no element {css:?}: {e}\npage:\n{}", self.source())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn click(&self, css: &str) {
        let id = self.find(css);
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Types `text` into the element (keys, as a user would).
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The element's rendered text. Tried again if the page changed
    /// between finding the element and reading it (a navigation, a live
    /// update).
    pub fn text(&self, css: &str) -> String {
        let start = Instant::now();
        loop {
            let id = self.find(css);
            let path = format!("/session/{}/element/{id}/text", self.session);
            match self.try_send("GET", &path, None) {
                Ok(v) => return v.as_str().unwrap_or_default().to_string(),
                Err(e) if start.elapsed() > WAIT => panic!("text of {css:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Waits until the page's text (`body`) contains `needle`.
    pub fn wait_text(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let text = self.text("body");
            if text.contains(needle) {
                return text;
            }
            assert!(
                start.elapsed() < WAIT,
                "{needle:?} not on the page {}:\n{text}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a script in the page; its return value.
    pub fn execute(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Runs an asynchronous script in the page: it gets a callback as its
    /// last argument (`arguments[arguments.length - 1]`) and the value it
    /// is called with is returned. Waits up to a minute.
    pub fn execute_async(&self, script: &str) -> Value {
        self.cmd("POST", "/timeouts", Some(json!({ "script": 60_000 })));
        self.cmd(
            "POST",
            "/execute/async",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Presses and releases each key of `keys` in turn, at whatever has
    /// the keyboard focus, as a user would (no element is targeted).
    /// Special keys are WebDriver code points: [`TAB`], [`ENTER`].
    pub fn press(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|k| {
                let k = k.to_string();
                [
                    json!({"type": "keyDown", "value": k}),
                    json!({"type": "keyUp", "value": k}),
                ]
            })
            .collect();
        self.cmd(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        );
    }

    pub fn cookies(&self) -> Value {
        self.cmd("GET", "/cookie", None)
    }

    pub fn set_window(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// Shows pages as a phone of `width` × `height` CSS pixels would
    /// (the viewport meta tag applies); `None` goes back to the window.
    /// Chromium keeps even a headless window at least 500 pixels wide, so
    /// a phone's width needs its device emulation (DevTools, through
    /// chromedriver's `goog/cdp` command).
    pub fn emulate_phone(&self, size: Option<(u32, u32)>) {
        let (cmd, params) = match size {
            Some((width, height)) => (
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": true}),
            ),
            None => ("Emulation.clearDeviceMetricsOverride", json!({})),
        };
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({ "cmd": cmd, "params": params })),
        );
    }

    /// A PNG of the viewport, written to `path`; returns its bytes.
    pub fn screenshot(&self, path: &Path) -> Vec<u8> {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 screenshot"))
            .expect("screenshot is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("artefact directory");
        }
        std::fs::write(path, &png).expect("write screenshot");
        png
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_send("DELETE", &format!("/session/{}", self.session), None);
        }
        // The driver's process group: chromedriver and any browser left.
        let pgid = self.driver.id() as i32;
        // The test crate may use unsafe; ponte itself forbids it.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}
