//! The wire envelope of the NATS and durable paths: header names, the
//! headers of a request or event, the ids read back from them, and how a
//! reply is written and read. The format is `docs/WIRE.md`.
//!
//! A reply is read as a [`ReplyPart`]: the final one, or — for a request
//! that asked for them with `Catga-Liveness` — a signal that its responder
//! is still working on it (see [`crate::transport::pulse`]).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::IntoHeaderName;
use bytes::Bytes;
use tokio::time::Instant;

use crate::clock::Clock;

use crate::codec::{Codec, Json};
use crate::error::{Error, HandlerError, Result};
use crate::message::Command;
use crate::metadata::{MessageId, Metadata};
use crate::registry::HandlerRecord;
use crate::trace::TraceContext;

/// Header names of the Catga wire format (see `docs/WIRE.md`).
pub mod headers {
    /// The message id (32 hex digits); retries of one send reuse it.
    pub const MESSAGE_ID: &str = "Catga-Message-Id";
    /// The conversation id (32 hex digits), when it is not the trace id of
    /// `traceparent` (a saga step's sends); it takes precedence over it.
    pub const CORRELATION_ID: &str = "Catga-Correlation-Id";
    /// The id of the message whose handler sent this one.
    pub const CAUSATION_ID: &str = "Catga-Causation-Id";
    /// W3C trace context `00-{trace id}-{parent id}-{flags}`: the parent id
    /// is the sending span's (a fresh one per send or publish).
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C vendor trace state, passed on verbatim (at most 512 bytes).
    pub const TRACESTATE: &str = "tracestate";
    /// The codec's MIME type; absent means `application/json`.
    pub const CONTENT_TYPE: &str = "Content-Type";
    /// On error replies: `error` (a reply without it is a success).
    pub const STATUS: &str = "Catga-Status";
    /// On error replies: the handler's error code (the body is the message).
    pub const ERROR_CODE: &str = "Catga-Error-Code";
    /// On error replies, for NATS service-API clients (ADR-32): the error's
    /// message (one line, at most 1 KiB).
    pub const SERVICE_ERROR: &str = "Nats-Service-Error";
    /// On error replies, for NATS service-API clients (ADR-32): an HTTP-like
    /// integer — 400 `invalid`, 404 `no_handler`, 409 `in_progress`, 413
    /// `payload_too_large`, 503 `store`/`transport`/`shutdown`, 504
    /// `timeout`/`handler_timeout`/`deadline`, 500 anything else.
    pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
    /// On durable commands: the subject the reply goes to (the sender's
    /// reply inbox), since a JetStream message has no reply subject of its own.
    pub const REPLY_TO: &str = "Catga-Reply-To";
    /// On core requests: the time left until the sender stops waiting, in
    /// milliseconds, when the request was sent (relative, so the clocks of
    /// sender and receiver need not agree).
    pub const DEADLINE_IN: &str = "Catga-Deadline-In";
    /// On durable commands: when the sender stops waiting, in milliseconds
    /// since the Unix epoch (absolute: time spent in the stream counts).
    pub const DEADLINE_AT: &str = "Catga-Deadline-At";
    /// On core requests from a Catga sender (`1`): the responder sends
    /// `Catga-Status: working` signals to the reply subject while it holds
    /// the request, so the sender learns quickly if it died.
    pub const LIVENESS: &str = "Catga-Liveness";
    /// On dead letters: the last error's message.
    pub const DLQ_REASON: &str = "Catga-Dlq-Reason";
    /// On dead letters: the last error's code.
    pub const DLQ_CODE: &str = "Catga-Dlq-Code";
    /// On dead letters: the handler that failed (`module::function`).
    pub const DLQ_HANDLER: &str = "Catga-Dlq-Handler";
    /// On dead letters: the subject the message was sent on.
    pub const ORIGINAL_SUBJECT: &str = "Catga-Original-Subject";
    /// On dead letters: how many times it was delivered.
    pub const DELIVERY_COUNT: &str = "Catga-Delivery-Count";
}

/// The header names of the hot path as [`HeaderName`]s, made at compile
/// time: a name given as `&str` is validated and copied into a fresh
/// allocation on every insert and every lookup, one of these is not.
pub(crate) mod names {
    use async_nats::HeaderName;

    use super::headers;

    pub(crate) const MESSAGE_ID: HeaderName = HeaderName::from_static(headers::MESSAGE_ID);
    pub(crate) const CORRELATION_ID: HeaderName = HeaderName::from_static(headers::CORRELATION_ID);
    pub(crate) const CAUSATION_ID: HeaderName = HeaderName::from_static(headers::CAUSATION_ID);
    pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static(headers::TRACEPARENT);
    pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static(headers::TRACESTATE);
    pub(crate) const CONTENT_TYPE: HeaderName = HeaderName::from_static(headers::CONTENT_TYPE);
    pub(crate) const STATUS: HeaderName = HeaderName::from_static(headers::STATUS);
    pub(crate) const ERROR_CODE: HeaderName = HeaderName::from_static(headers::ERROR_CODE);
    pub(crate) const DEADLINE_IN: HeaderName = HeaderName::from_static(headers::DEADLINE_IN);
    pub(crate) const DEADLINE_AT: HeaderName = HeaderName::from_static(headers::DEADLINE_AT);
    pub(crate) const LIVENESS: HeaderName = HeaderName::from_static(headers::LIVENESS);
    pub(crate) const REPLY_TO: HeaderName = HeaderName::from_static(headers::REPLY_TO);
}

/// The headers of a request or event: kept to what a receiver needs,
/// because every header costs parsing on the server and both clients.
/// The correlation id travels as the W3C trace id, and on its own only when
/// it differs from it; `tracestate` only when there is one; the content
/// type only when it is not JSON (the default).
pub(crate) fn request_headers(meta: &Metadata, content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(names::MESSAGE_ID, meta.message_id.to_string());
    h.insert(names::TRACEPARENT, meta.trace.traceparent());
    if let Some(state) = meta.trace.tracestate() {
        h.insert(names::TRACESTATE, state);
    }
    if meta.trace.trace_id().as_u128() != meta.correlation_id.as_u128() {
        h.insert(names::CORRELATION_ID, meta.correlation_id.to_string());
    }
    if let Some(cause) = meta.causation_id {
        h.insert(names::CAUSATION_ID, cause.to_string());
    }
    if content_type != Json::CONTENT_TYPE {
        h.insert(names::CONTENT_TYPE, content_type);
    }
    h
}

/// A core request's deadline, as the time left when it is sent.
pub(crate) fn with_deadline_in(mut h: HeaderMap, deadline: Instant) -> HeaderMap {
    let left = deadline.saturating_duration_since(Instant::now());
    h.insert(names::DEADLINE_IN, u64::try_from(left.as_millis()).unwrap_or(u64::MAX).to_string());
    h
}

/// A durable command's deadline, as wall-clock time (epoch ms by `clock`).
pub(crate) fn with_deadline_at(mut h: HeaderMap, deadline: Instant, clock: Clock) -> HeaderMap {
    let left = deadline.saturating_duration_since(clock.now());
    h.insert(names::DEADLINE_AT, (clock.epoch_ms() + left.as_millis() as u64).to_string());
    h
}

/// The ids of a received message, its trace context (the sender's span)
/// and its deadline on this instance's clock. A message without them (a
/// plain NATS client) starts a conversation with no deadline; one without
/// a valid `traceparent` starts a new trace (its `tracestate` ignored).
/// The correlation id is `Catga-Correlation-Id`, else the trace id, else
/// the message id.
pub(crate) fn metadata_of(message: &async_nats::Message, clock: Clock) -> Metadata {
    let found = Found::of(message);
    let id = |value: Option<&str>| -> Option<MessageId> { value?.parse().ok() };
    let message_id = id(found.message_id).unwrap_or_default();
    let trace = found.traceparent.and_then(|tp| TraceContext::parse(tp, found.tracestate().as_deref()));
    let correlation_id = id(found.correlation_id)
        .or_else(|| Some(MessageId::from_u128(trace.as_ref()?.trace_id().as_u128())))
        .unwrap_or(message_id);
    let mut meta = Metadata::with_ids(message_id, correlation_id, id(found.causation_id));
    if let Some(trace) = trace {
        meta.trace = trace;
    }
    meta.deadline = found.deadline(clock);
    meta
}

/// The Catga headers of a received message, read in one pass over its
/// headers: a lookup by name hashes the name (SipHash) each time, and a
/// request carries four or five of them.
#[derive(Default)]
struct Found<'a> {
    message_id: Option<&'a str>,
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    /// `None` when there is none or several (the specification makes
    /// several invalid).
    traceparent: Option<&'a str>,
    tracestate: &'a [async_nats::HeaderValue],
    deadline_in: Option<&'a str>,
    deadline_at: Option<&'a str>,
}

impl<'a> Found<'a> {
    fn of(message: &'a async_nats::Message) -> Self {
        let mut found = Found::default();
        let Some(map) = message.headers.as_ref() else { return found };
        for (name, values) in map.iter() {
            let first = values.first().map(|v| v.as_str());
            match name.as_ref() {
                headers::MESSAGE_ID => found.message_id = first,
                headers::CORRELATION_ID => found.correlation_id = first,
                headers::CAUSATION_ID => found.causation_id = first,
                headers::TRACEPARENT => found.traceparent = first.filter(|_| values.len() == 1),
                headers::TRACESTATE => found.tracestate = values,
                headers::DEADLINE_IN => found.deadline_in = first,
                headers::DEADLINE_AT => found.deadline_at = first,
                _ => {}
            }
        }
        found
    }

    /// `tracestate`: several headers of that name are one list, joined
    /// with commas (as the specification says).
    fn tracestate(&self) -> Option<std::borrow::Cow<'a, str>> {
        match self.tracestate {
            [] => None,
            [one] => Some(one.as_str().into()),
            several => Some(several.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(",").into()),
        }
    }

    /// `Catga-Deadline-In` counts from now; `Catga-Deadline-At` from the
    /// sender's wall clock (so it is off by the clocks' skew). A value that
    /// does not parse, or a deadline past what the clock can represent, is
    /// no deadline.
    fn deadline(&self, clock: Clock) -> Option<Instant> {
        let ms = |value: Option<&str>| -> Option<u64> { value?.parse().ok() };
        let left = match ms(self.deadline_in) {
            Some(left) => left,
            None => ms(self.deadline_at)?.saturating_sub(clock.epoch_ms()),
        };
        clock.now().checked_add(Duration::from_millis(left))
    }
}

/// The `deadline` error of a command whose sender's deadline passed before
/// its handling could start; `None` while there is time (or no deadline).
pub(crate) fn expired(meta: &Metadata, record: &HandlerRecord, clock: Clock) -> Option<HandlerError> {
    let deadline = meta.deadline?;
    let now = clock.now();
    (now >= deadline).then(|| {
        HandlerError::new(
            HandlerError::DEADLINE,
            format!(
                "message {} on \"{}\" reached `{}` {:?} after its sender's deadline; not handled",
                meta.message_id,
                record.subject,
                record.name,
                now - deadline
            ),
        )
    })
}

/// Whether the sender asked for liveness signals (and can take them).
pub(crate) fn wants_signals(message: &async_nats::Message) -> bool {
    header(message, names::LIVENESS).is_some()
}

/// The longest `Nats-Service-Error` value sent (the body has the whole message).
const SERVICE_ERROR_MAX: usize = 1024;

/// The ADR-32 error code (an HTTP-like integer) of a Catga error code, for
/// `Nats-Service-Error-Code`:
///
/// | Catga code | service-API code |
/// |---|---|
/// | `invalid` | 400 |
/// | `permission_denied` | 403 |
/// | `no_handler` | 404 |
/// | `in_progress` | 409 |
/// | `payload_too_large` | 413 |
/// | `store`, `transport`, `shutdown` | 503 |
/// | `timeout`, `handler_timeout`, `deadline` | 504 |
/// | any other (a handler's own code, `internal`, `panic`) | 500 |
pub(crate) fn service_error_code(code: &str) -> u16 {
    match code {
        HandlerError::INVALID => 400,
        HandlerError::PERMISSION_DENIED => 403,
        HandlerError::NO_HANDLER => 404,
        HandlerError::IN_PROGRESS => 409,
        HandlerError::PAYLOAD_TOO_LARGE => 413,
        HandlerError::STORE | HandlerError::TRANSPORT | HandlerError::SHUTDOWN => 503,
        HandlerError::TIMEOUT | HandlerError::HANDLER_TIMEOUT | HandlerError::DEADLINE => 504,
        _ => 500,
    }
}

/// `text` fit for a header value: one line, at most `max` bytes.
fn header_text(text: &str, max: usize) -> String {
    let mut line = text.replace(['\r', '\n'], " ");
    if line.len() > max {
        let mut end = max;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

/// A header's value, if the message has it (on the hot path, name it by
/// one of [`names`]).
pub(crate) fn header(message: &async_nats::Message, name: impl IntoHeaderName) -> Option<&str> {
    Some(message.headers.as_ref()?.get(name)?.as_str())
}

/// One message of a reply, as read by the caller.
pub(crate) enum ReplyPart<'a> {
    /// The responder still holds the request (`Catga-Status: working`).
    Working,
    /// The outcome: the encoded reply, or the handler's error.
    Final(std::result::Result<&'a [u8], HandlerError>),
}

/// The status of a liveness signal.
pub(crate) const WORKING: &str = "working";

/// The headers of a liveness signal (its body is empty).
pub(crate) fn working() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(names::STATUS, WORKING);
    h
}

/// Read one reply message: a success is the bare payload; an error has
/// `Catga-Status: error`, its code in `Catga-Error-Code` and its message as
/// the body; a liveness signal has `Catga-Status: working`.
pub(crate) fn read_reply(reply: &async_nats::Message) -> ReplyPart<'_> {
    let status = header(reply, names::STATUS);
    if status == Some(WORKING) {
        return ReplyPart::Working;
    }
    if status == Some("error") {
        let code = header(reply, names::ERROR_CODE).unwrap_or(HandlerError::INTERNAL).to_owned();
        let message = String::from_utf8_lossy(&reply.payload).into_owned();
        return ReplyPart::Final(Err(HandlerError::new(code, message)));
    }
    ReplyPart::Final(Ok(&reply.payload))
}

/// The final reply message of a handling by `handler`: headers (none for a
/// success, so there is nothing to parse) and body. A reply over the
/// server's `max_payload` becomes a `payload_too_large` error reply, not
/// silence; an error's message is cut to fit.
pub(crate) fn final_reply(
    outcome: std::result::Result<Vec<u8>, HandlerError>,
    handler: &str,
    max_payload: usize,
) -> (Option<HeaderMap>, Bytes) {
    let outcome = outcome.and_then(|body| {
        if body.len() <= max_payload {
            return Ok(body);
        }
        Err(HandlerError::new(
            HandlerError::PAYLOAD_TOO_LARGE,
            format!("the reply of `{handler}` is {} bytes, over the server's max_payload of {max_payload}", body.len()),
        ))
    });
    match outcome {
        Ok(body) => (None, body.into()),
        Err(error) => {
            let mut h = HeaderMap::new();
            h.insert(headers::STATUS, "error");
            // A header value cannot hold a line break.
            h.insert(headers::ERROR_CODE, error.code().replace(['\r', '\n'], " "));
            // What any NATS service-API client (nats.go, nats.net, nats-py
            // micro, the `nats` CLI) reads as an error.
            h.insert(headers::SERVICE_ERROR_CODE, service_error_code(error.code()).to_string());
            h.insert(headers::SERVICE_ERROR, header_text(error.message(), SERVICE_ERROR_MAX));
            let mut message = error.message().as_bytes().to_vec();
            message.truncate(max_payload.saturating_sub(256 + SERVICE_ERROR_MAX));
            (Some(h), message.into())
        }
    }
}

/// A codec failure on `subject`, naming the type.
pub(crate) fn codec_error<T>(action: &'static str, subject: &'static str, reason: String) -> Error {
    Error::Codec { action, type_name: std::any::type_name::<T>(), subject, reason }
}

/// A command's reply, typed: decoded with the command's codec, or the
/// handler's error.
pub(crate) fn decode_reply<C: Command>(reply: &async_nats::Message) -> Result<C::Reply> {
    match read_reply(reply) {
        ReplyPart::Final(Ok(body)) => {
            C::Codec::decode(body).map_err(|e| codec_error::<C::Reply>("decode", C::SUBJECT, e.0))
        }
        ReplyPart::Final(Err(error)) => Err(Error::Handler { subject: C::SUBJECT, error }),
        ReplyPart::Working => Err(Error::Transport {
            subject: C::SUBJECT,
            reason: "a liveness signal was taken for the reply (a bug in catga)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(headers: Option<HeaderMap>) -> Metadata {
        let message = async_nats::Message {
            subject: "t.s".into(),
            reply: None,
            payload: Bytes::new(),
            headers,
            status: None,
            description: None,
            length: 0,
        };
        metadata_of(&message, Clock::system())
    }

    #[test]
    fn a_message_without_headers_starts_a_trace_named_by_its_correlation_id() {
        let meta = received(None);
        assert_eq!(meta.correlation_id, meta.message_id);
        assert_eq!(meta.trace.trace_id().as_u128(), meta.correlation_id.as_u128());
        assert_eq!(meta.trace.parent_span_id(), None);
        assert_eq!(meta.trace.tracestate(), None);
    }

    #[test]
    fn the_trace_context_survives_the_headers() {
        let mut sent = Metadata::root().child();
        sent.trace = sent.trace.with_tracestate(Some("vendor=abc,other=1"));
        let h = request_headers(&sent, Json::CONTENT_TYPE);
        assert_eq!(h.get(headers::TRACEPARENT).map(|v| v.as_str().to_owned()), Some(sent.trace.traceparent()));
        assert!(h.get(headers::CORRELATION_ID).is_none(), "not sent when it is the trace id");
        let meta = received(Some(h));
        assert_eq!(meta.message_id, sent.message_id);
        assert_eq!(meta.correlation_id, sent.correlation_id);
        assert_eq!(meta.causation_id, sent.causation_id);
        assert_eq!(meta.trace.trace_id(), sent.trace.trace_id());
        assert_eq!(meta.trace.span_id(), sent.trace.span_id(), "the sender's span, until it is delivered");
        assert_eq!(meta.trace.tracestate(), Some("vendor=abc,other=1"));
    }

    #[test]
    fn a_correlation_id_other_than_the_trace_id_travels_on_its_own() {
        let other = Metadata::root();
        let sent = Metadata::with_ids(MessageId::new(), MessageId::new(), None).in_trace(&other.trace);
        let h = request_headers(&sent, Json::CONTENT_TYPE);
        assert!(h.get(headers::CORRELATION_ID).is_some());
        let meta = received(Some(h));
        assert_eq!(meta.correlation_id, sent.correlation_id);
        assert_eq!(meta.trace.trace_id(), other.trace.trace_id());
        assert_eq!(meta.trace.span_id(), sent.trace.span_id());
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace_and_drops_tracestate() {
        let mut h = HeaderMap::new();
        h.insert(headers::MESSAGE_ID, "000000000000000000000000000000ab");
        h.insert(headers::TRACEPARENT, "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01");
        h.insert(headers::TRACESTATE, "vendor=abc");
        let meta = received(Some(h));
        assert_eq!(meta.correlation_id.to_string(), "000000000000000000000000000000ab");
        assert_eq!(meta.trace.trace_id().as_u128(), 0xab);
        assert_eq!(meta.trace.tracestate(), None);
    }

    #[test]
    fn several_traceparent_headers_start_a_new_trace() {
        let mut h = HeaderMap::new();
        h.append(headers::TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        h.append(headers::TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b8-01");
        let meta = received(Some(h));
        assert_ne!(meta.trace.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(meta.correlation_id, meta.message_id);
    }

    #[test]
    fn several_tracestate_headers_are_one_list() {
        let mut h = HeaderMap::new();
        h.insert(headers::TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        h.append(headers::TRACESTATE, "a=1");
        h.append(headers::TRACESTATE, "b=2");
        let meta = received(Some(h));
        assert_eq!(meta.correlation_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(meta.trace.tracestate(), Some("a=1,b=2"));
    }

    #[test]
    fn error_replies_carry_the_service_api_headers() {
        let error = HandlerError::new("insufficient_funds", "balance is 3,\norder is 5");
        let (headers, body) = final_reply(Err(error), "charge", 1 << 20);
        let headers = headers.expect("an error reply has headers");
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(get(headers::STATUS).as_deref(), Some("error"));
        assert_eq!(get(headers::ERROR_CODE).as_deref(), Some("insufficient_funds"));
        assert_eq!(get(headers::SERVICE_ERROR_CODE).as_deref(), Some("500"));
        assert_eq!(get(headers::SERVICE_ERROR).as_deref(), Some("balance is 3, order is 5"));
        assert_eq!(&body[..], b"balance is 3,\norder is 5");
        let (success, _) = final_reply(Ok(b"5".to_vec()), "charge", 1 << 20);
        assert!(success.is_none(), "a success is the bare payload");
    }

    #[test]
    fn catga_codes_map_to_service_api_codes() {
        for (code, expected) in [
            (HandlerError::INVALID, 400),
            (HandlerError::NO_HANDLER, 404),
            (HandlerError::IN_PROGRESS, 409),
            (HandlerError::PAYLOAD_TOO_LARGE, 413),
            (HandlerError::STORE, 503),
            (HandlerError::TIMEOUT, 504),
            (HandlerError::HANDLER_TIMEOUT, 504),
            (HandlerError::PANIC, 500),
            ("out_of_stock", 500),
        ] {
            assert_eq!(service_error_code(code), expected, "{code}");
        }
    }

    #[test]
    fn a_long_message_is_cut_to_fit_a_header() {
        let long = "é".repeat(2000);
        let cut = header_text(&long, SERVICE_ERROR_MAX);
        assert!(cut.len() <= SERVICE_ERROR_MAX && long.starts_with(&cut));
    }
}
