//! Durable (JetStream) command round trip against core NATS request-reply,
//! both through Catga: one `nats-server -js` (started here on a free
//! 127.0.0.1 port, storing in a temp dir), the same 128-byte payload, one
//! responder instance with both handlers, at 1 and 16 sends in flight.
//!
//! Run: `cargo bench --bench durable` (about 12 s). Needs `nats-server` on
//! PATH. Ends with one JSON line: absolute figures and durable/core ratios.

use std::time::Duration;

use catga::prelude::*;
use catga_suite::NatsServer;
use catga_suite::load::closed_loop;

const WINDOW: Duration = Duration::from_secs(2);

/// JSON of this is exactly 128 bytes: `{"data":"` + 117 x + `"}`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.core.echo", reply = Core)]
pub struct Core {
    data: String,
}

/// The same, delivered through JetStream.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "bench.durable.echo", reply = Durable, durable)]
pub struct Durable {
    data: String,
}

#[catga::command(queue = "bench")]
async fn core_echo(blob: Core) -> Result<Core, HandlerError> {
    Ok(blob)
}

#[catga::command(queue = "bench")]
async fn durable_echo(blob: Durable) -> Result<Durable, HandlerError> {
    Ok(blob)
}

fn data() -> String {
    let data = "x".repeat(117);
    assert_eq!(serde_json::to_vec(&Core { data: data.clone() }).unwrap().len(), 128);
    data
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let nats = NatsServer::start_jetstream();
    let url = nats.url();
    rt.block_on(async move {
        let server = Catga::builder()
            .nats_url(&url)
            .service("bench")
            .handlers_where(|h| h.subject.starts_with("bench."))
            .start()
            .await
            .unwrap();
        let client = Catga::builder().nats_url(&url).service("bench-client").client_only().start().await.unwrap();
        let mut fields = Vec::new();
        for concurrency in [1, 16] {
            let core = {
                let client = client.clone();
                closed_loop(concurrency, WINDOW, move || {
                    let client = client.clone();
                    async move {
                        client.send(Core { data: data() }).await.unwrap();
                    }
                })
                .await
            };
            let durable = {
                let client = client.clone();
                closed_loop(concurrency, WINDOW, move || {
                    let client = client.clone();
                    async move {
                        client.send(Durable { data: data() }).await.unwrap();
                    }
                })
                .await
            };
            let c = concurrency;
            fields.push(format!(
                "\"c{c}_durable_rps\":{:.0},\"c{c}_core_rps\":{:.0},\"c{c}_ratio\":{:.3},\
                 \"c{c}_durable_p50_us\":{},\"c{c}_durable_p99_us\":{},\"c{c}_core_p50_us\":{},\"c{c}_core_p99_us\":{}",
                durable.rps,
                core.rps,
                durable.rps / core.rps,
                durable.p50_us,
                durable.p99_us,
                core.p50_us,
                core.p99_us
            ));
        }
        client.shutdown().await;
        server.shutdown().await;
        println!("{{{}}}", fields.join(","));
    });
}
