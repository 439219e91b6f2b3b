//! The inventory service: an instance of the service. Run as many as you like; each takes
//! its share of the work. `CATGA_NATS_URL` and `CATGA_REDIS_URL` select
//! the servers; without them it runs alone, in memory.

use inventory_service as _; // link the handlers (see "the unlinked-crate trap")

#[tokio::main]
async fn main() -> catga::Result<()> {
    catga::Builder::from_env()?.service("inventory").version(env!("CARGO_PKG_VERSION")).run().await
}
