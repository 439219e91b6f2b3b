//! Logs: the subscriber [`Catga::run`](crate::Catga::run) installs when the
//! program has none, and the rate limit on repeated failure lines.
//!
//! - **The default subscriber**: `tracing-subscriber`'s formatter on
//!   standard error, filtered by `RUST_LOG` (`info` when unset), plain text
//!   or one JSON object per line (`CATGA_LOG_FORMAT=json`). A program that
//!   installed its own subscriber keeps it.
//! - **Failures are logged where they happen**, at `warn`: a failing
//!   handling on the instance that ran it (the pipeline), a message refused
//!   before its handler (undecodable, past its deadline) by the transport
//!   that refused it, a send that gave up on the sender. A storm of the
//!   same failure is one line per [`WINDOW`] per place and kind, the next
//!   line saying how many were not logged — counted, never dropped
//!   silently (what is still counted at shutdown is logged then).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LogFormat;

mod fields;

/// At most one line per place and kind of failure per window.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// Install the default subscriber unless the program has one. Returns
/// whether it was installed.
pub fn install_default(format: LogFormat) -> bool {
    use tracing_subscriber::EnvFilter;
    if tracing::dispatcher::has_been_set() {
        return false;
    }
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    #[cfg(feature = "otel")]
    if let Some(installed) = with_otel(format, filter()) {
        return installed;
    }
    let filter = filter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .fmt_fields(fields::PlainFields);
    let installed = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.is_ok()
}

/// The default subscriber with OpenTelemetry export too, when an
/// `OTEL_EXPORTER_OTLP_*ENDPOINT` variable asks for it (`None` otherwise,
/// or when the exporter cannot be made: the error is printed and spans are
/// not exported).
#[cfg(feature = "otel")]
fn with_otel(format: LogFormat, filter: tracing_subscriber::EnvFilter) -> Option<bool> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let otel = match crate::otel::layer_from_env::<tracing_subscriber::Registry>() {
        Ok(otel) => otel?,
        Err(e) => {
            eprintln!("catga: {e}; spans are not exported");
            return None;
        }
    };
    let fmt = || {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false).fmt_fields(fields::PlainFields)
    };
    let registry = tracing_subscriber::registry().with(otel).with(filter);
    let installed = match format {
        LogFormat::Plain => registry.with(fmt()).try_init(),
        LogFormat::Json => registry.with(fmt().json()).try_init(),
    };
    Some(installed.is_ok())
}

/// Counts failures per place and kind; lets one line per [`WINDOW`] through.
#[derive(Default)]
pub(crate) struct Limiter {
    seen: Mutex<HashMap<(&'static str, String), Window>>,
}

struct Window {
    logged_at: Instant,
    suppressed: u64,
}

/// What the limiter says about one failure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Log it; `suppressed` like it were not logged since the last line.
    Log { suppressed: u64 },
    /// Counted; do not log it now.
    Counted,
}

impl Limiter {
    /// One failure of `kind` at `place`, at `now`.
    pub(crate) fn check(&self, place: &'static str, kind: &str, now: Instant) -> Verdict {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(&(place, kind.to_owned())) {
            Some(window) if now.duration_since(window.logged_at) < WINDOW => {
                window.suppressed += 1;
                Verdict::Counted
            }
            Some(window) => {
                let suppressed = std::mem::take(&mut window.suppressed);
                window.logged_at = now;
                Verdict::Log { suppressed }
            }
            None => {
                seen.insert((place, kind.to_owned()), Window { logged_at: now, suppressed: 0 });
                Verdict::Log { suppressed: 0 }
            }
        }
    }

    /// Take every count not logged yet: (place, kind, count).
    pub(crate) fn drain(&self) -> Vec<(&'static str, String, u64)> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let pending = seen
            .iter_mut()
            .filter(|(_, w)| w.suppressed > 0)
            .map(|((place, kind), w)| (*place, kind.clone(), std::mem::take(&mut w.suppressed)))
            .collect();
        seen.retain(|_, w| w.logged_at.elapsed() < WINDOW);
        pending
    }
}

/// The process's limiter: failure lines of every instance in it.
pub(crate) fn limiter() -> &'static Limiter {
    static LIMITER: std::sync::OnceLock<Limiter> = std::sync::OnceLock::new();
    LIMITER.get_or_init(Limiter::default)
}

/// Log a failure at `warn` through the process's limiter: `place` names
/// where (a handler, a subject), `kind` what (an error code).
macro_rules! warn_limited {
    ($place:expr, $kind:expr, $($field:tt)*) => {
        match $crate::logging::limiter().check($place, $kind, std::time::Instant::now()) {
            $crate::logging::Verdict::Log { suppressed: 0 } => tracing::warn!($($field)*),
            $crate::logging::Verdict::Log { suppressed } => {
                tracing::warn!(suppressed, $($field)*)
            }
            $crate::logging::Verdict::Counted => {}
        }
    };
}
pub(crate) use warn_limited;

/// Log what the limiter still counts (at shutdown: nothing goes unsaid).
pub(crate) fn flush() {
    for (place, kind, count) in limiter().drain() {
        tracing::warn!(place, kind, count, "failures not logged one by one (rate limit: one line per second)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_then_the_count_of_what_was_not_logged() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.check("h", "boom", t0), Verdict::Log { suppressed: 0 });
        assert_eq!(limiter.check("h", "boom", t0 + WINDOW / 4), Verdict::Counted);
        assert_eq!(limiter.check("h", "boom", t0 + WINDOW / 2), Verdict::Counted);
        // Another kind or place has its own window.
        assert_eq!(limiter.check("h", "other", t0 + WINDOW / 2), Verdict::Log { suppressed: 0 });
        assert_eq!(limiter.check("g", "boom", t0 + WINDOW / 2), Verdict::Log { suppressed: 0 });
        assert_eq!(limiter.check("h", "boom", t0 + WINDOW), Verdict::Log { suppressed: 2 });
        assert_eq!(limiter.check("h", "boom", t0 + WINDOW + WINDOW / 2), Verdict::Counted);
        let pending = limiter.drain();
        assert_eq!(pending, vec![("h", "boom".to_owned(), 1)], "what is still counted is handed over");
        assert!(limiter.drain().is_empty(), "once");
    }
}
