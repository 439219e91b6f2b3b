//! The order system's contracts: every message its services exchange, each
//! with its subject and reply type. Services depend on this crate, never on
//! each other.
//!
//! | message | subject | handled by |
//! |---|---|---|
//! | [`PlaceOrder`] → [`OrderResult`] | `shop.orders.place` | order service (runs the order saga) |
//! | [`ChargePayment`] / [`RefundPayment`] | `shop.payments.*` | payment service |
//! | [`ReserveStock`] / [`ReleaseStock`] | `shop.stock.*` | inventory service |
//! | [`OrderCreated`] (durable event) | `shop.orders.created` | notification service: every instance, and once per `email` group |

use catga::prelude::*;
use catga::store::Key;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The product; `sold-out` is never in stock.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// Place an order: charge it, reserve its stock, create it — or undo what
/// was done. Replies once the order saga has finished.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "shop.orders.place", reply = OrderResult, validate)]
pub struct PlaceOrder {
    /// Unique per order: the saga's id, so placing it again returns its outcome.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// What.
    pub lines: Vec<Line>,
    /// The total.
    pub amount_cents: u64,
}

impl Validate for PlaceOrder {
    fn validate(&self) -> Result<(), HandlerError> {
        if self.order_id.is_empty() || self.lines.is_empty() || self.amount_cents == 0 {
            return Err(HandlerError::invalid("an order needs an order_id, lines and an amount"));
        }
        Ok(())
    }
}

/// How an order ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderResult {
    /// The order.
    pub order_id: String,
    /// `true`: charged, reserved and created. `false`: rejected, and
    /// whatever was done was undone (refunded, released).
    pub created: bool,
    /// Why it was rejected.
    pub reason: Option<String>,
}

/// Charge an order's amount (idempotent per order).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "shop.payments.charge", reply = ())]
pub struct ChargePayment {
    /// The order.
    pub order_id: String,
    /// How much.
    pub amount_cents: u64,
}

/// Refund an order's charge, if it was charged (idempotent).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "shop.payments.refund", reply = ())]
pub struct RefundPayment {
    /// The order.
    pub order_id: String,
}

/// Reserve an order's stock; error `out_of_stock` when a line cannot be.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "shop.stock.reserve", reply = ())]
pub struct ReserveStock {
    /// The order.
    pub order_id: String,
    /// What to reserve.
    pub lines: Vec<Line>,
}

/// Release an order's reservation, if there is one (idempotent).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "shop.stock.release", reply = ())]
pub struct ReleaseStock {
    /// The order.
    pub order_id: String,
}

/// An order was created. Durable: stored in JetStream until every
/// notification group has it, so a notification instance that is down or
/// killed loses nothing.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "shop.orders.created", durable)]
pub struct OrderCreated {
    /// The order.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// The total.
    pub amount_cents: u64,
}

/// The sets in the store where each service records its effects, one
/// member per order: what the client checks at the end. (A real service
/// keeps these in its own database; sets make every effect idempotent.)
pub mod ledger {
    use super::Key;

    fn set(name: &str) -> Key {
        Key::new("order-system", name)
    }

    /// Orders charged and not refunded (payment service).
    pub fn charged() -> Key {
        set("charged")
    }

    /// Orders with stock reserved and not released (inventory service).
    pub fn reserved() -> Key {
        set("reserved")
    }

    /// Orders created (order service).
    pub fn created() -> Key {
        set("created")
    }

    /// Orders whose confirmation e-mail went out (notification service).
    pub fn emailed() -> Key {
        set("emailed")
    }
}
