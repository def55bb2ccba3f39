//! [`RetryPolicy`]: how often and how long to retry, as kombu's
//! `max_retries`, `interval_start`, `interval_step`, `interval_max` and
//! `timeout` keywords (`ensure_connection`, `ensure`, `Producer.publish`'s
//! `retry_policy`). The waiting itself is done by the `backon` crate.

use std::time::{Duration, Instant};

use backon::{Backoff, BackoffBuilder};

/// How to retry: the first wait is `interval_start`, each next one
/// `interval_step` longer, never more than `interval_max`; give up after
/// `max_retries` retries (`None`: never) or once `timeout` has passed since
/// the first attempt.
///
/// [`RetryPolicy::new`] has kombu's `ensure_connection` defaults (retry
/// forever, 2 s, +2 s, at most 30 s); [`RetryPolicy::for_publish`] has the
/// defaults kombu's `Connection.ensure` uses for `publish(retry=True)`.
///
/// ```
/// use std::time::Duration;
/// use kombu_core::RetryPolicy;
///
/// let policy = RetryPolicy::new()
///     .max_retries(3)
///     .interval_start(Duration::ZERO)
///     .interval_step(Duration::from_millis(200))
///     .interval_max(Duration::from_secs(1));
/// let waits: Vec<Duration> = policy.delays().collect();
/// assert_eq!(waits, [Duration::ZERO, Duration::from_millis(200), Duration::from_millis(400)]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt (`None`: retry forever).
    pub max_retries: Option<u32>,
    /// The first wait.
    pub interval_start: Duration,
    /// How much longer each next wait is.
    pub interval_step: Duration,
    /// The longest wait.
    pub interval_max: Duration,
    /// Give up once this long has passed since the first attempt.
    pub timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

impl RetryPolicy {
    /// kombu's `ensure_connection` defaults: retry forever, waiting 2 s,
    /// then 4 s, ... up to 30 s.
    pub fn new() -> Self {
        RetryPolicy {
            max_retries: None,
            interval_start: Duration::from_secs(2),
            interval_step: Duration::from_secs(2),
            interval_max: Duration::from_secs(30),
            timeout: None,
        }
    }

    /// kombu's defaults for `publish(retry=True)` without a `retry_policy`
    /// (those of `Connection.ensure`): retry forever, 1 s apart.
    ///
    /// ```
    /// # use kombu_core::RetryPolicy;
    /// assert_eq!(RetryPolicy::for_publish().max_retries, None);
    /// ```
    pub fn for_publish() -> Self {
        RetryPolicy {
            max_retries: None,
            interval_start: Duration::from_secs(1),
            interval_step: Duration::from_secs(1),
            interval_max: Duration::from_secs(1),
            timeout: None,
        }
    }

    /// Do not retry at all.
    ///
    /// ```
    /// # use kombu_core::RetryPolicy;
    /// assert_eq!(RetryPolicy::never().delays().count(), 0);
    /// ```
    pub fn never() -> Self {
        RetryPolicy::new().max_retries(0)
    }

    /// Retries after the first attempt (`None`: forever).
    pub fn max_retries(mut self, retries: impl Into<Option<u32>>) -> Self {
        self.max_retries = retries.into();
        self
    }
    /// The first wait.
    pub fn interval_start(mut self, wait: Duration) -> Self {
        self.interval_start = wait;
        self
    }
    /// How much longer each next wait is.
    pub fn interval_step(mut self, step: Duration) -> Self {
        self.interval_step = step;
        self
    }
    /// The longest wait.
    pub fn interval_max(mut self, wait: Duration) -> Self {
        self.interval_max = wait;
        self
    }
    /// Give up once `limit` has passed since the first attempt.
    pub fn timeout(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.timeout = limit.into();
        self
    }

    /// The waits between attempts, in order (ends when the policy gives up,
    /// counting `timeout` from now).
    pub fn delays(&self) -> LinearBackoff {
        self.clone().build()
    }
}

/// The waits of a [`RetryPolicy`]: a `backon` [`Backoff`].
#[derive(Debug, Clone)]
pub struct LinearBackoff {
    next: Duration,
    step: Duration,
    max: Duration,
    left: Option<u32>,
    deadline: Option<Instant>,
}

impl Iterator for LinearBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if let Some(left) = self.left.as_mut() {
            if *left == 0 {
                return None;
            }
            *left -= 1;
        }
        let wait = self.next.min(self.max);
        if let Some(deadline) = self.deadline {
            // Give up when the wait would end after the deadline.
            if Instant::now() + wait > deadline {
                return None;
            }
        }
        self.next = self.next.saturating_add(self.step);
        Some(wait)
    }
}

impl BackoffBuilder for RetryPolicy {
    type Backoff = LinearBackoff;

    fn build(self) -> LinearBackoff {
        LinearBackoff {
            next: self.interval_start,
            step: self.interval_step,
            max: self.interval_max.max(self.interval_start),
            left: self.max_retries,
            deadline: self.timeout.map(|limit| Instant::now() + limit),
        }
    }
}

// A Backoff is any Send + Sync + Unpin iterator of durations; this checks it.
const _: fn() = || {
    fn is_backoff<B: Backoff>() {}
    is_backoff::<LinearBackoff>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_by_step_and_stop_at_max() {
        let policy = RetryPolicy::new().max_retries(6);
        let waits: Vec<u64> = policy.delays().map(|d| d.as_secs()).collect();
        assert_eq!(waits, [2, 4, 6, 8, 10, 12]);
        let capped = RetryPolicy::new()
            .max_retries(4)
            .interval_start(Duration::from_secs(1))
            .interval_step(Duration::from_secs(5))
            .interval_max(Duration::from_secs(7));
        let waits: Vec<u64> = capped.delays().map(|d| d.as_secs()).collect();
        assert_eq!(waits, [1, 6, 7, 7]);
    }

    #[test]
    fn forever_means_forever_and_timeout_ends_it() {
        assert_eq!(RetryPolicy::new().delays().take(1000).count(), 1000);
        let limited = RetryPolicy::new().timeout(Duration::from_secs(5));
        // Each wait must end before the deadline, measured on the clock.
        let waits: Vec<u64> = limited.delays().map(|d| d.as_secs()).collect();
        assert_eq!(
            waits,
            [2, 4],
            "a 6 s wait from now would end past the 5 s deadline"
        );
    }
}
