//! Delayed delivery on JetStream, which (in nats-server 2.9) has no
//! scheduled messages: a delayed message waits in its queue's delay
//! stream (`<stream_prefix>-delayed_<queue>`, subject
//! `<subject_prefix>-delayed.<queue>`), its not-before time in the
//! envelope's `x-kombu-not-before` header (Unix ms). The queue's
//! consumers look at the delay stream (at most every 200 ms, while they
//! fetch): a message not yet due is NAKed with the rest of its delay
//! (`-NAK {"delay": ns}`, so JetStream hands it back when due), a due one
//! is published to the queue without the header and then acked. In the
//! queue it is a new message, so its delivery count there starts at one:
//! the early looks never count toward the queue's `x-delivery-limit`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The envelope header holding a delayed message's not-before time (Unix
/// milliseconds) while it waits in the delay stream.
pub const NOT_BEFORE_HEADER: &str = "x-kombu-not-before";

/// Longest a due message waits in the delay stream for a consumer's look.
pub(crate) const LOOK_EVERY: Duration = Duration::from_millis(200);

/// How often a consumer asks whether a queue without a known delay stream
/// has one now (made by another client's delayed publish).
const FIND_STREAM_EVERY: Duration = Duration::from_secs(1);

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What is left of a delay: `None` when `not_before_ms` is due at `now_ms`.
pub(crate) fn rest_of_delay(not_before_ms: u64, now_ms: u64) -> Option<Duration> {
    (not_before_ms > now_ms).then(|| Duration::from_millis(not_before_ms - now_ms))
}

/// The `-NAK` that hands a delivery back after `delay`.
pub(crate) fn nak_with_delay(delay: Duration) -> String {
    format!("-NAK {{\"delay\": {}}}", delay.as_nanos())
}

/// What a consumer knows of each queue's delay stream.
#[derive(Debug, Default)]
pub(crate) struct DelayLooks(Mutex<HashMap<String, Look>>);

#[derive(Debug, Clone, Copy)]
struct Look {
    /// The delay stream exists.
    exists: bool,
    /// Not before this: look again.
    next: Instant,
}

/// What to do about a queue's delay stream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing (looked a moment ago).
    Nothing,
    /// Ask whether the delay stream exists.
    FindStream,
    /// Pull from it.
    Pull,
}

impl DelayLooks {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Look>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to do for `queue` now (and when to look next).
    pub(crate) fn due(&self, queue: &str) -> Due {
        let now = Instant::now();
        let mut looks = self.lock();
        match looks.get_mut(queue) {
            Some(look) if look.next > now => Due::Nothing,
            Some(look) if look.exists => {
                look.next = now + LOOK_EVERY;
                Due::Pull
            }
            _ => Due::FindStream,
        }
    }

    /// Note whether `queue`'s delay stream exists.
    pub(crate) fn found(&self, queue: &str, exists: bool) {
        let next = Instant::now()
            + if exists {
                Duration::ZERO
            } else {
                FIND_STREAM_EVERY
            };
        self.lock().insert(queue.to_owned(), Look { exists, next });
    }

    /// Forget `queue` (deleted).
    pub(crate) fn forget(&self, queue: &str) {
        self.lock().remove(queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_of_a_delay() {
        assert_eq!(
            rest_of_delay(1_500, 1_000),
            Some(Duration::from_millis(500))
        );
        assert_eq!(rest_of_delay(1_000, 1_000), None);
        assert_eq!(rest_of_delay(900, 1_000), None);
    }

    #[test]
    fn the_nak_says_the_delay_in_nanoseconds() {
        assert_eq!(
            nak_with_delay(Duration::from_millis(1500)),
            "-NAK {\"delay\": 1500000000}"
        );
    }

    #[test]
    fn looks_are_spaced() {
        let looks = DelayLooks::default();
        assert_eq!(looks.due("q"), Due::FindStream);
        looks.found("q", false);
        assert_eq!(looks.due("q"), Due::Nothing, "looked for it a moment ago");
        looks.found("q", true);
        assert_eq!(looks.due("q"), Due::Pull);
        assert_eq!(looks.due("q"), Due::Nothing, "pulled a moment ago");
        looks.forget("q");
        assert_eq!(looks.due("q"), Due::FindStream);
    }
}
