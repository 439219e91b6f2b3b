//! A service for the saga crash tests: `Catga::run()` with one saga whose
//! steps apply their effects through an idempotent command, and which kills
//! its own process with SIGKILL at a planned point — a real kill -9 at an
//! exact place in the saga, which a test's external kill could not hit.
//!
//! - `saga.start` starts a saga here (in the background) and answers at once.
//! - `saga.hold` and `saga.start_slow` (a `slow-order` saga) serve the
//!   takeover tests: a handling and sagas whose instance is killed mid-way.
//! - `saga.effect` is the effect: it adds one to the ledger entry
//!   `ledger:{saga id}` / `{step}:{direction}` in the store. It is
//!   idempotent, and steps send it with their deterministic message ids, so
//!   a step re-run after a takeover does not apply its effect twice.

use catga::prelude::*;
use catga::saga::{Direction, SagaContext, StepError};
use catga::store::Key;

/// Where to die: on the first attempt of `step`, at `point`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Crash {
    pub step: String,
    /// `start` (after the previous state write, before the effect),
    /// `after_effect` (effect applied, state not yet written), or the same
    /// two for a compensation: `undo_start`, `undo_after_effect`.
    pub point: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Plan {
    pub crash: Option<Crash>,
    /// This step fails every attempt (so the saga compensates).
    pub fail_step: Option<String>,
    /// This step's compensation fails every attempt (so the saga ends `Failed`).
    #[serde(default)]
    pub fail_undo: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "saga.start", reply = ())]
pub struct StartOrder {
    pub id: String,
    pub plan: Plan,
}

#[catga::command(queue = "saga-svc")]
async fn start_order(cmd: StartOrder, ctx: Context) -> Result<(), HandlerError> {
    ctx.app().submit_saga::<ChaosOrder>(&cmd.id, cmd.plan).await?;
    Ok(())
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "saga.effect", reply = i64)]
pub struct Effect {
    pub saga_id: String,
    pub what: String,
}

/// The effect is keyed by its message id (a set add), so it is applied
/// once per message id even if the handler dies halfway; a step that
/// re-ran with a *new* id would show up as a second member.
#[catga::command(queue = "saga-svc", idempotent)]
async fn effect(cmd: Effect, ctx: Context) -> Result<i64, HandlerError> {
    let key = Key::new(format!("ledger:{}", cmd.saga_id), cmd.what);
    ctx.store().set_add(&key, &ctx.message_id().to_string()).await?;
    Ok(ctx.store().set_members(&key).await?.len() as i64)
}

fn die_if(plan: &Plan, ctx: &SagaContext, point: &str) {
    let Some(crash) = &plan.crash else { return };
    let point = match ctx.direction() {
        Direction::Forward => point.to_owned(),
        Direction::Compensate => format!("undo_{point}"),
    };
    if crash.step == ctx.step() && crash.point == point && ctx.attempt() == 1 {
        eprintln!("CRASHPOINT {} {} {point}", ctx.saga_id(), ctx.step());
        // A real SIGKILL: no destructor, no flush, no lease release.
        let _ = std::process::Command::new("kill").arg("-KILL").arg(std::process::id().to_string()).status();
        std::process::abort();
    }
}

async fn apply(plan: &Plan, ctx: &SagaContext) -> Result<(), StepError> {
    die_if(plan, ctx, "start");
    let failing = match ctx.direction() {
        Direction::Forward => &plan.fail_step,
        Direction::Compensate => &plan.fail_undo,
    };
    if failing.as_deref() == Some(ctx.step()) {
        return Err(StepError::new("planned", format!("{:?} of {} fails on purpose", ctx.direction(), ctx.step())));
    }
    let what = match ctx.direction() {
        Direction::Forward => format!("{}:forward", ctx.step()),
        Direction::Compensate => format!("{}:compensate", ctx.step()),
    };
    ctx.send(Effect { saga_id: ctx.saga_id().to_owned(), what }).await?;
    die_if(plan, ctx, "after_effect");
    Ok(())
}

pub struct ChaosOrder;

#[catga::saga(name = "chaos-order")]
impl ChaosOrder {
    #[step(compensate = refund)]
    async fn charge(plan: &mut Plan, ctx: &SagaContext) -> Result<(), StepError> {
        apply(plan, ctx).await
    }

    #[step(compensate = release)]
    async fn reserve(plan: &mut Plan, ctx: &SagaContext) -> Result<(), StepError> {
        apply(plan, ctx).await
    }

    #[step(pivot)]
    async fn create(plan: &mut Plan, ctx: &SagaContext) -> Result<(), StepError> {
        apply(plan, ctx).await
    }

    #[step(retry = 5)]
    async fn notify(plan: &mut Plan, ctx: &SagaContext) -> Result<(), StepError> {
        apply(plan, ctx).await
    }

    async fn refund(plan: &Plan, ctx: &SagaContext) -> Result<(), StepError> {
        apply(plan, ctx).await
    }

    async fn release(plan: &Plan, ctx: &SagaContext) -> Result<(), StepError> {
        apply(plan, ctx).await
    }
}

// ---------- takeover tests (tests/takeover.rs) ----------

/// An idempotent command that takes `ms`: counts its starts and ends per
/// message id in the store (`hold:<message id>` / `starts`, `ends`) and
/// prints `HOLD START <message id> <instance>` when it starts.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "saga.hold", reply = String)]
pub struct Hold {
    pub ms: u64,
}

#[catga::command(queue = "saga-svc", idempotent)]
async fn hold(cmd: Hold, ctx: Context) -> Result<String, HandlerError> {
    let scope = format!("hold:{}", ctx.message_id());
    ctx.store().incr(&Key::new(&scope, "starts"), 1).await?;
    eprintln!("HOLD START {} {}", ctx.message_id(), ctx.instance_id());
    tokio::time::sleep(std::time::Duration::from_millis(cmd.ms)).await;
    ctx.store().incr(&Key::new(&scope, "ends"), 1).await?;
    Ok(format!("held by {}", ctx.instance_id()))
}

/// Starts a `slow-order` saga here (in the background) and answers at once.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "saga.start_slow", reply = ())]
pub struct StartSlow {
    pub id: String,
    pub slow_ms: u64,
    /// How long `finish` takes before its effect.
    #[serde(default)]
    pub finish_ms: u64,
    /// The saga's deadline, from its start.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

#[catga::command(queue = "saga-svc")]
async fn start_slow(cmd: StartSlow, ctx: Context) -> Result<(), HandlerError> {
    let mut options = catga::saga::SagaOptions::default();
    if let Some(ms) = cmd.deadline_ms {
        options = options.deadline(std::time::Duration::from_millis(ms));
    }
    let slow = Slow { slow_ms: cmd.slow_ms, finish_ms: cmd.finish_ms };
    ctx.app().submit_saga_with::<SlowOrder>(&cmd.id, slow, options).await?;
    Ok(())
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Slow {
    pub slow_ms: u64,
    #[serde(default)]
    pub finish_ms: u64,
}

pub struct SlowOrder;

/// A saga whose first step takes `slow_ms`, then applies its effect (once
/// per deterministic message id, like the chaos saga's); its second takes
/// `finish_ms`.
#[catga::saga(name = "slow-order")]
impl SlowOrder {
    #[step(compensate = undo_work)]
    async fn work(slow: &mut Slow, ctx: &SagaContext) -> Result<(), StepError> {
        tokio::time::sleep(std::time::Duration::from_millis(slow.slow_ms)).await;
        ctx.send(Effect { saga_id: ctx.saga_id().to_owned(), what: "work:forward".into() }).await?;
        Ok(())
    }

    #[step(pivot)]
    async fn finish(slow: &mut Slow, ctx: &SagaContext) -> Result<(), StepError> {
        tokio::time::sleep(std::time::Duration::from_millis(slow.finish_ms)).await;
        ctx.send(Effect { saga_id: ctx.saga_id().to_owned(), what: "finish:forward".into() }).await?;
        Ok(())
    }

    async fn undo_work(_slow: &Slow, ctx: &SagaContext) -> Result<(), StepError> {
        ctx.send(Effect { saga_id: ctx.saga_id().to_owned(), what: "work:compensate".into() }).await?;
        Ok(())
    }
}

/// A payment, for the waiting saga: `order` is the saga's id.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "saga.paid")]
pub struct Paid {
    pub order: String,
    pub by: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Waiting {
    pub by: Option<String>,
}

pub struct WaitingOrder;

/// Reserves, waits (up to 4 s) for its payment, ships; each effect applied
/// once per deterministic message id.
#[catga::saga(name = "waiting-order")]
impl WaitingOrder {
    #[step(compensate = release)]
    async fn reserve(_w: &mut Waiting, ctx: &SagaContext) -> Result<(), StepError> {
        ctx.send(Effect { saga_id: ctx.saga_id().to_owned(), what: "reserve:forward".into() }).await?;
        Ok(())
    }

    #[step(wait = Paid, key = order, within = "4s", pivot)]
    async fn paid(w: &mut Waiting, event: Paid, ctx: &SagaContext) -> Result<(), StepError> {
        w.by = Some(event.by);
        ctx.send(Effect { saga_id: ctx.saga_id().to_owned(), what: "paid:forward".into() }).await?;
        Ok(())
    }

    #[step]
    async fn ship(_w: &mut Waiting, ctx: &SagaContext) -> Result<(), StepError> {
        ctx.send(Effect { saga_id: ctx.saga_id().to_owned(), what: "ship:forward".into() }).await?;
        Ok(())
    }

    async fn release(_w: &Waiting, ctx: &SagaContext) -> Result<(), StepError> {
        ctx.send(Effect { saga_id: ctx.saga_id().to_owned(), what: "reserve:compensate".into() }).await?;
        Ok(())
    }
}

// ---------- trace context tests (tests/trace.rs) ----------

/// Where a span is in its trace, as a handler or step sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub tracestate: Option<String>,
    pub correlation: String,
    pub instance: String,
}

fn seen(trace: &catga::TraceContext, correlation: catga::MessageId, instance: &str) -> Seen {
    Seen {
        trace_id: trace.trace_id().to_string(),
        span_id: trace.span_id().to_string(),
        parent_span_id: trace.parent_span_id().map(|p| p.to_string()),
        tracestate: trace.tracestate().map(str::to_owned),
        correlation: correlation.to_string(),
        instance: instance.to_owned(),
    }
}

fn handling(ctx: &Context) -> Seen {
    seen(&ctx.metadata().trace, ctx.metadata().correlation_id, ctx.instance_id())
}

/// Answers where its handling is in the trace, and publishes `Traced`.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "trace.probe", reply = Seen)]
pub struct Probe {
    /// The handler of `Traced` starts a `traced-order` saga with this id.
    #[serde(default)]
    pub saga: Option<String>,
}

/// Published by `probe`: where the publishing handling was.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "trace.traced")]
pub struct Traced {
    pub by: Seen,
    #[serde(default)]
    pub saga: Option<String>,
}

/// Published by the handler of `Traced`: the publisher's place and its own.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "trace.report")]
pub struct TraceReport {
    pub by: Seen,
    pub handler: Seen,
}

#[catga::command(queue = "saga-svc")]
async fn probe(cmd: Probe, ctx: Context) -> Result<Seen, HandlerError> {
    let me = handling(&ctx);
    ctx.publish(Traced { by: me.clone(), saga: cmd.saga }).await?;
    Ok(me)
}

#[catga::event(queue = "saga-svc")]
async fn on_traced(ev: Traced, ctx: Context) -> Result<(), HandlerError> {
    if let Some(saga) = &ev.saga {
        ctx.app().submit_saga::<TracedOrder>(saga, Parking { park: false }).await?;
    }
    ctx.publish(TraceReport { by: ev.by, handler: handling(&ctx) }).await?;
    Ok(())
}

/// Submits a `traced-order` saga here and answers where its handling is.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "trace.start_saga", reply = Seen)]
pub struct StartTraced {
    pub id: String,
    /// The `parked` step's first attempt waits a minute (its instance is
    /// killed meanwhile), after printing `TRACE PARKED <id> <instance>`.
    pub park: bool,
}

#[catga::command(queue = "saga-svc")]
async fn start_traced(cmd: StartTraced, ctx: Context) -> Result<Seen, HandlerError> {
    ctx.app().submit_saga::<TracedOrder>(&cmd.id, Parking { park: cmd.park }).await?;
    Ok(handling(&ctx))
}

/// What a traced saga's step or the handling of its send saw, kept in the
/// store: set `trace:<saga id>` / `seen`, one JSON `Recorded` per member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    pub what: String,
    pub attempt: u32,
    pub seen: Seen,
}

async fn record(store: &catga::store::Store, saga_id: &str, recorded: Recorded) -> Result<(), HandlerError> {
    let member = serde_json::to_string(&recorded).map_err(|e| HandlerError::new("encode", e.to_string()))?;
    store.set_add(&Key::new(format!("trace:{saga_id}"), "seen"), &member).await?;
    Ok(())
}

/// Records where its handling is (as `effect:<step>`).
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "trace.effect", reply = ())]
pub struct TracedEffect {
    pub saga_id: String,
    pub step: String,
}

#[catga::command(queue = "saga-svc")]
async fn traced_effect(cmd: TracedEffect, ctx: Context) -> Result<(), HandlerError> {
    let what = format!("effect:{}", cmd.step);
    record(ctx.store(), &cmd.saga_id, Recorded { what, attempt: 0, seen: handling(&ctx) }).await
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Parking {
    pub park: bool,
}

async fn traced_step(ctx: &SagaContext) -> Result<(), StepError> {
    let app = ctx.app();
    let me = seen(ctx.trace(), catga::MessageId::from_u128(0), app.instance_id());
    let recorded = Recorded { what: format!("step:{}", ctx.step()), attempt: ctx.attempt(), seen: me };
    record(app.store(), ctx.saga_id(), recorded).await?;
    ctx.send(TracedEffect { saga_id: ctx.saga_id().to_owned(), step: ctx.step().to_owned() }).await?;
    Ok(())
}

pub struct TracedOrder;

/// Two steps that record their trace context and send `trace.effect`; the
/// second can park on its first attempt (for a takeover).
#[catga::saga(name = "traced-order")]
impl TracedOrder {
    #[step(compensate = forget)]
    async fn first(_: &mut Parking, ctx: &SagaContext) -> Result<(), StepError> {
        traced_step(ctx).await
    }

    #[step(pivot)]
    async fn parked(parking: &mut Parking, ctx: &SagaContext) -> Result<(), StepError> {
        if parking.park && ctx.attempt() == 1 {
            eprintln!("TRACE PARKED {} {}", ctx.saga_id(), ctx.app().instance_id());
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
        traced_step(ctx).await
    }

    async fn forget(_: &Parking, _: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    catga_suite::log_to_stderr();
    if let Err(e) = Catga::run().await {
        eprintln!("catga-saga-service: {e}");
        std::process::exit(2);
    }
}
