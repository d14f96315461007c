//! One blocking HTTP call to the admin API with ureq: the bearer token on
//! every request, no proxy, no redirects (the token stays with the API),
//! a time budget per call, and every status returned as a [`Reply`].

use std::time::Duration;

use ureq::http::Response;
use ureq::typestate::WithBody;
use ureq::{Agent, Body as UreqBody, RequestBuilder};

use super::plan::{Body, Call, Method};
use super::target::Target;
use super::Failure;

/// Largest answer read (a full mailbox list of a big domain fits).
const MAX_BODY: u64 = 512 * 1024 * 1024;

/// Longest wait for the API to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The status and body of an answer, whatever the status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

pub fn send(target: &Target, call: &Call) -> Result<Reply, Failure> {
    let agent = agent(call);
    let url = format!("{}{}", target.base, call.path);
    let auth = format!("Bearer {}", target.token.expose());
    let sent = match call.method {
        Method::Get => headers(agent.get(&url), &auth).call(),
        Method::Delete => headers(agent.delete(&url), &auth).call(),
        Method::Put => with_body(headers(agent.put(&url), &auth), &call.body),
        Method::Post => with_body(headers(agent.post(&url), &auth), &call.body),
    };
    let mut response = sent.map_err(|e| failure(&target.base, e))?;
    read(&mut response).map_err(|e| failure(&target.base, e))
}

fn agent(call: &Call) -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(call.timeout))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .build()
        .into()
}

fn headers<B>(request: RequestBuilder<B>, auth: &str) -> RequestBuilder<B> {
    request
        .header("Authorization", auth)
        .header("Accept", "application/json")
}

fn with_body(
    request: RequestBuilder<WithBody>,
    body: &Body,
) -> Result<Response<UreqBody>, ureq::Error> {
    match body {
        Body::Empty => request.send_empty(),
        Body::Json(value) => request
            .content_type("application/json")
            .send(value.to_string()),
        Body::Csv(text) => request.content_type("text/csv").send(text.as_str()),
    }
}

fn read(response: &mut Response<UreqBody>) -> Result<Reply, ureq::Error> {
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()?;
    Ok(Reply { status, body })
}

/// A transport error: a bad URL is the caller's (2), the rest mean the API
/// could not be reached or did not answer in time (3).
fn failure(base: &str, e: ureq::Error) -> Failure {
    match e {
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
            Failure::Usage(format!("bad request to {base}: {e}"))
        }
        ureq::Error::Timeout(_) => Failure::Unreachable(format!(
            "no answer from the admin API at {base} in time ({e})"
        )),
        _ => Failure::Unreachable(format!("cannot reach the admin API at {base}: {e}")),
    }
}
