//! The dead-letter stream: every durable message whose last delivery
//! failed, copied with why; listing and replaying them.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use futures_util::StreamExt;

use crate::error::{HandlerError, Result};
use crate::metadata::MessageId;
use crate::registry::HandlerRecord;
use crate::transport::durable::js_error;
use crate::transport::durable::sender::NATS_MSG_ID;
use crate::transport::envelope::{header, headers};

/// The dead-letter stream: every durable message whose last delivery
/// failed, on `catga.dlq.<original subject>`.
pub const DLQ_STREAM: &str = "CATGA_DLQ";
/// Subjects of the dead-letter stream: this prefix + the original subject.
pub const DLQ_PREFIX: &str = "catga.dlq.";

/// Copy the message, with why it failed, to `catga.dlq.<subject>`;
/// returns once the server stored it.
pub(crate) async fn write(
    js: &jetstream::Context,
    record: &'static HandlerRecord,
    message: &jetstream::Message,
    error: &HandlerError,
    delivered: i64,
) -> Result<()> {
    let mut h = message.headers.clone().unwrap_or_default();
    let clean = |s: &str| {
        let mut s = s.replace(['\r', '\n'], " ");
        truncate(&mut s, 1024);
        s
    };
    h.insert(headers::DLQ_REASON, clean(error.message()));
    h.insert(headers::DLQ_CODE, clean(error.code()));
    h.insert(headers::DLQ_HANDLER, format!("{}::{}", record.module, record.name));
    h.insert(headers::ORIGINAL_SUBJECT, record.subject);
    h.insert(headers::DELIVERY_COUNT, delivered.to_string());
    // A fresh deduplication id: the original's would make the dead-letter
    // stream drop a second letter of the same message (another queue
    // group's, another instance's) as a duplicate.
    h.insert(NATS_MSG_ID, MessageId::new().to_string());
    let subject = format!("{DLQ_PREFIX}{}", record.subject);
    let failed = |e: &dyn std::fmt::Display| js_error(record.subject, format!("dead-lettering to {subject}: {e}"));
    let ack = js.publish_with_headers(subject.clone(), h, message.payload.clone()).await.map_err(|e| failed(&e))?;
    ack.await.map(drop).map_err(|e| failed(&e))
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// A message in the dead-letter stream, as [`App::dead_letters`](crate::App::dead_letters) lists it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its sequence in the `CATGA_DLQ` stream (what
    /// [`App::replay_dead_letter`](crate::App::replay_dead_letter) takes).
    pub sequence: u64,
    /// The subject it was sent on.
    pub subject: String,
    /// Its Catga message id.
    pub message_id: Option<MessageId>,
    /// The last error's message.
    pub reason: String,
    /// The last error's code.
    pub code: String,
    /// The handler that failed (`module::function`).
    pub handler: String,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// The payload, as it was sent.
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// A letter as stored in the dead-letter stream: its Catga headers
    /// read back (whatever they hold: a missing or malformed one gives an
    /// empty field, a subject taken from the stream subject, 0 deliveries).
    pub(crate) fn read(sequence: u64, message: &async_nats::Message) -> DeadLetter {
        let get = |name: &str| header(message, name).unwrap_or_default().to_owned();
        DeadLetter {
            sequence,
            subject: header(message, headers::ORIGINAL_SUBJECT)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .unwrap_or_else(|| message.subject.trim_start_matches(DLQ_PREFIX).to_owned()),
            message_id: get(headers::MESSAGE_ID).parse().ok(),
            reason: get(headers::DLQ_REASON),
            code: get(headers::DLQ_CODE),
            handler: get(headers::DLQ_HANDLER),
            deliveries: get(headers::DELIVERY_COUNT).parse().unwrap_or(0),
            payload: message.payload.to_vec(),
        }
    }
}

async fn dead_letter_stream(js: &jetstream::Context) -> Result<Option<jetstream::stream::Stream>> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    match js.get_stream(DLQ_STREAM).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.code() == 404) => Ok(None),
        Err(e) => Err(js_error("catga.dlq", format!("cannot read the dead-letter stream {DLQ_STREAM}: {e}"))),
    }
}

/// One page of a subject's dead letters (see [`App::dead_letters_page`](crate::App::dead_letters_page)).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DeadLetterPage {
    /// The letters, oldest first.
    pub letters: Vec<DeadLetter>,
    /// Where the next page starts (a `from_sequence`), if there may be more.
    pub next: Option<u64>,
}

/// The most letters one page holds, whatever the caller asks for.
pub const MAX_PAGE: usize = 1000;

/// Every dead letter of `subject`, oldest first, read page by page.
pub(crate) async fn dead_letters(js: &jetstream::Context, subject: &str) -> Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    let mut from = 0;
    loop {
        let page = page(js, subject, from, 256).await?;
        letters.extend(page.letters);
        match page.next {
            Some(next) => from = next,
            None => return Ok(letters),
        }
    }
}

/// Up to `limit` (at most [`MAX_PAGE`]) dead letters of `subject`, from DLQ
/// stream sequence `from_sequence` on (0 or 1: the oldest).
pub(crate) async fn page(
    js: &jetstream::Context,
    subject: &str,
    from_sequence: u64,
    limit: usize,
) -> Result<DeadLetterPage> {
    let Some(stream) = dead_letter_stream(js).await? else { return Ok(DeadLetterPage::default()) };
    let failed = |e: &dyn std::fmt::Display| js_error("catga.dlq", format!("listing dead letters of {subject:?}: {e}"));
    // A short-lived consumer that reads the subject's letters without
    // acknowledging anything; the server removes it after 30 s idle.
    let mut consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            filter_subject: format!("{DLQ_PREFIX}{subject}"),
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from_sequence.max(1) },
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| failed(&e))?;
    let pending = consumer.info().await.map_err(|e| failed(&e))?.num_pending;
    let want = usize::try_from(pending).unwrap_or(usize::MAX).min(limit.clamp(1, MAX_PAGE));
    let mut letters = Vec::with_capacity(want);
    if want > 0 {
        let mut batch = consumer
            .batch()
            .max_messages(want)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| failed(&e))?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| failed(&e))?;
            let sequence = message.info().map(|i| i.stream_sequence).map_err(|e| failed(&e))?;
            letters.push(DeadLetter::read(sequence, &message.message));
        }
    }
    let name = consumer.cached_info().name.clone();
    let _ = stream.delete_consumer(&name).await;
    // More may follow when this page is full and the server had more.
    let more = !letters.is_empty() && (letters.len() as u64) < pending;
    let next = if more { letters.last().map(|l| l.sequence + 1) } else { None };
    Ok(DeadLetterPage { letters, next })
}

/// Publish dead letter `sequence` again to its original subject, with its
/// original Catga headers and a fresh `Nats-Msg-Id` (so JetStream's
/// duplicate window does not swallow it), then delete it from the DLQ.
pub(crate) async fn replay(js: &jetstream::Context, sequence: u64) -> Result<()> {
    let failed = |e: &dyn std::fmt::Display| js_error("catga.dlq", format!("replaying dead letter {sequence}: {e}"));
    let Some(stream) = dead_letter_stream(js).await? else {
        return Err(failed(&format!("there is no {DLQ_STREAM} stream (nothing was ever dead-lettered)")));
    };
    let letter = stream.get_raw_message(sequence).await.map_err(|e| failed(&e))?;
    let subject = letter
        .headers
        .get(headers::ORIGINAL_SUBJECT)
        .map(|v| v.as_str().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| letter.subject.trim_start_matches(DLQ_PREFIX).to_owned());
    let dropped = [
        headers::DLQ_REASON,
        headers::DLQ_CODE,
        headers::DLQ_HANDLER,
        headers::ORIGINAL_SUBJECT,
        headers::DELIVERY_COUNT,
        headers::REPLY_TO, // the caller stopped waiting long ago
        NATS_MSG_ID,
    ];
    let mut h = HeaderMap::new();
    for (name, values) in letter.headers.iter() {
        if dropped.iter().any(|d| d.eq_ignore_ascii_case(name.as_ref())) {
            continue;
        }
        for value in values {
            h.append(name.clone(), value.clone());
        }
    }
    h.insert(NATS_MSG_ID, MessageId::new().to_string());
    let ack = js.publish_with_headers(subject.clone(), h, letter.payload).await.map_err(|e| failed(&e))?;
    ack.await.map_err(|e| failed(&format!("{subject}: {e}")))?;
    stream.delete_message(sequence).await.map_err(|e| failed(&e))?;
    Ok(())
}
