//! Time, read in one place: the [`Clock`] an instance owns. Timeouts,
//! leases, TTLs, backoff pauses (and, later, deadlines and timers) read time
//! through it, so a test — or a test harness — can control it.
//!
//! Two readings:
//! - **monotonic** ([`Clock::now`], [`Clock::sleep`], [`Clock::timeout`]):
//!   tokio's clock, so `tokio::time::pause()` and `advance()` move it in a
//!   test;
//! - **wall clock** ([`Clock::epoch_ms`]): what goes into the store, as
//!   milliseconds since the Unix epoch. [`Clock::system`] reads the system
//!   clock; [`Clock::following_tokio`] starts at the system time and then
//!   moves with tokio's clock, so a paused test controls both readings.
//!
//! ```
//! use std::time::Duration;
//! use catga::Clock;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! tokio::time::pause();
//! let clock = Clock::following_tokio();
//! let (t0, w0) = (clock.now(), clock.epoch_ms());
//! tokio::time::advance(Duration::from_secs(60)).await;
//! assert_eq!(clock.now() - t0, Duration::from_secs(60));
//! assert_eq!(clock.epoch_ms() - w0, 60_000);
//! # }
//! ```

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Where an instance reads time. Cheap to copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    wall: Wall,
}

#[derive(Debug, Clone, Copy, Default)]
enum Wall {
    /// The system's wall clock.
    #[default]
    System,
    /// The system time at `at`, moved on by tokio's clock since then.
    Following { epoch_ms: u64, at: Instant },
}

impl Clock {
    /// The system clock (the default): tokio's monotonic clock and the
    /// system's wall clock.
    pub fn system() -> Clock {
        Clock { wall: Wall::System }
    }

    /// A clock whose wall-clock reading starts at the system time and then
    /// follows tokio's clock, so `tokio::time::pause()`/`advance()` move
    /// both readings together (for tests).
    pub fn following_tokio() -> Clock {
        Clock { wall: Wall::Following { epoch_ms: system_epoch_ms(), at: Instant::now() } }
    }

    /// The monotonic time now (tokio's clock).
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// Milliseconds since the Unix epoch: the form wall-clock times take in
    /// the store.
    pub fn epoch_ms(&self) -> u64 {
        match self.wall {
            Wall::System => system_epoch_ms(),
            Wall::Following { epoch_ms, at } => {
                epoch_ms.saturating_add(u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
            }
        }
    }

    /// The wall-clock time now.
    pub fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.epoch_ms())
    }

    /// Wait for `duration`.
    pub fn sleep(&self, duration: Duration) -> tokio::time::Sleep {
        tokio::time::sleep(duration)
    }

    /// Run `future` for at most `duration`.
    pub fn timeout<F: Future>(&self, duration: Duration, future: F) -> tokio::time::Timeout<F> {
        tokio::time::timeout(duration, future)
    }
}

fn system_epoch_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
