//! Delayed delivery on SQS: the message's `DelaySeconds` (at most 900 s,
//! SQS's limit); a longer delay is kept in the message attribute
//! [`NOT_BEFORE_ATTRIBUTE`] and a consumer that receives the message
//! before that time sends it again with the delay left (in steps of at
//! most `max_delay_seconds`) and deletes the copy it received, without
//! handing it over.

/// The message attribute that holds a delayed message's due time (Unix
/// milliseconds, as text) when its delay is longer than one `DelaySeconds`.
pub const NOT_BEFORE_ATTRIBUTE: &str = "x-kombu-not-before";

/// One step of a delay: the `DelaySeconds` of a message due at
/// `not_before_ms` and sent at `now_ms`, at most `max_step` seconds (at
/// least 1), rounded up so it is never visible early; and whether it is
/// still early when that delay ends (then it carries
/// [`NOT_BEFORE_ATTRIBUTE`] and is re-delayed when received).
///
/// ```
/// # use kombu_sqs::delay_step;
/// assert_eq!(delay_step(12_500, 10_000, 900), (3, false));
/// assert_eq!(delay_step(10_000 + 1_000_000, 10_000, 900), (900, true));
/// ```
pub fn delay_step(not_before_ms: u64, now_ms: u64, max_step: i32) -> (i32, bool) {
    let max_step = u64::from(max_step.max(1).unsigned_abs());
    let left = not_before_ms.saturating_sub(now_ms).div_ceil(1000);
    (left.min(max_step) as i32, left > max_step)
}

/// The due time a received message carries, if any (a malformed value is
/// ignored: the message is delivered).
pub(crate) fn not_before(message: &aws_sdk_sqs::types::Message) -> Option<u64> {
    message
        .message_attributes()?
        .get(NOT_BEFORE_ATTRIBUTE)?
        .string_value()?
        .trim()
        .parse()
        .ok()
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::delay_step;

    #[test]
    fn steps_round_up_and_cap() {
        // Due now or past: no delay, delivered.
        assert_eq!(delay_step(10_000, 10_000, 900), (0, false));
        assert_eq!(delay_step(9_000, 10_000, 900), (0, false));
        // Never early: a started second counts whole.
        assert_eq!(delay_step(10_001, 10_000, 900), (1, false));
        assert_eq!(delay_step(12_000, 10_000, 900), (2, false));
        // Exactly the cap fits in one step; a millisecond more does not.
        assert_eq!(delay_step(910_000, 10_000, 900), (900, false));
        assert_eq!(delay_step(910_001, 10_000, 900), (900, true));
        // A day: 96 steps of 900 s.
        assert_eq!(delay_step(86_400_000, 0, 900), (900, true));
        // A smaller cap (the `max_delay_seconds` option), never below 1 s.
        assert_eq!(delay_step(13_000, 10_000, 1), (1, true));
        assert_eq!(delay_step(11_000, 10_000, 1), (1, false));
        assert_eq!(delay_step(13_000, 10_000, 0), (1, true));
        assert_eq!(delay_step(u64::MAX, 0, 900), (900, true));
    }
}
