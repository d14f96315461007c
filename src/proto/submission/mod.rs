//! SMTP submission (RFC 6409): being written.

use crate::net::stream::Stream;
use crate::proto::Outcome;
use crate::server::{ConnInfo, Ctx};

pub async fn serve(_stream: Stream, _conn: &ConnInfo, _ctx: &Ctx) -> Outcome {
    Outcome::NoLogin("submission is not served by this build yet".into())
}
