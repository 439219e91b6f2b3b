//! The NATS service API (ADR-32, "micro"): every instance answers
//! `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` — and the variants scoped to
//! its service name and to its instance id — so standard NATS tooling
//! (`nats micro ls`, `nats micro info`) lists Catga services. Each handler
//! is one endpoint, with its subject, queue group (none for a broadcast
//! event handler) and counters (requests or deliveries, errors, processing
//! time); its metadata says `kind` (`command`/`event`), `message_type` and
//! `reply_type` (short type names, e.g. `CreateOrder`, `Vec<String>`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, HandlerError, Result};
use crate::future::BoxFuture;
use crate::registry::{HandlerKind, HandlerRecord};
use crate::transport::connection::drained;

/// Per-endpoint counters, updated by every handling (a command's request,
/// an event's delivery).
#[derive(Default)]
pub(crate) struct EndpointStats {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_ns: AtomicU64,
    last_error: Mutex<String>,
}

impl EndpointStats {
    pub(crate) fn record(&self, took: Duration, error: Option<&HandlerError>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.processing_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        if let Some(error) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error.to_string();
        }
    }
}

struct Endpoint {
    record: &'static HandlerRecord,
    /// `None`: a broadcast event handler.
    queue_group: Option<String>,
    metadata: BTreeMap<&'static str, String>,
    stats: Arc<EndpointStats>,
}

/// One instance's service description and counters.
pub(crate) struct Service {
    name: String,
    id: String,
    version: String,
    started: String,
    endpoints: Vec<Endpoint>,
}

impl Service {
    pub(crate) fn new(config: &Config, handlers: &[&'static HandlerRecord], clock: Clock) -> Service {
        let endpoints = handlers
            .iter()
            .map(|&record| {
                let mut metadata = BTreeMap::new();
                let kind = match record.kind {
                    HandlerKind::Command => "command",
                    HandlerKind::Event => "event",
                };
                metadata.insert("kind", kind.to_owned());
                metadata.insert("message_type", short_type_name(record.message_type()));
                if record.kind == HandlerKind::Command {
                    metadata.insert("reply_type", short_type_name(record.reply_type()));
                }
                if record.durable() {
                    metadata.insert("durable", "true".to_owned());
                }
                Endpoint {
                    record,
                    queue_group: record.queue_group(&config.service).map(str::to_owned),
                    metadata,
                    stats: Arc::default(),
                }
            })
            .collect();
        Service {
            name: config.service.clone(),
            id: config.instance_id.clone(),
            version: config.version.clone(),
            started: humantime::format_rfc3339_nanos(clock.system_time()).to_string(),
            endpoints,
        }
    }

    /// The counters of a handler.
    pub(crate) fn endpoint(&self, record: &'static HandlerRecord) -> Arc<EndpointStats> {
        self.endpoints.iter().find(|e| std::ptr::eq(e.record, record)).map(|e| e.stats.clone()).unwrap_or_default()
    }

    /// Subscribe to the nine `$SRV` subjects of this instance; returns the
    /// tasks that answer them (they end when drained).
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        client: &async_nats::Client,
        drain: watch::Receiver<bool>,
    ) -> Result<Vec<BoxFuture<'static, ()>>> {
        let mut tasks: Vec<BoxFuture<'static, ()>> = Vec::new();
        for verb in [Verb::Ping, Verb::Info, Verb::Stats] {
            let scopes = [
                format!("$SRV.{}", verb.name()),
                format!("$SRV.{}.{}", verb.name(), self.name),
                format!("$SRV.{}.{}.{}", verb.name(), self.name, self.id),
            ];
            for subject in scopes {
                let subscriber = client.subscribe(subject.clone()).await.map_err(|e| Error::Transport {
                    subject: "$SRV",
                    reason: format!("cannot subscribe to {subject}: {e}"),
                })?;
                tasks.push(Box::pin(self.clone().answer(client.clone(), subscriber, verb, drain.clone())));
            }
        }
        Ok(tasks)
    }

    async fn answer(
        self: Arc<Self>,
        client: async_nats::Client,
        mut subscriber: async_nats::Subscriber,
        verb: Verb,
        mut drain: watch::Receiver<bool>,
    ) {
        use futures_util::StreamExt;
        loop {
            let request = tokio::select! {
                request = subscriber.next() => request,
                _ = drained(&mut drain) => {
                    let _ = subscriber.unsubscribe().await;
                    return;
                }
            };
            let Some(request) = request else { return };
            let Some(reply) = request.reply else { continue };
            let body = match verb {
                Verb::Ping => serde_json::to_vec(&self.ping()),
                Verb::Info => serde_json::to_vec(&self.info()),
                Verb::Stats => serde_json::to_vec(&self.stats()),
            };
            match body {
                Ok(body) => {
                    if let Err(e) = client.publish(reply, body.into()).await {
                        tracing::warn!(error = %e, "nats: could not answer a service API request");
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not encode a service API response"),
            }
        }
    }

    fn ping(&self) -> Ping<'_> {
        Ping {
            kind: "io.nats.micro.v1.ping_response",
            name: &self.name,
            id: &self.id,
            version: &self.version,
            metadata: Meta {},
        }
    }

    fn info(&self) -> Info<'_> {
        Info {
            kind: "io.nats.micro.v1.info_response",
            name: &self.name,
            id: &self.id,
            version: &self.version,
            metadata: Meta {},
            description: "a Catga service",
            endpoints: self
                .endpoints
                .iter()
                .map(|e| EndpointInfo {
                    name: e.record.name,
                    subject: e.record.subject,
                    queue_group: e.queue_group.as_deref(),
                    metadata: &e.metadata,
                })
                .collect(),
        }
    }

    fn stats(&self) -> Stats<'_> {
        Stats {
            kind: "io.nats.micro.v1.stats_response",
            name: &self.name,
            id: &self.id,
            version: &self.version,
            metadata: Meta {},
            started: &self.started,
            endpoints: self
                .endpoints
                .iter()
                .map(|e| {
                    let requests = e.stats.requests.load(Ordering::Relaxed);
                    let processing_time = e.stats.processing_ns.load(Ordering::Relaxed);
                    EndpointStatsJson {
                        name: e.record.name,
                        subject: e.record.subject,
                        queue_group: e.queue_group.as_deref(),
                        num_requests: requests,
                        num_errors: e.stats.errors.load(Ordering::Relaxed),
                        last_error: e.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                        processing_time,
                        average_processing_time: processing_time.checked_div(requests).unwrap_or(0),
                    }
                })
                .collect(),
        }
    }
}

#[derive(Clone, Copy)]
enum Verb {
    Ping,
    Info,
    Stats,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::Ping => "PING",
            Verb::Info => "INFO",
            Verb::Stats => "STATS",
        }
    }
}

#[derive(Serialize)]
struct Meta {}

#[derive(Serialize)]
struct Ping<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: Meta,
}

#[derive(Serialize)]
struct Info<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: Meta,
    description: &'static str,
    endpoints: Vec<EndpointInfo<'a>>,
}

#[derive(Serialize)]
struct EndpointInfo<'a> {
    name: &'static str,
    subject: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_group: Option<&'a str>,
    metadata: &'a BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct Stats<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: Meta,
    started: &'a str,
    endpoints: Vec<EndpointStatsJson<'a>>,
}

#[derive(Serialize)]
struct EndpointStatsJson<'a> {
    name: &'static str,
    subject: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_group: Option<&'a str>,
    num_requests: u64,
    num_errors: u64,
    last_error: String,
    processing_time: u64,
    average_processing_time: u64,
}

/// A Rust type name without its module paths: `alloc::vec::Vec<my::Order>`
/// → `Vec<Order>` (what a reader of `$SRV.INFO` wants, in any language).
fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(word.rsplit("::").next().unwrap_or(word));
        word.clear();
    };
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::short_type_name;

    #[test]
    fn type_names_lose_their_module_paths() {
        assert_eq!(short_type_name("alloc::string::String"), "String");
        assert_eq!(short_type_name("alloc::vec::Vec<my_app::orders::Order>"), "Vec<Order>");
        assert_eq!(short_type_name("(alloc::string::String, u64)"), "(String, u64)");
        assert_eq!(short_type_name("()"), "()");
        assert_eq!(short_type_name("core::option::Option<&[u8]>"), "Option<&[u8]>");
    }
}
