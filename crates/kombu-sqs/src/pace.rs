//! How long the next receive of a queue waits, from what the last one
//! brought: no wait while a queue is busy, a short wait when its state is
//! unknown, the full `wait_time_seconds` once it is quiet.
//!
//! Closing a consumer waits for its receive under way (SQS cannot cancel
//! one, and a message that arrives for a receive nobody reads stays hidden
//! for the visibility timeout), so the receive under way should be short
//! whenever a consumer is likely to close: right after it started, and
//! right after it took what it wanted (the receive that brought a full
//! batch is followed by one that does not wait at all).

/// The wait of a receive when the queue's state is unknown: a consumer's
/// first receive, and the one after a receive that brought some messages
/// but fewer than asked, or after a no-wait receive that brought none.
pub(crate) const SETTLE_POLL_SECONDS: i32 = 1;

/// What the last receive of a queue said about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pace {
    /// It brought every message asked for (more than one): more are likely
    /// waiting, so the next receive does not wait (`WaitTimeSeconds` 0):
    /// it answers at once either way.
    Busy,
    /// It waited and brought nothing: the next waits the full
    /// `wait_time_seconds`.
    Quiet,
}

/// How many seconds the next receive waits, at most `long_poll` (the
/// `wait_time_seconds` option; 0 for a receive that must not wait).
pub(crate) fn poll_seconds(pace: Option<Pace>, long_poll: i32) -> i32 {
    match pace {
        Some(Pace::Busy) => 0,
        Some(Pace::Quiet) => long_poll,
        None => long_poll.min(SETTLE_POLL_SECONDS),
    }
}

/// The pace after a receive that asked for `asked` messages, waited up to
/// `waited` seconds and brought `got`; `None`: unknown (settle next).
pub(crate) fn after(asked: usize, got: usize, waited: i32) -> Option<Pace> {
    if got > 1 && got >= asked {
        Some(Pace::Busy)
    } else if got > 0 {
        None
    } else if waited > 0 {
        Some(Pace::Quiet)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_batch_is_followed_by_a_receive_that_does_not_wait() {
        let full = after(10, 10, 1);
        assert_eq!(full, Some(Pace::Busy));
        assert_eq!(poll_seconds(full, 10), 0);
        // The no-wait receive finds the queue empty: settle, then quiet.
        let drained = after(10, 0, poll_seconds(full, 10));
        assert_eq!(drained, None);
        assert_eq!(poll_seconds(drained, 10), SETTLE_POLL_SECONDS);
        let quiet = after(10, 0, poll_seconds(drained, 10));
        assert_eq!(quiet, Some(Pace::Quiet));
        assert_eq!(poll_seconds(quiet, 10), 10);
        assert_eq!(poll_seconds(quiet, 0), 0, "a receive that must not wait");
    }

    #[test]
    fn fewer_than_asked_or_one_at_a_time_settles() {
        assert_eq!(after(10, 3, 1), None);
        assert_eq!(after(1, 1, 1), None, "prefetch 1: one message says little");
        assert_eq!(after(3, 3, 0), Some(Pace::Busy));
        assert_eq!(poll_seconds(None, 10), SETTLE_POLL_SECONDS);
        assert_eq!(poll_seconds(None, 0), 0);
    }
}
