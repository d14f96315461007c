//! A client for the admin API through curl (a real HTTP client): method,
//! path, optional body; returns the status code and the JSON body.
#![allow(dead_code)]

use std::net::SocketAddr;

use serde_json::Value;

use super::clients::curl;
use super::world::ADMIN_TOKEN;

pub struct Api {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Api {
        Api {
            addr,
            token: Some(ADMIN_TOKEN.to_string()),
        }
    }

    /// Sends the request; `(status, body)` with a non-JSON body as a string.
    pub fn call(&self, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, Value) {
        let url = format!("http://{}{path}", self.addr);
        let mut args: Vec<String> = vec![
            "-X".into(),
            method.into(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        if let Some(t) = &self.token {
            args.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
        }
        if let Some((content_type, data)) = body {
            args.extend([
                "-H".into(),
                format!("Content-Type: {content_type}"),
                "--data-binary".into(),
                data.into(),
            ]);
        }
        args.push(url);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = curl(&refs).expect_ok(&format!("{method} {path}")).stdout;
        let (text, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        let code = code.trim().parse().unwrap_or(0);
        let json = serde_json::from_str(text).unwrap_or(Value::String(text.to_string()));
        (code, json)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None)
    }

    pub fn send_json(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        self.call(method, path, Some(("application/json", &body.to_string())))
    }
}
