//! Catga in one file, in memory: three identical instances of an "orders"
//! service share one bus. Commands go to exactly one instance (round robin),
//! broadcast events reach every instance, queued events one per group, a
//! handler's error reaches the caller typed, and a saga either completes or
//! compensates what it did.
//!
//! Run: `cargo run --example quickstart` (no servers needed), or over NATS
//! and Redis: `CATGA_NATS_URL=nats://127.0.0.1:4222
//! CATGA_REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart`.

use std::sync::atomic::{AtomicUsize, Ordering};

use catga::prelude::*;
use catga::saga::{SagaContext, SagaOutcome, StepError};

// ---- Contracts (shared by every service that sends or handles them) ----

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "orders.create", reply = OrderAccepted, validate)]
pub struct CreateOrder {
    pub order_id: String,
    pub amount_cents: u64,
}

impl Validate for CreateOrder {
    fn validate(&self) -> Result<(), HandlerError> {
        if self.order_id.is_empty() {
            return Err(HandlerError::invalid("order_id must not be empty"));
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OrderAccepted {
    pub order_id: String,
    pub handled_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "orders.created")]
pub struct OrderCreated {
    pub order_id: String,
}

// ---- Handlers ----

#[catga::command(subject = "orders.create", queue = "order-workers")]
async fn create_order(cmd: CreateOrder, ctx: Context) -> Result<OrderAccepted, HandlerError> {
    if cmd.amount_cents > 100_000 {
        return Err(HandlerError::new(
            "limit_exceeded",
            format!("{} cents is over the 100000 limit", cmd.amount_cents),
        ));
    }
    ctx.publish(OrderCreated { order_id: cmd.order_id.clone() }).await?;
    Ok(OrderAccepted { order_id: cmd.order_id, handled_by: ctx.instance_id().to_owned() })
}

static AUDITED: AtomicUsize = AtomicUsize::new(0);
static EMAILED: AtomicUsize = AtomicUsize::new(0);

/// Broadcast: every instance audits every order.
#[catga::event]
async fn audit(ev: OrderCreated, ctx: Context) -> Result<(), HandlerError> {
    AUDITED.fetch_add(1, Ordering::Relaxed);
    println!("  [{}] audit: order {} created", ctx.instance_id(), ev.order_id);
    Ok(())
}

/// Queue group: one email per order, whichever instance.
#[catga::event(queue = "email")]
async fn send_email(ev: OrderCreated, ctx: Context) -> Result<(), HandlerError> {
    EMAILED.fetch_add(1, Ordering::Relaxed);
    println!("  [{}] email: order {} confirmed", ctx.instance_id(), ev.order_id);
    Ok(())
}

// ---- A saga: create the order, then charge it; a declined charge cancels it ----

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "orders.cancel", reply = ())]
pub struct CancelOrder {
    pub order_id: String,
}

#[catga::command(queue = "order-workers")]
async fn cancel_order(cmd: CancelOrder, ctx: Context) -> Result<(), HandlerError> {
    println!("  [{}] order {} cancelled", ctx.instance_id(), cmd.order_id);
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkout {
    pub order_id: String,
    pub amount_cents: u64,
}

pub struct CheckoutSaga;

#[catga::saga(name = "checkout")]
impl CheckoutSaga {
    #[step(compensate = cancel)]
    async fn create(c: &mut Checkout, ctx: &SagaContext) -> Result<(), StepError> {
        ctx.send(CreateOrder { order_id: c.order_id.clone(), amount_cents: c.amount_cents }).await?;
        Ok(())
    }

    #[step(pivot)]
    async fn charge(c: &mut Checkout, _ctx: &SagaContext) -> Result<(), StepError> {
        if c.amount_cents > 50_000 {
            return Err(StepError::new("card_declined", format!("{} cents declined", c.amount_cents)));
        }
        Ok(())
    }

    async fn cancel(c: &Checkout, ctx: &SagaContext) -> Result<(), StepError> {
        ctx.send(CancelOrder { order_id: c.order_id.clone() }).await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> catga::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).init();

    // In a real deployment each instance is its own process running
    // `catga::Catga::run().await`; here three share the in-memory bus.
    let mut instances = Vec::new();
    for i in 1..=3 {
        let builder = catga::Builder::from_env()?.service("orders").instance_id(format!("orders-{i}"));
        instances.push(builder.start().await?);
    }
    let client = catga::Builder::from_env()?.service("client").client_only().start().await?;
    let transport = if client.config().nats_url.is_some() { "NATS" } else { "in memory" };
    println!("transport: {transport}, store: {}", client.store().name());

    println!("commands (each handled by exactly one instance, round robin):");
    for n in 1..=3 {
        let reply = client.send(CreateOrder { order_id: format!("o-{n}"), amount_cents: 1_500 }).await?;
        println!("  order {} accepted by {}", reply.order_id, reply.handled_by);
    }

    println!("errors reach the caller typed:");
    let err = client.send(CreateOrder { order_id: "o-big".into(), amount_cents: 1_000_000 }).await.unwrap_err();
    println!("  handler error: code={:?} — {err}", err.code());
    let err = client.send(CreateOrder { order_id: String::new(), amount_cents: 1 }).await.unwrap_err();
    println!("  validation:    code={:?} — {err}", err.code());

    println!("sagas (state in the store; any instance could take one over):");
    // Ids are unique per run: starting a saga id again returns its outcome.
    let run = catga::MessageId::new();
    for (name, amount_cents) in [("small", 2_000), ("large", 90_000)] {
        let checkout = Checkout { order_id: format!("o-{name}"), amount_cents };
        match client.start_saga::<CheckoutSaga>(&format!("checkout-{name}-{run}"), checkout).await? {
            SagaOutcome::Completed => println!("  checkout {name}: completed"),
            SagaOutcome::Compensated { error } => println!("  checkout {name}: compensated ({error})"),
            SagaOutcome::Failed { error } => println!("  checkout {name}: FAILED ({error})"),
        }
    }

    // Graceful shutdown waits for in-flight handlings, spawned events included.
    for app in &instances {
        app.shutdown().await;
    }
    println!(
        "events: {} audits (5 orders x 3 instances), {} emails (one per order)",
        AUDITED.load(Ordering::Relaxed),
        EMAILED.load(Ordering::Relaxed)
    );
    let err = client.send(CreateOrder { order_id: "o-late".into(), amount_cents: 1 }).await.unwrap_err();
    println!("  no instance:   {err}");
    client.shutdown().await;
    Ok(())
}
