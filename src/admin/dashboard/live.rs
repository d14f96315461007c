//! Live updates: a server-sent event stream that sends the main page's
//! live sections, freshly rendered, every [`EVERY`]. The page's script
//! swaps them in; without the script the page is a plain page with a
//! reload link. Streams are capped per session and in total, and end
//! when their session does.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;

use super::handlers::refused;
use super::overview::Overview;
use super::pages;
use super::session::{Signed, StreamSlot};
use crate::admin::AdminState;

/// How often the figures are sent.
pub const EVERY: Duration = Duration::from_secs(5);
/// How long one rendering serves every stream.
const FRESH: Duration = Duration::from_secs(2);

/// One of the dashboard's stream slots (all sessions together).
struct GlobalSlot(Arc<AtomicUsize>);

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Stream {
    state: Arc<AdminState>,
    who: Signed,
    first: bool,
    done: bool,
    _slots: (StreamSlot, GlobalSlot),
}

pub async fn events(State(s): State<Arc<AdminState>>, who: Signed) -> Response {
    let Some(mine) = s.dashboard.sessions.open_stream(&who) else {
        return refused(StatusCode::TOO_MANY_REQUESTS, "Too many live pages open.");
    };
    let all = s.dashboard.streams.clone();
    let global = GlobalSlot(all.clone());
    if all.fetch_add(1, Ordering::Relaxed) >= super::MAX_STREAMS {
        return refused(StatusCode::TOO_MANY_REQUESTS, "Too many live pages open.");
    }
    let start = Stream {
        state: s,
        who,
        first: true,
        done: false,
        _slots: (mine, global),
    };
    let events = stream::unfold(start, |mut st| async move {
        if st.done {
            return None;
        }
        if !st.first {
            let stop = st.state.dashboard.stop.clone();
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(EVERY) => {}
            }
        }
        let first = std::mem::replace(&mut st.first, false);
        let event = next_event(&mut st, first).await;
        Some((Ok::<Event, Infallible>(event), st))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The next event: fresh sections, or `signed-out` (and the end) once the
/// session is gone. A stream's `first` event is rendered anew: its page
/// was just loaded (often right after an action), and a shared rendering
/// from before that would undo the page's own news until the next tick.
async fn next_event(st: &mut Stream, first: bool) -> Event {
    if !st.state.dashboard.sessions.alive(&st.who) {
        st.done = true;
        return Event::default().event("signed-out").data("");
    }
    match rendered(&st.state, first).await {
        Ok(json) => Event::default().event("update").data(json.as_str()),
        Err(e) => Event::default()
            .event("problem")
            .data(e.to_string().replace(['\r', '\n'], " ")),
    }
}

/// The live sections as JSON, shared by every stream for [`FRESH`]: the
/// cost of a tick does not grow with the number of pages open. `anew`
/// renders them whatever the shared copy's age (and shares the result).
async fn rendered(s: &AdminState, anew: bool) -> Result<Arc<String>, crate::control::ControlError> {
    let cache = &s.dashboard.rendered;
    if let Some((at, json)) = cache.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        if !anew && at.elapsed() < FRESH {
            return Ok(json.clone());
        }
    }
    // Stamped with when its reading began: a slow rendering must not
    // replace one that read the state later (an action's page's own).
    let began = Instant::now();
    let o = Overview::gather(&s.control).await?;
    let h = &s.dashboard.history;
    let json = Arc::new(pages::live_json(&o, &h.samples(), h.interval.as_secs()).to_string());
    let mut shared = cache.lock().unwrap_or_else(|p| p.into_inner());
    if shared.as_ref().is_none_or(|(at, _)| *at <= began) {
        *shared = Some((began, json.clone()));
    }
    Ok(json)
}
