//! The reply inbox of one connection: one subscription to `<inbox>.*`,
//! shared by every command this instance sends (core requests and durable
//! commands); each send waits on a token of its own.
//!
//! async-nats's own request inbox hands over only the first message of a
//! request. Catga's takes more: liveness signals (`Catga-Status: working`,
//! counted) until the final reply, which it hands over whole — a "no
//! responders" status from the server included. A publish the server
//! refused (a permissions violation, reported on the connection, not on
//! the inbox) ends every wait on that subject at once with the server's
//! reason, instead of a timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use async_nats::Subject;
use futures_util::StreamExt;
use tokio::sync::{broadcast, oneshot};

use crate::error::{Error, Result};
use crate::transport::connection::Refusal;
use crate::transport::envelope::{ReplyPart, read_reply};
use crate::transport::io::Io;

/// The reply inbox of one connection.
pub(crate) struct Inbox {
    prefix: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Slot>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the inbox keeps for one waiting send.
struct Slot {
    /// The subject it was sent to (whose refusal ends the wait).
    subject: &'static str,
    reply: oneshot::Sender<Arrived>,
    signals: Arc<AtomicU32>,
}

/// How a wait ends.
pub(crate) enum Arrived {
    /// The final reply (or the server's "no responders").
    Reply(async_nats::Message),
    /// The server refused the publish to the subject: its reason.
    Refused(String),
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A registered wait for one reply; dropping it forgets the token (a reply
/// or signal that comes later is dropped).
pub(crate) struct Waiting {
    inbox: Arc<Inbox>,
    token: u64,
    /// Where the responder sends signals and the reply.
    pub(crate) reply_to: Subject,
    /// The final reply (or the server's "no responders"), or the server's
    /// refusal of the publish.
    pub(crate) reply: oneshot::Receiver<Arrived>,
    signals: Arc<AtomicU32>,
}

impl Waiting {
    /// Liveness signals received so far.
    pub(crate) fn signals(&self) -> u32 {
        self.signals.load(Ordering::Relaxed)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.inbox.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.token);
    }
}

impl Inbox {
    /// Subscribe to a fresh inbox prefix on `client`.
    /// Its messages are read on the I/O thread, so a signal is counted
    /// when it comes even while the program's runtime is busy; so are the
    /// subjects the server refused to let this connection publish to.
    pub(crate) async fn subscribe(
        client: &async_nats::Client,
        io: &Io,
        mut refused: broadcast::Receiver<Refusal>,
    ) -> Result<Arc<Inbox>> {
        let prefix = client.new_inbox();
        let mut subscriber = client.subscribe(format!("{prefix}.*")).await.map_err(|e| Error::Transport {
            subject: "_INBOX",
            reason: format!("cannot subscribe to the reply inbox: {e}"),
        })?;
        Ok(Arc::new_cyclic(|weak: &Weak<Inbox>| {
            let weak = weak.clone();
            let task = io.spawn(async move {
                loop {
                    tokio::select! {
                        message = subscriber.next() => {
                            let (Some(message), Some(inbox)) = (message, weak.upgrade()) else { return };
                            inbox.deliver(message);
                        }
                        refusal = refused.recv() => match (refusal, weak.upgrade()) {
                            (Ok(refusal), Some(inbox)) => inbox.refuse(&refusal),
                            (Err(broadcast::error::RecvError::Lagged(_)), Some(_)) => {}
                            _ => return,
                        },
                    }
                }
            });
            Inbox { prefix, next: AtomicU64::new(0), waiting: Mutex::new(HashMap::new()), task }
        }))
    }

    /// End every wait on the refused subject with the server's reason.
    fn refuse(&self, refusal: &Refusal) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if !refusal.publish {
            return;
        }
        let refused: Vec<u64> =
            waiting.iter().filter(|(_, slot)| slot.subject == refusal.subject).map(|(token, _)| *token).collect();
        for token in refused {
            if let Some(slot) = waiting.remove(&token) {
                let _ = slot.reply.send(Arrived::Refused(refusal.reason.clone()));
            }
        }
    }

    /// A signal is counted; anything else is the final message of its token.
    fn deliver(&self, message: async_nats::Message) {
        let Some(token) = message.subject.rsplit('.').next().and_then(|t| t.parse::<u64>().ok()) else {
            return;
        };
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(read_reply(&message), ReplyPart::Working) {
            if let Some(slot) = waiting.get(&token) {
                slot.signals.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        match waiting.remove(&token) {
            Some(slot) => drop(slot.reply.send(Arrived::Reply(message))),
            None => tracing::debug!(subject = %message.subject, "reply for nobody (its sender gave up)"),
        }
    }

    /// Register a wait for one reply to a message sent to `subject`.
    pub(crate) fn wait(self: &Arc<Self>, subject: &'static str) -> Waiting {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, reply) = oneshot::channel();
        let signals = Arc::new(AtomicU32::new(0));
        let slot = Slot { subject, reply: tx, signals: signals.clone() };
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(token, slot);
        let reply_to = Subject::from(format!("{}.{token}", self.prefix));
        Waiting { inbox: self.clone(), token, reply_to, reply, signals }
    }
}
