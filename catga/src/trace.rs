//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the
//! [`TraceContext`] every message carries in its [`Metadata`](crate::Metadata),
//! sent as the `traceparent` and `tracestate` headers (`docs/WIRE.md`).
//!
//! A context names one span: the trace it belongs to, its own span id, its
//! parent's, the trace flags and the vendors' `tracestate`. Every hop gets a
//! span of its own ([`TraceContext::child`]): a send or publish is a span
//! whose parent is the handling (or saga step) it was made from, and the
//! handling of a delivered message is a span whose parent is that send.
//!
//! ```
//! use catga::TraceContext;
//! let sent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("congo=t61rcWkgMzE"))
//!     .expect("a valid traceparent");
//! let handling = sent.child();
//! assert_eq!(handling.trace_id(), sent.trace_id());
//! assert_eq!(handling.parent_span_id(), Some(sent.span_id()));
//! assert_eq!(handling.tracestate(), Some("congo=t61rcWkgMzE"));
//! assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None).is_none());
//! ```

use std::fmt;
use std::num::NonZeroU64;
use std::sync::Arc;

/// The longest `tracestate` kept, in bytes: the 512 characters the W3C
/// specification asks every vendor to propagate at least. A longer one is
/// cut as the specification says (members over 128 characters first, then
/// from the end); so is one with more than [`TRACESTATE_MEMBERS`] members.
pub const TRACESTATE_MAX: usize = 512;

/// The most `tracestate` list members kept (the specification's limit).
pub const TRACESTATE_MEMBERS: usize = 32;

/// The only `traceparent` version this crate writes.
const VERSION: u8 = 0;
/// The flag bits defined so far: `sampled` (01) and, in level 2, `random` (02).
const KNOWN_FLAGS: u8 = 0x03;
/// The `sampled` flag: the only one a future version's header is read for.
const SAMPLED: u8 = 0x01;
/// The length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// A 16-byte trace id, never all zeros; shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId {
    // Two halves rather than a `u128`: 8-byte alignment keeps the metadata small.
    hi: u64,
    lo: u64,
}

impl TraceId {
    /// The id as a number (never zero).
    pub const fn as_u128(self) -> u128 {
        ((self.hi as u128) << 64) | self.lo as u128
    }

    /// A trace id from a number; `None` for zero (an invalid trace id).
    pub const fn from_u128(v: u128) -> Option<Self> {
        if v == 0 { None } else { Some(TraceId { hi: (v >> 64) as u64, lo: v as u64 }) }
    }

    /// A fresh random trace id.
    pub fn random() -> Self {
        loop {
            if let Some(id) = TraceId::from_u128(fastrand::u128(..)) {
                return id;
            }
        }
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex::<32>(f, self.as_u128())
    }
}

/// Write the last `N` hex digits of `value`, lowercase and zero-padded —
/// what `{:0Nx}` writes, in one `write_str` of a stack buffer: ids are
/// formatted for every message (headers, `traceparent`, log fields), and
/// `core::fmt`'s integer formatting with padding costs ~10 times as much.
pub(crate) fn write_hex<const N: usize>(f: &mut fmt::Formatter<'_>, value: u128) -> fmt::Result {
    f.write_str(Hex::<N>::of(value).as_str())
}

/// The last `N` hex digits of a number, lowercase and zero-padded, on the
/// stack (see [`write_hex`]).
pub(crate) struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    pub(crate) fn of(value: u128) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; N];
        let mut rest = value;
        for digit in out.iter_mut().rev() {
            *digit = DIGITS[(rest & 0xf) as usize];
            rest >>= 4;
        }
        Hex(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Always ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An 8-byte span id, never all zeros; shown as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(NonZeroU64);

impl SpanId {
    /// The id as a number (never zero).
    pub const fn as_u64(self) -> u64 {
        self.0.get()
    }

    /// A span id from a number; `None` for zero (an invalid span id).
    pub const fn from_u64(v: u64) -> Option<Self> {
        match NonZeroU64::new(v) {
            Some(v) => Some(SpanId(v)),
            None => None,
        }
    }

    /// A fresh random span id.
    pub fn random() -> Self {
        loop {
            if let Some(id) = SpanId::from_u64(fastrand::u64(..)) {
                return id;
            }
        }
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex::<16>(f, u128::from(self.as_u64()))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The W3C trace context of one span: a send, a publish, a handling or a
/// saga step. See the [module documentation](self).
///
/// Cloning is cheap: the ids are inline and `tracestate`, when there is
/// one, is shared (`Arc<str>`), not copied.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    flags: u8,
    state: Option<Arc<str>>,
}

impl TraceContext {
    /// The first span of a new trace (sampled, no parent, no tracestate).
    pub fn root(trace_id: TraceId) -> Self {
        TraceContext { trace_id, span_id: SpanId::random(), parent_span_id: None, flags: SAMPLED, state: None }
    }

    /// A new span of the same trace whose parent is this one (a fresh span
    /// id; flags and tracestate kept).
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent_span_id: Some(self.span_id),
            flags: self.flags,
            state: self.state.clone(),
        }
    }

    /// The context a `traceparent` header names (the sender's span; its
    /// parent is not on the wire), with its `tracestate` if any.
    ///
    /// Strict, as the specification says: two lowercase hex digits of
    /// version (`ff` is invalid), then trace id (32), parent id (16) and
    /// flags (2), dash-separated, lowercase hex; neither id all zeros.
    /// Version `00` is exactly 55 characters; a higher (future) version may
    /// be longer, continuing with `-`, and only its sampled flag is read.
    /// `None` for anything else: the receiver then starts a new trace, and
    /// the `tracestate` is ignored with it.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let b = traceparent.trim_matches([' ', '\t']).as_bytes();
        if b.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex(&b[0..2])? as u8;
        let dashes = b[2] == b'-' && b[35] == b'-' && b[52] == b'-';
        if version == 0xff || !dashes {
            return None;
        }
        match (version, b.get(TRACEPARENT_LEN)) {
            (VERSION, Some(_)) => return None,
            (_, Some(&c)) if c != b'-' => return None,
            _ => {}
        }
        let trace_id = TraceId::from_u128(hex(&b[3..35])?)?;
        let span_id = SpanId::from_u64(hex(&b[36..52])? as u64)?;
        let flags = hex(&b[53..55])? as u8;
        let flags = if version == VERSION { flags & KNOWN_FLAGS } else { flags & SAMPLED };
        Some(TraceContext { trace_id, span_id, parent_span_id: None, flags, state: tracestate.and_then(bounded_state) })
    }

    /// The `traceparent` header of this span: `00-{trace id}-{span id}-{flags}`.
    pub fn traceparent(&self) -> String {
        // Pieces on the stack into one allocation: this goes on every
        // message sent.
        let mut out = String::with_capacity(TRACEPARENT_LEN);
        out.push_str(Hex::<2>::of(u128::from(VERSION)).as_str());
        out.push('-');
        out.push_str(Hex::<32>::of(self.trace_id.as_u128()).as_str());
        out.push('-');
        out.push_str(Hex::<16>::of(u128::from(self.span_id.as_u64())).as_str());
        out.push('-');
        out.push_str(Hex::<2>::of(u128::from(self.flags)).as_str());
        out
    }

    /// This context with `tracestate` (kept verbatim when it is valid and
    /// within [`TRACESTATE_MAX`] bytes and [`TRACESTATE_MEMBERS`] members;
    /// cut as the specification says when it is longer; dropped when it has
    /// characters a header cannot carry, or is empty).
    pub fn with_tracestate(mut self, tracestate: Option<&str>) -> Self {
        self.state = tracestate.and_then(bounded_state);
        self
    }

    /// The trace this span belongs to.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// This span's id.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The id of the span that caused this one, when known (a received
    /// `traceparent` names only the sender's span).
    pub fn parent_span_id(&self) -> Option<SpanId> {
        self.parent_span_id
    }

    /// The trace flags (`01`: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the trace is sampled (recorded by whoever started it).
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The vendors' `tracestate`, as received (or cut to its bound).
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent())
            .field("parent_span_id", &self.parent_span_id)
            .field("tracestate", &self.state)
            .finish()
    }
}

/// Lowercase hex digits (at most 32) as a number; `None` for anything else
/// (uppercase included: the specification's `HEXDIGLC`).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some((n << 4) | u128::from(d))
    })
}

/// `tracestate` as kept: verbatim when it fits; `None` when empty or when
/// it has characters other than printable ASCII, space and tab.
fn bounded_state(raw: &str) -> Option<Arc<str>> {
    if !raw.bytes().all(|c| c == b'\t' || (b' '..=b'~').contains(&c)) {
        return None;
    }
    let members = || raw.split(',').map(|m| m.trim_matches([' ', '\t'])).filter(|m| !m.is_empty());
    let count = members().count();
    if count == 0 {
        return None;
    }
    if raw.len() <= TRACESTATE_MAX && count <= TRACESTATE_MEMBERS {
        return Some(raw.into());
    }
    // Too long: drop members over 128 characters, then from the end.
    let mut kept: Vec<&str> = members().filter(|m| m.len() <= 128).take(TRACESTATE_MEMBERS).collect();
    while !kept.is_empty() && kept.iter().map(|m| m.len() + 1).sum::<usize>() - 1 > TRACESTATE_MAX {
        kept.pop();
    }
    (!kept.is_empty()).then(|| kept.join(",").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn tp(version: &str, trace: &str, parent: &str, flags: &str) -> String {
        format!("{version}-{trace}-{parent}-{flags}")
    }

    #[test]
    fn a_valid_traceparent_round_trips() {
        let header = tp("00", TRACE, PARENT, "01");
        let ctx = TraceContext::parse(&header, None).unwrap();
        assert_eq!(ctx.trace_id().to_string(), TRACE);
        assert_eq!(ctx.span_id().to_string(), PARENT);
        assert_eq!(ctx.parent_span_id(), None);
        assert!(ctx.is_sampled());
        assert_eq!(ctx.traceparent(), header);
        let unsampled = TraceContext::parse(&tp("00", TRACE, PARENT, "00"), None).unwrap();
        assert!(!unsampled.is_sampled());
        assert_eq!(unsampled.traceparent(), tp("00", TRACE, PARENT, "00"));
    }

    #[test]
    fn ids_are_written_as_zero_padded_lowercase_hex() {
        for v in [1u128, 0xab, u128::from(u64::MAX), u128::MAX, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736] {
            assert_eq!(TraceId::from_u128(v).unwrap().to_string(), format!("{v:032x}"));
            assert_eq!(crate::MessageId::from_u128(v).to_string(), format!("{v:032x}"));
            let low = (v as u64).max(1);
            assert_eq!(SpanId::from_u64(low).unwrap().to_string(), format!("{low:016x}"));
        }
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let bad = [
            String::new(),
            "00".to_owned(),
            tp("00", TRACE, PARENT, "0"),                          // short
            tp("00", TRACE, PARENT, "01") + "-",                   // version 00 is exactly 55
            tp("00", TRACE, PARENT, "01") + "x",                   // trailing garbage
            tp("00", &"0".repeat(32), PARENT, "01"),               // all-zero trace id
            tp("00", TRACE, &"0".repeat(16), "01"),                // all-zero parent id
            tp("ff", TRACE, PARENT, "01"),                         // version ff is invalid
            tp("0g", TRACE, PARENT, "01"),                         // version not hex
            tp("00", &TRACE.to_uppercase(), PARENT, "01"),         // uppercase
            tp("00", TRACE, &PARENT.to_uppercase(), "01"),         // uppercase
            tp("00", TRACE, PARENT, "0G"),                         // flags not hex
            tp("00", &TRACE[1..], &format!("0{PARENT}"), "01"),    // dash in the wrong place
            format!("00_{TRACE}_{PARENT}_01"),                     // wrong separators
            format!("00-{TRACE}-{PARENT}-01").replace('a', "é"),   // non-ASCII
            tp("00", &format!("{}-", &TRACE[..31]), PARENT, "01"), // a dash inside the trace id
            tp("01", TRACE, PARENT, "01") + "x",                   // a future version must go on with '-'
        ];
        for header in &bad {
            assert_eq!(TraceContext::parse(header, Some("a=b")), None, "{header:?} must be refused");
        }
    }

    #[test]
    fn future_versions_are_read_for_ids_and_the_sampled_flag() {
        let plain = TraceContext::parse(&tp("01", TRACE, PARENT, "03"), None).unwrap();
        assert_eq!(plain.traceparent(), tp("00", TRACE, PARENT, "01"));
        let longer = TraceContext::parse(&(tp("cc", TRACE, PARENT, "00") + "-what-comes-next"), None).unwrap();
        assert_eq!(longer.traceparent(), tp("00", TRACE, PARENT, "00"));
    }

    #[test]
    fn unknown_flags_are_not_passed_on() {
        let ctx = TraceContext::parse(&tp("00", TRACE, PARENT, "ff"), None).unwrap();
        assert_eq!(ctx.flags(), 0x03);
    }

    #[test]
    fn surrounding_whitespace_is_allowed() {
        assert!(TraceContext::parse(&format!(" {}\t", tp("00", TRACE, PARENT, "01")), None).is_some());
    }

    #[test]
    fn children_get_fresh_span_ids_and_keep_the_rest() {
        let sent = TraceContext::parse(&tp("00", TRACE, PARENT, "01"), Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"))
            .unwrap();
        let handling = sent.child();
        let send = handling.child();
        assert_eq!(send.trace_id(), sent.trace_id());
        assert_eq!(handling.parent_span_id(), Some(sent.span_id()));
        assert_eq!(send.parent_span_id(), Some(handling.span_id()));
        assert_ne!(handling.span_id(), sent.span_id());
        assert_ne!(send.span_id(), handling.span_id());
        assert_eq!(send.tracestate(), Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
        assert_eq!(send.flags(), sent.flags());
    }

    #[test]
    fn tracestate_is_kept_verbatim_within_its_bound() {
        let header = tp("00", TRACE, PARENT, "01");
        let state = |s: &str| TraceContext::parse(&header, Some(s)).unwrap().tracestate().map(str::to_owned);
        assert_eq!(state("a=1 , b=2"), Some("a=1 , b=2".to_owned()));
        assert_eq!(state(""), None);
        assert_eq!(state(" , "), None);
        assert_eq!(state("a=1\nb=2"), None);
        assert_eq!(state("a=é"), None);
        let exact = format!("a={}", "x".repeat(TRACESTATE_MAX - 2));
        assert_eq!(state(&exact), Some(exact.clone()));
    }

    #[test]
    fn a_long_tracestate_is_cut_as_the_specification_says() {
        let header = tp("00", TRACE, PARENT, "01");
        let big = format!("big={}", "x".repeat(200));
        let small: Vec<String> = (0..40).map(|i| format!("k{i:02}=v")).collect();
        let raw = format!("{},{big},{}", small[..5].join(","), small[5..].join(","));
        let ctx = TraceContext::parse(&header, Some(&raw)).unwrap();
        // The big member goes first; then members past the 32nd.
        assert_eq!(ctx.tracestate(), Some(small[..TRACESTATE_MEMBERS].join(",").as_str()));

        let many: Vec<String> = (0..30).map(|i| format!("k{i:02}={}", "v".repeat(30))).collect();
        let ctx = TraceContext::parse(&header, Some(&many.join(","))).unwrap();
        let kept = ctx.tracestate().unwrap();
        assert!(kept.len() <= TRACESTATE_MAX, "{} bytes", kept.len());
        assert!(many.join(",").starts_with(kept), "members are dropped from the end");
        assert_eq!(kept.split(',').count(), TRACESTATE_MAX / 35);

        let only_big = format!("{big},{big},{big}");
        assert_eq!(TraceContext::parse(&header, Some(&only_big)).unwrap().tracestate(), None);
    }

    #[test]
    fn roots_are_sampled_and_have_no_parent() {
        let id = TraceId::from_u128(7).unwrap();
        let root = TraceContext::root(id);
        assert_eq!(root.trace_id(), id);
        assert_eq!(root.parent_span_id(), None);
        assert_eq!(root.traceparent(), format!("00-{:032x}-{}-01", 7, root.span_id()));
        assert_eq!(TraceId::from_u128(0), None);
        assert_eq!(SpanId::from_u64(0), None);
    }

    #[test]
    fn any_string_parses_without_panicking() {
        // Every length around the fixed positions, with every kind of byte there.
        let base = tp("00", TRACE, PARENT, "01");
        for len in 0..=base.len() + 2 {
            for fill in ["-", "0", "f", "F", "é", " ", "\u{0}"] {
                let mut s: String = base.chars().take(len).collect();
                s.push_str(fill);
                let _ = TraceContext::parse(&s, Some(&s));
            }
        }
    }
}
