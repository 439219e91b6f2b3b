//! A small service for the process-level tests: `Catga::run()` (through
//! `Builder::run`, to pick the core or the durable handlers) with a few
//! handlers, configured only by `CATGA_*` variables, logging to stderr.
//! Tests start it as a separate OS process and stop it by its pid. Its
//! contracts are copied (same subjects and shapes) in the tests, as another
//! service's would be.

use std::time::Duration;

use catga::prelude::*;

/// Answers with the id of the instance that handled it.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.whoami", reply = String)]
pub struct WhoAmI;

#[catga::command(queue = "svc")]
async fn whoami(_: WhoAmI, ctx: Context) -> Result<String, HandlerError> {
    Ok(ctx.instance_id().to_owned())
}

/// Work that takes `sleep_ms`; answers (instance id, n).
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.work", reply = (String, u64))]
pub struct Work {
    pub n: u64,
    pub sleep_ms: u64,
}

#[catga::command(queue = "svc")]
async fn work(cmd: Work, ctx: Context) -> Result<(String, u64), HandlerError> {
    tokio::time::sleep(Duration::from_millis(cmd.sleep_ms)).await;
    Ok((ctx.instance_id().to_owned(), cmd.n))
}

/// Fails with the given code.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.fail", reply = ())]
pub struct Fail {
    pub code: String,
}

#[catga::command(queue = "svc")]
async fn fail(cmd: Fail) -> Result<(), HandlerError> {
    Err(HandlerError::new(cmd.code, "failed on purpose"))
}

/// Echoes its text.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.echo", reply = String)]
pub struct Echo {
    pub text: String,
}

#[catga::command(queue = "svc")]
async fn echo(cmd: Echo) -> Result<String, HandlerError> {
    Ok(cmd.text)
}

/// Adds `amount` to `account` in PostgreSQL (table `accounts`, made by the
/// test) once per message id — the inbox — and publishes the new balance
/// through the outbox, in order per account; answers the balance. With
/// `die_after_commit`, the process aborts right after the commit (no
/// destructor, no flush: as a kill -9 would leave it).
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.outbox.deposit", reply = i64)]
pub struct Deposit {
    pub account: String,
    pub amount: i64,
    pub die_after_commit: bool,
}

/// An account's balance after a deposit.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "svc.outbox.deposited")]
pub struct Deposited {
    pub account: String,
    pub balance: i64,
}

#[catga::command(queue = "svc")]
async fn deposit(cmd: Deposit, ctx: Context) -> Result<i64, HandlerError> {
    use catga::outbox::Begin;
    let mut tx = match ctx.outbox()?.begin(&ctx).await? {
        Begin::New(tx) => tx,
        Begin::Done(balance) => return Ok(balance),
    };
    let (balance,): (i64,) = sqlx::query_as(
        "INSERT INTO accounts (id, balance) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + $2 RETURNING balance",
    )
    .bind(&cmd.account)
    .bind(cmd.amount)
    .fetch_one(&mut *tx)
    .await?;
    tx.key(format!("account:{}", cmd.account)).publish(Deposited { account: cmd.account, balance })?;
    tx.commit_with(&balance).await?;
    if cmd.die_after_commit {
        eprintln!("committed; dying before the relay publishes");
        std::process::abort();
    }
    Ok(balance)
}

/// Every instance answers a ping event with a pong event.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "svc.ping")]
pub struct Ping {
    pub n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "svc.pong")]
pub struct Pong {
    pub n: u64,
    pub from: String,
    pub correlation: String,
}

#[catga::event]
async fn on_ping(ev: Ping, ctx: Context) -> Result<(), HandlerError> {
    let correlation = ctx.metadata().correlation_id.to_string();
    ctx.publish(Pong { n: ev.n, from: ctx.instance_id().to_owned(), correlation }).await?;
    Ok(())
}

/// Idempotent: counts its runs per message id in the store (Redis when
/// `CATGA_REDIS_URL` is set) and answers (who charged, that count).
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.charge", reply = (String, i64))]
pub struct Charge {
    pub cents: u64,
}

#[catga::command(queue = "svc", idempotent)]
async fn charge(cmd: Charge, ctx: Context) -> Result<(String, i64), HandlerError> {
    let runs = ctx.store().incr(&catga::store::Key::new(ctx.message_id().to_string(), "runs"), 1).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok((format!("{} charged {}", ctx.instance_id(), cmd.cents), runs))
}

/// Not idempotent: counts its runs per (`tag`, `n`) in the store and
/// records when it first ran (epoch ms), so a message delivered twice
/// shows as 2 (tests/schedule.rs).
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.tick", reply = ())]
pub struct Tick {
    pub tag: String,
    pub n: u64,
}

#[catga::command(queue = "svc")]
async fn tick(cmd: Tick, ctx: Context) -> Result<(), HandlerError> {
    use catga::store::{Expect, Key};
    let scope = format!("tick:{}", cmd.tag);
    // When first, then the count: a reader that sees a count sees the time.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let at = Key::new(&scope, format!("{}:at", cmd.n));
    let _first = ctx.store().put(&at, Expect::Absent, now.to_string().as_bytes()).await;
    ctx.store().incr(&Key::new(&scope, cmd.n.to_string()), 1).await?;
    Ok(())
}

/// Publishes an event, then keeps a runtime worker busy for `ms` without
/// yielding (CPU-bound work, or a blocking call): the instance must still
/// show its requests alive. The publish wakes the connection's task on
/// this worker just before it is blocked — where tokio cannot steal it.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.spin", reply = u64)]
pub struct Spin {
    pub ms: u64,
}

#[catga::command(queue = "svc")]
async fn spin(cmd: Spin, ctx: Context) -> Result<u64, HandlerError> {
    let correlation = ctx.metadata().correlation_id.to_string();
    ctx.publish(Pong { n: cmd.ms, from: ctx.instance_id().to_owned(), correlation }).await?;
    let until = std::time::Instant::now() + Duration::from_millis(cmd.ms);
    let mut turns = 0u64;
    while std::time::Instant::now() < until {
        turns = turns.wrapping_add(1);
    }
    Ok(turns)
}

/// Answers the time its caller still waits, in ms (`None`: no deadline).
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.budget", reply = Option<u64>)]
pub struct Budget;

#[catga::command(queue = "svc")]
async fn budget(_: Budget, ctx: Context) -> Result<Option<u64>, HandlerError> {
    Ok(ctx.remaining().map(|left| left.as_millis() as u64))
}

// ---------- durable (JetStream) contracts and handlers: tests/durable.rs ----------
//
// Effects are recorded by appending one line to the ledger file named by
// `CATGA_TEST_LEDGER` (one `write` of a whole line, so concurrent appends
// from several processes do not interleave).

fn record_effect(line: &str) -> Result<(), HandlerError> {
    use std::io::Write;
    let path = std::env::var("CATGA_TEST_LEDGER")
        .map_err(|_| HandlerError::new("no_ledger", "CATGA_TEST_LEDGER is not set"))?;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(format!("{line}\n").as_bytes())?;
    Ok(())
}

/// Durable work: sleeps `sleep_ms`, then records `<message id>` in the
/// ledger; answers (instance id, n).
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "dur.work", reply = (String, u64), durable)]
pub struct DurableWork {
    pub n: u64,
    pub sleep_ms: u64,
}

#[catga::command(queue = "dur")]
async fn durable_work(cmd: DurableWork, ctx: Context) -> Result<(String, u64), HandlerError> {
    tokio::time::sleep(Duration::from_millis(cmd.sleep_ms)).await;
    record_effect(&ctx.message_id().to_string())?;
    Ok((ctx.instance_id().to_owned(), cmd.n))
}

/// Durable: answers where its handling is in the trace (trace id, parent
/// span id, tracestate) — tests/trace.rs.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "dur.traced", reply = (String, Option<String>, Option<String>), durable)]
pub struct DurableTraced;

#[catga::command(queue = "dur")]
async fn durable_traced(
    _: DurableTraced,
    ctx: Context,
) -> Result<(String, Option<String>, Option<String>), HandlerError> {
    let trace = &ctx.metadata().trace;
    let parent = trace.parent_span_id().map(|p| p.to_string());
    Ok((trace.trace_id().to_string(), parent, trace.tracestate().map(str::to_owned)))
}

/// Durable and idempotent (with `CATGA_REDIS_URL`): sleeps `sleep_ms`,
/// then records `charged <message id> fence <fencing token>` in the
/// ledger; answers (instance id, n).
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "dur.charge", reply = (String, u64), durable)]
pub struct DurableCharge {
    pub n: u64,
    pub sleep_ms: u64,
}

#[catga::command(queue = "dur", idempotent)]
async fn durable_charge(cmd: DurableCharge, ctx: Context) -> Result<(String, u64), HandlerError> {
    tokio::time::sleep(Duration::from_millis(cmd.sleep_ms)).await;
    record_effect(&format!("charged {} fence {}", ctx.message_id(), ctx.fencing_token().unwrap_or(0)))?;
    Ok((ctx.instance_id().to_owned(), cmd.n))
}

/// Durable: fails with `code` until the file `<ledger>.heal` exists, then
/// records `healed <message id>` and answers "healed"; with `ok`, answers
/// "fine" at once.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "dur.flaky", reply = String, durable)]
pub struct Flaky {
    pub ok: bool,
    pub code: String,
}

#[catga::command(queue = "dur")]
async fn flaky(cmd: Flaky, ctx: Context) -> Result<String, HandlerError> {
    if cmd.ok {
        return Ok("fine".into());
    }
    let healed = std::env::var("CATGA_TEST_LEDGER").map(|l| std::path::Path::new(&format!("{l}.heal")).exists());
    if healed != Ok(true) {
        return Err(HandlerError::new(cmd.code, "failed on purpose"));
    }
    record_effect(&format!("healed {}", ctx.message_id()))?;
    Ok("healed".into())
}

/// A durable event, handled once per queue group: `dur-audit` and
/// `dur-billing` each record `<group> <n> <instance id>`.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "dur.noted", durable)]
pub struct Noted {
    pub n: u64,
}

#[catga::event(queue = "dur-audit")]
async fn audit_noted(ev: Noted, ctx: Context) -> Result<(), HandlerError> {
    record_effect(&format!("dur-audit {} {}", ev.n, ctx.instance_id()))
}

#[catga::event(queue = "dur-billing")]
async fn bill_noted(ev: Noted, ctx: Context) -> Result<(), HandlerError> {
    record_effect(&format!("dur-billing {} {}", ev.n, ctx.instance_id()))
}

// Two workers whatever the machine: the tests that block one with a
// handler see what the other does meanwhile.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // With CATGA_TEST_DEFAULT_LOGS, the subscriber is the one `run()`
    // installs for a program that has none (tests/process.rs).
    if std::env::var_os("CATGA_TEST_DEFAULT_LOGS").is_none() {
        catga_suite::log_to_stderr();
    }
    // The durable handlers need JetStream (`nats-server -js`): they run
    // instead of the others when CATGA_TEST_DURABLE is set, so the core
    // tests keep running on a plain server.
    let durable = std::env::var_os("CATGA_TEST_DURABLE").is_some();
    let run = async move { catga::Builder::from_env()?.handlers_where(move |h| h.durable() == durable).run().await };
    if let Err(e) = run.await {
        eprintln!("catga-test-service: {e}");
        std::process::exit(2);
    }
}
