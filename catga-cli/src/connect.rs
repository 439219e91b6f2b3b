//! Reaching the services' servers, from the `CATGA_*` configuration, with
//! errors that say which variable to set or which server did not answer.

use std::time::Duration;

use catga::{App, Catga, Config};

use crate::output::Failure;

/// How long starting a client-only instance may take, twice.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn nats_url(config: &Config, what: &str) -> Result<String, Failure> {
    config.nats_url.clone().ok_or_else(|| {
        Failure::new(format!(
            "CATGA_NATS_URL is not set: {what} goes over NATS; set it to the servers your services use \
             (e.g. CATGA_NATS_URL=nats://127.0.0.1:4222)"
        ))
    })
}

/// A plain NATS connection (the service API, raw requests), with the
/// services' credentials and TLS: the CLI itself is no instance, so it does
/// not show up in `catga services`.
pub(crate) async fn nats(config: &Config, what: &str) -> Result<async_nats::Client, Failure> {
    nats_url(config, what)?;
    catga::transport::connect_client(config, "catga-cli").await.map_err(|e| Failure::new(e.to_string()))
}

/// A client-only instance on NATS alone (dead letters: JetStream). Its
/// errors name the server (without secrets) and what to check.
pub(crate) async fn nats_app(config: &Config, what: &str) -> Result<App, Failure> {
    nats_url(config, what)?;
    client(config, |c| c.redis_url = None).await.map_err(|e| Failure::new(e.to_string()))
}

/// A client-only instance on the Redis store alone (sagas).
pub(crate) async fn redis_app(config: &Config, what: &str) -> Result<App, Failure> {
    config.redis_url.as_ref().ok_or_else(|| {
        Failure::new(format!(
            "CATGA_REDIS_URL is not set: {what} live in the Redis store; set it to the store your services use \
             (e.g. CATGA_REDIS_URL=redis://127.0.0.1:6379). Sagas of an in-memory instance are visible only inside its process."
        ))
    })?;
    client(config, |c| c.nats_url = None).await.map_err(|e| Failure::new(e.to_string()))
}

async fn client(config: &Config, only: impl FnOnce(&mut Config)) -> catga::Result<App> {
    let mut config = config.clone();
    only(&mut config);
    config.http_addr = None;
    // Never a service's own id (CATGA_INSTANCE_ID may be set in the shell):
    // an empty one is made fresh, `catga-cli-<random>`.
    config.instance_id = String::new();
    let start = Catga::builder().configure(|c| *c = config).service("catga-cli").client_only().start();
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, start).await {
        Ok(started) => started,
        Err(_) => Err(catga::Error::Config(format!("no answer within {:?}", CONNECT_TIMEOUT * 2))),
    }
}
