//! What to do with a durable message after a handling: a pure function of
//! the outcome, the delivery count and the settings, so every rule is
//! unit-tested without a server. The consumer loop carries it out.

use std::time::Duration;

use crate::error::HandlerError;
use crate::transport::durable::topology::Settings;

/// The fate of a delivery that failed. (A handled one is simple: reply,
/// then acknowledge.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Failed, deliveries left: negative-ack, redelivered after `delay`.
    Retry {
        /// How long the server waits before redelivering.
        delay: Duration,
    },
    /// Another copy is still running (`in_progress`): not a failure of this
    /// delivery; look again after `ack_wait`.
    Later {
        /// How long the server waits before redelivering.
        delay: Duration,
    },
    /// Out of deliveries, or retrying cannot help: copy to the dead-letter
    /// stream, send the error reply, terminate.
    DeadLetter,
}

/// Before running: a message delivered more often than the settings allow
/// for unfinished deliveries (it crashed every instance that ran it, or was
/// handed back over and over) is failed with [`HandlerError::NOT_FINISHED`]
/// and not run again.
pub(crate) fn refuse_before_running(delivered: i64, settings: &Settings) -> Option<HandlerError> {
    (delivered > settings.unfinished_limit()).then(|| {
        HandlerError::new(
            HandlerError::NOT_FINISHED,
            format!("{} deliveries did not finish (the instances handling it died or shut down)", delivered - 1),
        )
    })
}

/// The `delivered`-th delivery failed with error code `code`.
pub(crate) fn after_failure(code: &str, delivered: i64, settings: &Settings) -> Decision {
    if code == HandlerError::IN_PROGRESS {
        return Decision::Later { delay: settings.ack_wait };
    }
    let hopeless = [HandlerError::INVALID, HandlerError::NOT_FINISHED, HandlerError::DEADLINE].contains(&code);
    if hopeless || delivered >= i64::from(settings.max_deliver) {
        return Decision::DeadLetter;
    }
    Decision::Retry { delay: settings.nak_delay(delivered) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_deliver: u32) -> Settings {
        Settings {
            ack_wait: Duration::from_secs(30),
            max_deliver,
            event_max_age: Duration::from_secs(60),
            max_in_flight: 8,
        }
    }

    #[test]
    fn a_failure_with_deliveries_left_is_retried_with_a_growing_delay() {
        let s = settings(5);
        assert_eq!(after_failure("boom", 1, &s), Decision::Retry { delay: Duration::from_millis(100) });
        assert_eq!(after_failure("boom", 3, &s), Decision::Retry { delay: Duration::from_millis(400) });
    }

    #[test]
    fn the_last_delivery_is_dead_lettered() {
        assert_eq!(after_failure("boom", 5, &settings(5)), Decision::DeadLetter);
        assert_eq!(after_failure("boom", 1, &settings(1)), Decision::DeadLetter);
    }

    #[test]
    fn invalid_and_unfinished_messages_are_dead_lettered_at_once() {
        let s = settings(5);
        assert_eq!(after_failure(HandlerError::INVALID, 1, &s), Decision::DeadLetter);
        assert_eq!(after_failure(HandlerError::NOT_FINISHED, 1, &s), Decision::DeadLetter);
    }

    #[test]
    fn in_progress_is_not_a_failure_and_never_dead_lettered() {
        let s = settings(2);
        assert_eq!(after_failure(HandlerError::IN_PROGRESS, 7, &s), Decision::Later { delay: s.ack_wait });
    }

    #[test]
    fn a_message_that_never_finished_is_refused_after_three_times_max_deliver() {
        let s = settings(2);
        assert!(refuse_before_running(6, &s).is_none());
        let refused = refuse_before_running(7, &s).expect("refused");
        assert_eq!(refused.code(), HandlerError::NOT_FINISHED);
        assert!(refused.message().starts_with("6 deliveries"), "{}", refused.message());
    }
}
