//! A small service for the process-level tests: `Catga::run()` with a few
//! handlers, configured only by `CATGA_*` variables, logging to stderr.
//! Tests start it as a separate OS process and stop it by its pid. Its
//! contracts are copied (same subjects and shapes) in the tests, as another
//! service's would be.

use std::time::Duration;

use catga::prelude::*;

/// Answers with the id of the instance that handled it.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.whoami", reply = String)]
pub struct WhoAmI;

#[catga::command(queue = "svc")]
async fn whoami(_: WhoAmI, ctx: Context) -> Result<String, HandlerError> {
    Ok(ctx.instance_id().to_owned())
}

/// Work that takes `sleep_ms`; answers (instance id, n).
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.work", reply = (String, u64))]
pub struct Work {
    pub n: u64,
    pub sleep_ms: u64,
}

#[catga::command(queue = "svc")]
async fn work(cmd: Work, ctx: Context) -> Result<(String, u64), HandlerError> {
    tokio::time::sleep(Duration::from_millis(cmd.sleep_ms)).await;
    Ok((ctx.instance_id().to_owned(), cmd.n))
}

/// Fails with the given code.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.fail", reply = ())]
pub struct Fail {
    pub code: String,
}

#[catga::command(queue = "svc")]
async fn fail(cmd: Fail) -> Result<(), HandlerError> {
    Err(HandlerError::new(cmd.code, "failed on purpose"))
}

/// Echoes its text.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.echo", reply = String)]
pub struct Echo {
    pub text: String,
}

#[catga::command(queue = "svc")]
async fn echo(cmd: Echo) -> Result<String, HandlerError> {
    Ok(cmd.text)
}

/// Every instance answers a ping event with a pong event.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "svc.ping")]
pub struct Ping {
    pub n: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "svc.pong")]
pub struct Pong {
    pub n: u64,
    pub from: String,
    pub correlation: String,
}

#[catga::event]
async fn on_ping(ev: Ping, ctx: Context) -> Result<(), HandlerError> {
    let correlation = ctx.metadata().correlation_id.to_string();
    ctx.publish(Pong { n: ev.n, from: ctx.instance_id().to_owned(), correlation }).await?;
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    if let Err(e) = Catga::run().await {
        eprintln!("catga-test-service: {e}");
        std::process::exit(2);
    }
}
