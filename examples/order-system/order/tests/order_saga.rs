//! The order service's own tests, with `catga::testing::Harness`: the order
//! saga runs in memory, and the payment and inventory services — not linked
//! here — are stood in for by stubs.

use std::time::Duration;

use catga::HandlerError;
use catga::testing::Harness;
use order_contracts::{ChargePayment, Line, OrderCreated, PlaceOrder, RefundPayment, ReleaseStock, ReserveStock};
// Link the order service's handlers and saga.
use order_service as _;

fn order(id: &str, sku: &str) -> PlaceOrder {
    PlaceOrder {
        order_id: id.into(),
        customer: "ada".into(),
        lines: vec![Line { sku: sku.into(), quantity: 1 }],
        amount_cents: 1200,
    }
}

async fn harness() -> Harness {
    let harness = Harness::start().await.unwrap();
    harness.stub(|_: ChargePayment| Ok(()));
    harness.stub(|_: RefundPayment| Ok(()));
    harness.stub(|_: ReleaseStock| Ok(()));
    harness.stub(|r: ReserveStock| {
        if r.lines.iter().any(|l| l.sku == "sold-out") {
            return Err(HandlerError::new("out_of_stock", "sold out"));
        }
        Ok(())
    });
    harness
}

#[tokio::test]
async fn an_order_is_charged_reserved_and_created_and_announced() {
    let harness = harness().await;
    let result = harness.app().send(order("o-1", "apple")).await.unwrap();
    assert!(result.created, "{result:?}");
    let created = harness.wait_published(Duration::from_secs(5), |e: &OrderCreated| e.order_id == "o-1").await.unwrap();
    assert_eq!(created.amount_cents, 1200);
    assert_eq!(harness.sent::<ChargePayment>().len(), 1);
    assert_eq!(harness.sent::<ReserveStock>().len(), 1);
    assert!(harness.sent::<RefundPayment>().is_empty());
    harness.shutdown().await;
}

#[tokio::test]
async fn an_order_out_of_stock_is_refunded_and_never_announced() {
    let harness = harness().await;
    let result = harness.app().send(order("o-2", "sold-out")).await.unwrap();
    assert!(!result.created);
    assert!(result.reason.unwrap().contains("sold out"));
    assert_eq!(harness.sent::<RefundPayment>().len(), 1, "the charge was undone");
    assert!(harness.sent::<ReleaseStock>().is_empty(), "nothing was reserved");
    assert!(harness.published::<OrderCreated>().is_empty());
    harness.shutdown().await;
}

#[tokio::test]
async fn a_payment_service_outage_is_ridden_out_not_compensated() {
    let harness = harness().await;
    // Two transient failures of the charge: the saga retries them.
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = attempts.clone();
    harness.stub(move |_: ChargePayment| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            return Err(HandlerError::new(HandlerError::TIMEOUT, "payment service slow"));
        }
        Ok(())
    });
    let result = harness.app().send(order("o-3", "apple")).await.unwrap();
    assert!(result.created, "{result:?}");
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    harness.shutdown().await;
}
