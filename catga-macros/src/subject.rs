//! NATS subject rules, checked at compile time.

/// Check a subject that messages are published to: dot-separated,
/// non-empty tokens, no whitespace, no wildcards, not a `$` system subject.
pub(crate) fn check_publish_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("a subject must not be empty".into());
    }
    if let Some(c) = subject.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "subject {subject:?} contains {c:?}; NATS subjects have no whitespace or control characters"
        ));
    }
    if subject.starts_with('$') {
        return Err(format!(
            "subject {subject:?} starts with '$', which NATS reserves for system subjects ($SYS, $JS, $SRV)"
        ));
    }
    for (i, token) in subject.split('.').enumerate() {
        if token.is_empty() {
            return Err(format!(
                "subject {subject:?} has an empty token (token {}); tokens are separated by single dots, \
                 with none at the start or end",
                i + 1
            ));
        }
        if token == "*" || token == ">" {
            return Err(format!(
                "subject {subject:?} has the wildcard {token:?}; a message type's subject is published to, \
                 and NATS does not allow wildcards in published subjects"
            ));
        }
        if token.contains(['*', '>']) {
            return Err(format!(
                "subject {subject:?} has '*' or '>' inside the token {token:?}; in NATS a wildcard must be \
                 a whole token, and published subjects have none"
            ));
        }
    }
    Ok(())
}

/// Check a queue group name: one token, no whitespace, no wildcards.
pub(crate) fn check_queue(queue: &str) -> Result<(), String> {
    if queue.is_empty() || queue.contains(|c: char| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>')) {
        return Err(format!("queue group {queue:?} must be non-empty, with no whitespace, '*' or '>'"));
    }
    Ok(())
}

/// Parse a duration like `250ms`, `5s` or `2m` into milliseconds.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 =
        digits.parse().map_err(|_| format!("{text:?} is not a duration; write e.g. \"250ms\", \"5s\" or \"2m\""))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?} has unit {unit:?}; use ms, s, m, h or d (e.g. \"5s\")")),
    };
    match n.checked_mul(scale) {
        Some(0) => Err("a duration of zero would fail at once; give a positive one".into()),
        Some(ms) => Ok(ms),
        None => Err(format!("{text:?} is too long")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        for ok in ["orders", "orders.create", "a.b-c.d_e", "v1.orders.créé"] {
            assert_eq!(check_publish_subject(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("orders create", "whitespace"),
            ("orders..create", "empty token"),
            (".orders", "empty token"),
            ("orders.", "empty token"),
            ("orders.*", "wildcard"),
            ("orders.>", "wildcard"),
            ("orders.a*", "whole token"),
            ("$SRV.PING", "reserves"),
            ("a\tb", "whitespace"),
        ] {
            let err = check_publish_subject(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn queues() {
        assert!(check_queue("order-workers").is_ok());
        assert!(check_queue("a b").is_err());
        assert!(check_queue("").is_err());
        assert!(check_queue("q.>").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("5s"), Ok(5000));
        assert_eq!(parse_millis("2m"), Ok(120_000));
        assert!(parse_millis("5").unwrap_err().contains("unit"));
        assert!(parse_millis("soon").is_err());
        assert!(parse_millis("0s").is_err());
    }
}
