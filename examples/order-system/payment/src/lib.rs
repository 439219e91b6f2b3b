//! The payment service: charges an order, refunds it. Both are idempotent
//! per order (a charge is a member of the `charged` set), so a request
//! handled twice — re-sent after its first instance died, or a saga step
//! re-run after a takeover — charges once.

use catga::prelude::*;
use order_contracts::{ChargePayment, RefundPayment, ledger};

/// The most one order may cost.
pub const LIMIT_CENTS: u64 = 1_000_000;

/// Charge the order.
#[catga::command(queue = "payment")]
async fn charge(cmd: ChargePayment, ctx: Context) -> Result<(), HandlerError> {
    if cmd.amount_cents > LIMIT_CENTS {
        return Err(HandlerError::new("card_declined", format!("{} cents is over the card's limit", cmd.amount_cents)));
    }
    ctx.app().store().set_add(&ledger::charged(), &cmd.order_id).await?;
    Ok(())
}

/// Refund the order's charge, if any.
#[catga::command(queue = "payment")]
async fn refund(cmd: RefundPayment, ctx: Context) -> Result<(), HandlerError> {
    ctx.app().store().set_remove(&ledger::charged(), &cmd.order_id).await?;
    Ok(())
}
