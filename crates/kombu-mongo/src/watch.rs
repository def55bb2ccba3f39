//! A change stream on the `messages` collection that wakes waiting fetches
//! when a message is inserted (by any process: kombu-rs or Python kombu)
//! or released (a kombu-rs requeue unsets the lease).
//!
//! It serves idle consumers: a fetch that has found nothing for
//! [`WANTED_AFTER_IDLE`] asks for it ([`ChangeWatch::want`]), and it
//! closes once no fetch has asked for [`UNWANTED_AFTER`]. While messages
//! keep coming a consumer polls again at once (the idle back-off is at its
//! shortest), and a stream would only add work to every write on the
//! server. While it is open, an idle fetch polls only as a safety net (for
//! leases that lapse, which no event reports). A server without change
//! streams (a standalone MongoDB: they need a replica set) refuses to open
//! one, and fetches keep polling with back-off; the task tries again now
//! and then (every [`RETRY_LONGEST`] at most).
//!
//! Every request has a deadline: each `getMore` waits [`AWAIT`] on the
//! server, and the answer is given up on after that plus the transport's
//! `socket_timeout` (then the stream is reopened).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::change_stream::ChangeStream;
use mongodb::Collection;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::documents::lease;
use crate::error::driver;
use crate::wakeup::Wakeups;

/// How long one `getMore` of the stream waits on the server for events.
pub(crate) const AWAIT: Duration = Duration::from_secs(1);

/// The first pause before opening the stream again after a failure.
const RETRY_SHORTEST: Duration = Duration::from_secs(1);

/// The longest pause before trying again (doubled from [`RETRY_SHORTEST`]
/// after each failure in a row).
pub(crate) const RETRY_LONGEST: Duration = Duration::from_secs(60);

/// A fetch that has found nothing for this long asks for the stream.
pub(crate) const WANTED_AFTER_IDLE: Duration = Duration::from_millis(100);

/// The stream closes when no fetch has asked for it for this long.
pub(crate) const UNWANTED_AFTER: Duration = Duration::from_secs(30);

/// What the stream's task and the transport share.
#[derive(Debug)]
struct Shared {
    /// True while the stream is open.
    live: AtomicBool,
    /// The task, while it runs.
    task: Mutex<Option<AbortHandle>>,
    /// When a fetch last asked for the stream.
    wanted_at: Mutex<Instant>,
    /// True once a failure to open it was logged at `info` (later ones are
    /// `debug`: a standalone server never has change streams).
    reported: AtomicBool,
}

impl Shared {
    fn task(&self) -> std::sync::MutexGuard<'_, Option<AbortHandle>> {
        self.task.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wanted_at(&self) -> Instant {
        *self.wanted_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when no fetch asked for the stream for [`UNWANTED_AFTER`].
    fn unwanted(&self) -> bool {
        self.wanted_at().elapsed() >= UNWANTED_AFTER
    }
}

/// The change stream of one transport.
#[derive(Debug)]
pub(crate) struct ChangeWatch {
    collection: Collection<Document>,
    wakeups: Weak<Wakeups>,
    timeout: Duration,
    shared: Arc<Shared>,
}

impl ChangeWatch {
    /// A watch on `collection` waking `wakeups`; answers are awaited at
    /// most [`AWAIT`] + `timeout`. Nothing runs before [`want`](Self::want).
    pub(crate) fn new(
        collection: Collection<Document>,
        wakeups: &Arc<Wakeups>,
        timeout: Duration,
    ) -> Self {
        ChangeWatch {
            collection,
            wakeups: Arc::downgrade(wakeups),
            timeout,
            shared: Arc::new(Shared {
                live: AtomicBool::new(false),
                task: Mutex::new(None),
                wanted_at: Mutex::new(Instant::now()),
                reported: AtomicBool::new(false),
            }),
        }
    }

    /// An idle fetch waits: keep the stream open, or start opening it.
    pub(crate) fn want(&self) {
        // Before the task lock: a task deciding to end looks at it under
        // the lock, so either it sees this or this sees it gone.
        *self
            .shared
            .wanted_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let mut task = self.shared.task();
        if task.is_some() {
            return;
        }
        let handle = tokio::spawn(run(
            self.collection.clone(),
            self.wakeups.clone(),
            self.shared.clone(),
            self.timeout,
        ));
        *task = Some(handle.abort_handle());
    }

    /// True while the stream is open: inserts and releases wake fetches.
    pub(crate) fn is_live(&self) -> bool {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Stop the task (the transport closes).
    pub(crate) fn stop(&self) {
        if let Some(task) = self.shared.task().take() {
            task.abort();
        }
        self.shared.live.store(false, Ordering::Release);
    }
}

impl Drop for ChangeWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The events that may make a message claimable: inserts, and updates
/// that remove a lease (a requeue). The events carry the queue of an
/// inserted document and nothing else of it.
fn pipeline() -> Vec<Document> {
    vec![
        doc! { "$match": { "$or": [
            { "operationType": "insert" },
            { "operationType": "update", "updateDescription.removedFields": lease::UNTIL },
        ] } },
        doc! { "$project": {
            "operationType": 1, "ns": 1, "documentKey": 1, "fullDocument.queue": 1,
        } },
    ]
}

async fn open(
    collection: &Collection<Document>,
    timeout: Duration,
) -> Result<ChangeStream<Document>, String> {
    let opened = tokio::time::timeout(
        timeout,
        collection
            .watch()
            .pipeline(pipeline())
            .max_await_time(AWAIT),
    )
    .await;
    match opened {
        Ok(Ok(stream)) => Ok(stream.with_type::<Document>()),
        Ok(Err(err)) => Err(driver("opening a change stream")(err).to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Wake the fetches `event` concerns.
fn dispatch(wakeups: &Wakeups, event: &Document) {
    let queue = event
        .get_document("fullDocument")
        .ok()
        .and_then(|d| d.get_str("queue").ok());
    let id = event
        .get_document("documentKey")
        .ok()
        .and_then(|d| d.get_object_id("_id").ok());
    match (event.get_str("operationType"), queue) {
        (Ok("insert"), Some(queue)) => wakeups.inserted(queue, id),
        _ => wakeups.wake_all(),
    }
}

async fn run(
    collection: Collection<Document>,
    wakeups: Weak<Wakeups>,
    shared: Arc<Shared>,
    timeout: Duration,
) {
    let mut pause = RETRY_SHORTEST;
    loop {
        match open(&collection, timeout).await {
            Ok(mut stream) => {
                shared.live.store(true, Ordering::Release);
                pause = RETRY_SHORTEST;
                shared.reported.store(false, Ordering::Relaxed);
                tracing::debug!("change stream on the messages collection open");
                // What arrived while it was closed: every fetch looks again.
                match wakeups.upgrade() {
                    Some(wakeups) => {
                        wakeups.set_streaming(true);
                        wakeups.wake_all();
                    }
                    None => return,
                }
                let ended = follow(&mut stream, &wakeups, &shared, timeout).await;
                shared.live.store(false, Ordering::Release);
                match wakeups.upgrade() {
                    // Fetches go back to polling with back-off.
                    Some(wakeups) => {
                        wakeups.set_streaming(false);
                        wakeups.wake_all();
                    }
                    None => return,
                }
                match ended {
                    Ended::Unwanted => {}
                    Ended::Failed(reason) => {
                        tracing::warn!(%reason, "change stream ended; polling until it reopens");
                    }
                }
            }
            Err(err) => {
                if shared.reported.swap(true, Ordering::Relaxed) {
                    tracing::debug!(error = %err, "change stream still unavailable");
                } else {
                    tracing::info!(
                        error = %err,
                        "no change stream on the messages collection; idle consumers poll"
                    );
                }
            }
        }
        {
            let mut task = shared.task();
            if shared.unwanted() {
                *task = None;
                tracing::debug!("change stream closed: no consumer waits");
                return;
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_LONGEST);
    }
}

/// Why [`follow`] returned.
enum Ended {
    /// No fetch asked for the stream for [`UNWANTED_AFTER`].
    Unwanted,
    /// The stream failed, the server closed it, or the transport is gone.
    Failed(String),
}

/// Read events until the stream fails, is no longer wanted or the
/// transport is gone.
async fn follow(
    stream: &mut ChangeStream<Document>,
    wakeups: &Weak<Wakeups>,
    shared: &Shared,
    timeout: Duration,
) -> Ended {
    loop {
        let next = tokio::time::timeout(AWAIT + timeout, stream.next_if_any()).await;
        let Some(wakeups) = wakeups.upgrade() else {
            return Ended::Failed("the transport is gone".to_owned());
        };
        match next {
            Ok(Ok(Some(event))) => dispatch(&wakeups, &event),
            Ok(Ok(None)) if stream.is_alive() => {}
            Ok(Ok(None)) => return Ended::Failed("the server closed it".to_owned()),
            Ok(Err(err)) => {
                return Ended::Failed(driver("reading the change stream")(err).to_string())
            }
            Err(_) => {
                return Ended::Failed(format!("no answer within {:?}", AWAIT + timeout));
            }
        }
        if shared.unwanted() {
            return Ended::Unwanted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_wake_their_queue_and_releases_every_queue() {
        let wakeups = Wakeups::default();
        // No listener: nothing to observe but that it does not panic on
        // events without a queue.
        dispatch(
            &wakeups,
            &doc! { "operationType": "insert", "fullDocument": { "queue": "q" } },
        );
        dispatch(&wakeups, &doc! { "operationType": "update" });
        dispatch(&wakeups, &doc! { "operationType": "insert" });
        let stages = pipeline();
        assert_eq!(stages.len(), 2);
        assert!(stages[1]
            .get_document("$project")
            .unwrap()
            .contains_key("ns"));
    }
}
