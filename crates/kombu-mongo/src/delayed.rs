//! Delayed delivery: a delayed message is stored in `messages` under the
//! queue name `_kombu-rs.delayed.<queue>` ([`parked_name`]) with its due
//! time in `not_before`, so no consumer of `<queue>` (kombu-rs's claims,
//! Python kombu's `find_one_and_delete({'queue': ...})`) sees it early.
//! When it is due, one `update_many` moves it to its queue (`queue` set,
//! `not_before` removed): one atomic write per document, so two movers
//! never move one message twice and a move that fails halfway leaves
//! every message in one place or the other.
//!
//! Who moves: every kombu-rs fetch, for its queues, at most every
//! [`CHECK_EVERY`] per queue, and at once when the next due time it knows
//! of comes (the fetch's pause ends then); and the connection that
//! published delayed messages, every [`MOVE_EVERY`], for the queues it
//! published them in (so a queue read only by Python kombu gets them too,
//! while that connection lives).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kombu_core::Result;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::Collection;
use tokio::task::AbortHandle;

use crate::error::driver;
use crate::wakeup::Wakeups;

/// The prefix of the queue name a delayed message is parked under.
pub const PARKED_PREFIX: &str = "_kombu-rs.delayed.";

/// The field holding a parked message's due time (a BSON date).
pub(crate) const NOT_BEFORE: &str = "not_before";

/// How often a fetch looks for due messages of each of its queues (and
/// learns of delayed messages other processes published), at most.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(250);

/// How often the connection that published delayed messages moves the
/// due ones of those queues.
pub(crate) const MOVE_EVERY: Duration = Duration::from_millis(200);

/// The queue name a delayed message for `queue` is parked under.
///
/// ```
/// assert_eq!(kombu_mongo::parked_name("tasks"), "_kombu-rs.delayed.tasks");
/// ```
pub fn parked_name(queue: &str) -> String {
    format!("{PARKED_PREFIX}{queue}")
}

/// What a fetch knows of a queue's parked messages.
#[derive(Debug, Clone, Copy)]
struct Known {
    /// When it last looked.
    checked: Instant,
    /// The earliest due time then (Unix ms), if any.
    next_due: Option<i64>,
}

/// The parked messages of one backend's queues.
#[derive(Debug)]
pub(crate) struct Delays {
    messages: Collection<Document>,
    wakeups: Arc<Wakeups>,
    known: Mutex<HashMap<String, Known>>,
    /// Queues this backend parked messages in (when it last did): the
    /// mover's.
    published: Mutex<HashMap<String, Instant>>,
    mover: Mutex<Option<AbortHandle>>,
}

/// Now, in Unix milliseconds.
fn now_ms() -> i64 {
    DateTime::now().timestamp_millis()
}

impl Delays {
    pub(crate) fn new(messages: Collection<Document>, wakeups: Arc<Wakeups>) -> Arc<Self> {
        Arc::new(Delays {
            messages,
            wakeups,
            known: Mutex::default(),
            published: Mutex::default(),
            mover: Mutex::default(),
        })
    }

    fn known(&self) -> MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn published(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The earliest due time of `queue`'s parked messages (Unix ms).
    async fn earliest(&self, parked: &str) -> Result<Option<i64>> {
        let found = self
            .messages
            .find_one(doc! { "queue": parked, NOT_BEFORE: { "$exists": true } })
            .sort(doc! { NOT_BEFORE: 1 })
            .projection(doc! { NOT_BEFORE: 1 })
            .await
            .map_err(driver("looking for delayed messages"))?;
        Ok(found.and_then(|d| {
            d.get_datetime(NOT_BEFORE)
                .ok()
                .map(|t| t.timestamp_millis())
        }))
    }

    /// Move the due parked messages of `queue` into it; returns the due
    /// time of the next one still parked (Unix ms), if any.
    pub(crate) async fn release_due(&self, queue: &str) -> Result<Option<i64>> {
        let parked = parked_name(queue);
        let mut next = self.earliest(&parked).await?;
        let now = now_ms();
        if next.is_some_and(|due| due <= now) {
            let moved = self
                .messages
                .update_many(
                    doc! { "queue": &parked, NOT_BEFORE: { "$lte": DateTime::from_millis(now) } },
                    doc! { "$set": { "queue": queue }, "$unset": { NOT_BEFORE: "" } },
                )
                .await
                .map_err(driver("moving due delayed messages"))?;
            if moved.modified_count > 0 {
                tracing::debug!(queue, moved = moved.modified_count, "delayed messages due");
                self.wakeups.wake(queue);
            }
            next = self.earliest(&parked).await?;
        }
        self.known().insert(
            queue.to_owned(),
            Known {
                checked: Instant::now(),
                next_due: next,
            },
        );
        Ok(next)
    }

    /// Before a fetch claims from `queue`: move its due parked messages,
    /// unless it looked less than [`CHECK_EVERY`] ago and nothing it knew
    /// of is due yet.
    pub(crate) async fn check(&self, queue: &str) -> Result<()> {
        let fresh = self.known().get(queue).is_some_and(|k| {
            k.checked.elapsed() < CHECK_EVERY && k.next_due.is_none_or(|due| due > now_ms())
        });
        if !fresh {
            self.release_due(queue).await?;
        }
        Ok(())
    }

    /// How long until the first parked message of `queues` this backend
    /// knows of is due (zero when due), if any: an idle fetch's pause ends
    /// then.
    pub(crate) fn due_in(&self, queues: &[String]) -> Option<Duration> {
        let known = self.known();
        let due = queues.iter().filter_map(|q| known.get(q)?.next_due).min()?;
        // A millisecond more, so the due time has passed on waking.
        Some(Duration::from_millis(
            u64::try_from(due.saturating_sub(now_ms())).unwrap_or(0) + 1,
        ))
    }

    /// This backend parked a message for `queue`, due at `due` (Unix ms):
    /// its fetches wake then, and its mover moves it when due.
    pub(crate) fn parked(self: &Arc<Self>, queue: &str, due: i64) {
        {
            let mut known = self.known();
            let entry = known.entry(queue.to_owned()).or_insert(Known {
                checked: Instant::now(),
                next_due: None,
            });
            entry.next_due = Some(entry.next_due.map_or(due, |d| d.min(due)));
        }
        self.published().insert(queue.to_owned(), Instant::now());
        let mut mover = self.mover.lock().unwrap_or_else(|e| e.into_inner());
        if mover.is_none() {
            let delays = Arc::clone(self);
            *mover = Some(tokio::spawn(delays.run_mover()).abort_handle());
        }
    }

    /// Every [`MOVE_EVERY`]: move the due messages of the queues this
    /// backend parked messages in; a queue with none left is forgotten.
    async fn run_mover(self: Arc<Self>) {
        let mut tick = tokio::time::interval(MOVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let queues: Vec<String> = self.published().keys().cloned().collect();
            for queue in queues {
                let started = Instant::now();
                let moved = tokio::time::timeout(MOVE_EVERY * 25, self.release_due(&queue)).await;
                match moved {
                    Ok(Ok(None)) => {
                        // None left, unless one was parked since it looked.
                        let mut published = self.published();
                        if published.get(&queue).is_some_and(|at| *at <= started) {
                            published.remove(&queue);
                        }
                    }
                    Ok(Ok(Some(_))) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(queue, %error, "moving due delayed messages failed");
                    }
                    Err(_) => {
                        tracing::warn!(queue, "moving due delayed messages timed out");
                    }
                }
            }
        }
    }

    /// Forget `queue` (deleted).
    pub(crate) fn forget(&self, queue: &str) {
        self.known().remove(queue);
        self.published().remove(queue);
    }

    /// Stop the mover.
    pub(crate) fn stop(&self) {
        if let Some(mover) = self.mover.lock().unwrap_or_else(|e| e.into_inner()).take() {
            mover.abort();
        }
    }
}
