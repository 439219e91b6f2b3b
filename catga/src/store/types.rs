//! The store's vocabulary: keys, versioned values, what a write expects,
//! claims, leases and the store's errors. Shared by both backends and by
//! [`crate::error`]; it imports nothing of the crate.

use std::fmt;

/// A key: a scope and a name. Everything in one scope can be updated
/// together atomically (on Redis Cluster: one hash slot).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub(super) scope: String,
    pub(super) name: String,
}

impl Key {
    /// A key `name` in `scope`. Neither may contain `{` or `}` (they would
    /// break the Redis hash tag); they are replaced by `_`.
    pub fn new(scope: impl Into<String>, name: impl Into<String>) -> Self {
        let clean = |s: String| if s.contains(['{', '}']) { s.replace(['{', '}'], "_") } else { s };
        Key { scope: clean(scope.into()), name: clean(name.into()) }
    }

    /// The scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The name within the scope.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key as stored: `catga:{scope}:name` (the braces are a Redis hash tag).
    pub fn stored(&self) -> String {
        // Not `format!`: this is on every store request's path.
        let mut stored = String::with_capacity("catga:{}:".len() + self.scope.len() + self.name.len());
        for part in ["catga:{", &self.scope, "}:", &self.name] {
            stored.push_str(part);
        }
        stored
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "catga:{{{}}}:{}", self.scope, self.name)
    }
}

/// A record's value and version. Versions start at 1 and grow by one per write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The version of this value.
    pub version: u64,
    /// The value.
    pub value: Vec<u8>,
}

/// What a write expects to find: the compare of compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No record yet (create).
    Absent,
    /// The record at exactly this version.
    Version(u64),
    /// Anything (an unconditional write).
    Any,
}

/// The state of an idempotency record after a [`Store::claim`](super::Store::claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller owns the work now: do it, then [`Store::complete`](super::Store::complete) or
    /// [`Store::release`](super::Store::release).
    Won {
        /// The fencing token of this grant: 1 for the first owner of a
        /// running claim, one more at each takeover from an owner judged
        /// dead. An owner that was taken over (a frozen instance resuming)
        /// holds a smaller one, so a store that keeps the largest token it
        /// saw per message id can refuse its late writes.
        fence: u64,
    },
    /// Someone else is doing it right now.
    Running {
        /// Who claimed it.
        owner: String,
    },
    /// It was done; here is the recorded result.
    Done(Vec<u8>),
}

/// An instance's heartbeat as stored ([`Store::beat`](super::Store::beat)):
/// a counter its owner raises every beat, and whether it stopped cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// The owner's beat count (only its change matters: it shows the owner
    /// reached the store since the last look).
    pub count: u64,
    /// The owner shut down cleanly and beats no more: whatever it held may
    /// be taken over at once.
    pub gone: bool,
}

/// The answer of [`Store::take_over_lease`](super::Store::take_over_lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Takeover {
    /// The lease is the caller's now, with a new fencing token.
    Taken(Lease),
    /// Someone else (not the instance taken over from) holds it.
    Held {
        /// Who holds it.
        owner: String,
    },
}

/// The sets a record's last write moves it between
/// ([`Store::put_fenced_and_release`](super::Store::put_fenced_and_release)):
/// each `(set, member)` of `entering` is added, then each of `leaving`
/// removed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sets<'a> {
    /// Sets the record enters (each gets its member first).
    pub entering: &'a [(&'a Key, &'a str)],
    /// Sets it leaves.
    pub leaving: &'a [(&'a Key, &'a str)],
}

/// A held lease. `token` is its fencing token: it grows with every grant of
/// the lease, so a write carrying a smaller one comes from a holder that was
/// superseded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// What is leased.
    pub key: Key,
    /// Who holds it.
    pub owner: String,
    /// The fencing token of this grant.
    pub token: u64,
}

/// What [`Store::create_leased`](super::Store::create_leased) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The record is written at version 1, under this lease.
    Written(Lease),
    /// The record exists (untouched, the lease too).
    Exists,
    /// Someone else holds the lease (nothing written).
    Held,
}

/// What went wrong in the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A compare-and-set found another version.
    #[error(
        "version conflict on {key}: expected {expected:?}, found {found:?}; another writer got there first — \
         read the record again and retry"
    )]
    Conflict {
        /// The record.
        key: String,
        /// What the write expected.
        expected: Expect,
        /// The version found (`None`: no record).
        found: Option<u64>,
    },
    /// A fenced write carried a token that is no longer the latest grant.
    #[error(
        "write to {key} refused: lease {lease} was granted again (token {current}) after this holder's token \
         {token}; this instance lost the lease and must stop working on it"
    )]
    Fenced {
        /// The record.
        key: String,
        /// The lease.
        lease: String,
        /// The writer's token.
        token: u64,
        /// The latest token granted.
        current: u64,
    },
    /// The lease and the record are in different scopes (so the store could
    /// not check them atomically on Redis Cluster).
    #[error("lease {lease} cannot fence a write to {key}: they are in different scopes; keep them in one scope")]
    ScopeMismatch {
        /// The record.
        key: String,
        /// The lease.
        lease: String,
    },
    /// The store could not be reached or refused the operation.
    #[error("store unavailable during {op} on {key}: {reason}")]
    Unavailable {
        /// The operation.
        op: &'static str,
        /// The key involved.
        key: String,
        /// What the store or connection said.
        reason: String,
    },
}

/// An item of a timer queue that is due (or whose taker's taking lapsed),
/// as [`Store::timers_due`](super::Store::timers_due) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The item's id.
    pub id: String,
    /// When it is due (epoch ms) — or, for a lapsed taking, when that
    /// lapsed. Pass it to [`Store::timer_take`](super::Store::timer_take).
    pub at: u64,
}
