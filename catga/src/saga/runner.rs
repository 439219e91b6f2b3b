//! Running a saga while holding its lease: steps forward with their
//! retries, compensations in reverse, every state change a fenced
//! compare-and-set write, the lease renewed in the background (every third
//! of its TTL — a minute by default: the owner's heartbeat, not the lease,
//! tells the survivors it died).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::app::App;
use crate::backoff::Backoff;
use crate::error::{Error, HandlerError, Result};
use crate::future::{BoxFuture, CatchUnwind, panic_message};
use crate::saga::context::SagaContext;
use crate::saga::definition::{SagaDef, Step, StepError, StepKind};
use crate::saga::status::{Direction, HistoryEntry, SagaOutcome, SagaStatus, State};
use crate::saga::store::{Leaving, encode, state_key};
use crate::store::{Expect, Key, Lease, Sets};

mod end;
mod versions;
mod wait;

pub(crate) use end::publish_ended;
use end::{Renewer, finish};

use wait::Waited;

/// Run (or continue) a saga while holding its lease, to its end — its
/// outcome — or until it parks at a waiting step (`None`: no instance holds
/// it then; its wake timer brings it back).
/// `attempt_recorded`: the stored state already counts the next step's
/// attempt as started (a new saga's first write records its first step's).
///
/// Boxed: spawned inline, its state machine (several KB) was copied whole
/// several times on its way into the runtime and at its end — ~130 000
/// instructions a 3-step saga (~600 000 in all), against one allocation.
pub(crate) fn run<'a, D>(
    def: &'static SagaDef<D>,
    app: &'a App,
    lease: Lease,
    state: State<D>,
    version: u64,
    attempt_recorded: bool,
) -> BoxFuture<'a, Result<Option<SagaOutcome>>>
where
    D: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    Box::pin(run_inline(def, app, lease, state, version, attempt_recorded))
}

async fn run_inline<D>(
    def: &'static SagaDef<D>,
    app: &App,
    lease: Lease,
    state: State<D>,
    version: u64,
    attempt_recorded: bool,
) -> Result<Option<SagaOutcome>>
where
    D: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let span = tracing::info_span!("catga.saga", saga = def.name, id = %state.id);
    let _running = app.instance().running_saga(def.name, &state.id);
    // Renewed until this run ends, however it ends (a guard: a run that is
    // cancelled or unwinds must not leave a lease renewed forever).
    let renewer = Some(Renewer::start(app, lease.clone()));
    let (key, _) = state_key(def.name, &state.id);
    let mut run = Run { def, app, key, lease, state, version, attempt_recorded, renewer, released: false };
    let outcome = run.drive().instrument(span).await;
    run.renewer = None;
    if let Ok(Some(ended)) = &outcome {
        let status = match ended {
            SagaOutcome::Completed => "completed",
            SagaOutcome::Compensated { .. } => "compensated",
            SagaOutcome::Failed { .. } => "failed",
        };
        app.instance().metrics.saga_ended(def.name, status);
    }
    // Boxed: the requests side by side would make the run ~10 KB larger.
    let finished = matches!(outcome, Ok(Some(_)));
    Box::pin(finish(app, def.name, &run.state, &run.lease, finished, run.released)).await;
    outcome
}

struct Run<'a, D: 'static> {
    def: &'static SagaDef<D>,
    app: &'a App,
    /// Where its state is stored.
    key: Key,
    lease: Lease,
    state: State<D>,
    version: u64,
    /// The stored state already counts the next attempt as started.
    attempt_recorded: bool,
    /// Renews the lease until the last write (or the end of the run).
    renewer: Option<Renewer>,
    /// The last write gave the lease up and left the indexes.
    released: bool,
}

impl<D: Serialize + DeserializeOwned + Send + Sync + 'static> Run<'_, D> {
    async fn drive(&mut self) -> Result<Option<SagaOutcome>> {
        self.reconcile().await?;
        loop {
            match self.state.status {
                SagaStatus::Running => {
                    if self.forward().await? == Flow::Parked {
                        return Ok(None);
                    }
                }
                SagaStatus::Compensating => self.compensate().await?,
                SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed => break,
            }
        }
        let error = || self.state.error.clone().unwrap_or_default();
        Ok(Some(match self.state.status {
            SagaStatus::Completed => SagaOutcome::Completed,
            SagaStatus::Compensated => SagaOutcome::Compensated { error: error() },
            _ => SagaOutcome::Failed { error: error() },
        }))
    }

    /// Write the state under the lease (compare-and-set on the version).
    async fn persist(&mut self) -> Result<()> {
        let steps = self.def.steps;
        let at = match self.state.status {
            SagaStatus::Running => steps.get(self.state.next),
            SagaStatus::Compensating => self.state.next.checked_sub(1).and_then(|i| steps.get(i)),
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed => None,
        };
        self.state.step = at.map(|s| s.name.to_owned());
        let now = self.app.instance().clock.epoch_ms();
        self.state.updated_at = Some(now);
        if self.state.status.is_finished() {
            self.state.finished_at.get_or_insert(now);
        }
        let (store, expect, encoded) =
            (self.app.store(), Expect::Version(self.version), encode(self.def.name, &self.state)?);
        if !self.state.status.is_finished() {
            self.version = store.put_fenced(&self.key, expect, &encoded, &self.lease).await?;
            return Ok(());
        }
        // The last write also leaves the indexes and gives the lease up
        // (renewing it stops first).
        self.renewer = None;
        let leaving = Leaving::of(self.app, self.def.name, &self.state.id, self.state.status);
        let (entering, out) = leaving.pairs();
        let sets = Sets { entering: entering.as_slice(), leaving: &out };
        self.version = store.put_fenced_and_release(&self.key, expect, &encoded, &self.lease, sets).await?;
        self.released = true;
        Ok(())
    }

    /// A drain hands the saga over at a step boundary.
    fn check_draining(&self) -> Result<()> {
        if self.app.instance().is_draining() {
            return Err(Error::Saga {
                saga: self.def.name.to_owned(),
                id: self.state.id.clone(),
                reason: "the instance is shutting down; another instance takes it over once this one is gone".into(),
            });
        }
        Ok(())
    }

    /// Run the next step (with its retries) and record the result; a
    /// waiting step whose event has not come parks the saga instead.
    async fn forward(&mut self) -> Result<Flow> {
        let index = self.state.next;
        if index == self.def.steps.len() && self.state.step.is_none() {
            // Written by a build that persisted the end separately.
            self.state.status = SagaStatus::Completed;
            self.persist().await?;
            return Ok(Flow::Go);
        }
        let step = match self.step_at(index) {
            Ok(step) => step,
            Err(reason) => {
                self.fail_unknown_step(reason).await?;
                return Ok(Flow::Go);
            }
        };
        let mut event = None;
        let attempted = match &step.wait {
            None => self.attempts(step, index, Direction::Forward, step.retry, None).await?,
            Some(wait) => match self.waited(step, wait).await? {
                Waited::Arrived(bytes) => {
                    event = Some(bytes);
                    self.attempts(step, index, Direction::Forward, step.retry, event.as_deref()).await?
                }
                Waited::NotYet => return Ok(Flow::Parked),
                Waited::Over(attempted) => attempted,
            },
        };
        drop(event);
        self.state.wait_until = None;
        let gave_up = match &attempted {
            Attempted::Succeeded => None,
            Attempted::GaveUp(error) => Some(error.clone()),
            Attempted::DeadlinePassed => Some("cut short: the saga's deadline passed".to_owned()),
        };
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
                    next_started = !self.app.instance().is_draining();
                }
            }
            Some(error) => {
                self.state.error = Some(match attempted {
                    Attempted::DeadlinePassed => format!("the saga's deadline passed during step `{}`", step.name),
                    _ => format!("step `{}` failed{}: {error}", step.name, self.what_happened()),
                });
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
        Ok(Flow::Go)
    }

    /// Undo the last completed step that has a compensation.
    async fn compensate(&mut self) -> Result<()> {
        let Some(index) = self.state.next.checked_sub(1) else {
            self.state.status = SagaStatus::Compensated;
            return self.persist().await;
        };
        let step = match self.step_at(index) {
            Ok(step) => step,
            Err(reason) => return self.fail_unknown_step(reason).await,
        };
        let Some((name, _)) = step.compensation else {
            self.state.next = index;
            return self.persist().await;
        };
        let retries = self.app.config().saga_compensation_retries;
        let gave_up = match self.attempts(step, index, Direction::Compensate, retries, None).await? {
            Attempted::GaveUp(error) => Some(error),
            // A deadline only stops a saga running forward.
            Attempted::Succeeded | Attempted::DeadlinePassed => None,
        };
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
                    "compensation `{name}` of step `{}` failed{}: {error} (compensating because: {cause})",
                    step.name,
                    self.what_happened()
                ));
                self.state.status = SagaStatus::Failed;
            }
        }
        self.state.reset_attempts();
        self.persist().await
    }

    /// Run step `index` (or its compensation) until it succeeds, has failed
    /// `retries + 1` times, or — running forward — the saga's deadline
    /// passes (the attempt running then is cut short). Each attempt
    /// is persisted before it starts. An attempt that never reported back
    /// (its instance died) is run again, up to
    /// [`Config::saga_crash_reruns`](crate::Config::saga_crash_reruns) times:
    /// a step that kills every instance that runs it must not kill them all.
    async fn attempts(
        &mut self,
        step: &'static Step<D>,
        index: usize,
        direction: Direction,
        retries: u32,
        event: Option<&[u8]>,
    ) -> Result<Attempted> {
        let clock = self.app.instance().clock;
        loop {
            if self.state.failures > retries {
                return Ok(Attempted::GaveUp(self.state.last_error.clone().unwrap_or_default()));
            }
            let crashed = self.state.attempts - self.state.failures - self.state.transient;
            if crashed > self.app.config().saga_crash_reruns {
                return Ok(Attempted::GaveUp(format!(
                    "the instances running it died {crashed} times before it finished"
                )));
            }
            let deadline = match direction {
                Direction::Forward => self.state.deadline_at,
                Direction::Compensate => None,
            };
            let left = |clock: crate::clock::Clock| {
                deadline.map(|at| Duration::from_millis(at.saturating_sub(clock.epoch_ms())))
            };
            if left(clock).is_some_and(|l| l.is_zero()) {
                return Ok(Attempted::DeadlinePassed);
            }
            if std::mem::take(&mut self.attempt_recorded) {
                // The previous step's write already recorded this attempt.
            } else {
                self.check_draining()?;
                self.state.attempts += 1;
                self.persist().await?;
            }
            if let Some(gate) = &self.app.instance().saga_gate {
                gate.before(self.def.name, &self.state.id, step.name).await;
            }
            let ctx = self.context(step.name, index, direction);
            let trace = ctx.trace();
            let span = tracing::info_span!(
                "catga.saga.step",
                step = step.name,
                ?direction,
                attempt = ctx.attempt(),
                trace_id = %trace.trace_id(),
                span_id = %trace.span_id(),
                parent_span_id = trace.parent_span_id().map(tracing::field::display),
            );
            crate::otel::adopt(&span, trace);
            let started = clock.now();
            let result = match (direction, step.compensation) {
                (Direction::Forward, _) => {
                    // The step changes a copy, kept only if it succeeds: a
                    // failed attempt leaves no half-changed data behind.
                    let mut data = clone_data(self.def.name, &self.state.id, &self.state.data)?;
                    let run = match (&step.wait, event) {
                        (Some(wait), Some(event)) => (wait.run)(&mut data, event, &ctx),
                        _ => (step.run)(&mut data, &ctx),
                    };
                    let attempt = guarded(self.app, step, run).instrument(span);
                    // A pivot is never cut mid-attempt: its outcome would be
                    // unknown, and what it did cannot be undone.
                    let cut = if step.kind == StepKind::Pivot { None } else { left(clock) };
                    let result = match cut {
                        None => attempt.await,
                        Some(left) => match clock.timeout(left, attempt).await {
                            Ok(result) => result,
                            Err(_) => return Ok(Attempted::DeadlinePassed),
                        },
                    };
                    if result.is_ok() {
                        self.state.data = data;
                    }
                    result
                }
                (Direction::Compensate, Some((_, undo))) => {
                    guarded(self.app, step, undo(&self.state.data, &ctx)).instrument(span).await
                }
                (Direction::Compensate, None) => return Ok(Attempted::Succeeded),
            };
            let way = match direction {
                Direction::Forward => "forward",
                Direction::Compensate => "compensate",
            };
            let took = clock.now().saturating_duration_since(started);
            self.app.instance().metrics.step(self.def.name, step.name, way, took);
            // A pause between attempts ends at the deadline too.
            let pause = |delay: Duration| left(clock).map_or(delay, |left| delay.min(left));
            match result {
                Ok(()) => return Ok(Attempted::Succeeded),
                Err(error)
                    if is_transient(&error) && self.state.transient < self.app.config().saga_transient_retries =>
                {
                    // The infrastructure failed, not the step: try again
                    // without using up the step's own retries.
                    self.state.transient += 1;
                    tracing::warn!(step = step.name, ?direction, attempt = ctx.attempt(), %error, "saga step hit a transient error; retrying");
                    self.state.last_error = Some(error.to_string());
                    clock.sleep(pause(RETRY.delay(self.state.transient))).await;
                }
                Err(error) => {
                    tracing::warn!(step = step.name, ?direction, attempt = ctx.attempt(), %error, "saga step failed");
                    self.state.failures += 1;
                    self.state.last_error = Some(error.to_string());
                    if self.state.failures <= retries {
                        clock.sleep(pause(RETRY.delay(self.state.failures))).await;
                    }
                }
            }
        }
    }

    /// The step at `index` of this build's table — checked against the step
    /// the stored state names, so a saga written by a build whose step is
    /// gone (or moved) is not run on with another step in its place.
    fn step_at(&self, index: usize) -> std::result::Result<&'static Step<D>, String> {
        let steps = self.def.steps;
        let recorded = self.state.step.as_deref();
        match steps.get(index) {
            Some(step) if recorded.is_none_or(|name| name == step.name) => Ok(step),
            found => {
                let here = match found {
                    Some(other) => format!("has `{}` there", other.name),
                    None => format!("has {} steps", steps.len()),
                };
                Err(format!(
                    "its stored state is at step {} `{}`, but this build's saga {here} (was the step removed or \
                     moved?); it cannot go on — an operator must finish it",
                    index + 1,
                    recorded.unwrap_or("(unnamed)"),
                ))
            }
        }
    }

    /// End a saga whose step this build does not have: `Failed`, kept and
    /// listed, never run on with a step it was not at.
    async fn fail_unknown_step(&mut self, reason: String) -> Result<()> {
        tracing::error!(saga = self.def.name, id = %self.state.id, %reason, "saga cannot continue");
        let cause = self.state.error.take().map(|c| format!(" (it was compensating because: {c})")).unwrap_or_default();
        self.state.error = Some(format!("{reason}{cause}"));
        self.state.status = SagaStatus::Failed;
        self.state.reset_attempts();
        self.persist().await
    }

    /// How the attempts of the step that gave up went, e.g. " after 1
    /// attempt (and 1 run cut short when its instance died)"; empty when no
    /// attempt returned an error (the error then says what happened).
    fn what_happened(&self) -> String {
        let (failures, transient) = (self.state.failures, self.state.transient);
        if failures == 0 {
            return String::new();
        }
        let crashed = self.state.attempts.saturating_sub(failures + transient);
        let plural = |n: u32, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut also = Vec::new();
        if crashed > 0 {
            also.push(plural(
                crashed,
                "run cut short when its instance died",
                "runs cut short when their instance died",
            ));
        }
        if transient > 0 {
            also.push(plural(transient, "transient error retried", "transient errors retried"));
        }
        let attempts = plural(failures, "attempt", "attempts");
        if also.is_empty() {
            format!(" after {attempts}")
        } else {
            format!(" after {attempts} (and {})", also.join(", "))
        }
    }

    fn context(&self, step: &'static str, step_index: usize, direction: Direction) -> SagaContext {
        SagaContext::new(
            self.app.clone(),
            self.def.name,
            self.state.id.clone(),
            (step, step_index),
            direction,
            self.state.attempts,
            self.state.trace_origin(),
        )
    }
}

/// Whether a saga goes on, or parked at a waiting step.
#[derive(Debug, PartialEq)]
enum Flow {
    Go,
    Parked,
}

/// How a step's (or compensation's) attempts ended.
enum Attempted {
    Succeeded,
    /// After its retries, with the last error.
    GaveUp(String),
    /// Running forward, the saga's deadline passed.
    DeadlinePassed,
}

/// Errors of the infrastructure rather than of the step's own logic: no
/// handler reachable, a timeout (the caller's or the handler's), the
/// transport or the store failing, a copy still in progress, an instance
/// shutting down. A step that meets one
/// is retried (up to [`Config::saga_transient_retries`](crate::Config::saga_transient_retries)
/// times) without using up its own retries, so an outage of a few seconds
/// does not turn into a compensation.
fn is_transient(error: &StepError) -> bool {
    HandlerError::is_transient_code(error.code())
}

/// A step changes a copy of the data, kept only when the step succeeds (a
/// failed attempt leaves no half-changed data behind).
fn clone_data<D: Serialize + DeserializeOwned>(saga: &'static str, id: &str, data: &D) -> Result<D> {
    serde_json::to_vec(data).and_then(|json| serde_json::from_slice(&json)).map_err(|e| Error::Saga {
        saga: saga.to_owned(),
        id: id.to_owned(),
        reason: format!("its data does not round-trip through JSON: {e}"),
    })
}

/// A step or compensation under its timeout, with a panic turned into a
/// step failure (retried, then compensated, like an error).
async fn guarded<D>(
    app: &App,
    step: &'static Step<D>,
    future: BoxFuture<'_, Result<(), StepError>>,
) -> Result<(), StepError> {
    let caught = CatchUnwind::new(future);
    let outcome = match step.timeout_ms {
        None => caught.await,
        Some(ms) => match app.instance().clock.timeout(Duration::from_millis(ms), caught).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(HandlerError::new(HandlerError::HANDLER_TIMEOUT, format!("did not finish within {ms} ms")));
            }
        },
    };
    outcome.unwrap_or_else(|panic| {
        let what = panic_message(&*panic);
        tracing::error!(step = step.name, panic = what, "saga step panicked");
        Err(HandlerError::new(HandlerError::PANIC, format!("step `{}` panicked: {what}", step.name)))
    })
}

/// Between attempts of a step: 50 ms × 2^(n−1), at most 2 s, jittered.
const RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2)).half_jitter();
