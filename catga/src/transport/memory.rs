//! The in-memory transport: a bus shared by the instances of one process,
//! with the routing rules of NATS.
//!
//! - A command goes to exactly one member of its queue group, round robin;
//!   no member means [`Error::NoHandler`] at once (NATS "no responders").
//! - An event goes to every broadcast subscriber and to one member of each
//!   queue group.
//! - Values pass as values when sender and handler share the Rust type; when
//!   they only share the contract (two copies of it, e.g. a client crate),
//!   the message goes through its codec exactly as over NATS.
//!
//! A command handler runs on the caller's task (that is what makes an
//! in-process `send` cost about as much as a function call); if the caller
//! times out or is dropped, the handling is cancelled with it. Over NATS the
//! handler would finish and its late reply be dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

use crate::codec::Codec;
use crate::dispatch::Delivery;
use crate::error::{Error, HandlerError, Result};
use crate::future::{BoxFuture, Deadline};
use crate::instance::{InFlight, Instance};
use crate::message::{Command, Event};
use crate::metadata::Metadata;
use crate::receiver::Receiver;
use crate::registry::{CommandEntry, EventEntry, HandlerKind, HandlerRecord};
use crate::transport::Encoded;

/// A message bus for instances in one process. Cloning shares it.
///
/// ```
/// # #[tokio::main] async fn main() -> catga::Result<()> {
/// use catga::{Catga, transport::memory::MemoryBus};
/// let bus = MemoryBus::new();
/// let a = Catga::builder().service("orders").memory_bus(bus.clone()).start().await?;
/// let b = Catga::builder().service("orders").memory_bus(bus.clone()).start().await?;
/// // a and b now split each command subject's traffic between them.
/// # a.shutdown().await; b.shutdown().await; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryBus {
    inner: Arc<Bus>,
}

#[derive(Default)]
struct Bus {
    /// Read on every message without locking; replaced on (un)subscribe.
    routes: ArcSwap<Routes>,
    /// Serialises the rare writers.
    write: Mutex<()>,
    /// Who watches which subject's encoded events (see [`MemoryBus::watch`]).
    watchers: Mutex<Vec<Watcher>>,
    /// A test harness's view of the bus ([`crate::testing`]), if any.
    tap: OnceLock<Arc<dyn Tap>>,
}

/// What a test harness ([`crate::testing`]) sees of a bus, and asks it.
pub(crate) trait Tap: Send + Sync {
    /// A command was sent (`published`: an event published), as its codec
    /// wrote it.
    fn saw(&self, published: bool, subject: &'static str, payload: &[u8], meta: &Metadata);
    /// The stand-in for the commands of `subject`, if the test gave one.
    fn stub(&self, subject: &'static str) -> Option<Stub>;
}

/// A test's stand-in for a command's handler: the command's bytes to the
/// reply's, or an error.
pub(crate) type Stub = Arc<dyn Fn(&[u8]) -> std::result::Result<Vec<u8>, HandlerError> + Send + Sync>;

/// A subject and where its encoded events go.
type Watcher = (&'static str, tokio::sync::mpsc::UnboundedSender<Vec<u8>>);

#[derive(Default, Clone)]
struct Routes {
    subjects: FxHashMap<&'static str, SubjectRoutes>,
}

#[derive(Default, Clone)]
struct SubjectRoutes {
    /// Command queue groups; the first with a live member serves.
    commands: Vec<Group>,
    /// Broadcast event subscribers.
    broadcast: Vec<Receiver>,
    /// Event queue groups: one member of each gets each event.
    queues: Vec<Group>,
}

#[derive(Clone)]
struct Group {
    name: Arc<str>,
    members: Vec<Receiver>,
    /// Survives table rebuilds so round robin stays fair.
    cursor: Arc<AtomicUsize>,
}

/// A handling admitted by a live, non-draining instance.
type Target = (InFlight, &'static HandlerRecord);

/// Admit a handling through `receiver` (the instance's admission protocol).
fn admit(receiver: &Receiver) -> Option<Target> {
    Some((receiver.admit()?, receiver.record()))
}

impl Group {
    /// The next live member that admits the handling, round robin.
    fn pick(&self) -> Option<Target> {
        let n = self.members.len();
        for _ in 0..n {
            // One member (the common in-process case): no shared counter, no division.
            let i = if n == 1 { 0 } else { self.cursor.fetch_add(1, Ordering::Relaxed) % n };
            if let Some(target) = admit(&self.members[i]) {
                return Some(target);
            }
        }
        None
    }
}

impl MemoryBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide bus that instances use unless given another: like
    /// an embedded server every instance in the process connects to.
    pub fn global() -> Self {
        static GLOBAL: OnceLock<MemoryBus> = OnceLock::new();
        GLOBAL.get_or_init(MemoryBus::new).clone()
    }

    fn update(&self, change: impl FnOnce(&mut Routes)) {
        let _writer = self.inner.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes = Routes::clone(&self.inner.routes.load());
        change(&mut routes);
        // Instances dropped without `shutdown` leave dead members: prune them.
        for s in routes.subjects.values_mut() {
            s.broadcast.retain(Receiver::is_live);
            for g in s.commands.iter_mut().chain(s.queues.iter_mut()) {
                g.members.retain(Receiver::is_live);
            }
            s.commands.retain(|g| !g.members.is_empty());
            s.queues.retain(|g| !g.members.is_empty());
        }
        routes.subjects.retain(|_, s| !(s.commands.is_empty() && s.broadcast.is_empty() && s.queues.is_empty()));
        self.inner.routes.store(Arc::new(routes));
    }

    pub(crate) fn subscribe(&self, instance: &Arc<Instance>, handlers: &[&'static HandlerRecord]) {
        self.update(|routes| {
            for &record in handlers {
                let member = Receiver::new(instance, record);
                let s = routes.subjects.entry(record.subject).or_default();
                match (record.kind, record.queue_group(instance.service())) {
                    (HandlerKind::Event, None) => s.broadcast.push(member),
                    (kind, Some(queue)) => {
                        let groups = if kind == HandlerKind::Command { &mut s.commands } else { &mut s.queues };
                        match groups.iter_mut().find(|g| &*g.name == queue) {
                            Some(g) => g.members.push(member),
                            None => {
                                if kind == HandlerKind::Command && !groups.is_empty() {
                                    tracing::warn!(
                                        subject = record.subject,
                                        queue,
                                        "a second queue group subscribes to this command subject; \
                                         over NATS both groups would run every command — only the first is used here"
                                    );
                                }
                                groups.push(Group { name: queue.into(), members: vec![member], cursor: Arc::default() })
                            }
                        }
                    }
                    (HandlerKind::Command, None) => unreachable!("a command always has a queue group"),
                }
            }
        });
    }

    pub(crate) fn unsubscribe(&self, instance: &Instance) {
        let mine = |m: &Receiver| m.is_for(instance);
        self.update(|routes| {
            for s in routes.subjects.values_mut() {
                s.broadcast.retain(|m| !mine(m));
                for g in s.commands.iter_mut().chain(s.queues.iter_mut()) {
                    g.members.retain(|m| !mine(m));
                }
            }
        });
    }

    fn pick_command(&self, subject: &'static str) -> Option<Target> {
        let routes = self.inner.routes.load();
        routes.subjects.get(subject)?.commands.iter().find_map(Group::pick)
    }

    /// Let a test harness see (and stand in on) this bus; once.
    pub(crate) fn set_tap(&self, tap: Arc<dyn Tap>) {
        let _ = self.inner.tap.set(tap);
    }

    /// Route a command to one handler and start its handling (it runs
    /// when the returned future is polled, on the caller's task).
    pub(crate) fn send<C: Command>(&self, command: C, meta: Metadata, timeout: Duration) -> Pending<C::Reply> {
        if let Some(tap) = self.inner.tap.get() {
            return self.send_tapped(&**tap, command, meta, timeout);
        }
        self.route(command, meta, timeout)
    }

    /// [`send`](MemoryBus::send) on a bus a test harness watches: recorded,
    /// and answered by the test's stand-in if it gave one.
    #[cold]
    fn send_tapped<C: Command>(
        &self,
        tap: &dyn Tap,
        command: C,
        meta: Metadata,
        timeout: Duration,
    ) -> Pending<C::Reply> {
        let payload = match C::Codec::encode(&command) {
            Ok(payload) => payload,
            Err(e) => {
                let handling = Handling::Failed(Some(Box::new(codec_error::<C>("encode", C::SUBJECT, e))));
                return Pending { handling, subject: C::SUBJECT, deadline: Deadline::new(timeout) };
            }
        };
        tap.saw(false, C::SUBJECT, &payload, &meta);
        match tap.stub(C::SUBJECT) {
            Some(stub) => {
                let answer: BoxFuture<'static, std::result::Result<Vec<u8>, HandlerError>> =
                    Box::pin(async move { stub(&payload) });
                let handling = Handling::Raw(answer, decode_reply::<C>);
                Pending { handling, subject: C::SUBJECT, deadline: Deadline::new(timeout) }
            }
            None => self.route(command, meta, timeout),
        }
    }

    fn route<C: Command>(&self, command: C, meta: Metadata, timeout: Duration) -> Pending<C::Reply> {
        let handling = match self.pick_command(C::SUBJECT) {
            None => Handling::Failed(Some(Box::new(Error::NoHandler { subject: C::SUBJECT }))),
            Some((in_flight, record)) => {
                match record.entry.as_any().downcast_ref::<CommandEntry<C>>() {
                    Some(entry) => Handling::Typed((entry.thunk)(Delivery::new(command, record, in_flight, meta))),
                    // Same contract, another Rust type: through the codec.
                    None => match C::Codec::encode(&command) {
                        Ok(payload) => {
                            Handling::Raw(record.entry.call_raw(&payload, record, in_flight, meta), decode_reply::<C>)
                        }
                        Err(e) => Handling::Failed(Some(Box::new(codec_error::<C>("encode", C::SUBJECT, e)))),
                    },
                }
            }
        };
        Pending { handling, subject: C::SUBJECT, deadline: Deadline::new(timeout) }
    }

    /// Route a command already encoded to one handler, through its bytes
    /// path (as a client with another Rust type of the contract would).
    pub(crate) async fn send_encoded(&self, message: Encoded<'_>, meta: Metadata, left: Duration) -> Result<Vec<u8>> {
        let subject = message.subject;
        if let Some(tap) = self.inner.tap.get() {
            tap.saw(false, subject, &message.payload, &meta);
            if let Some(stub) = tap.stub(subject) {
                return stub(&message.payload).map_err(|error| Error::Handler { subject, error });
            }
        }
        let Some((in_flight, record)) = self.pick_command(subject) else { return Err(Error::NoHandler { subject }) };
        let handling = record.entry.call_raw(&message.payload, record, in_flight, meta);
        match tokio::time::timeout(left, handling).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(Error::Handler { subject, error }),
            Err(_) => Err(Error::Timeout { subject, after: left }),
        }
    }

    /// Every event published on `subject` through the encoded path from now
    /// on (what a saga outcome's waiter reads), until the receiver is dropped.
    pub(crate) fn watch(&self, subject: &'static str) -> tokio::sync::mpsc::UnboundedReceiver<Vec<u8>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.inner.watchers.lock().unwrap_or_else(|e| e.into_inner()).push((subject, tx));
        rx
    }

    /// Deliver an event already encoded to its subscribers, through their
    /// bytes path, and to its watchers.
    pub(crate) fn publish_encoded(&self, message: &Encoded<'_>, meta: Metadata) {
        if let Some(tap) = self.inner.tap.get() {
            tap.saw(true, message.subject, &message.payload, &meta);
        }
        {
            let mut watchers = self.inner.watchers.lock().unwrap_or_else(|e| e.into_inner());
            watchers.retain(|(_, tx)| !tx.is_closed());
            for (_, tx) in watchers.iter().filter(|(subject, _)| *subject == message.subject) {
                let _ = tx.send(message.payload.clone());
            }
        }
        let routes = self.inner.routes.load();
        let Some(s) = routes.subjects.get(message.subject) else { return };
        let broadcast = s.broadcast.iter().filter_map(admit);
        for (in_flight, record) in broadcast.chain(s.queues.iter().filter_map(Group::pick)) {
            // The future is already complete: the raw entry starts the
            // handling on its own task.
            drop(record.entry.call_raw(&message.payload, record, in_flight, meta.clone()));
        }
    }

    pub(crate) fn publish<E: Event>(&self, event: E, meta: Metadata) {
        if let Some(tap) = self.inner.tap.get()
            && let Ok(payload) = E::Codec::encode(&event)
        {
            tap.saw(true, E::SUBJECT, &payload, &meta);
        }
        let routes = self.inner.routes.load();
        let Some(s) = routes.subjects.get(E::SUBJECT) else {
            tracing::trace!(subject = E::SUBJECT, "event published with no subscriber");
            return;
        };
        let broadcast = s.broadcast.iter().filter_map(admit);
        let targets = broadcast.chain(s.queues.iter().filter_map(Group::pick));
        // Clone for every target but the last, which takes the original.
        let mut pending = None;
        for target in targets {
            if let Some(previous) = pending.replace(target) {
                deliver(previous, event.clone(), meta.clone());
            }
        }
        if let Some(last) = pending {
            deliver(last, event, meta);
        }
    }
}

/// A command's handling, started: the caller's side of one `send`.
///
/// Hand-written rather than `async`: it is what every in-process send
/// awaits, and it stays a few words big (the handling itself is boxed).
pub(crate) struct Pending<R> {
    handling: Handling<R>,
    subject: &'static str,
    /// The time left until the send's deadline.
    deadline: Deadline,
}

enum Handling<R> {
    Typed(BoxFuture<'static, std::result::Result<R, HandlerError>>),
    Raw(BoxFuture<'static, std::result::Result<Vec<u8>, HandlerError>>, DecodeReply<R>),
    /// Boxed: the rare path must not make every send's future bigger.
    Failed(Option<Box<Error>>),
}

/// Decoding a reply that the handler produced: a failure is a codec error
/// (the handler ran), not the handler's.
type DecodeReply<R> = fn(&[u8]) -> Result<R>;

fn decode_reply<C: Command>(bytes: &[u8]) -> Result<C::Reply> {
    C::Codec::decode(bytes).map_err(|e| codec_error::<C::Reply>("decode", C::SUBJECT, e))
}

impl<R> Future for Pending<R> {
    type Output = Result<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let subject = this.subject;
        let handler_error = |error| Error::Handler { subject, error };
        let reply = match &mut this.handling {
            Handling::Failed(error) => return Poll::Ready(Err(*error.take().expect("polled after completion"))),
            Handling::Typed(handling) => handling.as_mut().poll(cx).map(|r| r.map_err(handler_error)),
            Handling::Raw(handling, decode) => {
                handling.as_mut().poll(cx).map(|r| r.map_err(handler_error).and_then(|bytes| decode(&bytes)))
            }
        };
        match reply {
            Poll::Ready(reply) => Poll::Ready(reply),
            Poll::Pending => {
                let after = this.deadline.limit;
                this.deadline.poll_expired(cx).map(|()| Err(Error::Timeout { subject, after }))
            }
        }
    }
}

fn deliver<E: Event>((in_flight, record): Target, event: E, meta: Metadata) {
    match record.entry.as_any().downcast_ref::<EventEntry<E>>() {
        Some(entry) => (entry.thunk)(Delivery::new(event, record, in_flight, meta)),
        // Same contract, another Rust type: the raw entry decodes the event
        // and starts its handling; the returned future is already complete.
        None => match E::Codec::encode(&event) {
            Ok(payload) => drop(record.entry.call_raw(&payload, record, in_flight, meta)),
            Err(e) => tracing::error!(subject = E::SUBJECT, error = %e, "could not encode event"),
        },
    }
}

fn codec_error<T>(action: &'static str, subject: &'static str, e: crate::codec::CodecError) -> Error {
    Error::Codec { action, type_name: std::any::type_name::<T>(), subject, reason: e.0 }
}
