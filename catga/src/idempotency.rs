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
//!    (up to its caller's deadline), then answers `in_progress` — never a
//!    second run while the owner lives.
//! 4. **A claim follows its owner's life.** The claim names its owner's
//!    instance (`<instance id>#<random>`). While a copy waits, it watches
//!    that instance's heartbeat ([`crate::liveness`]); once the owner is
//!    judged dead (its beat did not change for
//!    [`Config::heartbeat_timeout`](crate::Config::heartbeat_timeout), 1 s by
//!    default, read successfully throughout — a store failover never
//!    counts) the copy takes the claim over with a compare-and-swap in the
//!    claim's own slot ("if it is still that owner's, make it mine") and
//!    runs the handler (an owner never seen beating — a build from before
//!    heartbeats — is left to the claim's TTL). A live owner's claim is
//!    never taken, however long its handler runs: the claim's own TTL
//!    ([`CLAIM_TTL`], or the handler timeout if longer) is only a last
//!    resort, renewed by the owner every third of it while a long handling
//!    runs. An owner whose claim was taken (an instance frozen longer than
//!    the window, resuming) finds its record refused and logs a warning:
//!    its effect may repeat the copy's.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::backoff::Backoff;
use crate::codec::CodecError;
use crate::context::Context;
use crate::error::HandlerError;
use crate::liveness::{Judge, beat_key, instance_of};
use crate::registry::HandlerRecord;
use crate::store::{Claim, Key};

/// The code of the answer to a copy whose first handling is still running
/// ([`HandlerError::IN_PROGRESS`]).
pub const IN_PROGRESS: &str = HandlerError::IN_PROGRESS;

/// Between looks at a claim another copy holds.
const CLAIM_POLL: Backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(100));

/// Between tries to record an outcome while the store fails over.
const RECORD_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// The longest recording an outcome is retried (the claim is renewed
/// meanwhile): long enough to ride out a store failover (a Redis Cluster
/// promotes a replica within seconds).
const RECORD_WINDOW: Duration = Duration::from_secs(30);

/// How long a claim lasts unless renewed (the handler timeout plus a second
/// when that is longer): a last resort only — a dead owner's claim is taken
/// over once the owner is judged dead by its heartbeat, long before.
pub const CLAIM_TTL: Duration = Duration::from_secs(60);

/// How often a copy waiting on a claim reads the owner's heartbeat.
const LOOK_EVERY: Duration = Duration::from_millis(100);

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
    Key::new(ctx.message_id().to_string(), format!("idem:{}", receiver(record, ctx)))
}

/// Who handles a message once: `subject:group-or-instance:module::handler`
/// (a broadcast subscriber's instance handles it once; a queue group, once
/// among its members).
pub(crate) fn receiver(record: &HandlerRecord, ctx: &Context) -> String {
    let receiver = match record.queue_group(ctx.service()) {
        Some(group) => group,
        None => ctx.instance_id(),
    };
    format!("{}:{receiver}:{}::{}", record.subject, record.module, record.name)
}

/// Run `handling` unless a copy of this message already ran (or runs) it.
pub(crate) async fn once<R, F>(
    record: &'static HandlerRecord,
    ctx: Context,
    fence: Arc<AtomicU64>,
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
    let instance = ctx.instance();
    let claim_ttl = handler_timeout.map_or(CLAIM_TTL, |t| t.saturating_add(Duration::from_secs(1)).max(CLAIM_TTL));
    let (wait, clock) = (wait_limit(&ctx), instance.clock);
    let started = clock.now();
    let mut polls = 0;
    let mut judge = Judge::new(instance.config.heartbeat_timeout, LOOK_EVERY);
    let mut last_look = None;
    // Only an owner seen beating is judged: one that never beat (a build
    // from before heartbeats, during an upgrade) is left to the claim's TTL.
    let mut beating = false;
    // The owner judged dead, whose claim the next try takes over.
    let mut dead: Option<String> = None;
    loop {
        let claimed = match &dead {
            None => store.claim(&key, &owner, claim_ttl).await,
            Some(dead) => store.take_over_claim(&key, dead, &owner, claim_ttl).await,
        };
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(e) => {
                // The claim may have been written (only its confirmation
                // failed): give it back, or every copy would wait it out.
                let _ = store.release(&key, &owner).await;
                return Err(e.into());
            }
        };
        match claimed {
            Claim::Won { fence: granted } => {
                // The handler reads it through its `Context`.
                fence.store(granted, Ordering::Release);
                if let Some(dead) = dead {
                    tracing::warn!(
                        key = %key,
                        owner = dead,
                        "idempotent: took over the claim of an instance judged dead (its heartbeat stopped); \
                         running the handler here"
                    );
                }
                break;
            }
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
            Claim::Running { owner: held } => {
                dead = None;
                if started.elapsed() >= wait {
                    return Err(HandlerError::new(
                        IN_PROGRESS,
                        format!(
                            "message {} on \"{}\" is being handled by {held}; no reply after {wait:?} — \
                             retry later with the same message id",
                            ctx.message_id(),
                            record.subject
                        ),
                    ));
                }
                // Watch the owner's heartbeat (not our own instance's: that
                // one is alive, it is running this).
                let held_by = instance_of(&held);
                if held_by != ctx.instance_id()
                    && last_look.is_none_or(|at: tokio::time::Instant| at.elapsed() >= LOOK_EVERY)
                {
                    let read = store.read_beat(&beat_key(held_by)).await;
                    last_look = Some(clock.now());
                    beating |= matches!(read, Ok(Some(_)));
                    if judge.look(held_by, &read, clock.now()) && beating {
                        dead = Some(held);
                        continue;
                    }
                }
                polls += 1;
                // Never past the wait limit: the answer must reach the
                // caller before its deadline.
                let left = wait.saturating_sub(started.elapsed());
                clock.sleep(CLAIM_POLL.delay(polls).min(left)).await;
            }
        }
    }
    // Renewed while the handling (and the recording of its outcome) runs:
    // a handling longer than a third of the claim's TTL renews it, on a
    // task of its own; a fast one writes nothing more.
    let renewing = Renewal::start(&ctx, &key, &owner, claim_ttl);
    let outcome = handling.await;
    let recording_since = clock.now();
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
        // let a copy run the handler again. Keep trying (the claim is
        // renewed meanwhile) for as long as a store failover takes.
        match recorded {
            Err(e) if recording_since.elapsed() + RECORD_RETRY.delay(tries) < RECORD_WINDOW => {
                tracing::debug!(key = %key, error = %e, "idempotent: recording the outcome failed; retrying");
                clock.sleep(RECORD_RETRY.delay(tries)).await;
                tries += 1;
            }
            recorded => break recorded,
        }
    };
    drop(renewing);
    match recorded {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            key = %key,
            "idempotent: this handling's claim was taken over before it finished (this instance was judged dead: \
             its heartbeat did not reach the store for over the liveness timeout, e.g. it was frozen); a copy ran \
             the handler too, and its reply is the recorded one"
        ),
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "idempotent: could not record the outcome; a copy may run it again")
        }
    }
    outcome
}

/// How long a copy waits for a running claim's outcome before answering
/// `in_progress`: the one place the limit is computed. Within its caller's
/// deadline (a tenth of it kept, so the answer arrives before the caller
/// gives up); with no deadline (an event, a plain NATS request), the
/// request timeout. Meanwhile the copy's own caller gets signs of life:
/// the copy is a handling like any other.
fn wait_limit(ctx: &Context) -> Duration {
    match ctx.remaining() {
        Some(left) => left.saturating_sub(left / 10),
        None => ctx.instance().config.request_timeout,
    }
}

/// Renews a claim every third of its TTL on a task of its own (so a handler
/// that keeps the runtime's worker busy does not stop it); stops when
/// dropped. Nothing is written for a handling shorter than that.
struct Renewal(tokio::task::JoinHandle<()>);

impl Renewal {
    fn start(ctx: &Context, key: &Key, owner: &str, ttl: Duration) -> Renewal {
        let (store, clock) = (ctx.store().clone(), ctx.instance().clock);
        let (key, owner) = (key.clone(), owner.to_owned());
        Renewal(tokio::spawn(async move {
            loop {
                clock.sleep(ttl / 3).await;
                match store.renew_claim(&key, &owner, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(key = %key, "idempotent: the claim was taken over by another copy");
                        return;
                    }
                    // The next renewal may reach the store (a failover).
                    Err(e) => tracing::debug!(key = %key, error = %e, "idempotent: renewing the claim failed"),
                }
            }
        }))
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Events and commands keep the same kind of record: events record `()`.
pub(crate) fn unit_recorder() -> Recorder<()> {
    Recorder { encode: |()| Ok(Vec::new()), decode: |_| Ok(()) }
}
