//! The Redis store's Lua scripts — one file per script in `scripts/`, each
//! saying its KEYS and ARGV, run after the prelude's helpers — and how their
//! arguments are written and their replies read.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Script;

use super::types::{Expect, Key, StoreError};

const PRELUDE: &str = include_str!("scripts/prelude.lua");

pub(super) struct Scripts {
    pub(super) get: Script,
    pub(super) put: Script,
    pub(super) delete: Script,
    pub(super) incr: Script,
    pub(super) claim: Script,
    pub(super) complete: Script,
    pub(super) release: Script,
    pub(super) acquire_lease: Script,
    pub(super) create_leased: Script,
    pub(super) renew_lease: Script,
    pub(super) release_lease: Script,
    pub(super) take_over_claim: Script,
    pub(super) renew_claim: Script,
    pub(super) beat: Script,
    pub(super) read_beat: Script,
    pub(super) take_over_lease: Script,
    pub(super) timer_put: Script,
    pub(super) timers_due: Script,
    pub(super) timer_take: Script,
    pub(super) timer_end: Script,
    pub(super) timer_cancel: Script,
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
    Scripts {
        get: script(include_str!("scripts/get.lua")),
        put: script(include_str!("scripts/put.lua")),
        delete: script(include_str!("scripts/delete.lua")),
        incr: script(include_str!("scripts/incr.lua")),
        claim: script(include_str!("scripts/claim.lua")),
        complete: script(include_str!("scripts/complete.lua")),
        release: script(include_str!("scripts/release.lua")),
        acquire_lease: script(include_str!("scripts/acquire_lease.lua")),
        create_leased: script(include_str!("scripts/create_leased.lua")),
        renew_lease: script(include_str!("scripts/renew_lease.lua")),
        release_lease: script(include_str!("scripts/release_lease.lua")),
        take_over_claim: script(include_str!("scripts/take_over_claim.lua")),
        renew_claim: script(include_str!("scripts/renew_claim.lua")),
        beat: script(include_str!("scripts/beat.lua")),
        read_beat: script(include_str!("scripts/read_beat.lua")),
        take_over_lease: script(include_str!("scripts/take_over_lease.lua")),
        timer_put: script(include_str!("scripts/timer_put.lua")),
        timers_due: script(include_str!("scripts/timers_due.lua")),
        timer_take: script(include_str!("scripts/timer_take.lua")),
        timer_end: script(include_str!("scripts/timer_end.lua")),
        timer_cancel: script(include_str!("scripts/timer_cancel.lua")),
    }
});

/// The expectation as a script argument: `absent`, `any` or the version.
pub(super) fn expect_arg(expect: Expect) -> String {
    match expect {
        Expect::Absent => "absent".to_owned(),
        Expect::Any => "any".to_owned(),
        Expect::Version(v) => v.to_string(),
    }
}

/// A TTL in whole milliseconds for `PEXPIRE`, rounded up (so a sub-millisecond
/// TTL does not delete at once) and capped where Redis still accepts it.
pub(super) fn millis(ttl: Duration) -> u64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    ms.min(i64::MAX as u128 / 4) as u64
}

/// `{status}` or `{status, value}`.
pub(super) fn reply_parts(reply: &[String]) -> (&str, Option<&str>) {
    match reply {
        [status] => (status.as_str(), None),
        [status, value] => (status.as_str(), Some(value.as_str())),
        _ => ("", None),
    }
}

pub(super) fn number(text: &str, op: &'static str, key: &Key) -> Result<u64, StoreError> {
    text.parse().map_err(|_| unexpected(op, key, &[text.to_owned()]))
}

pub(super) fn unexpected(op: &'static str, key: &Key, reply: &[String]) -> StoreError {
    StoreError::Unavailable {
        op,
        key: key.stored(),
        reason: format!("unexpected reply from Redis: {reply:?}; is another program writing catga:* keys?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_and_stay_in_range() {
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert!(millis(Duration::MAX) < i64::MAX as u64);
    }
}
