//! Idempotent handlers in memory: one run per message id, whichever
//! instance each copy reaches; copies get the recorded reply; a claim whose
//! owner stopped beating is taken over, one never seen beating is not. (The
//! same over NATS with Redis, across processes, is in `tests/nats.rs`,
//! `tests/takeover.rs` and on a Redis Cluster in `tests/store.rs`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catga::prelude::*;
use catga::store::Store;
use catga::transport::memory::MemoryBus;
use catga::{Error, Metadata};

/// `n` instances on a fresh bus and store, with the handlers under `prefix`.
async fn instances(n: usize, prefix: &'static str, configure: impl Fn(catga::Builder) -> catga::Builder) -> Vec<App> {
    let (bus, store) = (MemoryBus::new(), Store::memory());
    let mut apps = Vec::new();
    for i in 0..n {
        let builder = Catga::builder()
            .service("idem")
            .instance_id(format!("idem-{i}"))
            .memory_bus(bus.clone())
            .store(store.clone())
            .handlers_where(move |h| h.subject.starts_with(prefix));
        apps.push(configure(builder).start().await.unwrap());
    }
    apps
}

fn no_change(b: catga::Builder) -> catga::Builder {
    b
}

// ---------- one run per message id ----------

static CHARGES: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.idem.charge", reply = String)]
struct Charge {
    cents: u64,
}

#[catga::command(idempotent)]
async fn charge(cmd: Charge, ctx: Context) -> Result<String, HandlerError> {
    let n = CHARGES.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    Ok(format!("charged {} by {} (run {n})", cmd.cents, ctx.instance_id()))
}

#[tokio::test]
async fn a_hundred_concurrent_copies_run_the_handler_once_and_get_one_reply() {
    let apps = instances(3, "t.idem.charge", no_change).await;
    let meta = Metadata::root();
    let before = CHARGES.load(Ordering::SeqCst);
    let sends = (0..100).map(|i| {
        let app = apps[i % 3].clone();
        let meta = meta.clone();
        tokio::spawn(async move { app.send_as(Charge { cents: 500 }, meta, SendOptions::default()).await })
    });
    let mut replies = Vec::new();
    for s in sends {
        replies.push(s.await.unwrap().unwrap());
    }
    assert_eq!(CHARGES.load(Ordering::SeqCst) - before, 1, "the handler ran once");
    assert!(replies.iter().all(|r| *r == replies[0]), "every copy got the first reply: {replies:?}");

    // A later copy is answered from the record; a new id runs again.
    let late = apps[1].send_as(Charge { cents: 500 }, meta.clone(), SendOptions::default()).await.unwrap();
    assert_eq!(late, replies[0]);
    assert_eq!(CHARGES.load(Ordering::SeqCst) - before, 1);
    apps[0].send(Charge { cents: 500 }).await.unwrap();
    assert_eq!(CHARGES.load(Ordering::SeqCst) - before, 2);
}

// ---------- errors release the claim ----------

static FLAKY_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.idem.flaky", reply = u64)]
struct Flaky;

#[catga::command(idempotent)]
async fn flaky(_: Flaky) -> Result<u64, HandlerError> {
    let run = FLAKY_RUNS.fetch_add(1, Ordering::SeqCst) as u64;
    if run == 0 { Err(HandlerError::new("try_again", "first run fails")) } else { Ok(run) }
}

#[tokio::test]
async fn a_failed_handling_is_not_recorded_so_a_retry_runs_it_again() {
    let apps = instances(1, "t.idem.flaky", no_change).await;
    let meta = Metadata::root();
    let first = apps[0].send_as(Flaky, meta.clone(), SendOptions::default()).await.unwrap_err();
    assert_eq!(first.code(), Some("try_again"));
    assert_eq!(apps[0].send_as(Flaky, meta.clone(), SendOptions::default()).await.unwrap(), 1);
    assert_eq!(apps[0].send_as(Flaky, meta.clone(), SendOptions::default()).await.unwrap(), 1, "now recorded");
    assert_eq!(FLAKY_RUNS.load(Ordering::SeqCst), 2);
}

// ---------- a copy of a running handling waits, or is told it is in progress ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.idem.slow", reply = String)]
struct Slow;

#[catga::command(idempotent)]
async fn slow(_: Slow, ctx: Context) -> Result<String, HandlerError> {
    tokio::time::sleep(Duration::from_millis(400)).await;
    Ok(ctx.instance_id().to_owned())
}

#[tokio::test]
async fn a_copy_whose_caller_would_give_up_first_gets_in_progress_never_a_second_run() {
    // A copy waits for the running handling within its own caller's
    // deadline: here 150 ms, while the first handling takes 400 ms.
    let apps = instances(2, "t.idem.slow", |b| b).await;
    let meta = Metadata::root();
    let first = {
        let app = apps[0].clone();
        let meta = meta.clone();
        tokio::spawn(async move { app.send_as(Slow, meta, SendOptions::timeout(Duration::from_secs(5))).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let copy = apps[1].send_as(Slow, meta.clone(), SendOptions::timeout(Duration::from_millis(150))).await.unwrap_err();
    assert_eq!(copy.code(), Some(catga::idempotency::IN_PROGRESS), "{copy}");
    assert!(copy.to_string().contains("retry later with the same message id"), "{copy}");
    // A copy whose caller waits long enough gets the first handling's reply.
    let waited = apps[1].send_as(Slow, meta.clone(), SendOptions::timeout(Duration::from_secs(5))).await.unwrap();
    let winner = first.await.unwrap().unwrap();
    assert_eq!(waited, winner);
    // Once recorded, any copy gets it at once.
    assert_eq!(
        apps[1].send_as(Slow, meta.clone(), SendOptions::timeout(Duration::from_millis(150))).await.unwrap(),
        winner
    );
}

// ---------- opting in and out ----------

static PLAIN_RUNS: AtomicUsize = AtomicUsize::new(0);
static OPTED_OUT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.idem.opt.plain", reply = ())]
struct Plain;

#[catga::command]
async fn plain(_: Plain) -> Result<(), HandlerError> {
    PLAIN_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.idem.opt.out", reply = ())]
struct OptedOut;

#[catga::command(idempotent = false)]
async fn opted_out(_: OptedOut) -> Result<(), HandlerError> {
    OPTED_OUT_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn handlers_are_not_idempotent_unless_asked_and_can_opt_out_of_a_service_default() {
    let meta = Metadata::root();
    let off = instances(1, "t.idem.opt.", no_change).await;
    for _ in 0..2 {
        off[0].send_as(Plain, meta.clone(), SendOptions::default()).await.unwrap();
    }
    assert_eq!(PLAIN_RUNS.load(Ordering::SeqCst), 2, "not idempotent by default");
    off[0].shutdown().await;

    let on = instances(1, "t.idem.opt.", |b| b.idempotent_by_default(true)).await;
    for _ in 0..2 {
        on[0].send_as(Plain, meta.clone(), SendOptions::default()).await.unwrap();
        on[0].send_as(OptedOut, meta.clone(), SendOptions::default()).await.unwrap();
    }
    assert_eq!(PLAIN_RUNS.load(Ordering::SeqCst), 3, "the service default made it idempotent");
    assert_eq!(OPTED_OUT_RUNS.load(Ordering::SeqCst), 2, "`idempotent = false` opts out");
}

// ---------- events: once per receiver ----------

static AUDITS: AtomicUsize = AtomicUsize::new(0);
static EMAILS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "t.idem.ev.placed")]
struct Placed;

#[catga::event(idempotent)]
async fn audit_placed(_: Placed) -> Result<(), HandlerError> {
    AUDITS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[catga::event(queue = "email", idempotent)]
async fn email_placed(_: Placed) -> Result<(), HandlerError> {
    EMAILS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn a_redelivered_event_is_handled_once_per_broadcast_subscriber_and_once_per_queue_group() {
    let apps = instances(2, "t.idem.ev.", no_change).await;
    let meta = Metadata::root();
    for _ in 0..3 {
        apps[0].publish_as(Placed, meta.clone()).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (AUDITS.load(Ordering::SeqCst) < 2 || EMAILS.load(Ordering::SeqCst) < 1)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let any extra (wrong) handling finish before counting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(AUDITS.load(Ordering::SeqCst), 2, "each of 2 broadcast instances once");
    assert_eq!(EMAILS.load(Ordering::SeqCst), 1, "the queue group once");
}

// ---------- the store is reachable from handlers ----------

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.idem.ledger", reply = i64)]
struct Ledger;

#[catga::command]
async fn ledger(_: Ledger, ctx: Context) -> Result<i64, HandlerError> {
    let key = catga::store::Key::new(ctx.message_id().to_string(), "effects");
    Ok(ctx.store().incr(&key, 1).await?)
}

#[tokio::test]
async fn handlers_reach_the_shared_store_and_store_errors_convert() {
    let apps = instances(1, "t.idem.ledger", no_change).await;
    assert_eq!(apps[0].send(Ledger).await.unwrap(), 1);
    let e: HandlerError =
        Error::from(catga::store::StoreError::ScopeMismatch { key: "k".into(), lease: "l".into() }).into();
    assert_eq!(e.code(), "store");
}

// ---------- a claim follows its owner's life ----------

static ORPHAN_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "t.idem.orphan", reply = String)]
struct Orphaned;

#[catga::command(idempotent)]
async fn orphaned(_: Orphaned, ctx: Context) -> Result<String, HandlerError> {
    ORPHAN_RUNS.fetch_add(1, Ordering::SeqCst);
    let fence = ctx.fencing_token().expect("an idempotent handling has a fencing token");
    Ok(format!("run by {} with fence {fence}", ctx.instance_id()))
}

/// The claim of `message` by `owner`, as a handling that never finished left it.
async fn abandoned_claim(store: &Store, meta: Metadata, owner: &str) {
    let key = catga::store::Key::new(meta.message_id.to_string(), "idem:t.idem.orphan:idem:idempotency::orphaned");
    let claimed = store.claim(&key, owner, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed, catga::store::Claim::Won { fence: 1 });
}

#[tokio::test]
async fn a_claim_whose_owner_stopped_beating_is_taken_over_after_the_heartbeat_timeout_and_one_never_seen_is_not() {
    let (bus, store) = (MemoryBus::new(), Store::memory());
    let app = Catga::builder()
        .service("idem")
        .instance_id("idem-survivor")
        .memory_bus(bus)
        .store(store.clone())
        .handlers_where(|h| h.subject == "t.idem.orphan")
        .start()
        .await
        .unwrap();
    // An owner that beat, then stopped (killed): its beat never changes again.
    let beat = catga::store::Key::new("live:ghost", "beat");
    store.beat(&beat, catga::store::Beat { count: 41, gone: false }, Duration::from_secs(60)).await.unwrap();
    let meta = Metadata::root();
    abandoned_claim(&store, meta.clone(), "ghost#0000beef").await;
    let started = std::time::Instant::now();
    let reply = app.send_as(Orphaned, meta.clone(), SendOptions::default()).await.unwrap();
    let waited = started.elapsed();
    // The copy took the claim over: the next grant, so its token fences
    // out the dead owner's (1) in any store the effect goes to.
    assert_eq!(reply, "run by idem-survivor with fence 2");
    assert_eq!(ORPHAN_RUNS.load(Ordering::SeqCst), 1);
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(3), "taken over after {waited:?}");

    // An owner never seen beating (a build from before heartbeats): left to
    // the claim's TTL — the copy answers `in_progress` before its caller's
    // deadline.
    let meta = Metadata::root();
    abandoned_claim(&store, meta.clone(), "old-build#0000beef").await;
    let limited = SendOptions::timeout(Duration::from_millis(1500));
    let patient = Catga::builder()
        .service("idem")
        .instance_id("idem-patient")
        .memory_bus(MemoryBus::new())
        .store(store.clone())
        .handlers_where(|h| h.subject == "t.idem.orphan")
        .start()
        .await
        .unwrap();
    let e = patient.send_as(Orphaned, meta.clone(), limited).await.unwrap_err();
    assert_eq!(e.code(), Some(catga::idempotency::IN_PROGRESS), "{e}");
    assert_eq!(ORPHAN_RUNS.load(Ordering::SeqCst), 1, "not run again");
}
