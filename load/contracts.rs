//! The bench service's contracts, shared by the service (`catga-load-service`)
//! and the load generator's clients (`catga-load client`), as two services
//! would share a contracts crate. Only contracts here: the handlers live in
//! the service binary, so a client process links none.

use catga::prelude::*;

/// Subject of the raw async-nats baseline's responders (same payload).
pub const RAW_SUBJECT: &str = "load.raw";

/// Echo: the reply is the request. Its JSON is exactly 128 bytes (the
/// payload of `benches/nats.rs`), and the raw baseline sends the same bytes.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "load.echo", reply = Blob)]
pub struct Blob {
    /// 117 `x`.
    pub data: String,
}

impl Blob {
    /// The 128-byte request.
    pub fn new() -> Blob {
        Blob { data: "x".repeat(117) }
    }
}

impl Default for Blob {
    fn default() -> Self {
        Blob::new()
    }
}

/// I/O-bound work: the handler sleeps `sleep_ms`, then answers `n`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "load.io", reply = u64)]
pub struct Io {
    /// Echoed back.
    pub n: u64,
    /// How long the handler waits (a timer, no CPU).
    pub sleep_ms: u64,
}

/// CPU-bound work: the handler runs [`burn`] for `rounds`, then answers
/// its result.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "load.cpu", reply = u64)]
pub struct Cpu {
    /// The seed of the computation.
    pub n: u64,
    /// Rounds of [`burn`].
    pub rounds: u64,
}

/// Idempotent command (Redis store): one claim and one completion script
/// around a handler that answers `n`.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "load.idem", reply = u64)]
pub struct Idem {
    /// Echoed back.
    pub n: u64,
}

/// Run a 3-step saga with this id on the instance that gets the command,
/// to its end; the reply is its outcome (`completed`, ...). A retried copy
/// (same id) waits for the same saga instead of starting a second one.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "load.saga.run", reply = String)]
pub struct RunSaga {
    /// The saga id (unique per request).
    pub id: String,
    /// The first step's command waits this long (0: not at all); the
    /// cost probe uses it to keep sagas running.
    pub hold_ms: u64,
}

/// Store a 3-step saga and return at once (`submit_saga`); it runs in the
/// background. The reply says whether it was new.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "load.saga.submit", reply = bool)]
pub struct SubmitSaga {
    /// The saga id.
    pub id: String,
    /// As in [`RunSaga`].
    pub hold_ms: u64,
}

/// Which instance answered (readiness: every instance is reachable).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[catga(subject = "load.whoami", reply = String)]
pub struct WhoAmI;

/// An event every instance receives (broadcast): the fan-out cost probe.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[catga(subject = "load.noted")]
pub struct Noted {
    /// A counter.
    pub n: u64,
}

/// Deterministic CPU work: `rounds` rounds of 1 000 steps of a 64-bit
/// xorshift-multiply mix, kept from being optimised away.
pub fn burn(seed: u64, rounds: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..rounds {
        for _ in 0..1_000 {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        }
        x = std::hint::black_box(x);
    }
    x
}
