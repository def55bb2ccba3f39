//! Fanout through the capped `messages.broadcast` collection, as kombu
//! does it: a publisher inserts `{payload, queue: <exchange>}`, and every
//! process with a queue bound to that exchange reads new documents with a
//! tailable cursor and hands each one to each of its bound queues.
//!
//! One tail (a task with a tailable, awaiting cursor) per fanout exchange,
//! feeding an in-memory buffer per queue. Delivery is at-most-once, as in
//! kombu: a message published while no process tails the exchange, or
//! still buffered when the process dies, is lost. A tail starts where the
//! exchange's documents end when the queue is bound (or first fetched).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::TryStreamExt;
use kombu_core::spi::Fetched;
use kombu_core::{Envelope, Result};
use mongodb::bson::{doc, Document};
use mongodb::options::CursorType;
use mongodb::Collection;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::documents::{payload_bytes, payload_of};
use crate::error::driver;

/// Receipts of broadcast messages start with this (their ack is a no-op).
pub(crate) const RECEIPT_PREFIX: &str = "b:";

/// Messages kept per queue before the oldest are dropped.
const BUFFER_LIMIT: usize = 10_000;

/// How long one wait of the tailable cursor lasts on the server.
const AWAIT: Duration = Duration::from_secs(1);

struct Tail {
    queues: HashSet<String>,
    task: AbortHandle,
}

#[derive(Default)]
struct State {
    /// Fanout exchange -> its tail.
    tails: HashMap<String, Tail>,
    /// Queue -> broadcast messages not fetched yet (payload bytes).
    buffers: HashMap<String, VecDeque<Vec<u8>>>,
    next_receipt: u64,
}

/// The fanout side of one transport.
pub(crate) struct Broadcast {
    collection: Collection<Document>,
    state: Mutex<State>,
    /// Woken when a tail buffers a message.
    pub(crate) arrived: Notify,
    retry_pause: Duration,
}

impl Broadcast {
    pub(crate) fn new(collection: Collection<Document>, retry_pause: Duration) -> Arc<Broadcast> {
        Arc::new(Broadcast {
            collection,
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
            retry_pause,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publish to a fanout exchange: kombu's `_put_fanout`.
    pub(crate) async fn publish(&self, exchange: &str, envelope: &Envelope) -> Result<()> {
        self.collection
            .insert_one(doc! { "payload": payload_of(envelope), "queue": exchange })
            .await
            .map_err(driver("publishing to the broadcast collection"))?;
        Ok(())
    }

    /// True when `queue` gets `exchange`'s broadcasts in this process.
    pub(crate) fn is_subscribed(&self, exchange: &str, queue: &str) -> bool {
        self.lock()
            .tails
            .get(exchange)
            .is_some_and(|t| t.queues.contains(queue))
    }

    /// Deliver `exchange`'s broadcasts to `queue` from now on.
    pub(crate) async fn subscribe(self: &Arc<Self>, exchange: &str, queue: &str) -> Result<()> {
        {
            let mut state = self.lock();
            if let Some(tail) = state.tails.get_mut(exchange) {
                tail.queues.insert(queue.to_owned());
                state.buffers.entry(queue.to_owned()).or_default();
                return Ok(());
            }
        }
        // Where the exchange's documents end now: the tail skips them.
        let start = self
            .collection
            .count_documents(doc! { "queue": exchange })
            .await
            .map_err(driver("counting broadcast messages"))?;
        let mut state = self.lock();
        if let Some(tail) = state.tails.get_mut(exchange) {
            // Another subscriber started the tail meanwhile.
            tail.queues.insert(queue.to_owned());
        } else {
            let task = tokio::spawn(run_tail(
                Arc::downgrade(self),
                self.collection.clone(),
                exchange.to_owned(),
                start,
                self.retry_pause,
            ))
            .abort_handle();
            state.tails.insert(
                exchange.to_owned(),
                Tail {
                    queues: HashSet::from([queue.to_owned()]),
                    task,
                },
            );
        }
        state.buffers.entry(queue.to_owned()).or_default();
        Ok(())
    }

    /// Stop delivering `exchange`'s broadcasts to `queue`.
    pub(crate) fn unsubscribe(&self, exchange: &str, queue: &str) {
        let mut state = self.lock();
        let Some(tail) = state.tails.get_mut(exchange) else {
            return;
        };
        tail.queues.remove(queue);
        if tail.queues.is_empty() {
            if let Some(tail) = state.tails.remove(exchange) {
                tail.task.abort();
            }
        }
        let still_bound = state.tails.values().any(|t| t.queues.contains(queue));
        if !still_bound {
            state.buffers.remove(queue);
        }
    }

    /// Forget a deleted queue: no more broadcasts, buffer dropped.
    pub(crate) fn forget_queue(&self, queue: &str) {
        let exchanges: Vec<String> = self
            .lock()
            .tails
            .iter()
            .filter(|(_, t)| t.queues.contains(queue))
            .map(|(e, _)| e.clone())
            .collect();
        for exchange in exchanges {
            self.unsubscribe(&exchange, queue);
        }
        self.lock().buffers.remove(queue);
    }

    /// Forget a deleted exchange: its tail stops.
    pub(crate) fn forget_exchange(&self, exchange: &str) {
        let queues: Vec<String> = self
            .lock()
            .tails
            .get(exchange)
            .map(|t| t.queues.iter().cloned().collect())
            .unwrap_or_default();
        for queue in queues {
            self.unsubscribe(exchange, &queue);
        }
    }

    /// Up to `max` buffered broadcast messages of `queue`, oldest first.
    pub(crate) fn take_up_to(&self, queue: &str, max: usize) -> Vec<Fetched> {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(buffer) = state.buffers.get_mut(queue) else {
            return Vec::new();
        };
        let count = max.min(buffer.len());
        buffer
            .drain(..count)
            .map(|payload| {
                state.next_receipt += 1;
                let receipt = format!("{RECEIPT_PREFIX}{}", state.next_receipt);
                Fetched::from_json(queue, receipt, &payload)
            })
            .collect()
    }

    /// Put a fetched broadcast message back at the front of its buffer.
    pub(crate) fn put_back(&self, queue: &str, envelope: &Envelope) {
        self.lock()
            .buffers
            .entry(queue.to_owned())
            .or_default()
            .push_front(envelope.to_json());
        self.arrived.notify_waiters();
    }

    /// Broadcast messages waiting in `queue`'s buffer.
    pub(crate) fn buffered(&self, queue: &str) -> u64 {
        self.lock().buffers.get(queue).map_or(0, |b| b.len() as u64)
    }

    /// Drop `queue`'s buffered messages; returns how many.
    pub(crate) fn purge(&self, queue: &str) -> u64 {
        self.lock().buffers.get_mut(queue).map_or(0, |b| {
            let n = b.len() as u64;
            b.clear();
            n
        })
    }

    /// Stop every tail.
    pub(crate) fn shutdown(&self) {
        let mut state = self.lock();
        for (_, tail) in state.tails.drain() {
            tail.task.abort();
        }
        state.buffers.clear();
    }

    /// A tail read `document` of `exchange`: copy it to each bound queue.
    fn deliver(&self, exchange: &str, document: &Document) {
        let payload = payload_bytes(document);
        {
            let mut state = self.lock();
            let queues: Vec<String> = match state.tails.get(exchange) {
                Some(tail) => tail.queues.iter().cloned().collect(),
                None => return,
            };
            for queue in queues {
                let buffer = state.buffers.entry(queue.clone()).or_default();
                if buffer.len() >= BUFFER_LIMIT {
                    buffer.pop_front();
                    tracing::warn!(
                        queue = %queue,
                        exchange,
                        "fanout buffer full ({BUFFER_LIMIT}): oldest broadcast message dropped"
                    );
                }
                buffer.push_back(payload.clone());
            }
        }
        self.arrived.notify_waiters();
    }
}

/// Read `exchange`'s new broadcast documents until aborted, starting after
/// the first `start` of them; start again when the cursor dies.
async fn run_tail(
    broadcast: Weak<Broadcast>,
    collection: Collection<Document>,
    exchange: String,
    start: u64,
    retry_pause: Duration,
) {
    let mut seen = start;
    loop {
        let outcome = tail_once(&broadcast, &collection, &exchange, &mut seen).await;
        if broadcast.strong_count() == 0 {
            return;
        }
        match outcome {
            Ok(()) => tracing::debug!(exchange, "broadcast cursor ended; reopening"),
            Err(err) => {
                tracing::warn!(exchange, error = %err, "broadcast cursor failed; reopening")
            }
        }
        tokio::time::sleep(retry_pause).await;
        // Capped collections drop old documents: never skip past the end.
        if let Ok(count) = collection
            .count_documents(doc! { "queue": &exchange })
            .await
        {
            seen = seen.min(count);
        }
    }
}

async fn tail_once(
    broadcast: &Weak<Broadcast>,
    collection: &Collection<Document>,
    exchange: &str,
    seen: &mut u64,
) -> Result<()> {
    let mut cursor = collection
        .find(doc! { "queue": exchange })
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(AWAIT)
        .skip(*seen)
        .await
        .map_err(driver("opening the broadcast cursor"))?;
    while let Some(document) = cursor
        .try_next()
        .await
        .map_err(driver("reading the broadcast cursor"))?
    {
        *seen += 1;
        let Some(broadcast) = broadcast.upgrade() else {
            return Ok(());
        };
        broadcast.deliver(exchange, &document);
    }
    Ok(())
}
