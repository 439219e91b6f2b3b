//! Pacing finer than tokio's 1 ms timer: a dedicated OS thread sleeps with
//! `std::thread::sleep` (a high-resolution `clock_nanosleep`) to just
//! before each deadline and spins (yielding the CPU) for the rest.
//!
//! Linux lets a sleep end up to the thread's *timer slack* late (50 µs by
//! default); [`reduce_timer_slack`] sets it to 1 ns for this process's
//! threads, so the spin stays short. What remains of the error is measured
//! (the pacer records how late it handed each request over) and reported.

use std::time::{Duration, Instant};

/// The last stretch before a deadline is spun rather than slept.
const SPIN: Duration = Duration::from_micros(20);

/// Set this thread's timer slack to 1 ns (`/proc/self/timerslack_ns`;
/// threads started afterwards inherit it). Returns the value now in force,
/// or `None` where the kernel does not offer it.
pub fn reduce_timer_slack() -> Option<u64> {
    let path = "/proc/self/timerslack_ns";
    let _ = std::fs::write(path, "1");
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok())
}

/// Wait until `deadline`: sleep until [`SPIN`] before it, then spin.
pub fn wait_until(deadline: Instant) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > SPIN {
            std::thread::sleep(left - SPIN);
        } else {
            std::thread::yield_now();
        }
    }
}

/// The open-loop schedule: `count` requests at `rate` per second from
/// `t0`, request `i` due at `t0 + i / rate`. Calls `dispatch(i, due, now)`
/// for each, in order, as soon as it is due — several at once if the
/// pacer woke late, never skipping one (a late request keeps its intended
/// time, so its latency counts from it: no coordinated omission).
pub fn open_loop(t0: Instant, rate: f64, count: u64, mut dispatch: impl FnMut(u64, Instant, Instant)) {
    let due = |i: u64| t0 + Duration::from_nanos((i as f64 * 1e9 / rate) as u64);
    let mut i = 0;
    while i < count {
        wait_until(due(i));
        let now = Instant::now();
        while i < count && due(i) <= now {
            dispatch(i, due(i), now);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_is_dispatched_once_in_order_and_not_early() {
        let t0 = Instant::now();
        let mut seen = Vec::new();
        open_loop(t0, 20_000.0, 200, |i, due, now| {
            assert!(now >= due);
            seen.push(i);
        });
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
    }
}
