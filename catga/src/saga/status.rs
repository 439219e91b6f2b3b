//! Where a saga is: its status and outcome, its history, what a query
//! shows ([`SagaInfo`]), and the state persisted between steps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, Serializer};

use crate::trace::TraceContext;

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Running its steps forward.
    Running,
    /// A step failed; undoing the completed steps.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed and every completed step was compensated.
    Compensated,
    /// A compensation failed, or a step after the pivot exhausted its
    /// retries: needs an operator. Kept and listed.
    Failed,
}

impl SagaStatus {
    /// Completed, compensated or failed: nothing more will run.
    pub fn is_finished(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed)
    }
}

/// How a saga ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaOutcome {
    /// Every step succeeded.
    Completed,
    /// `error` made a step fail; every completed step was compensated.
    Compensated {
        /// The step's error.
        error: String,
    },
    /// A compensation failed, or a retriable step exhausted its retries.
    Failed {
        /// What failed.
        error: String,
    },
}

/// One line of a saga's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The step.
    pub step: String,
    /// `forward` or `compensate`.
    pub direction: Direction,
    /// `None` on success, else the last error.
    pub error: Option<String>,
    /// Attempts made (over every instance that ran it).
    pub attempts: u32,
}

/// Which way a step ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The step itself.
    Forward,
    /// Its compensation.
    Compensate,
}

/// What an instance publishes when it finishes a saga, on
/// `catga.saga.<name>.ended` (JSON): what
/// [`App::saga_outcome`](crate::App::saga_outcome) waits for, and what any
/// service may handle with an event contract of that subject and these
/// fields. Published once the outcome is stored (at most once more by an
/// instance that finds the saga finished when it takes it over).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaEnded {
    /// The saga's name.
    pub saga: String,
    /// Its id.
    pub id: String,
    /// `completed`, `compensated` or `failed`.
    pub status: SagaStatus,
    /// The error that made it compensate or fail.
    pub error: Option<String>,
}

/// The subject a saga type's [`SagaEnded`] events are published on.
pub fn ended_subject(saga: &str) -> String {
    format!("catga.saga.{saga}.ended")
}

/// A saga's persisted state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct State<D> {
    pub(crate) saga: String,
    pub(crate) id: String,
    pub(crate) status: SagaStatus,
    /// Running: the next step to run. Compensating: steps `[0, next)` are
    /// still to undo, from `next - 1` down.
    pub(crate) next: usize,
    /// Attempts of the step (or compensation) at `next` started so far,
    /// over every instance that ran it.
    pub(crate) attempts: u32,
    /// Those of them that returned an error.
    #[serde(default)]
    pub(crate) failures: u32,
    /// Those of them that returned a transient error (not counted in `failures`).
    #[serde(default)]
    pub(crate) transient: u32,
    /// The last error of the step at `next`.
    #[serde(default)]
    pub(crate) last_error: Option<String>,
    /// The name of the step at `next` (running) or being compensated, so a
    /// build whose step table changed notices instead of running another
    /// step in its place. Absent in states written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) step: Option<String>,
    pub(crate) data: D,
    /// The trace context (`traceparent`) of the span that started the saga:
    /// every step, on whichever instance, is a span of that trace whose
    /// parent is that span. Absent in states written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) traceparent: Option<String>,
    /// Its `tracestate`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tracestate: Option<String>,
    pub(crate) history: Vec<HistoryEntry>,
    pub(crate) error: Option<String>,
    /// When it was created, last written, and finished (epoch ms, read
    /// through the instance's clock). Absent in states written before they
    /// were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) created_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) updated_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) finished_at: Option<u64>,
    /// Past this (epoch ms) the saga stops running forward: it compensates,
    /// or ends `Failed` past its pivot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) deadline_at: Option<u64>,
    /// The definition it runs under ([`SagaDef::path`](crate::saga::SagaDef)):
    /// a build whose definition differs continues it only if what it has
    /// left to do is the same there. Absent in states written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) definition: Option<Vec<String>>,
    /// At a waiting step: when it gives up waiting (epoch ms; `u64::MAX`:
    /// never), set when the saga first reaches the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) wait_until: Option<u64>,
}

impl<D> State<D> {
    /// The span that started the saga, as persisted (`None` in a state
    /// written before it was kept, or one whose header no longer parses).
    pub(crate) fn trace_origin(&self) -> Option<TraceContext> {
        TraceContext::parse(self.traceparent.as_deref()?, self.tracestate.as_deref())
    }

    pub(crate) fn reset_attempts(&mut self) {
        self.attempts = 0;
        self.failures = 0;
        self.transient = 0;
        self.last_error = None;
    }
}

/// What a status query or a listing shows of a saga (serialized as an
/// operator's tool shows it, e.g. `catga saga NAME ID --json`).
#[derive(Debug, Clone, Serialize)]
pub struct SagaInfo {
    /// The saga's name.
    pub saga: String,
    /// Its id.
    pub id: String,
    /// Where it is.
    pub status: SagaStatus,
    /// The step running (forward) or being compensated, if any.
    pub current_step: Option<String>,
    /// Every step and compensation that finished, in order.
    pub history: Vec<HistoryEntry>,
    /// The error that started compensation or failed it.
    pub error: Option<String>,
    /// The data as last persisted (JSON).
    pub data: serde_json::Value,
    /// The state's version in the store (one per write).
    pub version: u64,
    /// When it was started (`None` for a saga started by a build that did
    /// not record it). Serialized as RFC 3339.
    #[serde(serialize_with = "rfc3339")]
    pub created: Option<SystemTime>,
    /// When its state was last written.
    #[serde(serialize_with = "rfc3339")]
    pub updated: Option<SystemTime>,
    /// When it finished, if it has.
    #[serde(serialize_with = "rfc3339")]
    pub finished: Option<SystemTime>,
    /// Its deadline, if it has one: past it, a saga still running forward
    /// compensates (or ends `Failed` past its pivot).
    #[serde(serialize_with = "rfc3339")]
    pub deadline: Option<SystemTime>,
    /// At a waiting step (`current_step`), waiting for its event: parked,
    /// held by no instance.
    pub waiting: bool,
    /// Until when it waits, if its wait is bounded (`within`).
    #[serde(serialize_with = "rfc3339")]
    pub waiting_until: Option<SystemTime>,
}

/// An epoch-milliseconds reading of the store as a time.
pub(crate) fn from_epoch_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn rfc3339<S: Serializer>(time: &Option<SystemTime>, out: S) -> Result<S::Ok, S::Error> {
    // RFC 3339 ends at the year 9999: a time past it (a deadline of
    // millennia) is written as epoch milliseconds instead.
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    match time.map(|t| (t, t.duration_since(UNIX_EPOCH).unwrap_or_default())) {
        Some((t, since)) if since <= LAST => out.collect_str(&humantime::format_rfc3339_millis(t)),
        Some((_, since)) => out.serialize_u64(u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
        None => out.serialize_none(),
    }
}

impl SagaInfo {
    /// The outcome, once finished.
    pub fn outcome(&self) -> Option<SagaOutcome> {
        let error = || self.error.clone().unwrap_or_default();
        match self.status {
            SagaStatus::Completed => Some(SagaOutcome::Completed),
            SagaStatus::Compensated => Some(SagaOutcome::Compensated { error: error() }),
            SagaStatus::Failed => Some(SagaOutcome::Failed { error: error() }),
            SagaStatus::Running | SagaStatus::Compensating => None,
        }
    }
}
