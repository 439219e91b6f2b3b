//! `catga::testing::Harness` as a user's test would use it: recorded
//! messages and handlings, stand-ins, injected failures, and time moved
//! instead of waited for (a paused runtime) — a saga's ten-minute wait and
//! a message scheduled for tomorrow.

use std::time::{Duration, Instant};

use catga::prelude::*;
use catga::saga::{SagaContext, SagaOutcome, StepError};
use catga::schedule::Schedule;
use catga::testing::{Harness, Kind};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "t.harness.reserve", reply = u32)]
struct Reserve {
    sku: String,
    qty: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "t.harness.reserved")]
struct Reserved {
    sku: String,
    left: u32,
}

#[catga::command(queue = "stock")]
async fn reserve(cmd: Reserve, ctx: Context) -> Result<u32, HandlerError> {
    if cmd.qty > 10 {
        return Err(HandlerError::new("out_of_stock", format!("only 10 {} left", cmd.sku)));
    }
    let left = 10 - cmd.qty;
    ctx.publish(Reserved { sku: cmd.sku, left }).await?;
    Ok(left)
}

fn only_these(h: &catga::registry::HandlerRecord) -> bool {
    h.subject.starts_with("t.harness.")
}

#[tokio::test]
async fn the_harness_records_what_was_sent_published_and_handled_with_ids() {
    let harness = Harness::builder().handlers_where(only_these).start().await.unwrap();
    assert_eq!(harness.app().send(Reserve { sku: "apple".into(), qty: 3 }).await.unwrap(), 7);
    let reserved = harness.wait_published(Duration::from_secs(1), |e: &Reserved| e.sku == "apple").await.unwrap();
    assert_eq!(reserved.left, 7);
    let messages = harness.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    let (sent, published) = (&messages[0], &messages[1]);
    assert_eq!((sent.kind, published.kind), (Kind::Sent, Kind::Published));
    assert_eq!(published.correlation_id, sent.correlation_id, "one conversation");
    assert_eq!(published.causation_id, Some(sent.message_id), "caused by the command");
    let handled = harness.handled();
    assert_eq!(handled.len(), 1);
    assert_eq!((handled[0].handler, handled[0].message_id), ("reserve", sent.message_id));

    // A handler's error is recorded with it.
    let err = harness.app().send(Reserve { sku: "pear".into(), qty: 11 }).await.unwrap_err();
    assert_eq!(err.code(), Some("out_of_stock"));
    assert_eq!(harness.failed()[0].error.as_ref().unwrap().code(), "out_of_stock");
    let sent = harness.wait_sent(Duration::from_secs(1), |c: &Reserve| c.qty == 11).await.unwrap();
    assert_eq!(sent.sku, "pear");
    let failed = harness.wait_handled(Duration::from_secs(1), |h| h.error.is_some()).await.unwrap();
    assert_eq!(failed.handler, "reserve");

    // Waiting for what never comes says what came instead.
    let missing = harness.wait_published(Duration::from_millis(50), |e: &Reserved| e.sku == "kiwi").await.unwrap_err();
    let text = missing.to_string();
    assert!(text.contains("a matching `Reserved` on t.harness.reserved did not come"), "{text}");
    assert!(text.contains(r#"Published t.harness.reserved {"sku":"apple","left":7}"#), "{text}");
    harness.shutdown().await;
}

#[tokio::test]
async fn a_stub_stands_in_for_another_services_command_and_failures_can_be_injected() {
    let harness = Harness::builder().handlers_where(|_| false).start().await.unwrap();
    // No `reserve` handler here: the stub answers.
    harness.stub(|cmd: Reserve| if cmd.qty < 5 { Ok(99) } else { Err(HandlerError::new("nope", "too many")) });
    assert_eq!(harness.app().send(Reserve { sku: "a".into(), qty: 1 }).await.unwrap(), 99);
    assert_eq!(harness.app().send(Reserve { sku: "a".into(), qty: 9 }).await.unwrap_err().code(), Some("nope"));
    assert_eq!(harness.sent::<Reserve>().len(), 2);
    assert!(harness.handled().is_empty(), "no handler ran");
    harness.shutdown().await;

    let harness = Harness::builder().handlers_where(only_these).start().await.unwrap();
    harness.fail_next::<Reserve>(2, HandlerError::new("store", "down for a moment"));
    for _ in 0..2 {
        let err = harness.app().send(Reserve { sku: "b".into(), qty: 1 }).await.unwrap_err();
        assert_eq!(err.code(), Some("store"));
    }
    assert_eq!(harness.app().send(Reserve { sku: "b".into(), qty: 1 }).await.unwrap(), 9, "then it works");
    assert_eq!(harness.failed().len(), 2);
    assert_eq!(harness.published::<Reserved>().len(), 1, "the failed ones published nothing");
    harness.panic_next::<Reserve>(1);
    let err = harness.app().send(Reserve { sku: "c".into(), qty: 1 }).await.unwrap_err();
    assert_eq!(err.code(), Some(HandlerError::PANIC));
    assert_eq!(harness.failed().last().unwrap().error.as_ref().unwrap().code(), HandlerError::PANIC);
    harness.delay_next::<Reserve>(1, Duration::from_secs(5));
    let options = SendOptions::timeout(Duration::from_millis(100));
    let err = harness.app().send_with(Reserve { sku: "d".into(), qty: 1 }, options).await.unwrap_err();
    assert!(matches!(err, catga::Error::Timeout { .. }), "{err}");
    harness.shutdown().await;
}

// ---------- time ----------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Booking {
    confirmed_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "t.harness.confirmed")]
struct Confirmed {
    booking: String,
    by: String,
}

struct BookingSaga;

#[catga::saga(name = "t-harness-booking")]
impl BookingSaga {
    #[step(compensate = release)]
    async fn hold(_b: &mut Booking, _ctx: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    #[step(wait = Confirmed, key = booking, within = "10m", pivot)]
    async fn confirm(b: &mut Booking, event: Confirmed, _ctx: &SagaContext) -> Result<(), StepError> {
        b.confirmed_by = Some(event.by);
        Ok(())
    }

    async fn release(_b: &Booking, _ctx: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn moving_time_makes_a_ten_minute_wait_and_a_message_for_tomorrow_come_due_at_once() {
    let real = Instant::now();
    let harness = Harness::builder().handlers_where(only_these).start().await.unwrap();
    let app = harness.app();
    assert!(app.submit_saga::<BookingSaga>("b-1", Booking::default()).await.unwrap());
    assert!(app.submit_saga::<BookingSaga>("b-2", Booking::default()).await.unwrap());
    harness.advance(Duration::from_secs(60)).await;
    app.publish(Confirmed { booking: "b-1".into(), by: "guest".into() }).await.unwrap();
    harness.advance(Duration::from_secs(10 * 60)).await;
    assert_eq!(
        app.saga_outcome("t-harness-booking", "b-1", Duration::from_secs(1)).await.unwrap(),
        SagaOutcome::Completed
    );
    let outcome = app.saga_outcome("t-harness-booking", "b-2", Duration::from_secs(1)).await.unwrap();
    assert!(matches!(&outcome, SagaOutcome::Compensated { error } if error.contains("within 600s")), "{outcome:?}");

    let tomorrow = Schedule::after(Duration::from_secs(24 * 3600));
    app.schedule_send(tomorrow, Reserve { sku: "later".into(), qty: 1 }).await.unwrap();
    harness.advance(Duration::from_secs(24 * 3600 - 60)).await;
    assert!(harness.sent::<Reserve>().is_empty(), "not yet");
    harness.advance(Duration::from_secs(120)).await;
    let reserved = harness.wait_published(Duration::from_secs(1), |e: &Reserved| e.sku == "later").await.unwrap();
    assert_eq!(reserved.left, 9);
    assert!(real.elapsed() < Duration::from_secs(30), "a day passed in {:?}", real.elapsed());
    harness.shutdown().await;
}

// ---------- a saga step by step ----------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Trip {
    booked: Vec<String>,
    #[serde(default)]
    fail_hotel: bool,
}

struct TripSaga;

#[catga::saga(name = "t-harness-trip")]
impl TripSaga {
    #[step(compensate = cancel_flight)]
    async fn flight(t: &mut Trip, _ctx: &SagaContext) -> Result<(), StepError> {
        t.booked.push("flight".into());
        Ok(())
    }

    #[step(pivot)]
    async fn hotel(t: &mut Trip, _ctx: &SagaContext) -> Result<(), StepError> {
        if t.fail_hotel {
            return Err(StepError::new("full", "no room"));
        }
        t.booked.push("hotel".into());
        Ok(())
    }

    async fn cancel_flight(_t: &Trip, _ctx: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_saga_can_be_run_step_by_step_and_looked_at_between_its_steps() {
    let harness = Harness::builder().handlers_where(|_| false).start().await.unwrap();
    harness.hold_saga_steps();
    let trip = Trip { fail_hotel: true, ..Trip::default() };
    harness.app().submit_saga::<TripSaga>("trip-1", trip).await.unwrap();
    let within = Duration::from_secs(5);
    let info = harness.step("t-harness-trip", "trip-1", within).await.unwrap();
    assert_eq!((info.status, info.current_step.as_deref()), (catga::saga::SagaStatus::Running, Some("hotel")));
    assert_eq!(info.history.len(), 1);
    // The pivot fails: the next held attempt is the compensation.
    let info = harness.step("t-harness-trip", "trip-1", within).await.unwrap();
    assert_eq!(info.status, catga::saga::SagaStatus::Compensating, "{info:?}");
    let info = harness.step("t-harness-trip", "trip-1", within).await.unwrap();
    assert_eq!(info.status, catga::saga::SagaStatus::Compensated, "{info:?}");
    assert_eq!(info.history.len(), 3, "flight, hotel (failed), cancel_flight");
    // Nothing more to step: it says so.
    let err = harness.step("t-harness-trip", "trip-1", Duration::from_millis(100)).await.unwrap_err();
    assert!(err.to_string().contains("the next step of saga t-harness-trip trip-1"), "{err}");
    harness.shutdown().await;
}
