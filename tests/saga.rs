//! Sagas in memory: the step rules, reverse compensation, `Failed`,
//! idempotent start, status and listing, takeover of a saga whose runner
//! died, and fencing between two instances racing to recover one saga.
//! (The same across processes over NATS and Redis is in `tests/saga_chaos.rs`.)

use std::sync::Mutex;
use std::time::Duration;

use catga::prelude::*;
use catga::saga::{Direction, SagaContext, SagaOptions, SagaOutcome, SagaStatus, StepError};
use catga::store::{Expect, Key, Store};
use catga::transport::memory::MemoryBus;

/// What every step and compensation did: (saga id, "step" or "undo step").
static LEDGER: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn effects(id: &str) -> Vec<String> {
    LEDGER.lock().unwrap().iter().filter(|(i, _)| i == id).map(|(_, e)| e.clone()).collect()
}

fn record(ctx: &SagaContext, what: &str) {
    LEDGER.lock().unwrap().push((ctx.saga_id().to_owned(), what.to_owned()));
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Plan {
    /// The step that fails (every attempt).
    fail_step: Option<String>,
    /// The compensation that fails (every attempt).
    fail_undo: Option<String>,
    /// Steps that fail their first attempt only.
    flaky: Vec<String>,
    /// Sleep in this step (ms) — to stop a runner mid-step.
    slow_step: Option<(String, u64)>,
    /// The step that panics: on every attempt, or (with `flaky`) on its first.
    #[serde(default)]
    panic_step: Option<String>,
    done: Vec<String>,
}

fn step(plan: &mut Plan, ctx: &SagaContext) -> Result<(), StepError> {
    let name = ctx.step();
    if plan.panic_step.as_deref() == Some(name) && (ctx.attempt() == 1 || !plan.flaky.iter().any(|s| s == name)) {
        panic!("{name} panicked on purpose");
    }
    if plan.fail_step.as_deref() == Some(name) || (plan.flaky.iter().any(|s| s == name) && ctx.attempt() == 1) {
        return Err(StepError::new("step_failed", format!("{name} failed on purpose")));
    }
    record(ctx, name);
    plan.done.push(name.to_owned());
    Ok(())
}

fn undo(plan: &Plan, ctx: &SagaContext) -> Result<(), StepError> {
    assert_eq!(ctx.direction(), Direction::Compensate);
    let name = ctx.step();
    if plan.fail_undo.as_deref() == Some(name) {
        return Err(StepError::new("undo_failed", format!("undo {name} failed on purpose")));
    }
    record(ctx, &format!("undo {name}"));
    Ok(())
}

async fn slow(plan: &Plan, ctx: &SagaContext) {
    if let Some((step, ms)) = &plan.slow_step
        && step == ctx.step()
    {
        tokio::time::sleep(Duration::from_millis(*ms)).await;
    }
}

struct Order;

#[catga::saga(name = "t-order")]
impl Order {
    #[step(compensate = refund)]
    async fn charge(plan: &mut Plan, ctx: &SagaContext) -> Result<(), StepError> {
        slow(plan, ctx).await;
        step(plan, ctx)
    }

    #[step(compensate = release)]
    async fn reserve(plan: &mut Plan, ctx: &SagaContext) -> Result<(), StepError> {
        slow(plan, ctx).await;
        step(plan, ctx)
    }

    #[step(pivot)]
    async fn create(plan: &mut Plan, ctx: &SagaContext) -> Result<(), StepError> {
        slow(plan, ctx).await;
        step(plan, ctx)
    }

    #[step(retry = 2)]
    async fn notify(plan: &mut Plan, ctx: &SagaContext) -> Result<(), StepError> {
        slow(plan, ctx).await;
        step(plan, ctx)
    }

    async fn refund(plan: &Plan, ctx: &SagaContext) -> Result<(), StepError> {
        undo(plan, ctx)
    }

    async fn release(plan: &Plan, ctx: &SagaContext) -> Result<(), StepError> {
        undo(plan, ctx)
    }
}

async fn instance(store: &Store, name: &str) -> App {
    Catga::builder()
        .service("sagas")
        .instance_id(name)
        .memory_bus(MemoryBus::new())
        .store(store.clone())
        .handlers_where(|_| false)
        .start()
        .await
        .unwrap()
}

fn fast(b: catga::Builder) -> catga::Builder {
    b
}

#[tokio::test]
async fn the_happy_path_runs_every_step_once_in_order() {
    let store = Store::memory();
    let app = instance(&store, "happy").await;
    let outcome = app.start_saga::<Order>("happy-1", Plan::default()).await.unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
    assert_eq!(effects("happy-1"), ["charge", "reserve", "create", "notify"]);
    let info = app.saga_status::<Order>("happy-1").await.unwrap().unwrap();
    assert_eq!(info.status, SagaStatus::Completed);
    assert_eq!(info.history.len(), 4);
    assert_eq!(info.data["done"], serde_json::json!(["charge", "reserve", "create", "notify"]));
    let _ = fast;
}

#[tokio::test]
async fn a_failing_step_compensates_exactly_the_completed_steps_in_reverse() {
    let store = Store::memory();
    let app = instance(&store, "fail").await;
    let cases: [(&str, &[&str]); 3] = [
        ("charge", &[]),
        ("reserve", &["charge", "undo charge"]),
        ("create", &["charge", "reserve", "undo reserve", "undo charge"]),
    ];
    for (failing, expected) in cases {
        let id = format!("fail-{failing}");
        let plan = Plan { fail_step: Some(failing.into()), ..Plan::default() };
        let outcome = app.start_saga::<Order>(&id, plan).await.unwrap();
        let SagaOutcome::Compensated { error } = outcome else { panic!("{failing}: {outcome:?}") };
        assert!(error.contains(&format!("step `{failing}` failed")), "{error}");
        assert_eq!(effects(&id), expected, "failing at {failing}");
        let info = app.saga_status::<Order>(&id).await.unwrap().unwrap();
        assert_eq!(info.status, SagaStatus::Compensated);
    }
}

#[tokio::test]
async fn a_step_after_the_pivot_is_retried_and_past_its_bound_the_saga_is_failed_not_compensated() {
    let store = Store::memory();
    let app = instance(&store, "retry").await;
    let flaky = Plan { flaky: vec!["notify".into(), "charge".into()], ..Plan::default() };
    // `charge` has no retries: its one failure compensates (nothing done yet).
    let outcome = app.start_saga::<Order>("retry-1", flaky).await.unwrap();
    assert!(matches!(outcome, SagaOutcome::Compensated { .. }), "{outcome:?}");

    let flaky = Plan { flaky: vec!["notify".into()], ..Plan::default() };
    assert_eq!(app.start_saga::<Order>("retry-2", flaky).await.unwrap(), SagaOutcome::Completed);
    let info = app.saga_status::<Order>("retry-2").await.unwrap().unwrap();
    assert_eq!(info.history.last().unwrap().attempts, 2, "notify succeeded on its second attempt");

    let broken = Plan { fail_step: Some("notify".into()), ..Plan::default() };
    let outcome = app.start_saga::<Order>("retry-3", broken).await.unwrap();
    let SagaOutcome::Failed { error } = outcome else { panic!("{outcome:?}") };
    assert!(error.contains("step `notify` failed after 3 attempts"), "{error}");
    assert_eq!(effects("retry-3"), ["charge", "reserve", "create"], "nothing is undone past the pivot");
}

#[tokio::test]
async fn a_failing_compensation_ends_failed_with_its_cause_and_stays_listed() {
    let store = Store::memory();
    let app = Catga::builder()
        .service("sagas")
        .memory_bus(MemoryBus::new())
        .store(store.clone())
        .handlers_where(|_| false)
        .configure(|c| c.saga_compensation_retries = 1)
        .start()
        .await
        .unwrap();
    let plan = Plan { fail_step: Some("create".into()), fail_undo: Some("charge".into()), ..Plan::default() };
    let outcome = app.start_saga::<Order>("undo-fails", plan).await.unwrap();
    let SagaOutcome::Failed { error } = outcome else { panic!("{outcome:?}") };
    assert!(error.contains("compensation `refund` of step `charge` failed"), "{error}");
    assert!(error.contains("step `create` failed"), "the original cause is kept: {error}");
    assert_eq!(effects("undo-fails"), ["charge", "reserve", "undo reserve"]);
    let failed = app.sagas::<Order>(|s| s == SagaStatus::Failed).await.unwrap();
    assert!(failed.iter().any(|s| s.id == "undo-fails"), "failed sagas are listed: {failed:?}");
    let info = app.saga_status::<Order>("undo-fails").await.unwrap().unwrap();
    assert_eq!(info.history.last().unwrap().direction, Direction::Compensate);
    assert_eq!(info.history.last().unwrap().attempts, 2);
}

#[tokio::test]
async fn starting_an_existing_saga_returns_its_outcome_and_runs_nothing_twice() {
    let store = Store::memory();
    let (a, b) = (instance(&store, "a").await, instance(&store, "b").await);
    let plan = Plan { slow_step: Some(("charge".into(), 100)), ..Plan::default() };
    let (first, second) =
        tokio::join!(a.start_saga::<Order>("twice", plan.clone()), b.start_saga::<Order>("twice", plan.clone()));
    assert_eq!(first.unwrap(), SagaOutcome::Completed);
    assert_eq!(second.unwrap(), SagaOutcome::Completed);
    assert_eq!(a.start_saga::<Order>("twice", plan).await.unwrap(), SagaOutcome::Completed);
    assert_eq!(effects("twice"), ["charge", "reserve", "create", "notify"]);
    assert!(a.saga_status::<Order>("missing").await.unwrap().is_none());
    let bad = a.start_saga::<Order>("", Plan::default()).await.unwrap_err();
    assert!(bad.to_string().contains("a saga id is 1 to 200 characters"), "{bad}");
}

#[tokio::test]
async fn a_saga_whose_runner_died_is_taken_over_by_another_instance_and_finished() {
    let store = Store::memory();
    // A runner that "died" after charging: state written under its lease
    // (a long one: the lease is not what tells the survivors), the saga in
    // its instance's set, the instance among those that may own sagas, and
    // no heartbeat of it — judged dead after the liveness timeout.
    let scope = "saga:t-order:orphan";
    let state = serde_json::json!({
        "saga": "t-order", "id": "orphan", "status": "running", "next": 1, "attempts": 0,
        "data": { "fail_step": null, "fail_undo": null, "flaky": [], "slow_step": null, "done": ["charge"] },
        "history": [{ "step": "charge", "direction": "forward", "error": null, "attempts": 1 }],
        "error": null
    });
    let lease =
        store.acquire_lease(&Key::new(scope, "lease"), "dead-instance#1", Duration::from_secs(60)).await.unwrap();
    store
        .put_fenced(&Key::new(scope, "state"), Expect::Absent, &serde_json::to_vec(&state).unwrap(), &lease.unwrap())
        .await
        .unwrap();
    store.set_add(&Key::new("saga-index:t-order", "active"), "orphan").await.unwrap();
    store.set_add(&Key::new("saga-owner:dead-instance", "sagas"), "t-order:orphan").await.unwrap();
    store.set_add(&Key::new("live", "instances"), "dead-instance").await.unwrap();
    LEDGER.lock().unwrap().push(("orphan".into(), "charge".into()));
    let planted = std::time::Instant::now();

    let survivor = Catga::builder()
        .service("sagas")
        .instance_id("survivor")
        .memory_bus(MemoryBus::new())
        .store(store.clone())
        .handlers_where(|_| false)
        .configure(|c| c.saga_sweep_interval = Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let info = loop {
        let info = survivor.saga_status::<Order>("orphan").await.unwrap().unwrap();
        if info.status.is_finished() || std::time::Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(info.status, SagaStatus::Completed, "{info:?}");
    assert!(planted.elapsed() >= Duration::from_secs(1), "taken over only once judged dead");
    assert_eq!(effects("orphan"), ["charge", "reserve", "create", "notify"], "charge was not run again");
    let owned = store.set_members(&Key::new("saga-owner:dead-instance", "sagas")).await.unwrap();
    assert!(owned.is_empty(), "the dead instance's set is emptied: {owned:?}");
    assert!(survivor.sagas::<Order>(|_| true).await.unwrap().iter().all(|s| s.id != "orphan"), "left the index");
}

/// Plant a saga whose runner died while running step `next` (its
/// `attempts` started, none reported back), for a sweep to find.
async fn orphan(store: &Store, id: &str, next: usize, attempts: u32, done: &[&str]) {
    let scope = format!("saga:t-order:{id}");
    let history: Vec<_> = done
        .iter()
        .map(|s| serde_json::json!({ "step": s, "direction": "forward", "error": null, "attempts": 1 }))
        .collect();
    let state = serde_json::json!({
        "saga": "t-order", "id": id, "status": "running", "next": next, "attempts": attempts,
        "data": { "fail_step": null, "fail_undo": null, "flaky": [], "slow_step": null, "done": done },
        "history": history, "error": null
    });
    store.put(&Key::new(&scope, "state"), Expect::Absent, &serde_json::to_vec(&state).unwrap()).await.unwrap();
    store.set_add(&Key::new("saga-index:t-order", "active"), id).await.unwrap();
    for d in done {
        LEDGER.lock().unwrap().push((id.to_owned(), d.to_string()));
    }
}

async fn sweeper(store: &Store) -> App {
    sweeper_as(store, &format!("sweeper-{}", catga::MessageId::new())).await
}

/// A sweeping instance (30 ms rounds) with this instance id.
async fn sweeper_as(store: &Store, instance_id: &str) -> App {
    Catga::builder()
        .service("sagas")
        .instance_id(instance_id)
        .memory_bus(MemoryBus::new())
        .store(store.clone())
        .handlers_where(|_| false)
        .configure(|c| c.saga_sweep_interval = Duration::from_millis(30))
        .start()
        .await
        .unwrap()
}

async fn finished(app: &App, id: &str) -> catga::saga::SagaInfo {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = app.saga_status::<Order>(id).await.unwrap().unwrap();
        if info.status.is_finished() {
            return info;
        }
        assert!(std::time::Instant::now() < deadline, "saga {id} did not finish: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_step_whose_runner_died_mid_step_is_run_again_not_compensated() {
    let store = Store::memory();
    // Died once inside `reserve` (compensatable, no retries): a crash is
    // not a failure, so it runs again.
    orphan(&store, "mid-step", 1, 1, &["charge"]).await;
    // Died inside `reserve` six times: past the crash budget (5 re-runs) it
    // counts as a failure and `charge` is compensated.
    orphan(&store, "crash-loop", 1, 6, &["charge"]).await;
    let app = sweeper(&store).await;
    let info = finished(&app, "mid-step").await;
    assert_eq!(info.status, SagaStatus::Completed);
    assert_eq!(info.history[1].attempts, 2, "the re-run is attempt 2: {info:?}");
    assert_eq!(effects("mid-step"), ["charge", "reserve", "create", "notify"]);
    let info = finished(&app, "crash-loop").await;
    assert_eq!(info.status, SagaStatus::Compensated, "{info:?}");
    assert!(info.error.as_deref().unwrap().contains("died 6 times"), "{info:?}");
    assert_eq!(effects("crash-loop"), ["charge", "undo charge"]);
}

#[tokio::test]
async fn a_run_that_stopped_without_releasing_its_lease_is_continued_by_its_instance_without_waiting_for_the_lease() {
    // A run on this instance stopped on a store error, and releasing its
    // lease failed too (the store was still failing): the saga is in this
    // instance's set, not running, its lease held by this instance for the
    // lease TTL (an hour here). The sweep takes it back now.
    let store = Store::memory();
    let app = sweeper_as(&store, "stopped-run").await;
    orphan(&store, "stopped", 1, 1, &["charge"]).await;
    store.set_add(&Key::new("saga-owner:stopped-run", "sagas"), "t-order:stopped").await.unwrap();
    let lease = Key::new("saga:t-order:stopped", "lease");
    let held = store.acquire_lease(&lease, "stopped-run#0badf00d", Duration::from_secs(3600)).await.unwrap();
    assert!(held.is_some(), "the stopped run's lease");
    let info = finished(&app, "stopped").await;
    assert_eq!(info.status, SagaStatus::Completed, "{info:?}");
    assert_eq!(effects("stopped"), ["charge", "reserve", "create", "notify"]);
}

#[tokio::test]
async fn two_instances_racing_to_recover_one_saga_exactly_one_wins() {
    let store = Store::memory();
    let scope = "saga:t-order:contested";
    let state = serde_json::json!({
        "saga": "t-order", "id": "contested", "status": "running", "next": 0, "attempts": 0,
        "data": { "fail_step": null, "fail_undo": null, "flaky": [], "slow_step": ["charge", 200], "done": [] },
        "history": [], "error": null
    });
    store.put(&Key::new(scope, "state"), Expect::Absent, &serde_json::to_vec(&state).unwrap()).await.unwrap();
    store.set_add(&Key::new("saga-index:t-order", "active"), "contested").await.unwrap();
    let mut apps = Vec::new();
    for i in 0..4 {
        apps.push(
            Catga::builder()
                .service("sagas")
                .instance_id(format!("racer-{i}"))
                .memory_bus(MemoryBus::new())
                .store(store.clone())
                .handlers_where(|_| false)
                .configure(|c| c.saga_sweep_interval = Duration::from_millis(20))
                .start()
                .await
                .unwrap(),
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = apps[0].saga_status::<Order>("contested").await.unwrap().unwrap();
        if info.status.is_finished() || std::time::Instant::now() > deadline {
            assert_eq!(info.status, SagaStatus::Completed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(effects("contested"), ["charge", "reserve", "create", "notify"], "each step ran once");
}

// ---------- steps send commands with deterministic ids ----------

static SEEN_IDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.saga.pay", reply = ())]
struct Pay;

#[catga::command]
async fn pay(_: Pay, ctx: Context) -> Result<(), HandlerError> {
    SEEN_IDS.lock().unwrap().push(ctx.message_id().to_string());
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Empty {}

struct Paying;

#[catga::saga(name = "t-paying")]
impl Paying {
    #[step(retry = 1)]
    async fn pay_twice(_: &mut Empty, ctx: &SagaContext) -> Result<(), StepError> {
        ctx.send(Pay).await?;
        ctx.send(Pay).await?;
        if ctx.attempt() == 1 {
            return Err(StepError::new("again", "fail the first attempt after sending"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_re_run_step_sends_with_the_same_message_ids() {
    let app = Catga::builder()
        .memory_bus(MemoryBus::new())
        .store(Store::memory())
        .handlers_where(|h| h.subject == "t.saga.pay")
        .start()
        .await
        .unwrap();
    assert_eq!(app.start_saga::<Paying>("p-1", Empty {}).await.unwrap(), SagaOutcome::Completed);
    let ids = SEEN_IDS.lock().unwrap().clone();
    assert_eq!(ids.len(), 4);
    assert_ne!(ids[0], ids[1], "two sends in one step have two ids");
    assert_eq!(ids[0..2], ids[2..4], "the re-run sent the same ids");
}

#[test]
fn the_registry_lists_sagas_and_refuses_none_here() {
    let all = catga::saga::sagas();
    assert!(all.iter().any(|s| s.name == "t-order"));
    catga::saga::validate(&all).unwrap();
}

#[tokio::test]
async fn submit_returns_once_the_saga_is_durable_and_runs_it_in_the_background() {
    let store = Store::memory();
    let app = instance(&store, "submitter").await;
    assert!(app.submit_saga::<Order>("sub-1", Plan::default()).await.unwrap(), "created");
    assert!(app.saga_status::<Order>("sub-1").await.unwrap().is_some(), "durable before submit returned");
    assert!(!app.submit_saga::<Order>("sub-1", Plan::default()).await.unwrap(), "exists: nothing new starts");
    assert_eq!(finished(&app, "sub-1").await.status, SagaStatus::Completed);
    assert_eq!(effects("sub-1"), ["charge", "reserve", "create", "notify"]);
}

async fn finished_within(app: &App, id: &str, limit: Duration) -> catga::saga::SagaInfo {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let info = app.saga_status::<Order>(id).await.unwrap().unwrap();
        if info.status.is_finished() || std::time::Instant::now() > deadline {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_saga_whose_caller_stops_waiting_still_reaches_its_outcome() {
    let store = Store::memory();
    let app = instance(&store, "impatient").await;
    // Five callers give up after 300 ms on sagas whose first step takes 1 s
    // (a handler with a short budget, a cancelled task).
    for i in 0..5 {
        let plan = Plan { slow_step: Some(("charge".into(), 1000)), ..Plan::default() };
        let id = format!("gave-up-{i}");
        let wait = tokio::time::timeout(Duration::from_millis(300), app.start_saga::<Order>(&id, plan));
        assert!(wait.await.is_err(), "the caller stopped waiting");
    }
    for i in 0..5 {
        let id = format!("gave-up-{i}");
        let info = finished_within(&app, &id, Duration::from_secs(20)).await;
        assert_eq!(info.status, SagaStatus::Completed, "{info:?}");
        assert_eq!(effects(&id), ["charge", "reserve", "create", "notify"], "every step once");
    }
    assert_eq!(app.shutdown().await.abandoned, 0);
}

#[tokio::test]
async fn a_panicking_step_is_a_step_failure_retried_then_compensated() {
    let store = Store::memory();
    let app = instance(&store, "panics").await;
    // `reserve` (no retries) panics: its failure compensates `charge`.
    let plan = Plan { panic_step: Some("reserve".into()), ..Plan::default() };
    match app.start_saga::<Order>("panic-reserve", plan).await.unwrap() {
        SagaOutcome::Compensated { error } => {
            assert!(error.contains("step `reserve` failed after 1 attempt: panic:"), "{error}");
            assert!(error.contains("reserve panicked on purpose"), "{error}");
        }
        other => panic!("expected Compensated, got {other:?}"),
    }
    assert_eq!(effects("panic-reserve"), ["charge", "undo charge"]);
    // `notify` (retry = 2) panics on its first attempt only: retried, done.
    let plan = Plan { panic_step: Some("notify".into()), flaky: vec!["notify".into()], ..Plan::default() };
    assert_eq!(app.start_saga::<Order>("panic-notify", plan).await.unwrap(), SagaOutcome::Completed);
    assert_eq!(effects("panic-notify"), ["charge", "reserve", "create", "notify"]);
    // Nothing is left running or renewing: the instance stops at once.
    assert_eq!(app.shutdown().await.abandoned, 0);
}

/// Plant a saga state (as JSON) for a sweep to find, its lease free.
async fn planted(store: &Store, id: &str, state: serde_json::Value) {
    let key = Key::new(format!("saga:t-order:{id}"), "state");
    store.put(&key, Expect::Absent, &serde_json::to_vec(&state).unwrap()).await.unwrap();
    store.set_add(&Key::new("saga-index:t-order", "active"), id).await.unwrap();
}

#[tokio::test]
async fn a_saga_stored_by_a_build_whose_step_is_gone_ends_failed_naming_the_step() {
    let store = Store::memory();
    let data = serde_json::json!({ "fail_step": null, "fail_undo": null, "flaky": [], "slow_step": null, "done": [] });
    // Past the end of this build's table (the old build had more steps).
    planted(
        &store,
        "gone-ahead",
        serde_json::json!({
            "saga": "t-order", "id": "gone-ahead", "status": "running", "next": 6, "step": "ship", "attempts": 1,
            "data": data, "history": [], "error": null
        }),
    )
    .await;
    // Inside the table, but at a step this build does not have there.
    planted(
        &store,
        "moved",
        serde_json::json!({
            "saga": "t-order", "id": "moved", "status": "running", "next": 1, "step": "pack", "attempts": 1,
            "data": data, "history": [], "error": null
        }),
    )
    .await;
    // Compensating from beyond the table.
    planted(
        &store,
        "gone-back",
        serde_json::json!({
            "saga": "t-order", "id": "gone-back", "status": "compensating", "next": 9, "attempts": 0,
            "data": data, "history": [], "error": "step `audit` failed"
        }),
    )
    .await;
    let app = sweeper(&store).await;
    for (id, named) in [("gone-ahead", "`ship`"), ("moved", "`pack`"), ("gone-back", "step 9")] {
        let info = finished_within(&app, id, Duration::from_secs(10)).await;
        assert_eq!(info.status, SagaStatus::Failed, "{id}: {info:?}");
        let error = info.error.as_deref().unwrap_or_default();
        assert!(error.contains(named) && error.contains("an operator must finish it"), "{id}: {error}");
        assert!(effects(id).is_empty(), "{id}: no step ran in place of the missing one");
    }
    let failed = app.sagas::<Order>(|s| s == SagaStatus::Failed).await.unwrap();
    assert_eq!(failed.iter().filter(|s| ["gone-ahead", "moved", "gone-back"].contains(&s.id.as_str())).count(), 3);
}

#[tokio::test]
async fn a_step_that_fails_after_a_crashed_run_says_what_happened() {
    let store = Store::memory();
    // `reserve` (no retries) was started once by an instance that died,
    // then fails on its re-run.
    planted(
        &store,
        "crash-then-fail",
        serde_json::json!({
            "saga": "t-order", "id": "crash-then-fail", "status": "running", "next": 1, "attempts": 1,
            "data": { "fail_step": "reserve", "fail_undo": null, "flaky": [], "slow_step": null, "done": ["charge"] },
            "history": [{ "step": "charge", "direction": "forward", "error": null, "attempts": 1 }], "error": null
        }),
    )
    .await;
    LEDGER.lock().unwrap().push(("crash-then-fail".into(), "charge".into()));
    let app = sweeper(&store).await;
    let info = finished_within(&app, "crash-then-fail", Duration::from_secs(10)).await;
    assert_eq!(info.status, SagaStatus::Compensated, "{info:?}");
    let error = info.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("step `reserve` failed after 1 attempt (and 1 run cut short when its instance died)"),
        "{error}"
    );
    assert_eq!(effects("crash-then-fail"), ["charge", "undo charge"]);
}

#[tokio::test]
async fn a_drained_instances_saga_is_taken_over_at_once_not_after_a_lease_or_a_heartbeat_timeout() {
    let store = Store::memory();
    let leaving = instance(&store, "drain-leaving").await;
    let staying = instance(&store, "drain-staying").await;
    let plan = Plan { slow_step: Some(("charge".into(), 300)), ..Plan::default() };
    assert!(leaving.submit_saga::<Order>("handed-over", plan).await.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The drain lets `charge` finish, stops at the step boundary, releases
    // the lease, and its last beat says `gone`: taken over at the next sweep.
    leaving.shutdown().await;
    let stopped = std::time::Instant::now();
    let info = finished(&staying, "handed-over").await;
    let waited = stopped.elapsed();
    assert_eq!(info.status, SagaStatus::Completed, "{info:?}");
    assert_eq!(effects("handed-over"), ["charge", "reserve", "create", "notify"]);
    assert!(waited < Duration::from_millis(900), "taken over {waited:?} after the shutdown");
    let members = store.set_members(&Key::new("live", "instances")).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut members = members;
    while members.iter().any(|m| m == "drain-leaving") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        members = store.set_members(&Key::new("live", "instances")).await.unwrap();
    }
    assert!(!members.iter().any(|m| m == "drain-leaving"), "it left the set once it owned nothing: {members:?}");
    staying.shutdown().await;
    let members = store.set_members(&Key::new("live", "instances")).await.unwrap();
    assert!(!members.iter().any(|m| m == "drain-staying"), "a clean shutdown owning nothing leaves: {members:?}");
}

#[tokio::test]
async fn a_saga_whose_creator_died_between_its_lease_and_its_state_can_be_started_again() {
    let store = Store::memory();
    // The creator took the lease, then died before writing the state.
    let lease = Key::new("saga:t-order:half-made", "lease");
    store.acquire_lease(&lease, "dead-creator#1", Duration::from_secs(60)).await.unwrap().unwrap();
    store.set_add(&Key::new("saga-owner:dead-creator", "sagas"), "t-order:half-made").await.unwrap();
    store.set_add(&Key::new("live", "instances"), "dead-creator").await.unwrap();
    let app = instance(&store, "half-made-starter").await;
    // Not "it exists": once the creator is judged dead its lease is freed,
    // and the saga starts here.
    let outcome = app.start_saga::<Order>("half-made", Plan::default()).await.unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
    assert_eq!(effects("half-made"), ["charge", "reserve", "create", "notify"]);
}

#[tokio::test]
async fn past_its_deadline_a_saga_cuts_the_running_step_short_and_compensates_the_completed_ones() {
    let store = Store::memory();
    let app = instance(&store, "deadline").await;
    let plan = Plan { slow_step: Some(("reserve".into(), 10_000)), ..Plan::default() };
    let options = SagaOptions::default().deadline(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let outcome = app.start_saga_with::<Order>("late-1", plan, options).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "cut short, not waited for: {:?}", started.elapsed());
    let SagaOutcome::Compensated { error } = outcome else { panic!("{outcome:?}") };
    assert_eq!(error, "the saga's deadline passed during step `reserve`");
    assert_eq!(effects("late-1"), ["charge", "undo charge"], "the cut step is not compensated");
    let info = app.saga_status::<Order>("late-1").await.unwrap().unwrap();
    let (created, deadline) = (info.created.unwrap(), info.deadline.unwrap());
    assert_eq!(deadline.duration_since(created).unwrap(), Duration::from_millis(300));
    assert!(info.finished.unwrap() >= deadline && info.updated == info.finished, "{info:?}");
    assert_eq!(info.history[1].error.as_deref(), Some("cut short: the saga's deadline passed"));
    let json = serde_json::to_value(&info).unwrap();
    assert!(json["deadline"].as_str().unwrap().ends_with('Z'), "RFC 3339: {json}");
}

#[tokio::test]
async fn past_the_pivot_a_passed_deadline_ends_the_saga_failed_not_compensated() {
    let store = Store::memory();
    let app = instance(&store, "deadline-pivot").await;
    let plan = Plan { slow_step: Some(("notify".into(), 10_000)), ..Plan::default() };
    let options = SagaOptions::default().deadline(Duration::from_millis(300));
    let outcome = app.start_saga_with::<Order>("late-2", plan, options).await.unwrap();
    assert_eq!(outcome, SagaOutcome::Failed { error: "the saga's deadline passed during step `notify`".into() });
    assert_eq!(effects("late-2"), ["charge", "reserve", "create"]);
    assert_eq!(app.sagas::<Order>(|s| s == SagaStatus::Failed).await.unwrap().len(), 1, "listed for an operator");
}

#[tokio::test]
async fn a_saga_that_finished_before_its_deadline_is_left_alone() {
    let store = Store::memory();
    let app = instance(&store, "deadline-done").await;
    let options = SagaOptions::default().deadline(Duration::from_millis(200));
    let outcome = app.start_saga_with::<Order>("in-time", Plan::default(), options).await.unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
    let before = app.saga_status::<Order>("in-time").await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = app.saga_status::<Order>("in-time").await.unwrap().unwrap();
    assert_eq!((after.status, after.version), (SagaStatus::Completed, before.version), "nothing written after");
    assert!(after.finished.unwrap() < after.deadline.unwrap());
    assert_eq!(effects("in-time"), ["charge", "reserve", "create", "notify"]);
}

#[tokio::test]
async fn a_deadline_that_passed_while_the_sagas_instance_was_dead_is_kept_by_the_instance_taking_it_over() {
    let store = Store::memory();
    // Its runner died inside `reserve`; the deadline passed before anyone
    // took it over.
    orphan(&store, "late-orphan", 1, 1, &["charge"]).await;
    let key = Key::new("saga:t-order:late-orphan", "state");
    let stored = store.get(&key).await.unwrap().unwrap();
    let mut state: serde_json::Value = serde_json::from_slice(&stored.value).unwrap();
    let past = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64 - 1;
    state["deadline_at"] = past.into();
    store.put(&key, Expect::Version(stored.version), &serde_json::to_vec(&state).unwrap()).await.unwrap();
    let app = sweeper(&store).await;
    let info = finished(&app, "late-orphan").await;
    assert_eq!(info.status, SagaStatus::Compensated, "{info:?}");
    assert_eq!(info.error.as_deref(), Some("the saga's deadline passed during step `reserve`"));
    assert_eq!(effects("late-orphan"), ["charge", "undo charge"], "`reserve` is not run again");
}

/// A saga whose definition sets the deadline.
struct Hurried;

#[catga::saga(name = "t-hurried", deadline = "300ms")]
impl Hurried {
    #[step(compensate = undo_first)]
    async fn first(plan: &mut Plan, ctx: &SagaContext) -> Result<(), StepError> {
        step(plan, ctx)
    }

    #[step(compensate = undo_second)]
    async fn second(plan: &mut Plan, ctx: &SagaContext) -> Result<(), StepError> {
        slow(plan, ctx).await;
        step(plan, ctx)
    }

    async fn undo_first(plan: &Plan, ctx: &SagaContext) -> Result<(), StepError> {
        undo(plan, ctx)
    }

    async fn undo_second(plan: &Plan, ctx: &SagaContext) -> Result<(), StepError> {
        undo(plan, ctx)
    }
}

#[tokio::test]
async fn the_definitions_deadline_applies_unless_a_start_overrides_it() {
    let store = Store::memory();
    let app = instance(&store, "hurried").await;
    let slow_second = || Plan { slow_step: Some(("second".into(), 1_000)), ..Plan::default() };
    let outcome = app.start_saga::<Hurried>("h-1", slow_second()).await.unwrap();
    assert!(matches!(outcome, SagaOutcome::Compensated { .. }), "{outcome:?}");
    assert_eq!(effects("h-1"), ["first", "undo first"]);
    let longer = SagaOptions::default().deadline(Duration::from_secs(60));
    let outcome = app.start_saga_with::<Hurried>("h-2", slow_second(), longer).await.unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
    let info = app.saga_status::<Hurried>("h-2").await.unwrap().unwrap();
    assert_eq!(info.deadline.unwrap().duration_since(info.created.unwrap()).unwrap(), Duration::from_secs(60));
}

#[tokio::test]
async fn a_saga_stored_under_another_definition_goes_on_only_if_what_it_has_left_is_the_same() {
    let store = Store::memory();
    let data = |done: &[&str]| serde_json::json!({ "fail_step": null, "fail_undo": null, "flaky": [], "slow_step": null, "done": done });
    let history = |done: &[&str]| -> Vec<serde_json::Value> {
        done.iter()
            .map(|s| serde_json::json!({ "step": s, "direction": "forward", "error": null, "attempts": 1 }))
            .collect()
    };
    // An older build had a `log` step after `create` (no compensation); the
    // saga is at `notify`, which this build has too, at index 3.
    planted(
        &store,
        "v-removed",
        serde_json::json!({
            "saga": "t-order", "id": "v-removed", "status": "running", "next": 4, "step": "notify", "attempts": 0,
            "data": data(&["charge", "reserve", "create", "log"]), "history": history(&["charge", "reserve", "create", "log"]),
            "error": null,
            "definition": ["charge:c:refund", "reserve:c:release", "create:p", "log:r", "notify:r"]
        }),
    )
    .await;
    // A newer build has an `email` step at the end: what is left changed.
    planted(
        &store,
        "v-added",
        serde_json::json!({
            "saga": "t-order", "id": "v-added", "status": "running", "next": 2, "step": "create", "attempts": 0,
            "data": data(&["charge", "reserve"]), "history": history(&["charge", "reserve"]), "error": null,
            "definition": ["charge:c:refund", "reserve:c:release", "create:p", "notify:r", "email:r"]
        }),
    )
    .await;
    // Compensating under a build whose `charge` was undone by `refund_v1`.
    planted(
        &store,
        "v-undo",
        serde_json::json!({
            "saga": "t-order", "id": "v-undo", "status": "compensating", "next": 2, "attempts": 0,
            "data": data(&["charge", "reserve"]), "history": history(&["charge", "reserve"]),
            "error": "step `create` failed",
            "definition": ["charge:c:refund_v1", "reserve:c:release", "create:p", "notify:r"]
        }),
    )
    .await;
    let app = sweeper(&store).await;
    let info = finished_within(&app, "v-removed", Duration::from_secs(10)).await;
    assert_eq!(info.status, SagaStatus::Completed, "{info:?}");
    assert_eq!(effects("v-removed"), ["notify"], "it went on at `notify`, nothing else ran");
    for (id, what) in [
        (
            "v-added",
            "the steps left to run were [create, notify, email]; this build's are [charge, reserve, create, notify]",
        ),
        (
            "v-undo",
            "the compensations it may have to run were [release, refund_v1]; this build's are [release, refund]",
        ),
    ] {
        let info = finished_within(&app, id, Duration::from_secs(10)).await;
        assert_eq!(info.status, SagaStatus::Failed, "{id}: {info:?}");
        let error = info.error.as_deref().unwrap_or_default();
        assert!(error.starts_with("definition changed: ") && error.contains(what), "{id}: {error}");
        assert!(effects(id).is_empty(), "{id}: nothing ran under the changed definition");
    }
    // A saga started by this build records its definition.
    let fresh = app.start_saga::<Order>("v-fresh", Plan::default()).await.unwrap();
    assert_eq!(fresh, SagaOutcome::Completed);
    let stored = store.get(&Key::new("saga:t-order:v-fresh", "state")).await.unwrap().unwrap();
    let state: serde_json::Value = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(
        state["definition"],
        serde_json::json!(["charge:c:refund", "reserve:c:release", "create:p", "notify:r"])
    );
}

/// The `t-order` saga as a client that does not run it knows it.
struct OrderContract;

impl catga::saga::SagaContract for OrderContract {
    const NAME: &'static str = "t-order";
    type Data = Plan;
}

/// The same name with data of any shape (a client whose copy of the data
/// type went out of step).
struct LooseOrderContract;

impl catga::saga::SagaContract for LooseOrderContract {
    const NAME: &'static str = "t-order";
    type Data = serde_json::Value;
}

struct HurriedContract;

impl catga::saga::SagaContract for HurriedContract {
    const NAME: &'static str = "t-hurried";
    type Data = Plan;
}

#[tokio::test]
async fn a_client_starts_a_saga_it_does_not_run_on_an_instance_that_does_and_awaits_its_outcome() {
    let (store, bus) = (Store::memory(), MemoryBus::new());
    let runner = Catga::builder()
        .service("sagas")
        .instance_id("remote-runner")
        .memory_bus(bus.clone())
        .store(store.clone())
        .handlers_where(|_| false)
        .start()
        .await
        .unwrap();
    let client = Catga::builder()
        .service("client")
        .memory_bus(bus.clone())
        .store(store.clone())
        .client_only()
        .start()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(client.submit_remote_saga::<OrderContract>("remote-1", Plan::default()).await.unwrap());
    assert!(!client.submit_remote_saga::<OrderContract>("remote-1", Plan::default()).await.unwrap(), "exists");
    let outcome = client.saga_outcome("t-order", "remote-1", Duration::from_secs(10)).await.unwrap();
    println!("remote start → outcome in {:?}", started.elapsed());
    assert_eq!(outcome, SagaOutcome::Completed);
    assert_eq!(effects("remote-1"), ["charge", "reserve", "create", "notify"]);
    let info = client.saga_status_by_name("t-order", "remote-1").await.unwrap().unwrap();
    assert_eq!(info.history.len(), 4);
    assert_eq!(info.history[0].attempts, 1, "the runner recorded the first attempt");
    // Finished already: answered from the store.
    assert_eq!(client.saga_outcome("t-order", "remote-1", Duration::from_secs(1)).await.unwrap(), outcome);

    // A failing one compensates, and the waiter hears it.
    let plan = Plan { fail_step: Some("create".into()), ..Plan::default() };
    client.submit_remote_saga::<OrderContract>("remote-2", plan).await.unwrap();
    let outcome = client.saga_outcome("t-order", "remote-2", Duration::from_secs(10)).await.unwrap();
    assert!(matches!(&outcome, SagaOutcome::Compensated { error } if error.contains("create")), "{outcome:?}");

    // Data this build cannot decode: it ends failed, saying so.
    let bogus = serde_json::json!({ "bogus": true });
    client.submit_remote_saga::<LooseOrderContract>("remote-3", bogus).await.unwrap();
    let outcome = client.saga_outcome("t-order", "remote-3", Duration::from_secs(10)).await.unwrap();
    assert!(matches!(&outcome, SagaOutcome::Failed { error } if error.contains("does not decode")), "{outcome:?}");
    assert!(effects("remote-3").is_empty());

    // The definition's deadline holds for a saga started remotely.
    let slow = Plan { slow_step: Some(("second".into(), 1_000)), ..Plan::default() };
    client.submit_remote_saga::<HurriedContract>("remote-4", slow).await.unwrap();
    let outcome = client.saga_outcome("t-hurried", "remote-4", Duration::from_secs(10)).await.unwrap();
    assert!(matches!(&outcome, SagaOutcome::Compensated { error } if error.contains("deadline")), "{outcome:?}");

    let unknown = client.saga_outcome("t-order", "never-started", Duration::from_secs(1)).await.unwrap_err();
    assert!(unknown.to_string().contains("no such saga"), "{unknown}");
    let bad = client.submit_remote_saga::<OrderContract>("with{brace}", Plan::default()).await.unwrap_err();
    assert!(bad.to_string().contains("without `{`"), "{bad}");
    client.shutdown().await;
    runner.shutdown().await;
}

#[tokio::test]
async fn a_deadline_does_not_cut_a_pivot_short_the_saga_fails_at_the_next_step() {
    let store = Store::memory();
    let app = instance(&store, "deadline-pivot-running").await;
    // `create` (the pivot) runs while the deadline passes: it finishes (what
    // it did cannot be undone), and the saga ends Failed at `notify`.
    let plan = Plan { slow_step: Some(("create".into(), 600)), ..Plan::default() };
    let options = SagaOptions::default().deadline(Duration::from_millis(300));
    let outcome = app.start_saga_with::<Order>("late-pivot", plan, options).await.unwrap();
    assert_eq!(outcome, SagaOutcome::Failed { error: "the saga's deadline passed during step `notify`".into() });
    assert_eq!(effects("late-pivot"), ["charge", "reserve", "create"]);
}
