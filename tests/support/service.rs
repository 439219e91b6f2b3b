//! A small service for the process-level tests: `Catga::run()` with a few
//! handlers, configured only by `CATGA_*` variables, logging to stderr.
//! Tests start it as a separate OS process and stop it by its pid.

use catga::prelude::*;

/// Answers with the id of the instance that handled it.
#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "svc.whoami", reply = String)]
pub struct WhoAmI;

#[catga::command(queue = "svc")]
async fn whoami(_: WhoAmI, ctx: Context) -> Result<String, HandlerError> {
    Ok(ctx.instance_id().to_owned())
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
