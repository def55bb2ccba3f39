//! Waking fetches that wait for messages, and how long an idle fetch
//! pauses between two polls.
//!
//! A fetch that finds nothing waits for a wake-up of one of its queues (a
//! put by this transport, an insert the change stream reports) or of every
//! queue (a message put back, a change stream that (re)opened), or for its
//! pause to end. It listens *before* it polls: whatever arrives after the
//! poll looked wakes the wait, so no message slips between a poll and the
//! wait.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::oid::ObjectId;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Beyond this many queues, queues nobody waits on are forgotten.
const PRUNE_ABOVE: usize = 1024;

/// The most inserts of this transport remembered for the change stream
/// (beyond it they are forgotten: their events wake fetches for nothing).
const OWN_INSERTS_LIMIT: usize = 10_000;

/// Wake-ups per queue, and one for every queue.
#[derive(Debug, Default)]
pub(crate) struct Wakeups {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
    any: Notify,
    /// True while a change stream reports inserts.
    streaming: AtomicBool,
    /// Messages this transport inserted while the stream runs, whose
    /// insert event has not come yet: that event wakes nobody, as the put
    /// woke the queue itself once the insert ended.
    own_inserts: Mutex<HashSet<ObjectId>>,
    /// Queue -> puts of this transport under way into it.
    putting: Mutex<HashMap<String, usize>>,
}

/// Wakes a queue when dropped: when a put ends (stored, failed or given
/// up on), whatever it may have stored is looked for.
#[must_use]
pub(crate) struct WakeOnDrop<'a> {
    wakeups: &'a Wakeups,
    queue: &'a str,
}

impl Drop for WakeOnDrop<'_> {
    fn drop(&mut self) {
        {
            let mut putting = self.wakeups.putting();
            if let Some(count) = putting.get_mut(self.queue) {
                *count -= 1;
                if *count == 0 {
                    putting.remove(self.queue);
                }
            }
        }
        self.wakeups.wake(self.queue);
    }
}

impl Wakeups {
    /// The wake-ups of `queues`, for [`Wakeups::listen`].
    pub(crate) fn of(&self, queues: &[String]) -> Vec<Arc<Notify>> {
        let mut map = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > PRUNE_ABOVE {
            // A queue whose notify only the map holds has no listener.
            map.retain(|_, notify| Arc::strong_count(notify) > 1);
        }
        queues
            .iter()
            .map(|queue| map.entry(queue.clone()).or_default().clone())
            .collect()
    }

    /// Listen to `queues` (from [`Wakeups::of`]), to every-queue wake-ups
    /// and to `also`: the futures are registered at once, so a wake-up
    /// given after this call and before they are awaited is not lost.
    pub(crate) fn listen<'a>(
        &'a self,
        queues: &'a [Arc<Notify>],
        also: &'a Notify,
    ) -> Vec<Pin<Box<Notified<'a>>>> {
        let mut signals: Vec<Pin<Box<Notified<'a>>>> = queues
            .iter()
            .map(|notify| Box::pin(notify.notified()))
            .collect();
        signals.push(Box::pin(self.any.notified()));
        signals.push(Box::pin(also.notified()));
        for signal in &mut signals {
            signal.as_mut().enable();
        }
        signals
    }

    /// A message may have arrived in `queue`: wake the fetches listening to it.
    pub(crate) fn wake(&self, queue: &str) {
        let notify = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .cloned();
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// A message may have arrived in any queue: wake every listening fetch.
    pub(crate) fn wake_all(&self) {
        self.any.notify_waiters();
    }

    /// This transport is about to insert `ids` into `queue`: their insert
    /// events will wake nobody; the guard wakes the queue when the put ends.
    pub(crate) fn inserting<'a>(
        &'a self,
        queue: &'a str,
        ids: impl IntoIterator<Item = ObjectId>,
    ) -> WakeOnDrop<'a> {
        if self.streaming.load(Ordering::Acquire) {
            let mut own = self.own_inserts.lock().unwrap_or_else(|e| e.into_inner());
            if own.len() >= OWN_INSERTS_LIMIT {
                own.clear();
            }
            own.extend(ids);
        }
        *self.putting().entry(queue.to_owned()).or_default() += 1;
        WakeOnDrop {
            wakeups: self,
            queue,
        }
    }

    fn putting(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.putting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while this transport puts a message into one of `queues`: its
    /// end wakes them, so a poll can wait for it.
    pub(crate) fn putting_into(&self, queues: &[String]) -> bool {
        let putting = self.putting();
        !putting.is_empty() && queues.iter().any(|queue| putting.contains_key(queue))
    }

    /// The change stream reports an insert into `queue`: wake its fetches,
    /// unless this transport inserted it (its put wakes them).
    pub(crate) fn inserted(&self, queue: &str, id: Option<ObjectId>) {
        let own = id.is_some_and(|id| {
            self.own_inserts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
        });
        if !own {
            self.wake(queue);
        }
    }

    /// The change stream opened (true) or ended (false).
    pub(crate) fn set_streaming(&self, streaming: bool) {
        self.streaming.store(streaming, Ordering::Release);
        if !streaming {
            self.own_inserts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }
}

/// The pause of an idle fetch when no change stream wakes it: the shortest
/// after a poll found messages, doubled after each poll that found none, up
/// to a bound. Shared by the fetches of one transport.
#[derive(Debug)]
pub(crate) struct IdleBackoff {
    /// The next pause, in microseconds.
    next_us: AtomicU64,
    shortest: Duration,
    longest: Duration,
}

impl IdleBackoff {
    /// Pauses from `shortest` up to `longest` (at least `shortest`).
    pub(crate) fn new(shortest: Duration, longest: Duration) -> Self {
        IdleBackoff {
            next_us: AtomicU64::new(micros(shortest)),
            shortest,
            longest: longest.max(shortest),
        }
    }

    /// The shortest pause.
    pub(crate) fn shortest(&self) -> Duration {
        self.shortest
    }

    /// A poll found messages: the next pause is the shortest.
    pub(crate) fn reset(&self) {
        self.next_us.store(micros(self.shortest), Ordering::Relaxed);
    }

    /// A poll found nothing: the pause to take now (the next one is twice
    /// as long, up to the bound).
    pub(crate) fn next(&self) -> Duration {
        let longest = micros(self.longest);
        let now = self
            .next_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |us| {
                Some(us.saturating_mul(2).min(longest))
            })
            .unwrap_or(longest);
        Duration::from_micros(now.min(longest))
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_bound_and_resets() {
        let backoff = IdleBackoff::new(Duration::from_millis(1), Duration::from_millis(5));
        let pauses: Vec<u128> = (0..5).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(pauses, [1, 2, 4, 5, 5]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(1));
    }

    #[tokio::test]
    async fn a_wake_up_between_listen_and_wait_is_kept() {
        let wakeups = Wakeups::default();
        let other = Notify::new();
        let queues = wakeups.of(&["a".to_owned()]);
        let signals = wakeups.listen(&queues, &other);
        // Woken after listening, before waiting: the wait ends at once.
        wakeups.wake("a");
        let woken =
            tokio::time::timeout(Duration::from_secs(5), futures::future::select_all(signals))
                .await;
        assert!(woken.is_ok(), "the wake-up given before the wait was lost");
    }

    #[tokio::test]
    async fn own_inserts_are_woken_by_the_put_not_by_the_stream() {
        let wakeups = Wakeups::default();
        let other = Notify::new();
        let queues = wakeups.of(&["a".to_owned()]);
        wakeups.set_streaming(true);
        let id = ObjectId::new();
        let put = wakeups.inserting("a", [id]);
        assert!(wakeups.putting_into(&["a".to_owned()]));
        assert!(!wakeups.putting_into(&["b".to_owned()]));
        let signals = wakeups.listen(&queues, &other);
        wakeups.inserted("a", Some(id));
        let early = tokio::time::timeout(
            Duration::from_millis(50),
            futures::future::select_all(signals),
        )
        .await;
        assert!(
            early.is_err(),
            "the stream woke for this transport's insert"
        );
        let signals = wakeups.listen(&queues, &other);
        drop(put);
        assert!(!wakeups.putting_into(&["a".to_owned()]));
        let woken =
            tokio::time::timeout(Duration::from_secs(5), futures::future::select_all(signals))
                .await;
        assert!(woken.is_ok(), "the end of the put wakes the queue");
        // Another process's insert wakes it.
        let signals = wakeups.listen(&queues, &other);
        wakeups.inserted("a", Some(ObjectId::new()));
        assert!(
            tokio::time::timeout(Duration::from_secs(5), futures::future::select_all(signals))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn other_queues_do_not_wake() {
        let wakeups = Wakeups::default();
        let other = Notify::new();
        let queues = wakeups.of(&["a".to_owned()]);
        let _b = wakeups.of(&["b".to_owned()]);
        let signals = wakeups.listen(&queues, &other);
        wakeups.wake("b");
        let woken = tokio::time::timeout(
            Duration::from_millis(50),
            futures::future::select_all(signals),
        )
        .await;
        assert!(woken.is_err(), "woken by another queue");
        let signals = wakeups.listen(&queues, &other);
        wakeups.wake_all();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), futures::future::select_all(signals))
                .await
                .is_ok(),
            "wake_all wakes every listener"
        );
    }
}
