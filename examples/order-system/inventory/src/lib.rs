//! The inventory service: reserves an order's stock, releases it. Both are
//! idempotent per order (a reservation is a member of the `reserved` set).

use catga::prelude::*;
use order_contracts::{ReleaseStock, ReserveStock, ledger};

/// The product that is never in stock.
pub const SOLD_OUT: &str = "sold-out";

/// Reserve every line, or none.
#[catga::command(queue = "inventory")]
async fn reserve(cmd: ReserveStock, ctx: Context) -> Result<(), HandlerError> {
    if let Some(line) = cmd.lines.iter().find(|l| l.sku == SOLD_OUT) {
        return Err(HandlerError::new("out_of_stock", format!("{} × {} is out of stock", line.quantity, line.sku)));
    }
    ctx.app().store().set_add(&ledger::reserved(), &cmd.order_id).await?;
    Ok(())
}

/// Release the order's reservation, if any.
#[catga::command(queue = "inventory")]
async fn release(cmd: ReleaseStock, ctx: Context) -> Result<(), HandlerError> {
    ctx.app().store().set_remove(&ledger::reserved(), &cmd.order_id).await?;
    Ok(())
}
