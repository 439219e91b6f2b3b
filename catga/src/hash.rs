//! A hash that is the same in every build and process (std's is seeded per
//! process): where instances must agree without talking — the rendezvous
//! ranks of the saga sweep, the timer queue an id lives in.

/// FNV-1a of `parts` with a `0xff` between them (a byte no UTF-8 text
/// holds), then mixed so that inputs differing only at the end spread
/// over the low bits too.
pub(crate) fn stable_hash(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        let separator = (i > 0).then_some(0xff);
        for byte in separator.into_iter().chain(part.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_fixed_and_separates_parts() {
        // Pinned: a change would move every timer to another queue, and
        // rank sagas differently on instances of two builds.
        assert_eq!(stable_hash(&["order:1", "svc-0"]), 12369183997180233814);
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
        let spread: std::collections::HashSet<u64> = (0..1000).map(|i| stable_hash(&[&i.to_string()]) % 16).collect();
        assert_eq!(spread.len(), 16);
    }
}
