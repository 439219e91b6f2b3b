//! The notification service: every instance updates its dashboard with
//! every created order (a broadcast event handler), and one instance of the
//! `email` group sends the confirmation (a queue-group event handler).

use std::sync::atomic::{AtomicU64, Ordering};

use catga::prelude::*;
use order_contracts::{OrderCreated, ledger};

/// Orders this instance has shown on its dashboard.
pub static DASHBOARD: AtomicU64 = AtomicU64::new(0);

/// Every instance, every order.
#[catga::event]
async fn dashboard(ev: OrderCreated, ctx: Context) -> Result<(), HandlerError> {
    let seen = DASHBOARD.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::debug!(instance = ctx.instance_id(), order = ev.order_id, seen, "dashboard updated");
    Ok(())
}

/// One instance of the `email` group per order. Recorded per order, so a
/// redelivery (an instance died before acknowledging) sends no second mail.
#[catga::event(queue = "email")]
async fn email(ev: OrderCreated, ctx: Context) -> Result<(), HandlerError> {
    if ctx.app().store().set_add(&ledger::emailed(), &ev.order_id).await? {
        tracing::debug!(order = ev.order_id, customer = ev.customer, cents = ev.amount_cents, "confirmation e-mailed");
    }
    Ok(())
}
