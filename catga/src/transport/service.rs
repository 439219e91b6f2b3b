//! The NATS service API (ADR-32, "micro"): every instance answers
//! `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` — and the variants scoped to
//! its service name and to its instance id — so standard NATS tooling
//! (`nats micro ls`, `nats micro info`) lists Catga services. Each command
//! handler is one endpoint, with its subject, queue group and counters.

use std::collections::HashMap;
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

/// Per-endpoint counters, updated by every handling of a command.
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
    queue_group: String,
    stats: Arc<EndpointStats>,
}

/// One instance's service description and counters.
pub(crate) struct Service {
    name: String,
    id: String,
    version: String,
    started: String,
    endpoints: Vec<Endpoint>,
    /// Event handlers have counters too (not reported as endpoints).
    others: HashMap<(&'static str, &'static str), Arc<EndpointStats>>,
}

impl Service {
    pub(crate) fn new(config: &Config, handlers: &[&'static HandlerRecord], clock: Clock) -> Service {
        let endpoints = handlers
            .iter()
            .filter(|h| h.kind == HandlerKind::Command)
            .map(|&record| Endpoint {
                record,
                queue_group: record.queue_group(&config.service).unwrap_or_default().to_owned(),
                stats: Arc::default(),
            })
            .collect();
        Service {
            name: config.service.clone(),
            id: config.instance_id.clone(),
            version: config.version.clone(),
            started: humantime::format_rfc3339_nanos(clock.system_time()).to_string(),
            endpoints,
            others: handlers
                .iter()
                .filter(|h| h.kind == HandlerKind::Event)
                .map(|h| ((h.subject, h.name), Arc::default()))
                .collect(),
        }
    }

    /// The counters of a handler.
    pub(crate) fn endpoint(&self, record: &'static HandlerRecord) -> Arc<EndpointStats> {
        self.endpoints
            .iter()
            .find(|e| std::ptr::eq(e.record, record))
            .map(|e| e.stats.clone())
            .or_else(|| self.others.get(&(record.subject, record.name)).cloned())
            .unwrap_or_default()
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
                    queue_group: &e.queue_group,
                    metadata: EndpointMeta { message_type: e.record.message_type(), reply_type: e.record.reply_type() },
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
                        queue_group: &e.queue_group,
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
struct EndpointMeta {
    message_type: &'static str,
    reply_type: &'static str,
}

#[derive(Serialize)]
struct EndpointInfo<'a> {
    name: &'static str,
    subject: &'static str,
    queue_group: &'a str,
    metadata: EndpointMeta,
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
    queue_group: &'a str,
    num_requests: u64,
    num_errors: u64,
    last_error: String,
    processing_time: u64,
    average_processing_time: u64,
}
