//! # Catga
//!
//! Peer-to-peer message-driven services: write handlers as plain async
//! functions, annotate them, run any number of identical instances. Every
//! instance can send, handle and publish; none is special.
//!
//! ```
//! use catga::prelude::*;
//!
//! // A contract: the type carries its subject and reply type.
//! #[derive(Debug, Serialize, Deserialize, Command)]
//! #[catga(subject = "lib.orders.create", reply = OrderAccepted)]
//! pub struct CreateOrder { pub order_id: String, pub amount_cents: u64 }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! pub struct OrderAccepted { pub order_id: String }
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! #[catga(subject = "lib.orders.created")]
//! pub struct OrderCreated { pub order_id: String }
//!
//! // A command handler: exactly one instance of the queue group runs it.
//! #[catga::command(queue = "order-workers")]
//! async fn create_order(cmd: CreateOrder, ctx: Context) -> Result<OrderAccepted, HandlerError> {
//!     if cmd.amount_cents == 0 {
//!         return Err(HandlerError::new("empty_order", "amount_cents is 0"));
//!     }
//!     ctx.publish(OrderCreated { order_id: cmd.order_id.clone() }).await?;
//!     Ok(OrderAccepted { order_id: cmd.order_id })
//! }
//!
//! // An event handler: every instance gets every event (broadcast).
//! #[catga::event]
//! async fn audit(ev: OrderCreated) -> Result<(), HandlerError> {
//!     println!("order {} created", ev.order_id);
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> catga::Result<()> {
//! // In a service's main: `catga::Catga::run().await` (runs until SIGTERM).
//! // In a client or a test: start an instance and talk to it.
//! let app = Catga::builder().service("orders").start().await?;
//! let reply = app.send(CreateOrder { order_id: "o-1".into(), amount_cents: 500 }).await?;
//! assert_eq!(reply, OrderAccepted { order_id: "o-1".into() });
//!
//! let err = app.send(CreateOrder { order_id: "o-2".into(), amount_cents: 0 }).await.unwrap_err();
//! assert_eq!(err.code(), Some("empty_order"));
//! app.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Mistakes in a handler are compile errors at the handler, e.g. an Ok type
//! that is not the command's reply type:
//!
//! ```compile_fail
//! use catga::prelude::*;
//! #[derive(Debug, Serialize, Deserialize, Command)]
//! #[catga(subject = "lib.price", reply = u64)]
//! pub struct Price;
//!
//! #[catga::command]
//! async fn price(_: Price) -> Result<String, HandlerError> { Ok("5".into()) }
//! ```
//!
//! ## Where things are
//! - [`message`]: the contracts ([`Command`], [`Event`]).
//! - [`registry`]: what `#[command]`/`#[event]` register, and its checks.
//! - [`dispatch`]: the pipeline one handling goes through.
//! - [`middleware`]: your own stages around every handling.
//! - [`transport`]: how messages move between instances.
//! - [`saga`](mod@saga): multi-step workflows with compensations.
//! - [`store`]: state shared by every instance (idempotency, records, leases).
//! - [`Catga::run`], [`Catga::builder`] ([`Builder`]): starting an instance;
//!   [`app`]: the [`App`] handle of a running one.
//! - [`config`]: the `CATGA_*` environment, and the checks of every setting;
//!   [`security`]: NATS credentials and TLS, and [`security::Secret`].
//! - [`clock`]: where an instance reads time.
//! - [`metadata`]: message ids.
//!
//! ## The unlinked-crate trap
//! Handlers register themselves at link time (`inventory`). If your
//! handlers live in a library crate that `main.rs` never names, the linker
//! drops that crate and its handlers silently vanish. Name it once:
//! `use my_handlers as _;`. [`Catga::run`] logs every handler it found (and
//! warns when it found none) so this shows at startup.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate self as catga;

pub mod app;
mod backoff;
mod builder;
pub mod clock;
pub mod codec;
pub mod config;
pub mod context;
mod delivery;
pub mod dispatch;
pub mod error;
mod future;
mod hash;
#[cfg(test)]
mod hostile;
pub mod http;
pub mod idempotency;
mod instance;
pub mod liveness;
mod logging;
pub mod message;
pub mod metadata;
pub mod metrics;
pub mod middleware;
pub mod otel;
#[cfg(feature = "postgres")]
pub mod outbox;
mod receiver;
pub mod registry;
pub mod saga;
pub mod schedule;
pub mod security;
mod signals;
pub mod store;
pub mod testing;
mod timers;
pub mod trace;
pub mod transport;

pub use app::App;
pub use builder::{Builder, Catga};
pub use clock::Clock;
pub use codec::{Codec, CodecError, Json};
pub use config::{Config, LogFormat};
pub use context::Context;
pub use error::{Error, HandlerError, Result};
pub use future::BoxFuture;
pub use instance::{SendOptions, ShutdownReport};
pub use message::{Command, Event, Message, Validate};
pub use metadata::{MessageId, Metadata};
pub use trace::{SpanId, TraceContext, TraceId};
pub use transport::{DeadLetter, DeadLetterPage};

/// Attribute macros for handlers, derives for contracts.
pub use catga_impl::{Command, Event, command, event, saga};

/// Everything a handler or contract file needs.
pub mod prelude {
    pub use crate::{App, Catga, Command, Context, Event, HandlerError, SendOptions, Validate};
    pub use serde::{Deserialize, Serialize};
}

/// What macro expansions use. Not public API.
///
/// One mistake in a handler is one error, at the user's code. The expansion
/// (`catga-macros/src/handler.rs`) emits small checks spanned at the code
/// each is about (they report), and puts the registration — entry, thunk,
/// pipeline call — in an `impl` whose where-clauses are the conditions those
/// checks check (`for<'a> Msg: Command<Reply = Ok>`, ...). A higher-ranked
/// where-clause on concrete types is an assumption inside the `impl`, so the
/// registration type-checks and reports nothing when a condition is false;
/// and the `impl`'s associated const `REGISTRATION` exists only when every
/// condition holds. Otherwise `<Guard>::REGISTRATION` resolves to the
/// [`Unchecked`](__private::Unchecked) trait's, which never runs: a false condition is always a
/// failed check, so that program does not compile. Sagas do the same for
/// their data type ([`UncheckedSaga`](__private::UncheckedSaga)).
///
/// The pipeline's own bounds (`Send`, the error type) are restated on a
/// function in the expansion, so they are reported there too, with nothing
/// pointing into this crate.
#[doc(hidden)]
pub mod __private {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context as TaskContext, Poll};

    pub use crate::dispatch::{Delivery, handle_command, handle_event};
    pub use crate::future::BoxFuture;
    /// The subscriber `Catga::run()` installs (for the benchmarks' `logs` mode).
    pub use crate::logging::install_default as install_default_logs;
    pub use crate::registry::{CommandEntry, Entry, EventEntry, HandlerKind, HandlerRecord};
    pub use crate::saga::definition::{SagaDef, Step as SagaStep, StepKind as SagaStepKind};
    pub use inventory;

    use crate::saga::SagaEntry;
    use crate::{Command, Event, HandlerError};

    pub use crate::saga::definition::{Wait as SagaWait, WaitFn};

    /// The handler `#[saga]` generates for a waiting step: record the event
    /// for the saga whose id `key` is, and wake it.
    pub async fn saga_event<E: Event>(
        ctx: crate::Context,
        saga: &'static str,
        step: &'static str,
        key: String,
        event: E,
    ) -> Result<(), HandlerError> {
        let bytes = <E::Codec as crate::Codec>::encode(&event)
            .map_err(|e| HandlerError::new(HandlerError::CODEC, format!("could not encode the event: {}", e.0)))?;
        crate::saga::store::record_event(&ctx.app(), saga, step, &key, &bytes).await.map_err(HandlerError::from)
    }

    /// A waiting step's thunk: decode the event with its codec, then run
    /// the step with it.
    pub fn wait_step<'a, E: Event, D, F>(
        event: &'a [u8],
        data: &'a mut D,
        ctx: &'a crate::saga::SagaContext,
        step: F,
    ) -> BoxFuture<'a, Result<(), HandlerError>>
    where
        F: FnOnce(&'a mut D, E, &'a crate::saga::SagaContext) -> BoxFuture<'a, Result<(), HandlerError>>,
    {
        match <E::Codec as crate::Codec>::decode::<E>(event) {
            Ok(event) => step(data, event, ctx),
            Err(e) => {
                let error =
                    HandlerError::new(HandlerError::INVALID, format!("the recorded event does not decode: {}", e.0));
                Box::pin(async move { Err(error) })
            }
        }
    }

    /// A waiting step's `wait = E` names an event type.
    pub fn is_event<E: Event>() {}

    /// The `run` of a waiting step's table row: never called without its
    /// event.
    pub fn no_event<'a, D>(_: &'a mut D, _: &'a crate::saga::SagaContext) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async { Err(HandlerError::new(HandlerError::INTERNAL, "a waiting step ran without its event")) })
    }

    /// What a handler's record takes from its message type.
    pub struct Registration {
        /// Whether the handler's checks held (false only in a program that
        /// does not compile).
        pub checked: bool,
        /// The message type's subject.
        pub subject: &'static str,
        /// The message type's name.
        pub message_type: fn() -> &'static str,
        /// The reply type's name.
        pub reply_type: fn() -> &'static str,
        /// The typed entry.
        pub entry: &'static dyn Entry,
    }

    impl Registration {
        /// A command handler's.
        pub const fn command<C: Command>(entry: &'static CommandEntry<C>) -> Self {
            Registration {
                checked: true,
                subject: C::SUBJECT,
                message_type: ::core::any::type_name::<C>,
                reply_type: ::core::any::type_name::<C::Reply>,
                entry,
            }
        }

        /// An event handler's.
        pub const fn event<E: Event>(entry: &'static EventEntry<E>) -> Self {
            Registration {
                checked: true,
                subject: E::SUBJECT,
                message_type: ::core::any::type_name::<E>,
                reply_type: ::core::any::type_name::<()>,
                entry,
            }
        }
    }

    /// The registration a handler falls back to when one of its checks
    /// failed: that program does not compile, so this is never run; it only
    /// keeps the registration from reporting the mistake a second time.
    pub trait Unchecked {
        /// Never registered (see the trait).
        const REGISTRATION: Registration = Registration {
            checked: false,
            subject: "",
            message_type: unchecked_name,
            reply_type: unchecked_name,
            entry: &UncheckedEntry,
        };
    }

    fn unchecked_name() -> &'static str {
        "<unchecked>"
    }

    struct UncheckedEntry;

    impl Entry for UncheckedEntry {
        fn as_any(&self) -> &dyn ::core::any::Any {
            self
        }

        fn durable(&self) -> bool {
            false
        }

        fn call_raw(
            &self,
            _: &[u8],
            _: &'static HandlerRecord,
            _: crate::instance::InFlight,
            _: crate::metadata::Metadata,
        ) -> crate::registry::RawFuture {
            Box::pin(async { Err(HandlerError::new(HandlerError::INTERNAL, "handler registered unchecked")) })
        }
    }

    /// A saga's step table and registration fall back to these when one of
    /// its checks failed (as a handler's does to [`Unchecked`]'s): never run.
    pub trait UncheckedSaga<D: 'static> {
        /// No steps.
        const STEPS: &'static [SagaStep<D>] = &[];
        /// Never registered.
        const ENTRY: &'static dyn SagaEntry = &UNCHECKED_SAGA;
    }

    static UNCHECKED_SAGA: SagaDef<()> =
        SagaDef { name: "<unchecked>", steps: &[], deadline_ms: None, data_type: unchecked_name, file: "", line: 0 };

    /// A saga's entry (the `dyn` coercion made where `D` is known to be
    /// saga data).
    pub const fn saga_entry<D: SagaData>(def: &'static SagaDef<D>) -> &'static dyn SagaEntry {
        def
    }

    /// `T` and `Self` are one type. A parameter the user wrote (a handler's
    /// `Context`, a step's data) is passed through it, so a guarded
    /// registration type-checks whatever was written there.
    pub trait Same<T> {
        /// `self`, as `T`.
        fn same(self) -> T;
        /// `self`, as `&T`.
        fn same_ref(&self) -> &T;
        /// `self`, as `&mut T`.
        fn same_mut(&mut self) -> &mut T;
    }

    impl<T> Same<T> for T {
        #[inline(always)]
        fn same(self) -> T {
            self
        }

        #[inline(always)]
        fn same_ref(&self) -> &T {
            self
        }

        #[inline(always)]
        fn same_mut(&mut self) -> &mut T {
            self
        }
    }

    /// What a handler returns: `Result<T, E>` with an error that becomes a
    /// `HandlerError`, however it is spelled (an alias, `anyhow::Result`).
    #[diagnostic::on_unimplemented(
        message = "a handler returns `Result<T, E>` with `E: Into<HandlerError>`, not `{Self}`",
        label = "not a handler's `Result`",
        note = "return `Result<Reply, HandlerError>` (a command) or `Result<(), HandlerError>` (an event)"
    )]
    pub trait HandlerResult {
        /// `T`.
        type Ok;
        /// As the pipeline takes it.
        fn into_result(self) -> Result<Self::Ok, HandlerError>;
    }

    // Not listed in the error: the note says it.
    #[diagnostic::do_not_recommend]
    impl<T, E: Into<HandlerError>> HandlerResult for Result<T, E> {
        type Ok = T;

        #[inline(always)]
        fn into_result(self) -> Result<T, HandlerError> {
            self.map_err(Into::into)
        }
    }

    /// Implemented for `()` only.
    #[diagnostic::on_unimplemented(
        message = "an event handler returns `Result<(), E>`, not `Result<{Self}, E>`",
        label = "events have no reply",
        note = "return `Ok(())`; to answer a caller, make the message a command"
    )]
    pub trait Unit {
        /// `()`.
        type Itself;
    }

    // Not listed in the error: the note says it.
    #[diagnostic::do_not_recommend]
    impl Unit for () {
        type Itself = ();
    }

    pin_project_lite::pin_project! {
        /// A handler's future whose output is read through
        /// [`HandlerResult`] (written as an alias, or an event's `Ok` type
        /// not written `()`).
        pub struct Outcome<F> {
            #[pin]
            handling: F,
        }
    }

    impl<F> Outcome<F> {
        /// Wrap a handler's future.
        pub fn new(handling: F) -> Self {
            Outcome { handling }
        }
    }

    impl<F> Future for Outcome<F>
    where
        F: Future,
        F::Output: HandlerResult,
    {
        type Output = Result<<F::Output as HandlerResult>::Ok, HandlerError>;

        fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
            self.project().handling.poll(cx).map(HandlerResult::into_result)
        }
    }

    pin_project_lite::pin_project! {
        /// A step's or compensation's future with its error as a
        /// `HandlerError` (the expansion checks the bounds and boxes it).
        pub struct StepFuture<F> {
            #[pin]
            step: F,
        }
    }

    impl<F> StepFuture<F> {
        /// Wrap a step's future.
        pub fn new(step: F) -> Self {
            StepFuture { step }
        }
    }

    impl<F, E: Into<HandlerError>> Future for StepFuture<F>
    where
        F: Future<Output = Result<(), E>>,
    {
        type Output = Result<(), HandlerError>;

        fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
            self.project().step.poll(cx).map(|r| r.map_err(Into::into))
        }
    }

    /// What saga data must be (`Saga::Data`'s bounds): the condition a
    /// saga's registration is guarded by.
    pub trait SagaData: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {}
    impl<D: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static> SagaData for D {}

    /// Whether two subjects are equal, in a const context.
    pub const fn same_subject(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}

/// The README's code blocks, compiled and run as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
