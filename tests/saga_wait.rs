//! Sagas whose step waits for an event: parked (no instance holds or polls
//! them) until an event whose key field is the saga's id arrives — on any
//! instance — or their wait ends; an event that came before they parked is
//! not lost. In memory here (the same semantics as over NATS and Redis);
//! across processes with a kill -9 in `tests/takeover.rs`.

use std::time::Duration;

use catga::prelude::*;
use catga::saga::{SagaContext, SagaOptions, SagaOutcome, SagaStatus, StepError};
use catga::store::{Key, Store};
use catga::transport::memory::MemoryBus;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Order {
    charged: bool,
    paid_by: Option<String>,
    shipped: bool,
    /// How long `charge` takes (ms).
    #[serde(default)]
    charge_ms: u64,
}

/// The event the saga waits for: `order` is the saga's id.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "t.wait.payment-confirmed")]
struct PaymentConfirmed {
    order: String,
    by: String,
}

struct Checkout;

#[catga::saga(name = "t-checkout")]
impl Checkout {
    #[step(compensate = refund)]
    async fn charge(order: &mut Order, _ctx: &SagaContext) -> Result<(), StepError> {
        tokio::time::sleep(Duration::from_millis(order.charge_ms)).await;
        order.charged = true;
        Ok(())
    }

    #[step(wait = PaymentConfirmed, key = order, within = "2s", pivot)]
    async fn confirmed(order: &mut Order, event: PaymentConfirmed, _ctx: &SagaContext) -> Result<(), StepError> {
        order.paid_by = Some(event.by);
        Ok(())
    }

    #[step]
    async fn ship(order: &mut Order, _ctx: &SagaContext) -> Result<(), StepError> {
        order.shipped = true;
        Ok(())
    }

    async fn refund(order: &Order, _ctx: &SagaContext) -> Result<(), StepError> {
        assert!(order.charged);
        Ok(())
    }
}

async fn instance(bus: &MemoryBus, store: &Store, name: &str) -> App {
    Catga::builder()
        .service("checkout")
        .instance_id(name)
        .memory_bus(bus.clone())
        .store(store.clone())
        // The saga's own recorder is subscribed whatever the filter says.
        .handlers_where(|_| false)
        .start()
        .await
        .unwrap()
}

async fn status(app: &App, id: &str) -> catga::saga::SagaInfo {
    app.saga_status::<Checkout>(id).await.unwrap().unwrap()
}

/// Wait (bounded) until saga `id` is parked: running, at `confirmed`, its
/// lease free.
async fn parked(app: &App, store: &Store, id: &str) {
    let parked = Key::new("saga-index:t-checkout", "parked");
    for _ in 0..200 {
        if store.set_members(&parked).await.unwrap().contains(&id.to_owned()) {
            let info = status(app, id).await;
            assert_eq!((info.status, info.current_step.as_deref()), (SagaStatus::Running, Some("confirmed")));
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} did not park: {:?}", status(app, id).await);
}

#[tokio::test]
async fn a_parked_saga_is_held_by_no_instance_and_resumes_with_its_event_on_another() {
    let (bus, store) = (MemoryBus::new(), Store::memory());
    let a = instance(&bus, &store, "wait-a").await;
    let b = instance(&bus, &store, "wait-b").await;
    assert!(a.submit_saga::<Checkout>("o-1", Order::default()).await.unwrap());
    parked(&a, &store, "o-1").await;
    // Nobody holds it: no lease, in no instance's set.
    for who in ["wait-a", "wait-b"] {
        let owned = store.set_members(&Key::new(format!("saga-owner:{who}"), "sagas")).await.unwrap();
        assert!(owned.is_empty(), "{who} holds {owned:?}");
    }
    assert!(a.sagas::<Checkout>(|s| s == SagaStatus::Running).await.unwrap().iter().any(|s| s.id == "o-1"), "listed");
    let info = status(&a, "o-1").await;
    assert!(info.waiting, "{info:?}");
    let waits = info.waiting_until.unwrap().duration_since(info.created.unwrap()).unwrap();
    assert!(
        waits >= Duration::from_secs(2) && waits < Duration::from_secs(3),
        "within 2s of reaching the step: {waits:?}"
    );
    // The instance that ran it goes away; the event comes to the other.
    a.shutdown().await;
    b.publish(PaymentConfirmed { order: "o-2".into(), by: "someone else".into() }).await.unwrap();
    b.publish(PaymentConfirmed { order: "o-1".into(), by: "card".into() }).await.unwrap();
    let outcome = b.saga_outcome("t-checkout", "o-1", Duration::from_secs(10)).await.unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
    let info = status(&b, "o-1").await;
    assert_eq!(info.data["paid_by"], "card", "the step got the event");
    assert!(!info.waiting && info.waiting_until.is_none());
    assert_eq!(info.data["shipped"], true);
    assert!(b.metrics_text().contains("catga_sagas_woken_total{saga=\"t-checkout\"} 1"), "{}", b.metrics_text());
    b.shutdown().await;
}

#[tokio::test]
async fn an_event_that_arrives_before_the_saga_waits_for_it_is_not_lost() {
    let (bus, store) = (MemoryBus::new(), Store::memory());
    let app = instance(&bus, &store, "early").await;
    // `charge` takes 300 ms; the event comes meanwhile.
    let order = Order { charge_ms: 300, ..Order::default() };
    assert!(app.submit_saga::<Checkout>("o-early", order).await.unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.publish(PaymentConfirmed { order: "o-early".into(), by: "early bird".into() }).await.unwrap();
    let outcome = app.saga_outcome("t-checkout", "o-early", Duration::from_secs(10)).await.unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
    assert_eq!(status(&app, "o-early").await.data["paid_by"], "early bird");
    app.shutdown().await;
}

#[tokio::test]
async fn a_wait_that_ends_without_its_event_compensates() {
    let (bus, store) = (MemoryBus::new(), Store::memory());
    let app = instance(&bus, &store, "late").await;
    let started = std::time::Instant::now();
    let outcome = app.start_saga::<Checkout>("o-late", Order::default()).await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        outcome,
        SagaOutcome::Compensated {
            error: "step `confirmed` failed: no `PaymentConfirmed` with order = o-late arrived within 2s".into()
        }
    );
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "{took:?}");
    // An event after the end changes nothing.
    app.publish(PaymentConfirmed { order: "o-late".into(), by: "too late".into() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = status(&app, "o-late").await;
    assert_eq!(info.status, SagaStatus::Compensated);
    assert!(info.data["paid_by"].is_null());
    app.shutdown().await;
}

/// On a Redis Cluster: parked sagas resume with their events; sagas started
/// by a client that does not run them park, and their deadline wakes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_and_a_redis_cluster_parked_sagas_resume_with_their_events() {
    let (nats, cluster) = (catga_suite::NatsServer::start(), catga_suite::RedisCluster::start());
    let mut apps = Vec::new();
    for i in 0..2 {
        let app = Catga::builder()
            .service("checkout")
            .instance_id(format!("cluster-wait-{i}"))
            .nats_url(nats.url())
            .redis_url(cluster.url())
            .handlers_where(|_| false)
            .start()
            .await
            .unwrap();
        apps.push(app);
    }
    let ids: Vec<String> = (0..16).map(|n| format!("cw-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        assert!(apps[n % 2].submit_saga::<Checkout>(id, Order::default()).await.unwrap());
    }
    let parked = Key::new("saga-index:t-checkout", "parked");
    let limit = std::time::Instant::now() + Duration::from_secs(20);
    while apps[0].store().set_members(&parked).await.unwrap().len() < ids.len() {
        assert!(std::time::Instant::now() < limit, "not all parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &ids {
        apps[1].publish(PaymentConfirmed { order: id.clone(), by: format!("card {id}") }).await.unwrap();
    }
    for id in &ids {
        let outcome = apps[0].saga_outcome("t-checkout", id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(outcome, SagaOutcome::Completed, "{id}");
        assert_eq!(status(&apps[0], id).await.data["paid_by"], format!("card {id}"));
    }
    // A client that does not run the saga starts four with a 1 s deadline;
    // no payment comes: each is woken at its deadline and compensates.
    let client = Catga::builder()
        .service("checkout-client")
        .nats_url(nats.url())
        .redis_url(cluster.url())
        .client_only()
        .start()
        .await
        .unwrap();
    let late: Vec<String> = (0..4).map(|n| format!("cw-late-{n}")).collect();
    for id in &late {
        let options = SagaOptions::default().deadline(Duration::from_secs(1));
        assert!(client.submit_remote_saga_with::<CheckoutContract>(id, Order::default(), options).await.unwrap());
    }
    for id in &late {
        let outcome = client.saga_outcome("t-checkout", id, Duration::from_secs(20)).await.unwrap();
        let expected = "the saga's deadline passed during step `confirmed`";
        assert_eq!(outcome, SagaOutcome::Compensated { error: expected.into() }, "{id}");
    }
    client.shutdown().await;
    for app in apps {
        app.shutdown().await;
    }
}

/// The checkout saga as a client that does not run it knows it.
struct CheckoutContract;

impl catga::saga::SagaContract for CheckoutContract {
    const NAME: &'static str = "t-checkout";
    type Data = Order;
}
