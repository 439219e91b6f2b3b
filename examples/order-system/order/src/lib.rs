//! The order service: places an order through the order saga —
//! charge → reserve → create — undoing what was done when a step fails
//! (refund, release). The saga's state is in the store after every step,
//! so when the instance running it dies, another one continues it.

use catga::prelude::*;
use catga::saga::{SagaContext, SagaOutcome, StepError};
use order_contracts::{
    ChargePayment, OrderCreated, OrderResult, PlaceOrder, RefundPayment, ReleaseStock, ReserveStock, ledger,
};

/// Place the order: run its saga (or, when it exists already — the request
/// was re-sent — wait for its outcome) and reply how it ended.
#[catga::command(queue = "order")]
async fn place_order(cmd: PlaceOrder, ctx: Context) -> Result<OrderResult, HandlerError> {
    let order_id = cmd.order_id.clone();
    match ctx.app().start_saga::<OrderSaga>(&order_id, cmd).await? {
        SagaOutcome::Completed => Ok(OrderResult { order_id, created: true, reason: None }),
        SagaOutcome::Compensated { error } => Ok(OrderResult { order_id, created: false, reason: Some(error) }),
        SagaOutcome::Failed { error } => Err(HandlerError::new("order_failed", error)),
    }
}

/// The order saga; its data is the order as placed.
pub struct OrderSaga;

#[catga::saga(name = "order")]
impl OrderSaga {
    #[step(compensate = refund)]
    async fn charge(order: &mut PlaceOrder, ctx: &SagaContext) -> Result<(), StepError> {
        ctx.send(ChargePayment { order_id: order.order_id.clone(), amount_cents: order.amount_cents }).await?;
        Ok(())
    }

    #[step(compensate = release)]
    async fn reserve(order: &mut PlaceOrder, ctx: &SagaContext) -> Result<(), StepError> {
        ctx.send(ReserveStock { order_id: order.order_id.clone(), lines: order.lines.clone() }).await?;
        Ok(())
    }

    /// The pivot: once the order exists, it is not undone.
    #[step(pivot)]
    async fn create(order: &mut PlaceOrder, ctx: &SagaContext) -> Result<(), StepError> {
        ctx.app().store().set_add(&ledger::created(), &order.order_id).await?;
        let created = OrderCreated {
            order_id: order.order_id.clone(),
            customer: order.customer.clone(),
            amount_cents: order.amount_cents,
        };
        ctx.publish(created).await?;
        Ok(())
    }

    async fn refund(order: &PlaceOrder, ctx: &SagaContext) -> Result<(), StepError> {
        ctx.send(RefundPayment { order_id: order.order_id.clone() }).await?;
        Ok(())
    }

    async fn release(order: &PlaceOrder, ctx: &SagaContext) -> Result<(), StepError> {
        ctx.send(ReleaseStock { order_id: order.order_id.clone() }).await?;
        Ok(())
    }
}
