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
//! The instance running a saga holds its lease (with a fencing token) and
//! renews it. Its state — data, position, status, history, version — is
//! written with compare-and-set under that lease before and after every step
//! and every compensation; a write from an instance whose lease was taken
//! over is refused by the store. Every instance sweeps for sagas whose lease
//! expired and continues them forward or continues compensating.
//!
//! A step that fails after its retries starts compensation: the completed
//! steps' compensations run in reverse order (each persisted as it
//! finishes), ending `Compensated`. A failed compensation (after its
//! retries), or a retriable step past its bound, ends `Failed`: kept,
//! listed, never dropped. A step re-run after a takeover sends its commands
//! with the same message ids (saga, step, direction and the send's number
//! in the step), so idempotent receivers do not apply them twice.

use std::collections::HashSet;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::app::{App, SendOptions};
use crate::context::{MessageId, Metadata};
use crate::dispatch::BoxFuture;
use crate::error::{Error, HandlerError, Result};
use crate::message::{Command, Event};
use crate::store::{Expect, Key, Lease, StoreError};

/// What a step or compensation returns on failure: a code and a message,
/// like a handler's. `?` works on any error, and a failed `ctx.send(..)`
/// keeps the downstream handler's code.
pub type StepError = HandlerError;

/// A saga type: implemented by `#[catga::saga]`.
pub trait Saga: 'static {
    /// The data every step reads and changes; persisted between steps.
    type Data: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The saga's table of steps.
    fn definition() -> &'static SagaDef<Self::Data>;
}

/// A step as `#[step]` declared it.
pub type StepFn<D> = for<'a> fn(&'a mut D, &'a SagaContext) -> BoxFuture<'a, Result<(), StepError>>;
/// A compensation: it sees the data as the step left it.
pub type CompensationFn<D> = for<'a> fn(&'a D, &'a SagaContext) -> BoxFuture<'a, Result<(), StepError>>;

/// The kind of a step, after the classic saga rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Has a compensation; comes before the pivot.
    Compensatable,
    /// The point of no return: no compensation; its failure compensates
    /// the steps before it.
    Pivot,
    /// After the pivot: retried up to its bound; no compensation.
    Retriable,
}

/// One step of a saga's static table.
#[doc(hidden)]
pub struct Step<D: 'static> {
    pub name: &'static str,
    pub kind: StepKind,
    pub run: StepFn<D>,
    pub compensation: Option<(&'static str, CompensationFn<D>)>,
    /// Retries after the first attempt.
    pub retry: u32,
    pub timeout_ms: Option<u64>,
}

/// A saga's static table, generated by `#[catga::saga]`.
#[doc(hidden)]
pub struct SagaDef<D: 'static> {
    pub name: &'static str,
    pub steps: &'static [Step<D>],
    pub data_type: fn() -> &'static str,
    pub file: &'static str,
    pub line: u32,
}

/// A saga, as `#[catga::saga]` registered it (for startup checks, the
/// recovery sweep and listing).
pub struct SagaRecord {
    /// The saga's name (unique in a program).
    pub name: &'static str,
    /// Source file of the `#[saga]` impl.
    pub file: &'static str,
    /// Its line.
    pub line: u32,
    #[doc(hidden)]
    pub entry: &'static dyn SagaEntry,
}

inventory::collect!(SagaRecord);

impl fmt::Debug for SagaRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaRecord")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("line", &self.line)
            .finish()
    }
}

/// A saga table with its data type erased, so the sweep can resume any saga.
#[doc(hidden)]
pub trait SagaEntry: Send + Sync + 'static {
    /// Continue the saga `id` if its lease is free; `None` if another
    /// instance holds it (or it is finished or unknown).
    fn resume(&'static self, app: App, id: String) -> BoxFuture<'static, Result<Option<SagaOutcome>>>;
    /// The steps' names, in order.
    fn step_names(&self) -> Vec<&'static str>;
}

impl<D: Serialize + DeserializeOwned + Send + Sync + 'static> SagaEntry for SagaDef<D> {
    fn resume(&'static self, app: App, id: String) -> BoxFuture<'static, Result<Option<SagaOutcome>>> {
        Box::pin(async move { resume(self, &app, &id).await })
    }

    fn step_names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name).collect()
    }
}

/// Every saga linked into this program, sorted by name.
pub fn sagas() -> Vec<&'static SagaRecord> {
    let mut all: Vec<_> = inventory::iter::<SagaRecord>.into_iter().collect();
    all.sort_by_key(|s| (s.name, s.file, s.line));
    all
}

/// Refuse two sagas with one name (their states would mix), naming both.
///
/// ```
/// catga::saga::validate(&catga::saga::sagas()).unwrap();
/// ```
pub fn validate(sagas: &[&'static SagaRecord]) -> Result<()> {
    for pair in sagas.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(Error::Config(format!(
                "duplicate saga name \"{}\": {}:{} and {}:{}; saga names must be unique in a program — rename one",
                pair[0].name, pair[0].file, pair[0].line, pair[1].file, pair[1].line
            )));
        }
    }
    Ok(())
}

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Running its steps forward.
    Running,
    /// A step failed; undoing the completed steps.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed and every completed step was compensated.
    Compensated,
    /// A compensation failed, or a step after the pivot exhausted its
    /// retries: needs an operator. Kept and listed.
    Failed,
}

impl SagaStatus {
    /// Completed, compensated or failed: nothing more will run.
    pub fn is_finished(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed)
    }
}

/// How a saga ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaOutcome {
    /// Every step succeeded.
    Completed,
    /// `error` made a step fail; every completed step was compensated.
    Compensated {
        /// The step's error.
        error: String,
    },
    /// A compensation failed, or a retriable step exhausted its retries.
    Failed {
        /// What failed.
        error: String,
    },
}

/// One line of a saga's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The step.
    pub step: String,
    /// `forward` or `compensate`.
    pub direction: Direction,
    /// `None` on success, else the last error.
    pub error: Option<String>,
    /// Attempts made (over every instance that ran it).
    pub attempts: u32,
}

/// Which way a step ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The step itself.
    Forward,
    /// Its compensation.
    Compensate,
}

/// A saga's persisted state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State<D> {
    saga: String,
    id: String,
    status: SagaStatus,
    /// Running: the next step to run. Compensating: steps `[0, next)` are
    /// still to undo, from `next - 1` down.
    next: usize,
    /// Attempts of the step (or compensation) at `next` started so far,
    /// over every instance that ran it.
    attempts: u32,
    /// Those of them that returned an error.
    #[serde(default)]
    failures: u32,
    /// Those of them that returned a transient error (not counted in `failures`).
    #[serde(default)]
    transient: u32,
    /// The last error of the step at `next`.
    #[serde(default)]
    last_error: Option<String>,
    data: D,
    history: Vec<HistoryEntry>,
    error: Option<String>,
}

impl<D> State<D> {
    fn reset_attempts(&mut self) {
        self.attempts = 0;
        self.failures = 0;
        self.transient = 0;
        self.last_error = None;
    }
}

/// What a status query or a listing shows of a saga.
#[derive(Debug, Clone)]
pub struct SagaInfo {
    /// The saga's name.
    pub saga: String,
    /// Its id.
    pub id: String,
    /// Where it is.
    pub status: SagaStatus,
    /// The step running (forward) or being compensated, if any.
    pub current_step: Option<&'static str>,
    /// Every step and compensation that finished, in order.
    pub history: Vec<HistoryEntry>,
    /// The error that started compensation or failed it.
    pub error: Option<String>,
    /// The data as last persisted (JSON).
    pub data: serde_json::Value,
    /// The state's version in the store (one per write).
    pub version: u64,
}

impl SagaInfo {
    /// The outcome, once finished.
    pub fn outcome(&self) -> Option<SagaOutcome> {
        let error = || self.error.clone().unwrap_or_default();
        match self.status {
            SagaStatus::Completed => Some(SagaOutcome::Completed),
            SagaStatus::Compensated => Some(SagaOutcome::Compensated { error: error() }),
            SagaStatus::Failed => Some(SagaOutcome::Failed { error: error() }),
            SagaStatus::Running | SagaStatus::Compensating => None,
        }
    }
}

/// What a step gets besides the data: sending and publishing with
/// deterministic message ids, and the saga's identity.
pub struct SagaContext {
    app: App,
    saga: &'static str,
    id: String,
    step: &'static str,
    step_index: usize,
    direction: Direction,
    attempt: u32,
    sends: AtomicU32,
}

impl SagaContext {
    /// The saga's name.
    pub fn saga(&self) -> &'static str {
        self.saga
    }

    /// This saga's id.
    pub fn saga_id(&self) -> &str {
        &self.id
    }

    /// The step (or, compensating, the step being undone).
    pub fn step(&self) -> &'static str {
        self.step
    }

    /// Forward or compensating.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// 1 on the first attempt of this step, counting attempts made by
    /// instances that died.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The instance running the step.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The message id the next send or publish of this step will carry:
    /// the same on every re-run of the step, so idempotent receivers
    /// apply it once.
    fn next_metadata(&self) -> Metadata {
        let n = self.sends.fetch_add(1, Ordering::Relaxed);
        let message_id = deterministic_id(&[
            self.saga.as_bytes(),
            self.id.as_bytes(),
            &(self.step_index as u64).to_le_bytes(),
            &[self.direction as u8],
            &n.to_le_bytes(),
        ]);
        let correlation_id = deterministic_id(&[self.saga.as_bytes(), self.id.as_bytes()]);
        Metadata { message_id, correlation_id, causation_id: None }
    }

    /// Send a command with this step's deterministic message id.
    pub async fn send<C: Command>(&self, command: C) -> Result<C::Reply> {
        self.app.send_as(command, self.next_metadata(), SendOptions::default()).await
    }

    /// [`send`](Self::send) with options.
    pub async fn send_with<C: Command>(&self, command: C, options: SendOptions) -> Result<C::Reply> {
        self.app.send_as(command, self.next_metadata(), options).await
    }

    /// Publish an event with this step's deterministic message id.
    pub async fn publish<E: Event>(&self, event: E) -> Result<()> {
        self.app.publish_as(event, self.next_metadata()).await
    }
}

/// A 128-bit id from the parts: FNV-1a, twice with different bases (stable
/// across builds and platforms, unlike std's hasher).
fn deterministic_id(parts: &[&[u8]]) -> MessageId {
    let fnv = |mut h: u64| {
        for part in parts {
            for &b in part.iter().chain(&[0xff]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    };
    MessageId::from_u128((u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x6c62_272e_07bb_0142)))
}

fn state_key(saga: &str, id: &str) -> (Key, Key) {
    let scope = format!("saga:{saga}:{id}");
    (Key::new(&scope, "state"), Key::new(scope, "lease"))
}

/// The sagas that may still need running (swept by every instance).
fn index_key(saga: &str) -> Key {
    Key::new(format!("saga-index:{saga}"), "active")
}

/// The sagas that ended `Failed`: kept for an operator, not swept.
fn failed_key(saga: &str) -> Key {
    Key::new(format!("saga-index:{saga}"), "failed")
}

/// Move a finished saga out of the sweep's index (a failed one into the
/// failed index first, so it is never out of both).
async fn unindex(app: &App, saga: &str, id: &str, status: SagaStatus) -> Result<()> {
    if status == SagaStatus::Failed {
        app.store().set_add(&failed_key(saga), id).await?;
    }
    app.store().set_remove(&index_key(saga), id).await?;
    Ok(())
}

/// Start saga `id` of type `S` with `data` and run it here to its end; a
/// saga with this id that exists already is not started again: its outcome
/// is awaited instead.
pub(crate) async fn start<S: Saga>(app: &App, id: &str, data: S::Data) -> Result<SagaOutcome> {
    let def = S::definition();
    match create(def, app, id, data).await? {
        Some((lease, state, version)) => run(def, app, lease, state, version, true).await,
        None => wait_for_outcome(def.name, app, id).await,
    }
}

/// Create saga `id` durably and run it in the background; returns once its
/// state is in the store (`true`), or at once if it exists (`false`).
pub(crate) async fn submit<S: Saga>(app: &App, id: &str, data: S::Data) -> Result<bool> {
    let def = S::definition();
    let Some((lease, state, version)) = create(def, app, id, data).await? else { return Ok(false) };
    let app = app.clone();
    tokio::spawn(async move {
        let id = state.id.clone();
        if let Err(e) = run(def, &app, lease, state, version, true).await {
            tracing::warn!(saga = def.name, id, error = %e, "saga stopped; the recovery sweep continues it");
        }
    });
    Ok(true)
}

/// Write a new saga's first state under a fresh lease; `None` if saga `id`
/// exists (or is being created by another instance right now).
async fn create<D: Serialize>(
    def: &'static SagaDef<D>,
    app: &App,
    id: &str,
    data: D,
) -> Result<Option<(Lease, State<D>, u64)>> {
    check_id(def.name, id)?;
    let store = app.store();
    let (state_key, lease_key) = state_key(def.name, id);
    // Index first: the sweep finds every saga that may exist (a stale
    // entry is dropped by the sweep when it finds the saga finished).
    store.set_add(&index_key(def.name), id).await?;
    // No read first: the write below expects no state, so an existing saga
    // is refused there (a new saga, the common case, saves a round trip).
    let Some(lease) = store.acquire_lease(&lease_key, &owner(app), app.config().saga_lease_ttl).await? else {
        return Ok(None);
    };
    let state = State {
        saga: def.name.to_owned(),
        id: id.to_owned(),
        status: SagaStatus::Running,
        next: 0,
        // The first step's first attempt, recorded with the saga itself.
        attempts: 1,
        failures: 0,
        transient: 0,
        last_error: None,
        data,
        history: Vec::new(),
        error: None,
    };
    match store.put_fenced(&state_key, Expect::Absent, &encode(def.name, &state)?, &lease).await {
        Ok(version) => Ok(Some((lease, state, version))),
        Err(e) => {
            let _ = store.release_lease(&lease).await;
            match e {
                Error::Store(StoreError::Conflict { .. }) => Ok(None),
                e => Err(e),
            }
        }
    }
}

/// Poll the store until saga `id` finishes (someone else runs it).
async fn wait_for_outcome(saga: &str, app: &App, id: &str) -> Result<SagaOutcome> {
    let limit = app.config().saga_wait;
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(outcome) = status(saga, app, id).await?.and_then(|info| info.outcome()) {
            return Ok(outcome);
        }
        if started.elapsed() >= limit {
            return Err(Error::Saga {
                saga: saga.to_owned(),
                id: id.to_owned(),
                reason: format!(
                    "it exists and is running elsewhere, and did not finish within {limit:?}; \
                     query it with saga_status"
                ),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn check_id(saga: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 200 || id.contains(['{', '}']) {
        return Err(Error::Saga {
            saga: saga.to_owned(),
            id: id.to_owned(),
            reason: "a saga id is 1 to 200 characters without `{` or `}`".into(),
        });
    }
    Ok(())
}

fn owner(app: &App) -> String {
    format!("{}#{:08x}", app.instance_id(), fastrand::u32(..))
}

fn encode<D: Serialize>(saga: &'static str, state: &State<D>) -> Result<Vec<u8>> {
    serde_json::to_vec(state).map_err(|e| Error::Saga {
        saga: saga.to_owned(),
        id: state.id.clone(),
        reason: format!("its data does not serialize as JSON: {e}"),
    })
}

/// The status of saga `id` of the named saga type, if it exists.
pub(crate) async fn status(saga: &str, app: &App, id: &str) -> Result<Option<SagaInfo>> {
    let (state_key, _) = state_key(saga, id);
    let Some(stored) = app.store().get(&state_key).await? else { return Ok(None) };
    let state: State<serde_json::Value> = serde_json::from_slice(&stored.value).map_err(|e| Error::Saga {
        saga: saga.to_owned(),
        id: id.to_owned(),
        reason: format!("its stored state is not readable: {e}"),
    })?;
    let steps = sagas().into_iter().find(|s| s.name == saga).map(|s| s.entry.step_names()).unwrap_or_default();
    let current = match state.status {
        SagaStatus::Running => steps.get(state.next).copied(),
        SagaStatus::Compensating => state.next.checked_sub(1).and_then(|i| steps.get(i)).copied(),
        _ => None,
    };
    Ok(Some(SagaInfo {
        saga: state.saga,
        id: state.id,
        status: state.status,
        current_step: current,
        history: state.history,
        error: state.error,
        data: state.data,
        version: stored.version,
    }))
}

/// Every saga of the named type that is running, compensating or failed
/// (finished sagas leave the indexes) and that `keep` accepts.
pub(crate) async fn list(saga: &str, app: &App, keep: impl Fn(SagaStatus) -> bool) -> Result<Vec<SagaInfo>> {
    let mut out = Vec::new();
    let mut ids = app.store().set_members(&index_key(saga)).await?;
    ids.extend(app.store().set_members(&failed_key(saga)).await?);
    for id in ids {
        if let Some(info) = status(saga, app, &id).await?
            && keep(info.status)
        {
            out.push(info);
        }
    }
    Ok(out)
}

/// Take over saga `id` if its lease is free, and run it to its end here.
async fn resume<D>(def: &'static SagaDef<D>, app: &App, id: &str) -> Result<Option<SagaOutcome>>
where
    D: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let store = app.store();
    let (state_key, lease_key) = state_key(def.name, id);
    // The lease first: for a saga another instance is running, that one
    // refused request is all a sweep costs.
    let Some(lease) = store.acquire_lease(&lease_key, &owner(app), app.config().saga_lease_ttl).await? else {
        return Ok(None);
    };
    let stored = match store.get(&state_key).await {
        Ok(Some(stored)) => stored,
        other => {
            let _ = store.release_lease(&lease).await;
            return other.map(|_| None);
        }
    };
    let state: State<D> = match serde_json::from_slice(&stored.value) {
        Ok(state) => state,
        Err(e) => {
            let _ = store.release_lease(&lease).await;
            return Err(Error::Saga {
                saga: def.name.to_owned(),
                id: id.to_owned(),
                reason: format!("its stored state does not decode as `{}`: {e}", (def.data_type)()),
            });
        }
    };
    if state.status.is_finished() {
        let _ = store.release_lease(&lease).await;
        unindex(app, def.name, id, state.status).await?;
        return Ok(None);
    }
    tracing::info!(saga = def.name, id, status = ?state.status, step = state.next, "saga taken over");
    run(def, app, lease, state, stored.version, false).await.map(Some)
}

/// Run (or continue) a saga while holding its lease, to its end.
/// `attempt_recorded`: the stored state already counts the next step's
/// attempt as started (a new saga's first write records its first step's).
async fn run<D>(
    def: &'static SagaDef<D>,
    app: &App,
    lease: Lease,
    state: State<D>,
    version: u64,
    attempt_recorded: bool,
) -> Result<SagaOutcome>
where
    D: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let span = tracing::info_span!("catga.saga", saga = def.name, id = %state.id);
    let _running = app.running_saga(def.name, &state.id);
    let renewer = Renewer::start(app, lease.clone());
    let mut run = Run { def, app, lease, state, version, attempt_recorded };
    let outcome = run.drive().instrument(span).await;
    renewer.stop();
    let store = app.store();
    if outcome.is_ok()
        && let Err(e) = unindex(app, def.name, &run.state.id, run.state.status).await
    {
        tracing::warn!(error = %e, "saga finished but could not leave the sweep index; the next sweep retries");
    }
    // Finished, handed over by a drain, or stopped by an error: either way
    // the next sweep (here or elsewhere) may continue it at once. A lease
    // that was lost is no longer ours to release; this is then a no-op.
    let _ = store.release_lease(&run.lease).await;
    outcome
}

struct Run<'a, D: 'static> {
    def: &'static SagaDef<D>,
    app: &'a App,
    lease: Lease,
    state: State<D>,
    version: u64,
    /// The stored state already counts the next attempt as started.
    attempt_recorded: bool,
}

impl<D: Serialize + DeserializeOwned + Send + Sync + 'static> Run<'_, D> {
    async fn drive(&mut self) -> Result<SagaOutcome> {
        loop {
            match self.state.status {
                SagaStatus::Running => self.forward().await?,
                SagaStatus::Compensating => self.compensate().await?,
                SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed => break,
            }
        }
        let error = || self.state.error.clone().unwrap_or_default();
        Ok(match self.state.status {
            SagaStatus::Completed => SagaOutcome::Completed,
            SagaStatus::Compensated => SagaOutcome::Compensated { error: error() },
            _ => SagaOutcome::Failed { error: error() },
        })
    }

    /// Write the state under the lease (compare-and-set on the version).
    async fn persist(&mut self) -> Result<()> {
        let (key, _) = state_key(self.def.name, &self.state.id);
        self.version = self
            .app
            .store()
            .put_fenced(&key, Expect::Version(self.version), &encode(self.def.name, &self.state)?, &self.lease)
            .await?;
        Ok(())
    }

    /// A drain hands the saga over at a step boundary.
    fn check_draining(&self) -> Result<()> {
        if self.app.is_draining() {
            return Err(Error::Saga {
                saga: self.def.name.to_owned(),
                id: self.state.id.clone(),
                reason: "the instance is shutting down; another instance continues it after the lease expires".into(),
            });
        }
        Ok(())
    }

    /// Run the next step (with its retries) and record the result.
    async fn forward(&mut self) -> Result<()> {
        let index = self.state.next;
        let Some(step) = self.def.steps.get(index) else {
            self.state.status = SagaStatus::Completed;
            return self.persist().await;
        };
        let gave_up = self.attempts(index, Direction::Forward, step.retry).await?;
        self.state.history.push(HistoryEntry {
            step: step.name.to_owned(),
            direction: Direction::Forward,
            error: gave_up.clone(),
            attempts: self.state.attempts,
        });
        let mut next_started = false;
        match gave_up {
            None => {
                self.state.next += 1;
                // The last step's write also records the end, and any other
                // step's write also records the next step's first attempt:
                // one round trip less per step.
                if self.state.next == self.def.steps.len() {
                    self.state.status = SagaStatus::Completed;
                } else {
                    next_started = !self.app.is_draining();
                }
            }
            Some(error) => {
                self.state.error =
                    Some(format!("step `{}` failed after {} attempts: {error}", step.name, self.state.attempts));
                self.state.status = match step.kind {
                    // Past the pivot there is no going back: an operator decides.
                    StepKind::Retriable => SagaStatus::Failed,
                    StepKind::Compensatable | StepKind::Pivot => SagaStatus::Compensating,
                };
            }
        }
        self.state.reset_attempts();
        if next_started {
            self.state.attempts = 1;
        }
        self.persist().await?;
        self.attempt_recorded = next_started;
        Ok(())
    }

    /// Undo the last completed step that has a compensation.
    async fn compensate(&mut self) -> Result<()> {
        let Some(index) = self.state.next.checked_sub(1) else {
            self.state.status = SagaStatus::Compensated;
            return self.persist().await;
        };
        let step = &self.def.steps[index];
        let Some((name, _)) = step.compensation else {
            self.state.next = index;
            return self.persist().await;
        };
        let gave_up = self.attempts(index, Direction::Compensate, self.app.config().saga_compensation_retries).await?;
        self.state.history.push(HistoryEntry {
            step: step.name.to_owned(),
            direction: Direction::Compensate,
            error: gave_up.clone(),
            attempts: self.state.attempts,
        });
        match gave_up {
            None => self.state.next = index,
            Some(error) => {
                let cause = self.state.error.take().unwrap_or_default();
                self.state.error = Some(format!(
                    "compensation `{name}` of step `{}` failed: {error} (compensating because: {cause})",
                    step.name
                ));
                self.state.status = SagaStatus::Failed;
            }
        }
        self.state.reset_attempts();
        self.persist().await
    }

    /// Run step `index` (or its compensation) until it succeeds — `None` —
    /// or has failed `retries + 1` times — `Some(last error)`. Each attempt
    /// is persisted before it starts. An attempt that never reported back
    /// (its instance died) is run again, up to
    /// [`Config::saga_crash_reruns`](crate::Config::saga_crash_reruns) times:
    /// a step that kills every instance that runs it must not kill them all.
    async fn attempts(&mut self, index: usize, direction: Direction, retries: u32) -> Result<Option<String>> {
        let step = &self.def.steps[index];
        loop {
            if self.state.failures > retries {
                return Ok(Some(self.state.last_error.clone().unwrap_or_default()));
            }
            let crashed = self.state.attempts - self.state.failures - self.state.transient;
            if crashed > self.app.config().saga_crash_reruns {
                return Ok(Some(format!("the instances running it died {crashed} times before it finished")));
            }
            if std::mem::take(&mut self.attempt_recorded) {
                // The previous step's write already recorded this attempt.
            } else {
                self.check_draining()?;
                self.state.attempts += 1;
                self.persist().await?;
            }
            let ctx = self.context(step.name, index, direction);
            let span = tracing::info_span!("catga.saga.step", step = step.name, ?direction, attempt = ctx.attempt);
            let result = match (direction, step.compensation) {
                (Direction::Forward, _) => {
                    // The step changes a copy, kept only if it succeeds: a
                    // failed attempt leaves no half-changed data behind.
                    let mut data = clone_data(self.def.name, &self.state.id, &self.state.data)?;
                    let result = with_timeout(step.timeout_ms, (step.run)(&mut data, &ctx)).instrument(span).await;
                    if result.is_ok() {
                        self.state.data = data;
                    }
                    result
                }
                (Direction::Compensate, Some((_, undo))) => {
                    with_timeout(step.timeout_ms, undo(&self.state.data, &ctx)).instrument(span).await
                }
                (Direction::Compensate, None) => return Ok(None),
            };
            match result {
                Ok(()) => return Ok(None),
                Err(error)
                    if is_transient(&error) && self.state.transient < self.app.config().saga_transient_retries =>
                {
                    // The infrastructure failed, not the step: try again
                    // without using up the step's own retries.
                    self.state.transient += 1;
                    tracing::warn!(step = step.name, ?direction, attempt = ctx.attempt, %error, "saga step hit a transient error; retrying");
                    self.state.last_error = Some(error.to_string());
                    tokio::time::sleep(backoff(self.state.transient)).await;
                }
                Err(error) => {
                    tracing::warn!(step = step.name, ?direction, attempt = ctx.attempt, %error, "saga step failed");
                    self.state.failures += 1;
                    self.state.last_error = Some(error.to_string());
                    if self.state.failures <= retries {
                        tokio::time::sleep(backoff(self.state.failures)).await;
                    }
                }
            }
        }
    }

    fn context(&self, step: &'static str, step_index: usize, direction: Direction) -> SagaContext {
        SagaContext {
            app: self.app.clone(),
            saga: self.def.name,
            id: self.state.id.clone(),
            step,
            step_index,
            direction,
            attempt: self.state.attempts,
            sends: AtomicU32::new(0),
        }
    }
}

/// Errors of the infrastructure rather than of the step's own logic: no
/// handler reachable, a timeout (the caller's or the handler's), the
/// transport or the store failing, a copy still in progress, an instance
/// shutting down. A step that meets one
/// is retried (up to [`Config::saga_transient_retries`](crate::Config::saga_transient_retries)
/// times) without using up its own retries, so an outage of a few seconds
/// does not turn into a compensation.
fn is_transient(error: &StepError) -> bool {
    matches!(
        error.code(),
        "no_handler"
            | "timeout"
            | "transport"
            | "store"
            | "shutdown"
            | crate::idempotency::IN_PROGRESS
            | HandlerError::HANDLER_TIMEOUT
    )
}

/// A step changes a copy of the data, kept only when the step succeeds (a
/// failed attempt leaves no half-changed data behind).
fn clone_data<D: Serialize + DeserializeOwned>(saga: &'static str, id: &str, data: &D) -> Result<D> {
    serde_json::to_value(data).and_then(serde_json::from_value).map_err(|e| Error::Saga {
        saga: saga.to_owned(),
        id: id.to_owned(),
        reason: format!("its data does not round-trip through JSON: {e}"),
    })
}

async fn with_timeout(limit: Option<u64>, step: BoxFuture<'_, Result<(), StepError>>) -> Result<(), StepError> {
    match limit {
        None => step.await,
        Some(ms) => tokio::time::timeout(Duration::from_millis(ms), step).await.unwrap_or_else(|_| {
            Err(HandlerError::new(HandlerError::HANDLER_TIMEOUT, format!("did not finish within {ms} ms")))
        }),
    }
}

/// 50 ms × 2^(attempt-1), capped at 2 s, with jitter.
fn backoff(attempt: u32) -> Duration {
    let ceiling =
        Duration::from_millis(50).saturating_mul(1 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(2));
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Renews a lease every third of its TTL until stopped. A lost lease is
/// only logged here: the next fenced write fails and stops the run.
struct Renewer(tokio::task::JoinHandle<()>);

impl Renewer {
    fn start(app: &App, lease: Lease) -> Renewer {
        let (store, ttl) = (app.store().clone(), app.config().saga_lease_ttl);
        Renewer(tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                match store.renew_lease(&lease, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(lease = %lease.key, "saga lease lost; another instance may have taken over");
                        return;
                    }
                    Err(e) => tracing::warn!(lease = %lease.key, error = %e, "saga lease renewal failed; retrying"),
                }
            }
        }))
    }

    fn stop(self) {
        self.0.abort();
    }
}

/// The sagas this instance is running now (so its sweep skips them).
#[derive(Default)]
pub(crate) struct Running(Mutex<HashSet<(&'static str, String)>>);

/// Marks a saga as running here while alive.
pub(crate) struct RunningGuard<'a>(&'a Running, (&'static str, String));

impl Running {
    pub(crate) fn enter(&self, saga: &'static str, id: &str) -> RunningGuard<'_> {
        let key = (saga, id.to_owned());
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone());
        RunningGuard(self, key)
    }

    fn contains(&self, saga: &'static str, id: &str) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(&(saga, id.to_owned()))
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

/// The recovery sweep of one instance: every interval, look at the indexed
/// sagas of every registered type and take over those whose lease expired.
pub(crate) async fn sweep(
    app: std::sync::Weak<crate::app::AppInner>,
    sagas: Vec<&'static SagaRecord>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every.mul_f64(0.75 + fastrand::f64() / 2.0)).await;
        let Some(app) = App::upgrade(&app) else { return };
        if app.is_draining() {
            return;
        }
        for record in &sagas {
            let ids = match app.store().set_members(&index_key(record.name)).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(saga = record.name, error = %e, "saga sweep: cannot read the index");
                    continue;
                }
            };
            for id in ids {
                if app.running_sagas().contains(record.name, &id) {
                    continue;
                }
                let (entry, app, saga) = (record.entry, app.clone(), record.name);
                // Each takeover runs on its own task; the sweep goes on.
                tokio::spawn(async move {
                    if let Err(e) = entry.resume(app, id.clone()).await {
                        tracing::warn!(saga, id, error = %e, "saga takeover stopped");
                    }
                });
            }
        }
    }
}
