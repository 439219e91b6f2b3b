//! OpenTelemetry export (cargo feature `otel`): two `catga-saga-service`
//! processes export their spans over OTLP/HTTP to a receiver this test runs
//! (decoded with `opentelemetry-proto`), and the spans of one request —
//! through a command, the event it publishes and the steps of the saga that
//! event starts, with their sends — form one tree under the caller's span.
//!
//! Run with `cargo nextest run -p catga-suite --features otel --test otel`.
#![cfg(feature = "otel")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use catga::prelude::*;
use catga_suite::{NatsServer, RedisServer, ServiceProcess, free_port};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVICE: &str = env!("CARGO_BIN_EXE_catga-saga-service");
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// One exported span: its ids (hex), name and string attributes.
#[derive(Debug, Clone)]
struct Exported {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: HashMap<String, String>,
    service: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body, answered
/// `200` with an empty `ExportTraceServiceResponse`.
async fn receiver(listener: tokio::net::TcpListener, spans: Arc<Mutex<Vec<Exported>>>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { return };
        let spans = spans.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                // Headers, then Content-Length bytes of body.
                let end = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end + 4;
                    }
                    let mut chunk = [0u8; 8192];
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < end + length {
                    let mut chunk = [0u8; 8192];
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body: Vec<u8> = buf.drain(..end + length).skip(end).collect();
                let request = ExportTraceServiceRequest::decode(&body[..]).expect("an OTLP trace export");
                let mut got = Vec::new();
                for resource in request.resource_spans {
                    let attribute = |kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str| {
                        kvs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            any_value::Value::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                    };
                    let service = resource
                        .resource
                        .as_ref()
                        .and_then(|r| attribute(&r.attributes, "service.name"))
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            let attributes = span
                                .attributes
                                .iter()
                                .filter_map(|kv| Some((kv.key.clone(), attribute(std::slice::from_ref(kv), &kv.key)?)))
                                .collect();
                            got.push(Exported {
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent_span_id: hex(&span.parent_span_id),
                                name: span.name.clone(),
                                attributes,
                                service: service.clone(),
                            });
                        }
                    }
                }
                spans.lock().unwrap().extend(got);
                let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                if conn.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn start(nats: &NatsServer, redis: &RedisServer, id: &str, otlp: &str) -> ServiceProcess {
    let (nats, redis) = (nats.url(), redis.url());
    ServiceProcess::started(
        SERVICE,
        &[
            ("CATGA_NATS_URL", &nats),
            ("CATGA_REDIS_URL", &redis),
            ("CATGA_SERVICE", "saga-svc"),
            ("CATGA_INSTANCE_ID", id),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
        ],
    )
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[catga(subject = "trace.probe", reply = serde_json::Value)]
struct Probe {
    saga: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spans_of_a_command_its_event_and_a_saga_form_one_tree_across_processes() {
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let spans = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(receiver(listener, spans.clone()));
    let otlp = format!("http://127.0.0.1:{port}");

    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let mut instances = [start(&nats, &redis, "otel-a", &otlp), start(&nats, &redis, "otel-b", &otlp)];

    // One request from a caller outside Catga, with its own span.
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let saga = format!("otel-{}", catga::MessageId::new());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"));
    let probe = serde_json::to_vec(&Probe { saga: Some(saga.clone()) }).unwrap();
    let reply = raw.request_with_headers("trace.probe", headers, probe.into());
    tokio::time::timeout(Duration::from_secs(10), reply).await.expect("a reply within 10 s").unwrap();

    // The event's handler starts the saga; wait for it to finish.
    let client = Catga::builder()
        .service("otel-client")
        .nats_url(nats.url())
        .redis_url(redis.url())
        .client_only()
        .start()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = client.saga_status_by_name("traced-order", &saga).await.unwrap();
        if info.as_ref().is_some_and(|i| i.status.is_finished()) {
            assert_eq!(info.unwrap().status, catga::saga::SagaStatus::Completed);
            break;
        }
        assert!(Instant::now() < deadline, "the saga did not finish within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.shutdown().await;

    // A graceful stop flushes the export.
    for instance in &mut instances {
        instance.signal("TERM");
    }
    for instance in &mut instances {
        assert_eq!(instance.exit_code(), Some(0), "{}", instance.seen().join("\n"));
    }

    let spans: Vec<Exported> = spans.lock().unwrap().iter().filter(|s| s.trace_id == TRACE).cloned().collect();
    let by_id: HashMap<&str, &Exported> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    assert_eq!(by_id.len(), spans.len(), "span ids are unique: {spans:#?}");
    assert!(spans.iter().all(|s| s.service == "saga-svc"), "{spans:#?}");
    // One tree: every span's parent is another exported span, or the caller's.
    for span in &spans {
        assert!(
            span.parent_span_id == CALLER_SPAN || by_id.contains_key(span.parent_span_id.as_str()),
            "{span:?} hangs from a span that was not exported: {spans:#?}"
        );
    }
    let label = |s: &Exported| {
        let what = s.attributes.get("subject").or(s.attributes.get("step")).cloned().unwrap_or_default();
        format!("{} {what}", s.name)
    };
    let path = |span: &Exported| {
        let mut path = vec![label(span)];
        let mut at = span;
        while let Some(parent) = by_id.get(at.parent_span_id.as_str()) {
            path.push(label(parent));
            at = parent;
            assert!(path.len() < 20, "a cycle: {path:?}");
        }
        assert_eq!(at.parent_span_id, CALLER_SPAN, "the root is the caller's span: {path:?}");
        path
    };
    let effects: Vec<&Exported> = spans.iter().filter(|s| label(s) == "catga.handle trace.effect").collect();
    assert_eq!(effects.len(), 2, "one effect per step: {spans:#?}");
    for effect in effects {
        let path = path(effect);
        assert_eq!(
            path[1..],
            [
                "catga.send trace.effect",
                path[2].as_str(),
                "catga.handle trace.traced",
                "catga.publish trace.traced",
                "catga.handle trace.probe",
            ],
            "{path:?}"
        );
        assert!(["catga.saga.step first", "catga.saga.step parked"].contains(&path[2].as_str()), "{path:?}");
    }
}
