//! `catga services` and `catga stats`: ask every running instance through
//! the NATS service API (`$SRV.INFO`, `$SRV.STATS`) and gather every reply
//! that arrives within a short window — as `nats micro ls` does.

use std::collections::BTreeMap;
use std::time::Duration;

use catga::Config;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::connect;
use crate::output::{Failure, Out, Table, nanos};

/// Every reply to `$SRV.<verb>[.<service>]` within `window`, sorted by
/// service and instance id.
async fn gather(config: &Config, verb: &str, service: Option<&str>, window: Duration) -> Result<Vec<Value>, Failure> {
    let client = connect::nats(config, "asking the services").await?;
    let subject = match service {
        Some(service) => format!("$SRV.{verb}.{service}"),
        None => format!("$SRV.{verb}"),
    };
    let failed = |e: &dyn std::fmt::Display| Failure::new(format!("asking {subject}: {e}"));
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.map_err(|e| failed(&e))?;
    client.publish_with_reply(subject.clone(), inbox, "".into()).await.map_err(|e| failed(&e))?;
    client.flush().await.map_err(|e| failed(&e))?;
    let mut answers = Vec::new();
    let until = tokio::time::Instant::now() + window;
    while let Ok(Some(reply)) = tokio::time::timeout_at(until, replies.next()).await {
        // A reply that is not JSON is not an instance's: skipped.
        if let Ok(answer) = serde_json::from_slice::<Value>(&reply.payload) {
            answers.push(answer);
        }
    }
    answers.sort_by_key(|a| (text(a, "name"), text(a, "id")));
    Ok(answers)
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn number(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or_default()
}

fn endpoints(v: &Value) -> &[Value] {
    v.get("endpoints").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn none_found(service: Option<&str>, window: Duration) -> Failure {
    match service {
        Some(s) => Failure::new(format!("no instance of service {s:?} answered within {window:?}")),
        None => Failure::new(format!("no service answered within {window:?}")),
    }
}

/// `catga services [SERVICE]`: one row per instance, then every endpoint of
/// every service with how many instances serve it.
pub(crate) async fn services(
    config: &Config,
    service: Option<String>,
    window: Duration,
    out: Out,
) -> Result<(), Failure> {
    let infos = gather(config, "INFO", service.as_deref(), window).await?;
    if infos.is_empty() {
        return Err(none_found(service.as_deref(), window));
    }
    if out.json {
        out.json(&json!({ "services": infos }));
        return Ok(());
    }
    let mut instances = Table::new(&["SERVICE", "INSTANCE", "VERSION", "ENDPOINTS"]);
    // (service, endpoint subject, handler) → (the endpoint, instances serving it)
    let mut served: BTreeMap<(String, String, String), (&Value, usize)> = BTreeMap::new();
    for info in &infos {
        let name = text(info, "name");
        instances.row(vec![name.clone(), text(info, "id"), text(info, "version"), endpoints(info).len().to_string()]);
        for e in endpoints(info) {
            served.entry((name.clone(), text(e, "subject"), text(e, "name"))).or_insert((e, 0)).1 += 1;
        }
    }
    instances.print();
    let mut table = Table::new(&["SERVICE", "SUBJECT", "KIND", "QUEUE", "HANDLER", "MESSAGE", "INSTANCES"]);
    for ((service, subject, handler), (e, count)) in &served {
        let meta = e.get("metadata").cloned().unwrap_or_default();
        let kind = match (text(&meta, "kind"), text(&meta, "durable") == "true") {
            (kind, true) => format!("{kind}, durable"),
            (kind, false) => kind,
        };
        let message = match text(&meta, "reply_type") {
            reply if reply.is_empty() => text(&meta, "message_type"),
            reply => format!("{} → {reply}", text(&meta, "message_type")),
        };
        let queue = e.get("queue_group").and_then(Value::as_str).unwrap_or("(every instance)").to_owned();
        table.row(vec![service.clone(), subject.clone(), kind, queue, handler.clone(), message, count.to_string()]);
    }
    if !table.is_empty() {
        println!();
        table.print();
    }
    let names: std::collections::BTreeSet<String> = infos.iter().map(|i| text(i, "name")).collect();
    println!("\n{} service(s), {} instance(s)", names.len(), infos.len());
    Ok(())
}

/// `catga stats [SERVICE]`: one row per instance and endpoint.
pub(crate) async fn stats(config: &Config, service: Option<String>, window: Duration, out: Out) -> Result<(), Failure> {
    let stats = gather(config, "STATS", service.as_deref(), window).await?;
    if stats.is_empty() {
        return Err(none_found(service.as_deref(), window));
    }
    if out.json {
        out.json(&json!({ "stats": stats }));
        return Ok(());
    }
    let mut table =
        Table::new(&["SERVICE", "INSTANCE", "SUBJECT", "HANDLER", "REQUESTS", "ERRORS", "AVERAGE", "LAST ERROR"]);
    for s in &stats {
        for e in endpoints(s) {
            table.row(vec![
                text(s, "name"),
                text(s, "id"),
                text(e, "subject"),
                text(e, "name"),
                number(e, "num_requests").to_string(),
                number(e, "num_errors").to_string(),
                nanos(number(e, "average_processing_time")),
                text(e, "last_error"),
            ]);
        }
    }
    table.print();
    Ok(())
}
