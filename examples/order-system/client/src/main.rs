//! The order system's client. It places orders from several concurrent
//! callers (one in ten has a sold-out line, so its saga compensates), then
//! checks that nothing was lost: every order got an answer, every created
//! order is charged, reserved, created and e-mailed, every rejected one was
//! refunded and released, and no saga is left unfinished.
//!
//! With `CATGA_NATS_URL` (and `CATGA_REDIS_URL`) set it is a client of the
//! running services (`examples/order-system/run.sh` starts them); without,
//! it runs the whole system in this process, in memory: three instances of
//! each service on one bus.
//!
//! ```text
//! order-client [--orders N] [--seconds S] [--concurrency C]
//! ```

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use catga::App;
use clap::{Arg, Command};
use order_contracts::{Line, PlaceOrder, ledger};

// Every service's handlers, for the in-memory mode.
use inventory_service as _;
use notification_service as _;
use order_service as _;
use payment_service as _;

/// How every order placed ended, as the caller saw it.
#[derive(Default)]
struct Outcomes {
    created: Vec<String>,
    rejected: Vec<String>,
    /// (order id, error): an order that got no answer.
    errors: Vec<(String, String)>,
}

fn cli() -> Command {
    let number = |name: &'static str, default: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .value_name("N")
            .value_parser(clap::value_parser!(u64).range(1..))
            .default_value(default)
            .help(help)
    };
    Command::new("order-client")
        .about("Place orders under load, then check that none was lost")
        .arg(number("orders", "2000", "place at most this many orders"))
        .arg(number("seconds", "20", "stop placing orders after this many seconds"))
        .arg(number("concurrency", "16", "callers placing orders at once"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli().get_matches();
    let get = |name: &str| *args.get_one::<u64>(name).expect("has a default");
    let (orders, seconds, concurrency) = (get("orders"), get("seconds"), get("concurrency"));
    match run(orders, Duration::from_secs(seconds), concurrency as usize).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("order-client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(orders: u64, seconds: Duration, concurrency: usize) -> catga::Result<bool> {
    let in_memory = catga::Config::from_env()?.nats_url.is_none();
    // In memory, the services run here: three instances of each, each with
    // only its own service's handlers, sharing the in-process bus and store.
    let mut instances = Vec::new();
    if in_memory {
        for service in ["order", "payment", "inventory", "notification"] {
            for i in 1..=3 {
                let module = format!("{service}_service");
                let app = catga::Builder::from_env()?
                    .service(service)
                    .instance_id(format!("{service}-{i}"))
                    .handlers_where(move |h| h.module.split("::").next() == Some(module.as_str()))
                    .start()
                    .await?;
                instances.push(app);
            }
        }
    }
    let client = catga::Builder::from_env()?.service("order-client").client_only().start().await?;
    match in_memory {
        true => println!("order system in this process, in memory: 3 instances of each service"),
        false => println!("order system over NATS (the running services), store: {}", client.store().name()),
    }

    let outcomes = load(&client, orders, seconds, concurrency).await;
    let ok = check(&client, &outcomes).await?;
    if in_memory {
        let shown = notification_service::DASHBOARD.load(Ordering::Relaxed);
        println!("dashboard updates: {shown} (every notification instance sees every created order)");
        for app in &instances {
            app.shutdown().await;
        }
    }
    client.shutdown().await;
    Ok(ok)
}

/// Place up to `orders` orders from `concurrency` callers, for at most
/// `seconds`; print progress every second.
async fn load(client: &App, orders: u64, seconds: Duration, concurrency: usize) -> Outcomes {
    let run = format!("{:08x}", fastrand::u32(..));
    let next = Arc::new(AtomicU64::new(0));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let started = Instant::now();
    println!("load started: up to {orders} orders, {concurrency} at a time, for at most {seconds:?} (run {run})");
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, outcomes, run) = (client.clone(), next.clone(), outcomes.clone(), run.clone());
        callers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= orders || started.elapsed() >= seconds {
                    return;
                }
                let order = order(&run, n);
                let id = order.order_id.clone();
                let answer = client.send(order).await;
                let mut o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                match answer {
                    Ok(result) if result.created => o.created.push(id),
                    Ok(_) => o.rejected.push(id),
                    Err(e) => o.errors.push((id, e.to_string())),
                }
            }
        });
    }
    let progress = {
        let outcomes = outcomes.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                println!(
                    "  {:>4.1}s  created {:>6}  rejected {:>5}  errors {}",
                    started.elapsed().as_secs_f64(),
                    o.created.len(),
                    o.rejected.len(),
                    o.errors.len()
                );
            }
        })
    };
    while callers.join_next().await.is_some() {}
    progress.abort();
    let took = started.elapsed();
    let o = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|e| e.into_inner()));
    let answered = o.created.len() + o.rejected.len();
    println!(
        "load done: {} orders in {:.1}s ({:.0}/s): {} created, {} rejected, {} without an answer",
        answered + o.errors.len(),
        took.as_secs_f64(),
        answered as f64 / took.as_secs_f64(),
        o.created.len(),
        o.rejected.len(),
        o.errors.len()
    );
    o
}

/// Order `n` of run `run`: one in ten asks for the sold-out product.
fn order(run: &str, n: u64) -> PlaceOrder {
    let mut lines = vec![Line { sku: format!("sku-{}", n % 7), quantity: 1 + (n % 3) as u32 }];
    if n % 10 == 9 {
        lines.push(Line { sku: inventory_service::SOLD_OUT.to_owned(), quantity: 1 });
    }
    PlaceOrder {
        order_id: format!("o-{run}-{n}"),
        customer: format!("customer-{}", n % 100),
        lines,
        amount_cents: 500 + n % 5000,
    }
}

/// Check every order's effects in the store; print what is wrong.
async fn check(client: &App, o: &Outcomes) -> catga::Result<bool> {
    let store = client.store();
    let set = |members: Vec<String>| members.into_iter().collect::<HashSet<String>>();
    let mut problems = Vec::new();
    for (id, error) in o.errors.iter().take(5) {
        problems.push(format!("order {id} got no answer: {error}"));
    }
    if o.errors.len() > 5 {
        problems.push(format!("... and {} more without an answer", o.errors.len() - 5));
    }
    let (charged, reserved, created) = (
        set(store.set_members(&ledger::charged()).await?),
        set(store.set_members(&ledger::reserved()).await?),
        set(store.set_members(&ledger::created()).await?),
    );
    for id in &o.created {
        for (what, done) in [("charged", &charged), ("reserved", &reserved), ("created", &created)] {
            if !done.contains(id) {
                problems.push(format!("order {id} was answered created but is not {what}"));
            }
        }
        if order_is_sold_out(id) {
            problems.push(format!("order {id} has a sold-out line but was created"));
        }
    }
    for id in &o.rejected {
        for (what, done) in
            [("charged (not refunded)", &charged), ("reserved (not released)", &reserved), ("created", &created)]
        {
            if done.contains(id) {
                problems.push(format!("order {id} was answered rejected but is {what}"));
            }
        }
        if !order_is_sold_out(id) {
            problems.push(format!("order {id} was rejected without a sold-out line"));
        }
    }
    // The confirmation e-mails follow the durable event: give them time.
    let deadline = Instant::now() + Duration::from_secs(15);
    let missing_mail = loop {
        let emailed = set(store.set_members(&ledger::emailed()).await?);
        let missing: Vec<&String> = o.created.iter().filter(|id| !emailed.contains(*id)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.len();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if missing_mail > 0 {
        problems.push(format!("{missing_mail} created orders were not e-mailed within 15 s"));
    }
    let ours: HashSet<&String> = o.created.iter().chain(&o.rejected).chain(o.errors.iter().map(|(id, _)| id)).collect();
    let unfinished: Vec<String> = client
        .sagas_by_name("order", |_| true)
        .await?
        .into_iter()
        // A finished saga may linger in the index a while (its instance
        // died between its last write and leaving the index; the sweep
        // drops it later): only a saga that has not finished counts.
        .filter(|s| ours.contains(&s.id) && !s.status.is_finished())
        .map(|s| format!("{} ({:?})", s.id, s.status))
        .collect();
    if !unfinished.is_empty() {
        problems.push(format!("sagas not finished: {}", unfinished.join(", ")));
    }
    let answered = o.created.len() + o.rejected.len();
    if problems.is_empty() {
        println!(
            "checked: nothing lost — {answered} orders answered; {} created (charged, reserved, created, e-mailed), \
             {} rejected (refunded, released); no saga unfinished",
            o.created.len(),
            o.rejected.len()
        );
        return Ok(true);
    }
    println!("checked: {} problem(s):", problems.len());
    for p in &problems {
        println!("  {p}");
    }
    Ok(false)
}

/// Whether order `o-<run>-<n>` had a sold-out line (`n % 10 == 9`).
fn order_is_sold_out(id: &str) -> bool {
    id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n % 10 == 9)
}
