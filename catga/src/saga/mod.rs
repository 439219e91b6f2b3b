//! Sagas: multi-step workflows with compensations, durable in the store,
//! continued by any instance.
//!
//! `#[catga::saga]` on an `impl` block checks the steps and compensations
//! together at compile time and generates a static step table ([`SagaDef`])
//! registered with `inventory`. This module runs those tables.
//!
//! ```
//! use catga::prelude::*;
//! use catga::saga::{SagaContext, SagaOutcome, StepError};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct Order { id: String, charged: bool, reserved: bool }
//!
//! struct OrderSaga;
//!
//! #[catga::saga(name = "doc-order")]
//! impl OrderSaga {
//!     #[step(compensate = refund)]
//!     async fn charge(order: &mut Order, _ctx: &SagaContext) -> Result<(), StepError> {
//!         order.charged = true;
//!         Ok(())
//!     }
//!
//!     #[step(pivot)]
//!     async fn reserve(order: &mut Order, _ctx: &SagaContext) -> Result<(), StepError> {
//!         order.reserved = true;
//!         Ok(())
//!     }
//!
//!     async fn refund(_order: &Order, _ctx: &SagaContext) -> Result<(), StepError> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> catga::Result<()> {
//! let app = Catga::builder().start().await?;
//! let order = Order { id: "o-1".into(), charged: false, reserved: false };
//! let outcome = app.start_saga::<OrderSaga>("o-1", order).await?;
//! assert_eq!(outcome, SagaOutcome::Completed);
//! // Starting it again returns the first run's outcome; nothing runs twice.
//! let again = Order { id: "o-1".into(), charged: false, reserved: false };
//! assert_eq!(app.start_saga::<OrderSaga>("o-1", again).await?, SagaOutcome::Completed);
//! # app.shutdown().await; Ok(()) }
//! ```
//!
//! ## How a saga runs
//! Steps come in the classic order: *compensatable* steps (each names its
//! compensation), at most one *pivot* (the point of no return), then
//! *retriable* steps (retried until they succeed or their bound is hit).
//!
//! The instance running a saga holds its lease (with a fencing token). Its
//! state — data, position, status, history, version — is written with
//! compare-and-set under that lease before and after every step and every
//! compensation; a write from an instance whose lease was taken over is
//! refused by the store. A saga follows its owner's life: each instance's
//! sagas are indexed under it, and when its heartbeat in the store stops
//! ([`crate::liveness`]) the surviving instances share its sagas out (about
//! a second after the death, by default) and continue them forward or
//! continue compensating. The lease's own TTL is only a last resort.
//!
//! A step that fails after its retries starts compensation: the completed
//! steps' compensations run in reverse order (each persisted as it
//! finishes), ending `Compensated`. A failed compensation (after its
//! retries), or a retriable step past its bound, ends `Failed`: kept,
//! listed, never dropped. A step re-run after a takeover sends its commands
//! with the same message ids (saga, step, direction and the send's number
//! in the step), so idempotent receivers do not apply them twice.
//!
//! ## Where things are
//! - [`definition`]: the [`Saga`] trait, the step table `#[saga]` generates
//!   ([`SagaDef`]), the `inventory` registry and its startup check;
//! - [`status`]: where a saga is ([`SagaStatus`], [`SagaOutcome`],
//!   [`SagaInfo`]) and the state persisted between steps;
//! - [`context`]: the [`SagaContext`] a step gets, and its deterministic
//!   message ids;
//! - `store`: the store layout (keys and indexes), creating a saga, status
//!   and listing;
//! - `runner`: running a saga under its lease — steps, retries,
//!   compensations, fenced writes;
//! - `recovery`: the sweep that takes over sagas whose instance died;
//! - `api`: the [`App`](crate::App) methods (`start_saga`, `submit_saga`,
//!   `saga_status`, `sagas`).

mod api;
pub mod context;
pub mod definition;
pub(crate) mod recovery;
mod runner;
pub mod status;
pub(crate) mod store;

pub use api::SagaOptions;
pub use context::SagaContext;
pub use definition::{
    CompensationFn, Saga, SagaContract, SagaDef, SagaEntry, SagaRecord, Step, StepError, StepFn, StepKind, sagas,
    validate,
};
pub use status::{Direction, HistoryEntry, SagaEnded, SagaInfo, SagaOutcome, SagaStatus, ended_subject};
