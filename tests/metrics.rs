//! Metrics (issue 12, item 3): what an instance counts, in memory and over
//! NATS, and a real Prometheus server scraping a service process's
//! `GET /metrics` on `CATGA_HTTP_ADDR`; and the health routes beside it
//! (`/healthz`, `/readyz`) while NATS and Redis go away under a service.

use std::time::{Duration, Instant};

use catga::prelude::*;
use catga::saga::{SagaContext, SagaOutcome, StepError};
use catga_suite::{NatsServer, Prometheus, RedisServer, ServiceProcess, free_port, http_get};

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "metrics.charge", reply = u64)]
struct Charge {
    cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "metrics.charged")]
struct Charged {
    cents: u64,
}

/// Fails with a configured code (0), with a code built from data (13),
/// else publishes an event and answers.
#[catga::command(queue = "metrics")]
async fn charge(cmd: Charge, ctx: Context) -> Result<u64, HandlerError> {
    match cmd.cents {
        0 => Err(HandlerError::new("zero_amount", "nothing to charge")),
        13 => Err(HandlerError::new("customer-13-blocked", "a code made from data")),
        cents => {
            ctx.publish(Charged { cents }).await?;
            Ok(cents)
        }
    }
}

#[catga::event]
async fn on_charged(_: Charged) -> Result<(), HandlerError> {
    Ok(())
}

struct Refund;

#[catga::saga(name = "metrics-refund")]
impl Refund {
    #[step(compensate = unbook)]
    async fn book(fail: &mut bool, _ctx: &SagaContext) -> Result<(), StepError> {
        let _ = fail;
        Ok(())
    }

    #[step(compensate = refund)]
    async fn pay(fail: &mut bool, _ctx: &SagaContext) -> Result<(), StepError> {
        if *fail { Err(StepError::new("declined", "the card was declined")) } else { Ok(()) }
    }

    async fn unbook(_fail: &bool, _ctx: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    async fn refund(_fail: &bool, _ctx: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }
}

/// The value of one series (name and labels exactly as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Poll `text()` until `series` has `want` (bounded: 10 s); the last value.
async fn eventually(text: impl Fn() -> String, series: &str, want: f64) -> Option<f64> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let got = value(&text(), series);
        if got == Some(want) || Instant::now() > until {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn in_memory_an_instance_counts_handlings_errors_by_bounded_code_sends_events_and_sagas() {
    let app = Catga::builder()
        .service("metrics")
        .configure(|c| c.metric_error_codes = vec!["zero_amount".into()])
        .start()
        .await
        .unwrap();
    for cents in [5, 7, 0, 13] {
        let _ = app.send(Charge { cents }).await;
    }
    let text = || app.metrics_text();
    let handler = r#"handler="charge",subject="metrics.charge""#;
    assert_eq!(value(&text(), &format!("catga_handlings_total{{{handler}}}")), Some(4.0), "{}", text());
    assert_eq!(value(&text(), &format!("catga_handling_duration_seconds_count{{{handler}}}")), Some(4.0));
    assert_eq!(value(&text(), &format!("catga_handlings_in_flight{{{handler}}}")), Some(0.0));
    assert_eq!(value(&text(), &format!(r#"catga_handling_errors_total{{{handler},code="zero_amount"}}"#)), Some(1.0));
    // A code outside the configured set is `other`: data cannot grow the series.
    assert_eq!(value(&text(), &format!(r#"catga_handling_errors_total{{{handler},code="other"}}"#)), Some(1.0));
    assert!(!text().contains("customer-13"));
    assert_eq!(value(&text(), r#"catga_sends_total{subject="metrics.charge"}"#), Some(4.0));
    assert_eq!(value(&text(), r#"catga_send_duration_seconds_count{subject="metrics.charge"}"#), Some(4.0));
    assert_eq!(value(&text(), r#"catga_send_failures_total{subject="metrics.charge",code="zero_amount"}"#), Some(1.0));
    assert_eq!(value(&text(), r#"catga_send_failures_total{subject="metrics.charge",code="other"}"#), Some(1.0));
    assert_eq!(value(&text(), r#"catga_events_published_total{subject="metrics.charged"}"#), Some(2.0));
    let delivered = r#"catga_events_delivered_total{handler="on_charged",subject="metrics.charged"}"#;
    assert_eq!(eventually(text, delivered, 2.0).await, Some(2.0));

    assert_eq!(app.start_saga::<Refund>("r-1", false).await.unwrap(), SagaOutcome::Completed);
    let declined = app.start_saga::<Refund>("r-2", true).await.unwrap();
    assert!(matches!(declined, SagaOutcome::Compensated { .. }), "{declined:?}");
    assert_eq!(value(&text(), r#"catga_sagas_started_total{saga="metrics-refund"}"#), Some(2.0));
    assert_eq!(value(&text(), r#"catga_sagas_ended_total{saga="metrics-refund",status="completed"}"#), Some(1.0));
    assert_eq!(value(&text(), r#"catga_sagas_ended_total{saga="metrics-refund",status="compensated"}"#), Some(1.0));
    let step = |step: &str, direction: &str| {
        format!(
            r#"catga_saga_step_duration_seconds_count{{saga="metrics-refund",step="{step}",direction="{direction}"}}"#
        )
    };
    assert_eq!(value(&text(), &step("book", "forward")), Some(2.0));
    assert_eq!(value(&text(), &step("book", "compensate")), Some(1.0));
    assert!(value(&text(), &step("pay", "forward")).is_some_and(|n| n >= 2.0), "pay ran (and was retried)");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_service_process_and_finds_its_handlings_and_connection() {
    let nats = NatsServer::start();
    let url = nats.url();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _instance = ServiceProcess::started(
        env!("CARGO_BIN_EXE_catga-test-service"),
        &[
            ("CATGA_NATS_URL", &url),
            ("CATGA_SERVICE", "svc"),
            ("CATGA_INSTANCE_ID", "scraped"),
            ("CATGA_HTTP_ADDR", &http.to_string()),
        ],
    );
    let client = Catga::builder().nats_url(&url).service("tester").client_only().start().await.unwrap();
    #[derive(Debug, Serialize, Deserialize, Command)]
    #[catga(subject = "svc.whoami", reply = String)]
    struct WhoAmI;
    for _ in 0..25 {
        assert_eq!(client.send(WhoAmI).await.unwrap(), "scraped");
    }

    // The endpoint itself: the text format, the handler's count.
    let (status, body) = http_get(http.port(), "/metrics").unwrap();
    assert_eq!(status, 200);
    let series = r#"catga_handlings_total{handler="whoami",subject="svc.whoami"}"#;
    assert_eq!(value(&body, series), Some(25.0), "{body}");
    assert_eq!(value(&body, "catga_nats_connected"), Some(1.0));
    assert_eq!(http_get(http.port(), "/nothing").unwrap().0, 404);

    // A real Prometheus scrapes it and answers a query for it.
    let prometheus = Prometheus::scraping(&[http]);
    let query = r#"catga_handlings_total{job="catga",handler="whoami"}"#;
    let until = Instant::now() + Duration::from_secs(60);
    let mut seen = None;
    while Instant::now() < until {
        seen = prometheus.query(query);
        if seen == Some(25.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(seen, Some(25.0), "Prometheus' answer to {query}");
    assert_eq!(prometheus.query(r#"catga_nats_connected{job="catga"}"#), Some(1.0));
    client.shutdown().await;
}

/// Polls `GET path` (bounded: 20 s) until `done` holds for (status, body).
fn poll(port: u16, path: &str, done: impl Fn(u16, &serde_json::Value) -> bool) -> (u16, serde_json::Value) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(port, path).expect("the endpoint answers");
        let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        if done(status, &json) || Instant::now() > until {
            return (status, json);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readyz_follows_the_nats_connection_and_reports_the_store_without_flipping_on_it() {
    let mut nats = NatsServer::start();
    let mut redis = RedisServer::start();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (nats_url, redis_url) = (nats.url(), redis.url());
    let _instance = ServiceProcess::started(
        env!("CARGO_BIN_EXE_catga-test-service"),
        &[
            ("CATGA_NATS_URL", &nats_url),
            ("CATGA_REDIS_URL", &redis_url),
            ("CATGA_SERVICE", "svc"),
            ("CATGA_INSTANCE_ID", "probed"),
            ("CATGA_HTTP_ADDR", &http.to_string()),
        ],
    );
    let port = http.port();
    assert_eq!(http_get(port, "/healthz").unwrap(), (200, "ok\n".to_owned()));
    let (status, ready) = poll(port, "/readyz", |status, _| status == 200);
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["instance"], "probed");
    assert_eq!(ready["transport"]["connected"], true);
    assert_eq!(ready["store"]["reachable"], true);

    // Redis goes: reported, but the instance stays ready.
    redis.kill();
    let (status, ready) = poll(port, "/readyz", |_, json| json["store"]["reachable"] == false);
    assert_eq!(ready["store"]["reachable"], false, "{ready}");
    assert_eq!(status, 200, "a store blip does not take the instance out: {ready}");
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(value(&metrics, "catga_store_up"), Some(0.0));

    // NATS goes: not ready, with the reason; still alive.
    nats.kill();
    let (status, ready) = poll(port, "/readyz", |status, _| status == 503);
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false);
    assert!(ready["reasons"].to_string().contains("nats: not connected"), "{ready}");
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(value(&metrics, "catga_nats_connected"), Some(0.0), "{metrics}");
}

/// `App::routes()` mounted in a program's own axum server, as the README
/// shows: the same answers under the mount point, beside the program's own
/// routes, and 503 once the instance shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_routes_mount_in_an_axum_router() {
    let app = Catga::builder()
        .service("mounted")
        .memory_bus(catga::transport::memory::MemoryBus::new())
        .handlers_where(|h| h.subject == "metrics.charge")
        .start()
        .await
        .unwrap();
    let router = axum::Router::new()
        .route("/hello", axum::routing::get(|| async { "hello" }))
        .nest_service("/ops", app.routes());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let get = |path: &'static str| async move {
        tokio::task::spawn_blocking(move || http_get(port, path).expect("the server answers")).await.unwrap()
    };

    assert_eq!(get("/hello").await, (200, "hello".to_owned()));
    assert_eq!(get("/ops/healthz").await.0, 200);
    let (status, body) = get("/ops/readyz").await;
    assert_eq!(status, 200, "{body}");
    app.send(Charge { cents: 5 }).await.unwrap();
    let (status, metrics) = get("/ops/metrics").await;
    assert_eq!(status, 200);
    let handled = r#"catga_handlings_total{handler="charge",subject="metrics.charge"}"#;
    assert_eq!(value(&metrics, handled), Some(1.0), "{metrics}");
    assert_eq!(get("/ops/nothing").await.0, 404);

    app.shutdown().await;
    let (status, body) = get("/ops/readyz").await;
    assert_eq!(status, 503, "{body}");
    server.abort();
}
