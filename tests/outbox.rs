//! The transactional outbox and inbox against a real PostgreSQL server and
//! real nats-server processes (`catga::outbox`): a rollback publishes
//! nothing, a commit publishes once, copies of one message change the
//! database once, a process that dies right after its commit still has its
//! event published (by another instance), and with three processes — one
//! killed under load — every event arrives, in order per key.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catga::outbox::Begin;
use catga::prelude::*;
use catga::registry::HandlerRecord;
use catga::saga::{SagaContext, SagaOutcome, StepError};
use catga::{App, Metadata, SendOptions};
use catga_suite::{NatsServer, PgDatabase, ServiceProcess};
use futures_util::StreamExt;

/// The test service's contracts (tests/support/service.rs), copied as
/// another service's would be.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "svc.outbox.deposit", reply = i64)]
struct Deposit {
    account: String,
    amount: i64,
    die_after_commit: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
#[catga(subject = "svc.outbox.deposited")]
struct Deposited {
    account: String,
    balance: i64,
}

const SERVICE: &str = env!("CARGO_BIN_EXE_catga-test-service");

/// Every `Deposited` the NATS server carries, in arrival order, with its
/// message id (a plain subscriber: it sees copies a Catga handler would
/// have deduplicated).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, Deposited)>>>);

impl Seen {
    async fn subscribe(url: &str) -> Seen {
        let client = async_nats::connect(url).await.unwrap();
        let mut sub = catga_suite::subscribed(&client, "svc.outbox.deposited").await;
        let seen = Seen::default();
        let into = seen.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(message) = sub.next().await {
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Catga-Message-Id"))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                let event: Deposited = serde_json::from_slice(&message.payload).unwrap();
                into.0.lock().unwrap().push((id, event));
            }
        });
        seen
    }

    fn all(&self) -> Vec<(String, Deposited)> {
        self.0.lock().unwrap().clone()
    }

    /// Wait (bounded) until `done` holds for what was seen.
    async fn wait(&self, within: Duration, what: &str, done: impl Fn(&[(String, Deposited)]) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if done(&self.all()) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not seen within {within:?}; seen {:?}", self.all());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Wait (bounded) until `sql` answers `expected` (the relay marks rows
/// after the server confirmed their events).
async fn wait_sql(db: &PgDatabase, sql: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = db.sql(sql);
        if got == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {got}, not {expected}, after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn accounts(db: &PgDatabase) {
    db.sql("CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL)");
}

/// An instance with a relay, running the handlers `keep` accepts.
async fn instance(
    nats: &NatsServer,
    db: &PgDatabase,
    keep: impl Fn(&HandlerRecord) -> bool + Send + Sync + 'static,
) -> App {
    let builder = Catga::builder().service("outbox-test").nats_url(nats.url()).postgres_url(db.url());
    builder.handlers_where(keep).start().await.unwrap()
}

async fn client(nats: &NatsServer, db: &PgDatabase) -> App {
    Catga::builder()
        .service("outbox-client")
        .nats_url(nats.url())
        .postgres_url(db.url())
        .client_only()
        .start()
        .await
        .unwrap()
}

fn service(nats: &NatsServer, db: &PgDatabase) -> ServiceProcess {
    ServiceProcess::started(
        SERVICE,
        &[("CATGA_SERVICE", "svc"), ("CATGA_NATS_URL", &nats.url()), ("CATGA_POSTGRES_URL", &db.url())],
    )
}

#[tokio::test]
async fn a_rollback_publishes_nothing_and_a_commit_publishes_once() {
    let (nats, db) = (NatsServer::start(), PgDatabase::create());
    let seen = Seen::subscribe(&nats.url()).await;
    // An instance (with a relay), no handlers of its own.
    let app = instance(&nats, &db, |_| false).await;
    let outbox = app.outbox().unwrap();
    let event = |balance| Deposited { account: "a".into(), balance };
    let mut tx = outbox.transaction(&app).await.unwrap();
    tx.key("account:a").publish(event(-1)).unwrap();
    tx.rollback().await.unwrap();
    let mut tx = outbox.transaction(&app).await.unwrap();
    tx.key("account:a").publish(event(-2)).unwrap();
    drop(tx); // dropped without a commit: rolled back too
    let mut tx = outbox.transaction(&app).await.unwrap();
    tx.key("account:a").publish(event(1)).unwrap();
    tx.publish(event(2)).unwrap();
    tx.commit().await.unwrap();
    // Same key, so anything rolled back would have come first.
    seen.wait(Duration::from_secs(10), "the committed events", |s| s.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let balances: Vec<i64> = seen.all().iter().map(|(_, e)| e.balance).collect();
    assert_eq!(balances, [1, 2], "only what committed, once, in order");
    wait_sql(&db, "SELECT count(*) FROM catga_outbox WHERE sent_at IS NOT NULL AND NOT dropped", "2").await;
    assert_eq!(db.sql("SELECT count(*) FROM catga_outbox"), "2", "rolled-back rows never existed");
    // The rows carry the ids the subscriber saw.
    let ids: HashSet<String> = db.sql("SELECT message_id FROM catga_outbox").lines().map(str::to_owned).collect();
    assert_eq!(ids, seen.all().into_iter().map(|(id, _)| id).collect());
    app.shutdown().await;
}

#[tokio::test]
async fn the_events_of_one_key_go_out_in_the_order_their_transactions_committed() {
    let (nats, db) = (NatsServer::start(), PgDatabase::create());
    // A transaction that writes to `slow` spends 300 ms in its COMMIT
    // (a deferred trigger), after its outbox rows were numbered.
    db.sql(
        "CREATE TABLE slow (x int); \
         CREATE FUNCTION slow_commit() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$ \
         LANGUAGE plpgsql; \
         CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON slow DEFERRABLE INITIALLY DEFERRED \
         FOR EACH ROW EXECUTE FUNCTION slow_commit()",
    );
    let seen = Seen::subscribe(&nats.url()).await;
    // Committed by a client (no relay), so nothing goes out before both
    // committed: the relay then reads them in sequence order.
    let app = client(&nats, &db).await;
    let event = |balance| Deposited { account: "b".into(), balance };
    let outbox = app.outbox().unwrap().clone();
    let mut slow = outbox.transaction(&app).await.unwrap();
    sqlx::query("INSERT INTO slow VALUES (1)").execute(&mut *slow).await.unwrap();
    slow.key("account:b").publish(event(1)).unwrap();
    let slow_commit = tokio::spawn(async move { slow.commit().await.unwrap() });
    // Until the slow one sleeps inside its COMMIT, holding the key's lock.
    let deadline = Instant::now() + Duration::from_secs(10);
    let in_commit =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'";
    while sqlx::query_scalar::<_, i64>(in_commit).fetch_one(outbox.pool()).await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "the slow transaction did not reach its COMMIT within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut quick = outbox.transaction(&app).await.unwrap();
    quick.key("account:b").publish(event(2)).unwrap();
    quick.commit().await.unwrap();
    // The second waited for the first's key lock: once it has committed,
    // the first has too (its row is visible). Seen from the database, not
    // from the order in which the two tasks here happen to wake.
    let slow_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM slow").fetch_one(outbox.pool()).await.unwrap();
    assert_eq!(slow_rows, 1, "the key's lock orders the commits: the quick one committed before the slow one");
    slow_commit.await.unwrap();
    let committed = [1, 2];
    let relay = instance(&nats, &db, |_| false).await;
    seen.wait(Duration::from_secs(10), "both events", |s| s.len() >= 2).await;
    let delivered: Vec<i64> = seen.all().iter().map(|(_, e)| e.balance).collect();
    assert_eq!(delivered, committed, "delivered in commit order");
    relay.shutdown().await;
    app.shutdown().await;
}

/// Recorded by its handler, which only the second instance of the test
/// below runs.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "t.outbox.audit", reply = ())]
struct Audit {
    what: String,
}

static AUDITED: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[catga::command(queue = "auditors")]
async fn audit(cmd: Audit) -> Result<(), HandlerError> {
    AUDITED.lock().unwrap().push(cmd.what);
    Ok(())
}

#[tokio::test]
async fn a_command_nobody_handles_yet_holds_back_its_key_only_until_it_can_be_sent() {
    let (nats, db) = (NatsServer::start(), PgDatabase::create());
    let seen = Seen::subscribe(&nats.url()).await;
    let app = instance(&nats, &db, |_| false).await;
    let outbox = app.outbox().unwrap();
    let mut tx = outbox.transaction(&app).await.unwrap();
    tx.key("account:held").send(Audit { what: "first".into() }).unwrap();
    tx.publish(Deposited { account: "held".into(), balance: 1 }).unwrap();
    tx.key("account:free").publish(Deposited { account: "free".into(), balance: 1 }).unwrap();
    tx.commit().await.unwrap();
    // The other key goes; this one waits behind the command (no handler:
    // tried again with a growing pause).
    seen.wait(Duration::from_secs(10), "the other key's event", |s| s.iter().any(|(_, e)| e.account == "free")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.sql("SELECT attempts FROM catga_outbox WHERE subject = 't.outbox.audit'") == "0" {
        assert!(Instant::now() < deadline, "the command was never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!seen.all().iter().any(|(_, e)| e.account == "held"), "held back behind the command");
    let error = db.sql("SELECT last_error FROM catga_outbox WHERE subject = 't.outbox.audit'");
    assert!(error.contains("t.outbox.audit"), "the row says why: {error}");
    // A handler appears: the command goes at its next try, then the event.
    let auditor = instance(&nats, &db, |h| h.subject == "t.outbox.audit").await;
    seen.wait(Duration::from_secs(20), "the held event", |s| s.iter().any(|(_, e)| e.account == "held")).await;
    assert_eq!(*AUDITED.lock().unwrap(), ["first"]);
    wait_sql(&db, "SELECT count(*) FROM catga_outbox WHERE sent_at IS NULL OR dropped", "0").await;
    auditor.shutdown().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_hundred_copies_of_one_message_change_the_database_once() {
    let (nats, db) = (NatsServer::start(), PgDatabase::create());
    accounts(&db);
    let seen = Seen::subscribe(&nats.url()).await;
    let _services = [service(&nats, &db), service(&nats, &db)];
    let app = client(&nats, &db).await;
    let meta = Metadata::root();
    let cmd = Deposit { account: "copies".into(), amount: 7, die_after_commit: false };
    let sends = (0..100).map(|_| app.send_as(cmd.clone(), meta.clone(), SendOptions::default()));
    let replies: Vec<i64> = futures_util::future::join_all(sends).await.into_iter().map(Result::unwrap).collect();
    assert!(replies.iter().all(|r| *r == 7), "every copy gets the first handling's reply: {replies:?}");
    assert_eq!(db.sql("SELECT balance FROM accounts WHERE id = 'copies'"), "7");
    assert_eq!(db.sql("SELECT count(*) FROM catga_inbox"), "1");
    seen.wait(Duration::from_secs(10), "the one event", |s| !s.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.all().len(), 1, "one change, one event: {:?}", seen.all());
    app.shutdown().await;
}

#[tokio::test]
async fn a_process_dead_right_after_its_commit_still_has_its_event_published_once() {
    let (nats, db) = (NatsServer::start(), PgDatabase::create());
    accounts(&db);
    let seen = Seen::subscribe(&nats.url()).await;
    // Committed by a client (no relay) while no instance runs: nobody
    // publishes it...
    let app = client(&nats, &db).await;
    let mut tx = app.outbox().unwrap().transaction(&app).await.unwrap();
    tx.publish(Deposited { account: "queued".into(), balance: 1 }).unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.sql("SELECT count(*) FROM catga_outbox WHERE sent_at IS NULL"), "1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(seen.all().is_empty(), "a client has no relay");
    // ... until one starts.
    let mut first = service(&nats, &db);
    seen.wait(Duration::from_secs(10), "the queued event", |s| !s.is_empty()).await;
    // Two instances; whichever handles the deposit aborts right after its
    // commit. The sender's copy goes to the other (the first stopped
    // showing signs of life), which finds it in the inbox; the survivor's
    // relay publishes the dead one's row.
    let mut second = service(&nats, &db);
    let cmd = Deposit { account: "crash".into(), amount: 5, die_after_commit: true };
    assert_eq!(app.send(cmd).await.unwrap(), 5, "the copy answers what the dead instance committed");
    seen.wait(Duration::from_secs(10), "the dead instance's event", |s| s.len() >= 2).await;
    wait_sql(&db, "SELECT count(*) FROM catga_outbox WHERE sent_at IS NULL", "0").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events: Vec<(String, Deposited)> = seen.all();
    assert_eq!(events[1].1, Deposited { account: "crash".into(), balance: 5 });
    // Nobody delivered it before the crash, and no relay died after:
    // delivered once (a relay dying mid-round could deliver twice, with
    // one message id).
    assert_eq!(events.len(), 2, "published once: {events:?}");
    assert_eq!(db.sql("SELECT balance FROM accounts WHERE id = 'crash'"), "5");
    assert!(first.exited() || second.exited(), "one of them aborted");
    app.shutdown().await;
}

#[tokio::test]
async fn three_relays_one_killed_under_load_deliver_every_event_in_order_per_key() {
    const ACCOUNTS: usize = 8;
    const DEPOSITS: usize = 40; // per account
    let (nats, db) = (NatsServer::start(), PgDatabase::create());
    accounts(&db);
    let seen = Seen::subscribe(&nats.url()).await;
    let mut services: Vec<ServiceProcess> = (0..3).map(|_| service(&nats, &db)).collect();
    let app = client(&nats, &db).await;
    // Deposits of +1 on 8 accounts, 16 at a time, from every process; one
    // instance killed (-9) a third of the way in.
    let started = Instant::now();
    let work: Vec<(usize, usize)> = (0..DEPOSITS).flat_map(|n| (0..ACCOUNTS).map(move |a| (a, n))).collect();
    let total = work.len();
    let app_ref = &app;
    let mut sends = futures_util::stream::iter(work)
        .map(|(a, _)| async move {
            let cmd = Deposit { account: format!("acc-{a}"), amount: 1, die_after_commit: false };
            app_ref.send(cmd).await
        })
        .buffer_unordered(16);
    let mut done = 0;
    while let Some(reply) = sends.next().await {
        reply.expect("every deposit answered (a killed instance's copy re-sent to another)");
        done += 1;
        if done == total / 3 {
            services[0].kill();
        }
    }
    drop(sends);
    seen.wait(Duration::from_secs(30), "every balance", |s| {
        let distinct: HashSet<(String, i64)> = s.iter().map(|(_, e)| (e.account.clone(), e.balance)).collect();
        distinct.len() == total
    })
    .await;
    // Per account: balances 1..=40, first arrivals in increasing order (a
    // row delivered again after a relay died may come twice, later).
    let mut per: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut first = HashSet::new();
    for (id, e) in seen.all() {
        if first.insert(id) {
            per.entry(e.account).or_default().push(e.balance);
        }
    }
    for (account, balances) in &per {
        assert_eq!(*balances, (1..=DEPOSITS as i64).collect::<Vec<_>>(), "{account}: in order, every one");
        assert_eq!(db.sql(&format!("SELECT balance FROM accounts WHERE id = '{account}'")), DEPOSITS.to_string());
    }
    let copies = seen.all().len() - total;
    eprintln!(
        "{total} deposits over 3 instances, one killed: every event in order per key in {:?}; {copies} copies",
        started.elapsed()
    );
    wait_sql(&db, "SELECT count(*) FROM catga_outbox WHERE sent_at IS NULL", "0").await;
    app.shutdown().await;
    for s in &mut services {
        s.kill();
    }
}

// A saga step that writes to the database through the outbox and fails
// after its commit the first time: run again, the inbox answers it, so
// the change and its event happen once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Transfer {
    account: String,
    balance: Option<i64>,
}

struct Transfers;

#[catga::saga(name = "t-outbox-transfer")]
impl Transfers {
    #[step(retry = 2)]
    async fn credit(transfer: &mut Transfer, ctx: &SagaContext) -> Result<(), StepError> {
        let outbox = ctx.app().outbox()?;
        let mut tx = match outbox.begin(ctx).await? {
            Begin::New(tx) => tx,
            Begin::Done(balance) => {
                transfer.balance = Some(balance);
                return Ok(());
            }
        };
        let (balance,): (i64,) = sqlx::query_as(
            "INSERT INTO accounts (id, balance) VALUES ($1, 10) \
             ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + 10 RETURNING balance",
        )
        .bind(&transfer.account)
        .fetch_one(&mut *tx)
        .await?;
        tx.key(format!("account:{}", transfer.account))
            .publish(Deposited { account: transfer.account.clone(), balance })?;
        tx.commit_with(&balance).await?;
        if ctx.attempt() == 1 {
            return Err(StepError::new("lost_reply", "failed after the commit on purpose"));
        }
        transfer.balance = Some(balance);
        Ok(())
    }
}

#[tokio::test]
async fn a_saga_step_run_again_after_its_commit_changes_the_database_once() {
    let (nats, db) = (NatsServer::start(), PgDatabase::create());
    accounts(&db);
    let seen = Seen::subscribe(&nats.url()).await;
    let app = instance(&nats, &db, |_| false).await;
    let outcome = app.start_saga::<Transfers>("t-1", Transfer { account: "saga".into(), balance: None }).await.unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
    assert_eq!(db.sql("SELECT balance FROM accounts WHERE id = 'saga'"), "10");
    seen.wait(Duration::from_secs(10), "the step's event", |s| !s.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.all().len(), 1, "{:?}", seen.all());
    // The inbox's key for a step: the saga, the step and its direction.
    assert_eq!(db.sql("SELECT consumer || ' ' || message_id FROM catga_inbox"), "saga:t-outbox-transfer:credit:do t-1");
    app.shutdown().await;
}

#[tokio::test]
async fn a_database_that_does_not_answer_is_a_clear_error_at_start() {
    let port = catga_suite::free_port();
    let error = Catga::builder()
        .service("outbox-down")
        .memory_bus(catga::transport::memory::MemoryBus::new())
        .postgres_url(format!("postgres://catga:secret@127.0.0.1:{port}/none"))
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("PostgreSQL") && error.contains("connecting"), "{error}");
    assert!(
        error.contains(&port.to_string()) && !error.contains("secret"),
        "names the server, not its password: {error}"
    );
}

/// A broadcast event handler (every instance runs it) that tries the inbox.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "t.outbox.everyone")]
struct Everyone;

static BROADCAST_BEGIN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[catga::event]
async fn everyone(_: Everyone, ctx: Context) -> Result<(), HandlerError> {
    let outcome = ctx.outbox()?.begin::<()>(&ctx).await.map(|_| ()).map_err(|e| e.to_string());
    BROADCAST_BEGIN.lock().unwrap().push(outcome.err().unwrap_or_else(|| "began".into()));
    Ok(())
}

#[tokio::test]
async fn the_inbox_refuses_a_broadcast_handler_with_what_to_do() {
    let (nats, db) = (NatsServer::start(), PgDatabase::create());
    let app = instance(&nats, &db, |h| h.subject == "t.outbox.everyone").await;
    app.publish(Everyone).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while BROADCAST_BEGIN.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the handler never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = BROADCAST_BEGIN.lock().unwrap()[0].clone();
    assert!(error.contains("queue group") && error.contains("everyone"), "{error}");
    app.shutdown().await;
}

#[test]
fn a_database_failing_is_transient_a_query_failing_is_not() {
    assert_eq!(HandlerError::from(sqlx::Error::PoolTimedOut).code(), HandlerError::DATABASE);
    assert!(HandlerError::is_transient_code(HandlerError::DATABASE));
    assert_eq!(HandlerError::from(sqlx::Error::RowNotFound).code(), HandlerError::INTERNAL);
}

#[tokio::test]
async fn sent_rows_and_old_inbox_records_are_pruned_after_their_retention() {
    let (nats, db) = (NatsServer::start(), PgDatabase::create());
    accounts(&db);
    let seen = Seen::subscribe(&nats.url()).await;
    let _service = service(&nats, &db);
    let app = client(&nats, &db).await;
    let cmd = Deposit { account: "pruned".into(), amount: 1, die_after_commit: false };
    app.send(cmd).await.unwrap();
    seen.wait(Duration::from_secs(10), "the event", |s| !s.is_empty()).await;
    wait_sql(&db, "SELECT count(*) FROM catga_outbox WHERE sent_at IS NOT NULL", "1").await;
    assert_eq!(db.sql("SELECT count(*) FROM catga_inbox"), "1");
    // An instance keeping both for a millisecond prunes when its relay
    // starts (then once a minute).
    let pruner = Catga::builder()
        .service("outbox-pruner")
        .nats_url(nats.url())
        .postgres_url(db.url())
        .handlers_where(|_| false)
        .configure(|c| {
            c.outbox_retention = Duration::from_millis(1);
            c.inbox_retention = Duration::from_millis(1);
        })
        .start()
        .await
        .unwrap();
    wait_sql(&db, "SELECT (SELECT count(*) FROM catga_outbox) + (SELECT count(*) FROM catga_inbox)", "0").await;
    pruner.shutdown().await;
    app.shutdown().await;
}
