//! The consume loop of a virtual channel: one task per channel that fetches
//! from the consumed queues within the prefetch limit and hands each message
//! to the consumer of its queue.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{Admitted, State, Unacked, VirtualBackend};
use crate::error::Result;
use crate::message::Delivery;

/// What the loop should do next.
enum Next {
    /// Fetch up to this many messages from these queues (already rotated
    /// for fairness).
    Fetch(Vec<String>, usize),
    /// Wait for room (prefetch full) or for a consumer.
    Wait,
    /// Some room, but less than the low-water mark: wait a moment for more
    /// acks so the next fetch brings a batch, not one message per ack.
    Low,
    /// The channel closed or every consumer left.
    Stop,
}

/// How long the loop waits, with less room than [`refill_at`], for more
/// acks before it fetches into whatever room there is. A consumer that holds
/// its messages is never stalled longer than this.
const REFILL_DELAY: Duration = Duration::from_millis(2);

/// The low-water mark: the loop fetches once this much of the prefetch
/// window is free (a quarter of it), so each fetch brings a batch.
fn refill_at(prefetch: u16) -> usize {
    (usize::from(prefetch) / 4).max(1)
}

pub(super) fn spawn_poller<B: VirtualBackend>(state: Weak<State<B>>) {
    tokio::spawn(async move {
        // Since when the room has been below the low-water mark.
        let mut low_since: Option<Instant> = None;
        loop {
            let Some(strong) = state.upgrade() else {
                return;
            };
            let force = low_since.is_some_and(|since| since.elapsed() >= REFILL_DELAY);
            let next = next_step(&strong, force);
            if !matches!(next, Next::Low) {
                low_since = None;
            }
            match next {
                Next::Stop => return,
                Next::Low => {
                    let since = *low_since.get_or_insert_with(Instant::now);
                    let wake = strong.wake_poller.clone();
                    drop(strong);
                    let left = REFILL_DELAY.saturating_sub(since.elapsed());
                    let _ = tokio::time::timeout(left, wake.notified()).await;
                }
                Next::Wait => {
                    let wake = strong.wake_poller.clone();
                    let interval = strong.backend.polling_interval();
                    drop(strong);
                    // The timeout re-checks the weak reference now and then.
                    let _ = tokio::time::timeout(interval, wake.notified()).await;
                }
                Next::Fetch(queues, room) => {
                    if let Err(err) = fetch_once(&strong, &queues, room).await {
                        report(&strong, &queues, err).await;
                        let interval = strong.backend.polling_interval();
                        drop(strong);
                        tokio::time::sleep(interval).await;
                    }
                }
            }
        }
    });
}

/// Decide the loop's next step; `force` fetches even below the low-water
/// mark (the loop has waited [`REFILL_DELAY`] for more room).
fn next_step<B: VirtualBackend>(state: &State<B>, force: bool) -> Next {
    let mut inner = state.lock();
    if state.closed.load(Ordering::Acquire) || inner.consumers.is_empty() {
        inner.poller_running = false;
        return Next::Stop;
    }
    if inner.prefetch > 0 && inner.unacked.len() >= usize::from(inner.prefetch) {
        return Next::Wait;
    }
    // Room left under the prefetch limit (no limit: as many as the backend
    // likes to take at once).
    let room = if inner.prefetch > 0 {
        usize::from(inner.prefetch) - inner.unacked.len()
    } else {
        usize::from(u16::MAX)
    };
    // Below the low-water mark, but only while messages are still out: an
    // empty window always fetches.
    if !force && inner.prefetch > 0 && !inner.unacked.is_empty() && room < refill_at(inner.prefetch)
    {
        return Next::Low;
    }
    let mut queues: Vec<String> = Vec::new();
    for consumer in &inner.consumers {
        if !queues.contains(&consumer.queue) {
            queues.push(consumer.queue.clone());
        }
    }
    inner.rotation = inner.rotation.wrapping_add(1);
    let shift = inner.rotation % queues.len();
    queues.rotate_left(shift);
    Next::Fetch(queues, room)
}

async fn fetch_once<B: VirtualBackend>(
    state: &Arc<State<B>>,
    queues: &[String],
    room: usize,
) -> Result<()> {
    let wait = state.backend.polling_interval();
    let batch = state.backend.fetch_batch(queues, wait, room.max(1)).await?;
    let mut first_error = None;
    // The consumer of the previous message's queue (a batch usually comes
    // from one queue): looked up once, not per message.
    let mut consumer: Option<(String, Option<Target>)> = None;
    for fetched in batch {
        if !matches!(&consumer, Some((queue, _)) if *queue == fetched.queue) {
            consumer = Some((fetched.queue.clone(), consumer_of(state, &fetched.queue)));
        }
        let target = consumer.as_ref().and_then(|(_, target)| target.as_ref());
        // Deliver every message of the batch even if one fails, so none
        // stays reserved without an owner.
        if let Err(err) = deliver(state, fetched, target).await {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The consumer a message goes to: its tag, no_ack and sender.
type Target = (String, bool, tokio::sync::mpsc::Sender<Result<Delivery>>);

fn consumer_of<B: VirtualBackend>(state: &State<B>, queue: &str) -> Option<Target> {
    let inner = state.lock();
    inner
        .consumers
        .iter()
        .find(|c| c.queue == queue)
        .map(|c| (c.tag.clone(), c.no_ack, c.sender.clone()))
}

/// Hand one fetched message to the consumer of its queue (`target`, or
/// none when the consumer left).
async fn deliver<B: VirtualBackend>(
    state: &Arc<State<B>>,
    fetched: super::Fetched,
    target: Option<&Target>,
) -> Result<()> {
    let Some((tag, no_ack, sender)) = target else {
        let queue = fetched.queue;
        // The consumer left (or the channel closed) while we fetched.
        if let super::FetchedBody::Envelope(envelope) = fetched.body {
            let item = Unacked::whole(queue, fetched.receipt, envelope);
            state.release(item, false).await?;
        }
        return Ok(());
    };
    match state.admit(fetched, *no_ack, Some(tag)).await? {
        Admitted::Deliver(delivery) => hand_over(state, sender, *delivery).await,
        Admitted::Skipped => Ok(()),
        Admitted::Corrupt(error) => {
            let _ = sender.send(Err(error)).await;
            Ok(())
        }
    }
}

/// Send a delivery to its consumer; if the consumer is gone, put it back.
async fn hand_over<B: VirtualBackend>(
    state: &Arc<State<B>>,
    sender: &tokio::sync::mpsc::Sender<Result<Delivery>>,
    delivery: Delivery,
) -> Result<()> {
    let tag = delivery.delivery_tag;
    if sender.send(Ok(delivery)).await.is_err() {
        // Its receiver is gone: forget the consumer and put the message back.
        let item = {
            let mut inner = state.lock();
            inner.consumers.retain(|c| !c.sender.is_closed());
            inner.unacked.remove(&tag)
        };
        if let Some(item) = item {
            state.release(item, false).await?;
        }
    }
    Ok(())
}

/// Tell every consumer of the failing queues, once, and log it.
async fn report<B: VirtualBackend>(state: &Arc<State<B>>, queues: &[String], err: crate::Error) {
    tracing::warn!(error = %err, ?queues, "virtual consume loop: fetch failed; retrying");
    let senders: Vec<_> = state
        .lock()
        .consumers
        .iter()
        .filter(|c| queues.contains(&c.queue))
        .map(|c| c.sender.clone())
        .collect();
    for sender in senders {
        let copy = crate::Error::new(err.kind(), err.message().to_owned());
        let _ = sender.try_send(Err(copy));
    }
}
