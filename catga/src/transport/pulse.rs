//! Signs of life of the messages this instance holds, so a sender learns
//! quickly when the instance holding its request died — and never re-sends
//! one that is only slow.
//!
//! - A core request whose sender asked for them (`Catga-Liveness`) gets a
//!   `Catga-Status: working` signal on its reply subject every [`TICK`]
//!   from the moment it arrives — while it waits for a handling slot, too —
//!   until its reply is sent. The first signal goes out one tick after
//!   arrival: a request answered sooner costs no extra message.
//! - A durable message being handled gets a progress acknowledgement
//!   (`+WPI`) every `ack_wait / 4`, so the server redelivers it only when
//!   its instance stopped (up to [`PROGRESS_LIMIT`], past which it is taken
//!   as hung).
//!
//! The signals go out from the instance's I/O thread ([`super::io`]), as
//! the requests come in there: handlers that keep the program's runtime
//! busy (CPU-heavy work, blocking calls) do not silence them. What a held
//! message costs on the hot path is one insert and one remove in a map.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Subject;
use bytes::Bytes;

use crate::transport::envelope::working;
use crate::transport::io::Io;

/// How often a held request is signalled. A sender takes its responder for
/// dead after [`Config::request_liveness`](crate::Config::request_liveness)
/// (400 ms by default) without one: four ticks, so three signals may be
/// late or lost before a live responder is given up on.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// How long a durable handling is kept alive with progress acks; past it,
/// it is taken as hung and the server redelivers the message.
pub(crate) const PROGRESS_LIMIT: Duration = Duration::from_secs(600);

/// What to send for a held message.
#[derive(Clone, Copy)]
pub(crate) enum Signal {
    /// `Catga-Status: working` to a core request's reply subject.
    Working,
    /// `+WPI` to a durable message's acknowledgement subject.
    Progress,
}

/// The pulse of one instance: the messages it holds and the task (on the
/// I/O thread) that signals them. Stops when dropped.
pub(crate) struct Pulse {
    held: Arc<Held>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Held {
    entries: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

struct Entry {
    to: Subject,
    signal: Signal,
    every: Duration,
    due: Instant,
    until: Option<Instant>,
}

/// One held message: signalled while alive.
pub(crate) struct Beat {
    held: Arc<Held>,
    id: u64,
}

impl Drop for Beat {
    fn drop(&mut self) {
        self.held.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pulse {
    /// Start signalling, on `io`'s thread, through `client`.
    pub(crate) fn start(io: &Io, client: async_nats::Client) -> Pulse {
        let held = Arc::new(Held::default());
        let task = io.spawn(beat(held.clone(), client));
        Pulse { held, task }
    }

    /// Hold a message: `signal` goes to `to` every `every`, the first one
    /// `every` from now, until the returned [`Beat`] is dropped.
    pub(crate) fn hold(&self, to: Subject, signal: Signal, every: Duration) -> Beat {
        Held::hold(&self.held, to, signal, every)
    }
}

/// The pulse's task: a tick every [`TICK`], sending what is due.
async fn beat(held: Arc<Held>, client: async_nats::Client) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = Vec::new();
    loop {
        tick.tick().await;
        held.due(Instant::now(), &mut due);
        for (to, signal) in due.drain(..) {
            let sent = match signal {
                Signal::Working => client.publish_with_headers(to, working(), Bytes::new()).await,
                Signal::Progress => client.publish(to, Bytes::from_static(b"+WPI")).await,
            };
            if let Err(e) = sent {
                tracing::debug!(error = %e, "nats: a liveness signal was not sent");
            }
        }
    }
}

impl Held {
    fn hold(held: &Arc<Held>, to: Subject, signal: Signal, every: Duration) -> Beat {
        let id = held.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let until = matches!(signal, Signal::Progress).then(|| now + PROGRESS_LIMIT);
        let entry = Entry { to, signal, every, due: now + every, until };
        held.entries.lock().unwrap_or_else(|e| e.into_inner()).insert(id, entry);
        Beat { held: held.clone(), id }
    }

    /// The signals due at `now`, into `out`; each entry's next one is
    /// scheduled. An entry past its limit is signalled no more.
    fn due(&self, now: Instant, out: &mut Vec<(Subject, Signal)>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for entry in entries.values_mut() {
            if entry.due > now || entry.until.is_some_and(|until| until <= now) {
                continue;
            }
            entry.due = now + entry.every;
            out.push((entry.to.clone(), entry.signal));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_message_is_signalled_from_one_period_on_until_released() {
        let held = Arc::new(Held::default());
        let beat = Held::hold(&held, Subject::from("_INBOX.a.1"), Signal::Working, TICK);
        let start = Instant::now();
        let mut out = Vec::new();
        held.due(start, &mut out);
        assert!(out.is_empty(), "nothing before the first period");
        held.due(start + TICK, &mut out);
        assert_eq!(out.len(), 1);
        held.due(start + TICK + TICK / 2, &mut out);
        assert_eq!(out.len(), 1, "not again within a period");
        drop(beat);
        held.due(start + TICK * 5, &mut out);
        assert_eq!(out.len(), 1, "nothing once released");
    }

    #[test]
    fn progress_acks_stop_at_the_limit() {
        let held = Arc::new(Held::default());
        let _beat = Held::hold(&held, Subject::from("$JS.ACK.x"), Signal::Progress, Duration::from_secs(1));
        let mut out = Vec::new();
        held.due(Instant::now() + PROGRESS_LIMIT + Duration::from_secs(1), &mut out);
        assert!(out.is_empty());
    }
}
