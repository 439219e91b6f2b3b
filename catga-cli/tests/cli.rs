//! The `catga` binary against real nats-server and redis-server processes
//! (started on free ports by the suite's harness) and instances of this
//! test's handlers: what each command prints, as tables and as JSON, and
//! the errors for a missing setting, an unreachable server, a missing
//! handler and bad input.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use catga::prelude::*;
use catga::saga::{SagaContext, SagaOutcome, StepError};
use catga_suite::NatsServer;
use catga_suite::redis::RedisServer;
use serde_json::Value;

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "cli.echo", reply = Echoed)]
struct Echo {
    text: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Echoed {
    text: String,
    by: String,
}

#[catga::command(queue = "cli-workers")]
async fn echo(cmd: Echo, ctx: Context) -> Result<Echoed, HandlerError> {
    if cmd.text == "fail" {
        return Err(HandlerError::new("refused", "echo refuses \"fail\""));
    }
    Ok(Echoed { text: cmd.text, by: ctx.app().instance_id().to_owned() })
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "cli.charge", reply = u64, durable)]
struct Charge {
    cents: u64,
}

#[catga::command(queue = "cli-payments")]
async fn charge(cmd: Charge) -> Result<u64, HandlerError> {
    Ok(cmd.cents * 2)
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "cli.noted")]
struct Noted {
    n: u64,
}

#[catga::event]
async fn noted(_: Noted) -> Result<(), HandlerError> {
    Ok(())
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Trip {
    fail_at: Option<String>,
    fail_undo: bool,
}

struct Booking;

#[catga::saga(name = "cli-booking")]
impl Booking {
    #[step(compensate = cancel_flight)]
    async fn flight(trip: &mut Trip, ctx: &SagaContext) -> Result<(), StepError> {
        fail_if(trip, ctx)
    }

    #[step(compensate = cancel_hotel)]
    async fn hotel(trip: &mut Trip, ctx: &SagaContext) -> Result<(), StepError> {
        fail_if(trip, ctx)
    }

    async fn cancel_hotel(_trip: &Trip, _ctx: &SagaContext) -> Result<(), StepError> {
        Ok(())
    }

    async fn cancel_flight(trip: &Trip, _ctx: &SagaContext) -> Result<(), StepError> {
        match trip.fail_undo {
            true => Err(StepError::new("airline_down", "cannot cancel the flight")),
            false => Ok(()),
        }
    }
}

fn fail_if(trip: &Trip, ctx: &SagaContext) -> Result<(), StepError> {
    match trip.fail_at.as_deref() == Some(ctx.step()) {
        true => Err(StepError::new("sold_out", format!("{} is sold out", ctx.step()))),
        false => Ok(()),
    }
}

/// An instance of this test's handlers over `nats` (and `redis`).
async fn instance(id: &str, nats: &NatsServer, redis: Option<&RedisServer>) -> App {
    let mut b = Catga::builder().service("cli-test").instance_id(id).version("1.2.3").nats_url(nats.url());
    if let Some(redis) = redis {
        b = b.redis_url(redis.url());
    }
    b.start().await.unwrap()
}

/// Run `catga ARGS` with exactly `env` (no inherited `CATGA_*`).
fn catga(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catga"));
    cmd.env_clear().args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let output = cmd.output().expect("run catga");
    println!(
        "$ catga {} ({:?}, exit {:?})\n{}{}",
        args.join(" "),
        started.elapsed(),
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_stats_show_every_instance_and_endpoint() {
    let nats = NatsServer::start_jetstream();
    let (a, b) = (instance("cli-a", &nats, None).await, instance("cli-b", &nats, None).await);
    for i in 0..5 {
        a.send(Echo { text: format!("t{i}") }).await.unwrap();
    }
    a.send(Echo { text: "fail".into() }).await.unwrap_err();
    let env = [("CATGA_NATS_URL", nats.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let out = catga(&env, &["services"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for expected in
        ["cli-a", "cli-b", "1.2.3", "cli.echo", "cli-workers", "Echo → Echoed", "command, durable", "(every instance)"]
    {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
    assert!(text.contains("1 service(s), 2 instance(s)"), "{text}");
    assert!(!text.contains("catga-cli"), "the CLI is no instance: {text}");

    let out = catga(&env, &["services", "cli-test", "--json"]);
    let services = json(&out)["services"].as_array().cloned().unwrap();
    let mut ids: Vec<&str> = services.iter().map(|s| s["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["cli-a", "cli-b"]);
    assert_eq!(services[0]["endpoints"].as_array().unwrap().len(), 3, "echo, charge, noted");

    let out = catga(&env, &["stats", "--json"]);
    let stats = json(&out)["stats"].as_array().cloned().unwrap();
    let echo_requests: u64 = stats
        .iter()
        .flat_map(|s| s["endpoints"].as_array().unwrap())
        .filter(|e| e["subject"] == "cli.echo")
        .map(|e| e["num_requests"].as_u64().unwrap())
        .sum();
    assert_eq!(echo_requests, 6, "every request counted once, over both instances");
    let out = catga(&env, &["stats"]);
    assert!(stdout(&out).contains("echo refuses"), "the last error shows: {}", stdout(&out));

    let out = catga(&env, &["services", "nobody", "--wait", "200"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no instance of service \"nobody\" answered"), "{}", stderr(&out));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_prints_the_reply_or_the_typed_error() {
    let nats = NatsServer::start_jetstream();
    let app = instance("cli-send", &nats, None).await;
    let url = nats.url();
    let env = [("CATGA_NATS_URL", url.as_str())];

    let out = catga(&env, &["send", "cli.echo", r#"{"text":"hi"}"#]);
    assert!(out.status.success());
    let reply: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((reply["text"].as_str(), reply["by"].as_str()), (Some("hi"), Some("cli-send")));

    let out = catga(&env, &["send", "cli.echo", r#"{"text":"fail"}"#, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["code"], "refused");
    let out = catga(&env, &["send", "cli.echo", r#"{"text":"fail"}"#]);
    assert!(stderr(&out).contains("[refused]: echo refuses"), "{}", stderr(&out));

    // A durable command: the stream's acknowledgement first, then the reply.
    let out = catga(&env, &["send", "cli.charge", r#"{"cents":21}"#, "--json"]);
    assert!(out.status.success());
    assert_eq!(json(&out)["reply"], 42);

    // The handler refuses what does not decode as its command.
    let out = catga(&env, &["send", "cli.echo", r#"{"txt":1}"#, "--json"]);
    assert_eq!(json(&out)["error"]["code"], "invalid");

    let out = catga(&env, &["send", "cli.nobody", "{}"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no handler for cli.nobody"), "{}", stderr(&out));

    let out = catga(&env, &["send", "cli.echo", "{oops"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("the payload is not JSON"), "{}", stderr(&out));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_are_listed_by_status_and_shown_with_their_history() {
    let nats = NatsServer::start_jetstream();
    let redis = RedisServer::start();
    let app = instance("cli-sagas", &nats, Some(&redis)).await;
    assert_eq!(app.start_saga::<Booking>("trip-ok", Trip::default()).await.unwrap(), SagaOutcome::Completed);
    let failed = Trip { fail_at: Some("hotel".into()), fail_undo: true };
    assert!(matches!(app.start_saga::<Booking>("trip-stuck", failed).await.unwrap(), SagaOutcome::Failed { .. }));
    let undone = Trip { fail_at: Some("hotel".into()), fail_undo: false };
    let outcome = app.start_saga::<Booking>("trip-undone", undone).await.unwrap();
    assert!(matches!(outcome, SagaOutcome::Compensated { .. }), "{outcome:?}");
    let url = redis.url();
    let env = [("CATGA_REDIS_URL", url.as_str())];

    let out = catga(&env, &["sagas"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("trip-stuck") && text.contains("failed"), "{text}");
    assert!(!text.contains("trip-ok") && !text.contains("trip-undone"), "finished sagas leave the index: {text}");
    assert!(text.contains("1 saga(s) of 1 type(s): cli-booking"), "{text}");

    let out = catga(&env, &["sagas", "--status", "running", "--json"]);
    let listed = json(&out);
    assert_eq!(listed["saga_types"], serde_json::json!(["cli-booking"]));
    assert_eq!(listed["sagas"], serde_json::json!([]));

    let out = catga(&env, &["saga", "cli-booking", "trip-stuck"]);
    let text = stdout(&out);
    for expected in ["status   failed", "hotel is sold out", "flight", "compensate", "cannot cancel the flight"] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
    let out = catga(&env, &["saga", "cli-booking", "trip-ok", "--json"]);
    let saga = json(&out);
    assert_eq!((saga["status"].as_str(), saga["history"].as_array().map(Vec::len)), (Some("completed"), Some(2)));

    let out = catga(&env, &["saga", "cli-booking", "no-such-trip"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no saga \"cli-booking\" with id \"no-such-trip\""), "{}", stderr(&out));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed() {
    let nats = NatsServer::start_jetstream();
    let app = instance("cli-dlq", &nats, None).await;
    // A plain client stores garbage in the durable command's stream: the
    // handler cannot decode it, so it is dead-lettered at once.
    let raw = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    raw.publish("cli.charge", "{oops".into()).await.unwrap().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.dead_letters("cli.charge").await.unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = nats.url();
    let env = [("CATGA_NATS_URL", url.as_str())];

    let out = catga(&env, &["dlq", "list"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("cli.charge") && text.contains("invalid") && text.contains("{oops"), "{text}");
    let out = catga(&env, &["dlq", "list", "cli.charge", "--json"]);
    let letters = json(&out)["letters"].as_array().cloned().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let seq = letters[0]["sequence"].as_u64().unwrap();
    assert_eq!(json(&catga(&env, &["dlq", "list", "cli.other", "--json"]))["letters"], serde_json::json!([]));

    let out = catga(&env, &["dlq", "replay", &seq.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Replayed, it fails the same way: a new letter, the old one gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let letters = loop {
        let letters = app.dead_letters("cli.charge").await.unwrap();
        if letters.iter().all(|l| l.sequence != seq) && !letters.is_empty() || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].sequence > seq);

    let out = catga(&env, &["dlq", "replay", "999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("replaying dead letter 999999"), "{}", stderr(&out));
    app.shutdown().await;
}

#[test]
fn missing_settings_and_unreachable_servers_are_clear_errors() {
    let out = catga(&[], &["services"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("CATGA_NATS_URL is not set"), "{}", stderr(&out));
    let out = catga(&[], &["sagas"]);
    assert!(stderr(&out).contains("CATGA_REDIS_URL is not set"), "{}", stderr(&out));

    let nowhere = format!("nats://alice:s3cret@127.0.0.1:{}", catga_suite::free_port());
    for args in [&["services"][..], &["send", "x.y", "{}"], &["dlq", "list"]] {
        let out = catga(&[("CATGA_NATS_URL", &nowhere)], args);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("NATS at nats://alice:***@127.0.0.1"), "{err}");
        assert!(!err.contains("s3cret"), "the password is never printed: {err}");
    }
    let redis_nowhere = format!("redis://127.0.0.1:{}", catga_suite::free_port());
    let out = catga(&[("CATGA_REDIS_URL", &redis_nowhere)], &["saga", "x", "y"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("store unavailable during connect on redis://127.0.0.1"), "{}", stderr(&out));

    let out = catga(&[("CATGA_NATS_URL", "nats://127.0.0.1:1")], &["send", "x.y"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let out = catga(&[("CATGA_REQUEST_TIMEOUT_MS", "soon")], &["services"]);
    assert!(stderr(&out).contains("CATGA_REQUEST_TIMEOUT_MS"), "{}", stderr(&out));
}
