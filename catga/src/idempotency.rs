//! Idempotency: a handler marked `idempotent` (or every handler, with
//! [`Config::idempotent_by_default`](crate::Config::idempotent_by_default))
//! runs at most once per message id, whichever instance each copy reaches.
//!
//! A stage of the pipeline ([`crate::dispatch`]), after validation and
//! before middleware:
//! 1. **Claim** the message id in the store, atomically (one Redis script,
//!    or one lock in memory): exactly one copy wins.
//! 2. The winner runs the handler. On success it records the encoded reply
//!    for [`Config::idempotency_ttl`](crate::Config::idempotency_ttl); on
//!    error it releases the claim, so a retry may run the handler again (a
//!    failed handling is taken to have had no effect).
//! 3. A copy that finds the reply recorded answers with it, without running
//!    the handler. A copy that finds the work running waits for the reply
//!    (up to the request timeout), then answers `in_progress` — never a
//!    second run. A claim whose owner died lapses after the handler timeout
//!    (60 s when none is set), and the next copy runs the handler.
//!
//! What it cannot give: a handler that crashes after its effect but before
//! the reply is recorded runs again on the next copy. Make the effect and
//! the record one write where that matters (e.g. key the effect by
//! [`Context::message_id`](crate::Context::message_id)).
//!
//! Keys: one per message id and receiver, in the message id's scope
//! (`catga:{<message id>}:idem:<subject>:<queue group or instance>:<module>::<handler>`),
//! so two queue groups — or two broadcast subscribers — that receive one
//! event each handle it once.

use std::future::Future;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::codec::CodecError;
use crate::context::Context;
use crate::error::HandlerError;
use crate::registry::HandlerRecord;
use crate::store::{Claim, Key};

/// The code of the answer to a copy whose first handling is still running
/// ([`HandlerError::IN_PROGRESS`]).
pub const IN_PROGRESS: &str = HandlerError::IN_PROGRESS;

/// Between looks at a claim another copy holds.
const CLAIM_POLL: Backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(100));

/// Between tries to record an outcome while the store fails over.
const RECORD_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// The longest recording an outcome is retried (while the claim holds):
/// a store failover takes seconds; a handler timeout of days must not keep
/// a handling retrying for days.
const RECORD_WINDOW: Duration = Duration::from_secs(300);

/// How long a claim lasts when the handler has no timeout.
const DEFAULT_CLAIM: Duration = Duration::from_secs(60);

/// How a reply is kept in the store: its codec's functions.
pub(crate) struct Recorder<R> {
    pub(crate) encode: fn(&R) -> Result<Vec<u8>, CodecError>,
    pub(crate) decode: fn(&[u8]) -> Result<R, CodecError>,
}

/// Whether this handling goes through the idempotency stage.
pub(crate) fn applies(record: &HandlerRecord, ctx: &Context) -> bool {
    record.idempotent.unwrap_or(ctx.instance().config.idempotent_by_default)
}

/// The store key of one receiver's handling of one message id.
pub(crate) fn key(record: &HandlerRecord, ctx: &Context) -> Key {
    let receiver = match record.queue_group(ctx.service()) {
        Some(group) => group,
        None => ctx.instance_id(), // a broadcast subscriber: every instance handles it once
    };
    Key::new(
        ctx.message_id().to_string(),
        format!("idem:{}:{receiver}:{}::{}", record.subject, record.module, record.name),
    )
}

/// Run `handling` unless a copy of this message already ran (or runs) it.
pub(crate) async fn once<R, F>(
    record: &'static HandlerRecord,
    ctx: Context,
    handler_timeout: Option<Duration>,
    recorder: Recorder<R>,
    handling: F,
) -> Result<R, HandlerError>
where
    F: Future<Output = Result<R, HandlerError>>,
{
    let store = ctx.store();
    let key = key(record, &ctx);
    let owner = format!("{}#{:08x}", ctx.instance_id(), fastrand::u32(..));
    let claim_ttl = handler_timeout.unwrap_or(DEFAULT_CLAIM).saturating_add(Duration::from_secs(1));
    let instance = ctx.instance();
    let (wait, clock) = (instance.config.request_timeout, instance.clock);
    let started = clock.now();
    let mut polls = 0;
    loop {
        let claimed = match store.claim(&key, &owner, claim_ttl).await {
            Ok(claimed) => claimed,
            Err(e) => {
                // The claim may have been written (only its confirmation
                // failed): give it back, or every copy would wait it out.
                let _ = store.release(&key, &owner).await;
                return Err(e.into());
            }
        };
        match claimed {
            Claim::Won => break,
            Claim::Done(recorded) => {
                tracing::debug!(key = %key, "idempotent: answered with the recorded reply");
                return (recorder.decode)(&recorded).map_err(|e| {
                    HandlerError::new(
                        HandlerError::INTERNAL,
                        format!(
                            "the reply recorded for message {} on \"{}\" does not decode ({e}); \
                             did the reply type change? It expires after the idempotency TTL",
                            ctx.message_id(),
                            record.subject
                        ),
                    )
                });
            }
            Claim::Running { owner } => {
                if started.elapsed() >= wait {
                    return Err(HandlerError::new(
                        IN_PROGRESS,
                        format!(
                            "message {} on \"{}\" is being handled by {owner}; no reply after {wait:?} — \
                             retry later with the same message id",
                            ctx.message_id(),
                            record.subject
                        ),
                    ));
                }
                polls += 1;
                clock.sleep(CLAIM_POLL.delay(polls)).await;
            }
        }
    }
    let outcome = handling.await;
    let claimed_until = started + claim_ttl.min(RECORD_WINDOW);
    let mut tries = 1;
    let recorded = loop {
        let recorded = match &outcome {
            Ok(reply) => match (recorder.encode)(reply) {
                Ok(bytes) => store.complete(&key, &owner, &bytes, instance.config.idempotency_ttl).await,
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "idempotent: the reply does not encode; not recorded");
                    store.release(&key, &owner).await
                }
            },
            Err(_) => store.release(&key, &owner).await,
        };
        // The effect happened; losing its record to a store failover would
        // let a copy run the handler again. Keep trying while the claim
        // still holds (a store failover takes seconds).
        match recorded {
            Err(e) if clock.now() + RECORD_RETRY.delay(tries) < claimed_until => {
                tracing::debug!(key = %key, error = %e, "idempotent: recording the outcome failed; retrying");
                clock.sleep(RECORD_RETRY.delay(tries)).await;
                tries += 1;
            }
            recorded => break recorded,
        }
    };
    match recorded {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            key = %key,
            "idempotent: the claim lapsed before the handler finished (raise its timeout); a copy may run it again"
        ),
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "idempotent: could not record the outcome; a copy may run it again")
        }
    }
    outcome
}

/// Events and commands keep the same kind of record: events record `()`.
pub(crate) fn unit_recorder() -> Recorder<()> {
    Recorder { encode: |()| Ok(Vec::new()), decode: |_| Ok(()) }
}
