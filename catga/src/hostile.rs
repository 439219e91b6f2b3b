//! Property tests of every decoder that input from the network or the
//! store reaches: request and event headers (ids, `traceparent`,
//! `tracestate`, deadlines, the liveness flag), reply envelopes and
//! liveness signals, message ids, dead-letter records, saga state and
//! scheduled messages read from the store, and command payloads. Whatever arrives: no panic, bounded output, and a
//! clear `invalid` error where the input is refused. (proptest, on the
//! pinned stable toolchain; bounded to a few hundred cases each, so the
//! suite stays fast.)

use async_nats::HeaderMap;
use bytes::Bytes;
use proptest::prelude::*;

use crate::clock::Clock;
use crate::metadata::MessageId;
use crate::trace::TraceContext;
use crate::transport::envelope::{self, ReplyPart, headers};

/// Header values as they may come: printable ASCII of any shape, numbers
/// of every size, near-valid trace contexts, and nothing at all.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,80}",
        any::<u64>().prop_map(|n| n.to_string()),
        any::<u128>().prop_map(|n| format!("{n:x}")),
        "[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}",
        "0[0-9a-fA-F]-[0-9a-fA-Fx]{30,34}-[0-9a-f]{14,18}-[0-9]{1,3}[ -~]{0,10}",
        Just(String::new()),
    ]
}

/// A message with any subset of Catga's request headers, each present
/// up to twice, and any payload.
fn message() -> impl Strategy<Value = async_nats::Message> {
    let names = [
        headers::MESSAGE_ID,
        headers::CORRELATION_ID,
        headers::CAUSATION_ID,
        headers::TRACEPARENT,
        headers::TRACESTATE,
        headers::DEADLINE_IN,
        headers::DEADLINE_AT,
        headers::LIVENESS,
        headers::STATUS,
        headers::ERROR_CODE,
        headers::DLQ_REASON,
        headers::DLQ_CODE,
        headers::DLQ_HANDLER,
        headers::ORIGINAL_SUBJECT,
        headers::DELIVERY_COUNT,
    ];
    (
        proptest::collection::vec((0..names.len(), header_value()), 0..12),
        proptest::collection::vec(any::<u8>(), 0..256),
        any::<bool>(),
    )
        .prop_map(move |(pairs, payload, with_headers)| {
            let mut h = HeaderMap::new();
            for (i, value) in pairs {
                // Header values must be valid for the client to build them,
                // as the server would have refused anything else.
                if !value.contains(['\r', '\n']) {
                    h.append(names[i], value.as_str());
                }
            }
            async_nats::Message {
                subject: "hostile.subject".into(),
                reply: None,
                payload: Bytes::from(payload),
                headers: with_headers.then_some(h),
                status: None,
                description: None,
                length: 0,
            }
        })
}

/// A command as a service declares one: nested, with a collection.
#[derive(Debug, serde::Serialize, serde::Deserialize, crate::Command)]
#[catga(subject = "hostile.order", reply = ())]
struct Order {
    id: String,
    lines: Vec<(String, u32)>,
    note: Option<String>,
}

/// 400 cases each, from a fixed seed so the suite is the same on every
/// run; set `PROPTEST_RNG_SEED` (a number) to explore other inputs.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig { cases: 400, ..ProptestConfig::default() };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = proptest::test_runner::RngSeed::Fixed(0xCA76A);
    }
    config
}

/// Run `f` with a fresh in-memory client instance, on a runtime of its own.
fn on_client<T>(f: impl AsyncFnOnce(&crate::App) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let app = crate::Catga::builder()
            .service("hostile")
            .memory_bus(crate::transport::memory::MemoryBus::new())
            .store(crate::store::Store::memory())
            .client_only()
            .start()
            .await
            .unwrap();
        let out = f(&app).await;
        app.shutdown().await;
        out
    })
}

proptest! {
    #![proptest_config(config())]

    /// Any request's headers give metadata: no panic, a deadline only when
    /// one parsed (and never past what the clock can hold), and a trace
    /// context that writes back as a valid `traceparent`.
    #[test]
    fn any_request_headers_give_metadata(message in message()) {
        let clock = Clock::system();
        let meta = envelope::metadata_of(&message, clock);
        let traceparent = meta.trace.traceparent();
        prop_assert!(TraceContext::parse(&traceparent, meta.trace.tracestate()).is_some(), "{traceparent}");
        prop_assert!(meta.trace.tracestate().is_none_or(|s| s.len() <= 512));
        let _ = envelope::wants_signals(&message);
        let has_deadline = |h: &HeaderMap| h.get(headers::DEADLINE_IN).is_some() || h.get(headers::DEADLINE_AT).is_some();
        if meta.deadline.is_some() {
            prop_assert!(message.headers.as_ref().is_some_and(has_deadline), "a deadline from nowhere");
        }
    }

    /// Any reply message reads as a signal, a success or a typed error.
    #[test]
    fn any_reply_reads_as_a_part(message in message()) {
        match envelope::read_reply(&message) {
            ReplyPart::Working => prop_assert_eq!(envelope::header(&message, headers::STATUS), Some("working")),
            ReplyPart::Final(Err(error)) => prop_assert!(!error.code().is_empty()),
            ReplyPart::Final(Ok(body)) => prop_assert_eq!(body, &message.payload[..]),
        }
    }

    /// A dead-letter record, whatever its headers hold, reads as a letter
    /// with the payload as stored.
    #[test]
    fn any_dead_letter_record_reads_as_a_letter(message in message(), sequence in any::<u64>()) {
        let letter = crate::transport::DeadLetter::read(sequence, &message);
        prop_assert_eq!(letter.sequence, sequence);
        prop_assert_eq!(&letter.payload[..], &message.payload[..]);
        prop_assert!(!letter.subject.is_empty());
    }

    /// `traceparent`/`tracestate` in any shape: parsed or refused, never a
    /// panic; what parses writes back as itself (version 00) and keeps a
    /// bounded `tracestate`.
    #[test]
    fn any_trace_context_parses_or_is_refused(traceparent in header_value(), tracestate in header_value()) {
        if let Some(trace) = TraceContext::parse(&traceparent, Some(&tracestate)) {
            // Version 00 writes back as itself, but for the flags: only
            // sampled (01) and random (02) are passed on.
            if traceparent.len() == 55 && traceparent.starts_with("00-") {
                let written = trace.traceparent();
                prop_assert_eq!(&written[..53], &traceparent[..53]);
                let flags = u8::from_str_radix(&traceparent[53..], 16).unwrap();
                prop_assert_eq!(&written[53..], format!("{:02x}", flags & 0x03));
            }
            prop_assert!(trace.tracestate().is_none_or(|s| s.len() <= 512 && s.split(',').count() <= 32));
        }
    }

    /// Message ids: any text parses or is refused; every id round-trips.
    #[test]
    fn message_ids_parse_or_are_refused(text in header_value(), id in any::<u128>()) {
        let _ = text.parse::<MessageId>();
        let id = MessageId::from_u128(id);
        prop_assert_eq!(id.to_string().parse::<MessageId>().ok(), Some(id));
    }

    /// A saga's state as read from the store, whatever the bytes: a status,
    /// or an error naming the saga — never a panic.
    #[test]
    fn any_stored_saga_state_reads_or_is_an_error(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[ -~]{0,200}".prop_map(String::into_bytes),
        Just(br#"{"saga":"s","id":"i","status":"running","next":99999999999,"attempts":1,"data":null,"history":[],"error":null}"#.to_vec()),
        Just(br#"{"saga":"s","id":"i","status":"compensating","next":0,"attempts":4294967295,"data":{},"history":[{"step":"x","direction":"forward","error":null,"attempts":1}],"error":"e"}"#.to_vec()),
    ]) {
        let outcome = on_client(async |app| {
            let (key, _) = crate::saga::store::state_key("s", "i");
            app.store().put(&key, crate::store::Expect::Any, &bytes).await.unwrap();
            app.saga_status_by_name("s", "i").await
        });
        match outcome {
            Ok(Some(info)) => prop_assert_eq!(info.saga, "s"),
            Ok(None) => prop_assert!(false, "the state was written"),
            Err(e) => prop_assert!(e.to_string().contains("not readable"), "{e}"),
        }
    }

    /// A scheduled message as read from the store, whatever the bytes or
    /// the subject it names: delivered, due again after a bounded pause
    /// (nobody handles it here), or dropped with an error — never a panic.
    #[test]
    fn any_stored_scheduled_message_is_retried_or_dropped(
        subject in prop_oneof![header_value(), Just("hostile.nobody".to_owned())],
        payload in proptest::collection::vec(any::<u8>(), 0..100),
        raw in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
    ) {
        let id = MessageId::new().to_string();
        let header = serde_json::json!({
            "kind": "send", "subject": subject, "message_id": id, "correlation_id": id,
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "due": 0,
        });
        let item = raw.clone().unwrap_or_else(|| {
            let mut item = serde_json::to_vec(&header).unwrap();
            item.push(b'\n');
            item.extend_from_slice(&payload);
            item
        });
        let next = on_client(async |app| crate::schedule::deliver(app, "item", &item).await);
        match next {
            crate::schedule::Next::Again(pause) => {
                prop_assert!(raw.is_none(), "an unreadable item is dropped, not retried");
                prop_assert!(pause >= std::time::Duration::from_secs(1) && pause <= std::time::Duration::from_secs(60));
            }
            crate::schedule::Next::Done => prop_assert!(raw.is_some() || subject != "hostile.nobody"),
        }
    }

    /// Any payload decodes as the command or is an `invalid` error naming
    /// the subject — never a panic, and an error message of bounded size.
    #[test]
    fn any_payload_decodes_or_is_invalid(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "[ -~]{0,300}".prop_map(String::into_bytes),
        Just(b"{\"id\":\"o\",\"lines\":[[\"a\",4294967296]]}".to_vec()),
        Just(format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes()),
    ]) {
        if let Err(error) = crate::dispatch::decode::<Order>(&bytes) {
            prop_assert_eq!(error.code(), crate::HandlerError::INVALID);
            prop_assert!(error.message().contains("hostile.order") && error.message().len() < 1024, "{}", error.message());
        }
    }
}
