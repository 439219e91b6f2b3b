//! Every handler shape the macros accept registers for real and runs: the
//! registration sits behind the checks' conditions (see
//! `catga::__private`), and this is the test that the guarded path, not the
//! never-run fallback, is the one a correct program gets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use catga::prelude::*;
use catga::registry::{HandlerKind, handlers};

/// A command whose `Ok` type is written out, with a context.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "registration.direct", reply = u64)]
struct Direct(u64);

#[catga::command(subject = "registration.direct")]
async fn direct(cmd: Direct, ctx: Context) -> Result<u64, HandlerError> {
    let _ = ctx.instance_id();
    Ok(cmd.0 + 1)
}

/// A command whose return type is an alias that does not say `Result`.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "registration.alias", reply = u64)]
struct Alias(u64);

type Answer = std::result::Result<u64, HandlerError>;

#[catga::command]
async fn alias(cmd: Alias) -> Answer {
    Ok(cmd.0 * 2)
}

/// A command with another error type that becomes a `HandlerError`.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "registration.io", reply = String)]
struct Io(bool);

#[catga::command]
async fn io(cmd: Io) -> std::io::Result<String> {
    if cmd.0 { Ok("fine".into()) } else { Err(std::io::Error::other("disk on fire")) }
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "registration.seen")]
struct Seen;

static SEEN: AtomicUsize = AtomicUsize::new(0);

/// `Result<(), E>` written out.
#[catga::event]
async fn seen_direct(_: Seen) -> Result<(), HandlerError> {
    SEEN.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

type Nothing = ();

/// The `Ok` type `()` under another name.
#[catga::event(queue = "registration-nothing")]
async fn seen_nothing(_: Seen, _ctx: Context) -> Result<Nothing, HandlerError> {
    SEEN.fetch_add(10, Ordering::SeqCst);
    Ok(())
}

type Done = std::result::Result<(), HandlerError>;

/// The whole return type an alias.
#[catga::event(queue = "registration-done")]
async fn seen_done(_: Seen) -> Done {
    SEEN.fetch_add(100, Ordering::SeqCst);
    Ok(())
}

#[test]
fn every_handler_shape_registers_with_its_contract() {
    let ours: Vec<_> = handlers().into_iter().filter(|h| h.subject.starts_with("registration.")).collect();
    let found: Vec<_> = ours.iter().map(|h| (h.name, h.subject, h.kind, h.reply_type())).collect();
    assert_eq!(
        found,
        [
            ("alias", "registration.alias", HandlerKind::Command, "u64"),
            ("direct", "registration.direct", HandlerKind::Command, "u64"),
            ("io", "registration.io", HandlerKind::Command, "alloc::string::String"),
            ("seen_direct", "registration.seen", HandlerKind::Event, "()"),
            ("seen_done", "registration.seen", HandlerKind::Event, "()"),
            ("seen_nothing", "registration.seen", HandlerKind::Event, "()"),
        ]
    );
    assert!(ours.iter().all(|h| h.message_type().ends_with(match h.name {
        "alias" => "Alias",
        "direct" => "Direct",
        "io" => "Io",
        _ => "Seen",
    })));
}

#[tokio::test]
async fn every_handler_shape_runs() {
    let app = Catga::builder()
        .service("registration")
        .handlers_where(|h| h.subject.starts_with("registration."))
        .start()
        .await
        .unwrap();
    assert_eq!(app.send(Direct(1)).await.unwrap(), 2);
    assert_eq!(app.send(Alias(3)).await.unwrap(), 6);
    assert_eq!(app.send(Io(true)).await.unwrap(), "fine");
    let err = app.send(Io(false)).await.unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");

    app.publish(Seen).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while SEEN.load(Ordering::SeqCst) != 111 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(SEEN.load(Ordering::SeqCst), 111, "every event handler ran once");
    app.shutdown().await;
}
