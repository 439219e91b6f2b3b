//! The bench service of the load generator (`catga-load`): `Catga::run()`
//! with an echo, an I/O-bound and a CPU-bound handler, an idempotent
//! command, a broadcast event, and a 3-step saga (two compensatable steps
//! and a pivot, each one command to this same service). Configured only by
//! `CATGA_*` variables; the load generator starts N of these as separate
//! processes and stops them by pid.

use std::time::Duration;

use catga::prelude::*;
use catga::saga::{SagaContext, SagaOutcome, StepError};

#[allow(dead_code)] // shared with the load generator, which uses the rest
mod contracts;

use contracts::{Blob, Cpu, Idem, Io, Noted, RunSaga, SubmitSaga, WhoAmI, burn};

#[catga::command(queue = "load")]
async fn echo(blob: Blob) -> Result<Blob, HandlerError> {
    Ok(blob)
}

#[catga::command(queue = "load")]
async fn io(cmd: Io) -> Result<u64, HandlerError> {
    tokio::time::sleep(Duration::from_millis(cmd.sleep_ms)).await;
    Ok(cmd.n)
}

/// Runs on the instance's runtime thread, as a CPU-heavy handler written
/// plainly would: it occupies a worker for the whole computation.
#[catga::command(queue = "load")]
async fn cpu(cmd: Cpu) -> Result<u64, HandlerError> {
    Ok(burn(cmd.n, cmd.rounds))
}

#[catga::command(queue = "load", idempotent)]
async fn idem(cmd: Idem) -> Result<u64, HandlerError> {
    Ok(cmd.n)
}

#[catga::command(queue = "load")]
async fn whoami(_: WhoAmI, ctx: Context) -> Result<String, HandlerError> {
    Ok(ctx.instance_id().to_owned())
}

#[catga::event]
async fn noted(_: Noted) -> Result<(), HandlerError> {
    Ok(())
}

// ---------- the saga ----------

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "load.saga.charge", reply = u64)]
struct Charge {
    order: u64,
    cents: u64,
    hold_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "load.saga.reserve", reply = u64)]
struct Reserve {
    order: u64,
    sku: String,
    quantity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "load.saga.create", reply = u64)]
struct Create {
    order: u64,
    payment: u64,
    reservation: u64,
}

#[catga::command(queue = "load")]
async fn charge(cmd: Charge) -> Result<u64, HandlerError> {
    if cmd.hold_ms > 0 {
        tokio::time::sleep(Duration::from_millis(cmd.hold_ms)).await;
    }
    Ok(cmd.order + cmd.cents)
}

#[catga::command(queue = "load")]
async fn reserve(cmd: Reserve) -> Result<u64, HandlerError> {
    Ok(cmd.order + u64::from(cmd.quantity) + cmd.sku.len() as u64)
}

#[catga::command(queue = "load")]
async fn create(cmd: Create) -> Result<u64, HandlerError> {
    Ok(cmd.order ^ cmd.payment ^ cmd.reservation)
}

/// The saga's data (about 100 bytes of JSON, as in `benches/saga.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    cents: u64,
    sku: String,
    quantity: u32,
    hold_ms: u64,
    payment: Option<u64>,
    reservation: Option<u64>,
    created: Option<u64>,
}

impl Order {
    fn new(id: &str, hold_ms: u64) -> Order {
        // A number from the id, so the commands carry some data of the saga.
        let id = id.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        Order {
            id,
            cents: 4_200,
            sku: "sku-1234".into(),
            quantity: 2,
            hold_ms,
            payment: None,
            reservation: None,
            created: None,
        }
    }
}

struct LoadSaga;

#[catga::saga(name = "load-order")]
impl LoadSaga {
    #[step(compensate = refund)]
    async fn charge(order: &mut Order, ctx: &SagaContext) -> Result<(), StepError> {
        let cmd = Charge { order: order.id, cents: order.cents, hold_ms: order.hold_ms };
        order.payment = Some(ctx.send(cmd).await?);
        Ok(())
    }

    #[step(compensate = release)]
    async fn reserve(order: &mut Order, ctx: &SagaContext) -> Result<(), StepError> {
        let cmd = Reserve { order: order.id, sku: order.sku.clone(), quantity: order.quantity };
        order.reservation = Some(ctx.send(cmd).await?);
        Ok(())
    }

    #[step(pivot)]
    async fn create(order: &mut Order, ctx: &SagaContext) -> Result<(), StepError> {
        let cmd = Create {
            order: order.id,
            payment: order.payment.unwrap_or(0),
            reservation: order.reservation.unwrap_or(0),
        };
        order.created = Some(ctx.send(cmd).await?);
        Ok(())
    }

    // Every step succeeds here, so the compensations never run.
    async fn refund(_order: &Order, _ctx: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    async fn release(_order: &Order, _ctx: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

#[catga::command(queue = "load")]
async fn run_saga(cmd: RunSaga, ctx: Context) -> Result<String, HandlerError> {
    let outcome = ctx.app().start_saga::<LoadSaga>(&cmd.id, Order::new(&cmd.id, cmd.hold_ms)).await?;
    Ok(match outcome {
        SagaOutcome::Completed => "completed".to_owned(),
        SagaOutcome::Compensated { error } => format!("compensated: {error}"),
        SagaOutcome::Failed { error } => format!("failed: {error}"),
    })
}

#[catga::command(queue = "load")]
async fn submit_saga(cmd: SubmitSaga, ctx: Context) -> Result<bool, HandlerError> {
    Ok(ctx.app().submit_saga::<LoadSaga>(&cmd.id, Order::new(&cmd.id, cmd.hold_ms)).await?)
}

#[tokio::main]
async fn main() {
    catga_suite::log_to_stderr();
    if let Err(e) = Catga::run().await {
        eprintln!("catga-load-service: {e}");
        std::process::exit(2);
    }
}
