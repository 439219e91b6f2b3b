//! `catga send SUBJECT JSON`: one request with Catga's headers (a message
//! id, a trace, the deadline), core or durable alike, printing the reply or
//! the handler's typed error.
//!
//! It publishes with a reply subject on a fresh inbox *and* names that inbox
//! in `Catga-Reply-To`: a core handler answers the reply subject; a durable
//! subject's stream answers it with its PubAck first, then the handler
//! answers `Catga-Reply-To`. No `Catga-Liveness`: exactly one reply, as a
//! plain NATS request gets (docs/WIRE.md).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::{HeaderMap, Message, StatusCode};
use catga::transport::{headers, stream_name};
use catga::{Config, MessageId, TraceContext, TraceId};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::connect;
use crate::output::{Failure, Out};

/// What one message on the inbox is.
enum Answer {
    /// The stream stored the request (a durable subject): wait on.
    Stored { stream: String, seq: u64 },
    /// The handler's reply.
    Reply(Vec<u8>),
    /// The handler's error (`Catga-Status: error`).
    Error { code: String, message: String },
    /// Nobody is subscribed to the subject.
    NoResponders,
    /// A liveness signal (not asked for; ignored if a responder sends one).
    Working,
    /// JetStream refused to store it.
    Refused(String),
}

fn read(message: &Message, subject: &str, first: bool) -> Answer {
    if message.status == Some(StatusCode::NO_RESPONDERS) {
        return Answer::NoResponders;
    }
    let header = |name: &str| message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
    match header(headers::STATUS).as_deref() {
        Some("error") => {
            return Answer::Error {
                code: header(headers::ERROR_CODE).unwrap_or_else(|| "unknown".into()),
                message: String::from_utf8_lossy(&message.payload).into_owned(),
            };
        }
        Some("working") => return Answer::Working,
        _ => {}
    }
    // A durable subject's stream acknowledges first, without headers:
    // `{"stream":"CATGA_<subject>","seq":n}`, or `{"error":{"code":..,
    // "description":..}}`. Only that exact shape counts (a handler's reply
    // has no headers either).
    if first
        && message.headers.is_none()
        && let Ok(ack) = serde_json::from_slice::<Value>(&message.payload)
    {
        let stream = ack.get("stream").and_then(Value::as_str);
        if let (Some(stream), Some(seq)) = (stream, ack.get("seq").and_then(Value::as_u64))
            && stream == stream_name(subject)
        {
            return Answer::Stored { stream: stream.to_owned(), seq };
        }
        let error = ack.get("error").filter(|e| e.get("code").is_some_and(Value::is_u64));
        if let (Some(error), Some(1)) = (error, ack.as_object().map(|o| o.len())) {
            let description = error.get("description").and_then(Value::as_str).unwrap_or_default();
            return Answer::Refused(format!("{description} ({error})"));
        }
    }
    Answer::Reply(message.payload.to_vec())
}

pub(crate) async fn send(
    config: &Config,
    subject: &str,
    payload: &str,
    timeout: Duration,
    out: Out,
) -> Result<(), Failure> {
    let body: Value = serde_json::from_str(payload).map_err(|e| {
        Failure::new(format!("the payload is not JSON ({e}); give the command as JSON, e.g. '{{\"id\":\"o-1\"}}'"))
    })?;
    let client = connect::nats(config, "sending").await?;
    let id = MessageId::new();
    let trace = TraceContext::root(TraceId::random());
    let inbox = client.new_inbox();
    let failed = |e: &dyn std::fmt::Display| Failure::new(format!("sending on {subject}: {e}"));
    let mut answers = client.subscribe(inbox.clone()).await.map_err(|e| failed(&e))?;
    let deadline_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() + timeout;
    let mut h = HeaderMap::new();
    h.insert(headers::MESSAGE_ID, id.to_string());
    h.insert(headers::TRACEPARENT, trace.traceparent());
    // The deadline as wall-clock time, as a durable send gives it (time in
    // a stream counts); a core handler reads it the same way.
    h.insert(headers::DEADLINE_AT, deadline_at.as_millis().to_string());
    h.insert(headers::REPLY_TO, inbox.as_str());
    // JetStream's deduplication id, for a durable subject.
    h.insert("Nats-Msg-Id", id.to_string());
    let bytes = serde_json::to_vec(&body).expect("a JSON value encodes");
    client.publish_with_reply_and_headers(subject.to_owned(), inbox, h, bytes.into()).await.map_err(|e| failed(&e))?;
    client.flush().await.map_err(|e| failed(&e))?;

    let until = tokio::time::Instant::now() + timeout;
    let mut stored = None;
    loop {
        let message = match tokio::time::timeout_at(until, answers.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => return Err(Failure::new(format!("the connection closed before a reply to {subject} came"))),
            Err(_) => {
                let where_ = match &stored {
                    Some((stream, seq)) => format!("; it is stored in {stream} (sequence {seq}) and will be handled"),
                    None => String::new(),
                };
                return Err(Failure::new(format!(
                    "no reply from {subject} within {timeout:?} (message id {id}){where_}; the handler may still be \
                     running: retry with --timeout, or check `catga stats`"
                )));
            }
        };
        match read(&message, subject, stored.is_none()) {
            Answer::Stored { stream, seq } => stored = Some((stream, seq)),
            Answer::Working => {}
            Answer::NoResponders => {
                return Err(Failure::new(format!(
                    "no handler for {subject}: no instance is subscribed to it (is its service running? see `catga services`)"
                )));
            }
            Answer::Refused(why) => return Err(Failure::new(format!("the stream of {subject} refused it: {why}"))),
            Answer::Error { code, message } => return Err(Failure::reply(code, message)),
            Answer::Reply(bytes) => {
                print_reply(&bytes, &id, out);
                return Ok(());
            }
        }
    }
}

fn print_reply(bytes: &[u8], id: &MessageId, out: Out) {
    let parsed = serde_json::from_slice::<Value>(bytes).ok();
    match (out.json, parsed) {
        (true, Some(reply)) => out.json(&json!({"message_id": id.to_string(), "reply": reply})),
        (true, None) => out.json(&json!({"message_id": id.to_string(), "reply_text": String::from_utf8_lossy(bytes)})),
        (false, Some(reply)) => println!("{}", serde_json::to_string_pretty(&reply).expect("a JSON value prints")),
        (false, None) => println!("{}", String::from_utf8_lossy(bytes)),
    }
}
