//! The consume loop of a virtual channel: one task per channel that fetches
//! from the consumed queues within the prefetch limit and hands each message
//! to the consumer of its queue.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};

use super::admit::{Admitted, Prepared};
use super::{Fetched, FetchedBody, State, Unacked, VirtualBackend};
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

/// True when acks that took the unacked count from `before` to `after`
/// should wake the loop: the room they free reaches the low-water mark
/// (below it the loop fetches on its own after [`REFILL_DELAY`]), or the
/// window emptied, or there is no window. Waking on every ack cost a task
/// switch per message.
pub(super) fn room_reached(prefetch: u16, before: usize, after: usize) -> bool {
    if prefetch == 0 || after == 0 {
        return true;
    }
    let window = usize::from(prefetch);
    let mark = refill_at(prefetch);
    window.saturating_sub(before) < mark && window.saturating_sub(after) >= mark
}

/// One fetch under way: what it asked for and its outcome.
type InFlight = futures::future::BoxFuture<'static, (Vec<String>, usize, Result<Vec<Fetched>>)>;

pub(super) fn spawn_poller<B: VirtualBackend>(state: Weak<State<B>>) {
    let Some(backend) = state.upgrade().map(|s| s.backend.clone()) else {
        return;
    };
    tokio::spawn(async move {
        let most = backend.concurrent_fetches().max(1);
        // Since when the room has been below the low-water mark.
        let mut low_since: Option<Instant> = None;
        let mut fetches: FuturesUnordered<InFlight> = FuturesUnordered::new();
        // The room promised to the fetches under way.
        let mut asked = 0usize;
        loop {
            let Some(strong) = state.upgrade() else {
                // Gone without a close (it never happens while fetches are
                // under way: closing waits for the loop); put back what they
                // bring.
                while let Some((_, _, Ok(batch))) = fetches.next().await {
                    for fetched in batch {
                        let _ = match fetched.body {
                            FetchedBody::Envelope(envelope) => {
                                backend
                                    .requeue(&fetched.queue, &fetched.receipt, &envelope)
                                    .await
                            }
                            FetchedBody::Message(message) => {
                                backend
                                    .requeue_message(&fetched.queue, &fetched.receipt, message)
                                    .await
                            }
                            _ => Ok(()),
                        };
                    }
                }
                return;
            };
            let force = low_since.is_some_and(|since| since.elapsed() >= REFILL_DELAY);
            let next = if fetches.len() < most {
                next_step(&strong, force, asked)
            } else if strong.closed.load(Ordering::Acquire) || strong.lock().consumers.is_empty() {
                Next::Stop
            } else {
                Next::Wait
            };
            if !matches!(next, Next::Low) {
                low_since = None;
            }
            let wait = match next {
                Next::Stop => {
                    // What the fetches under way bring goes back (no
                    // consumer takes it), then the loop ends, unless a
                    // consumer came meanwhile.
                    while let Some((_, room, outcome)) = fetches.next().await {
                        asked -= room;
                        if let Ok(batch) = outcome {
                            let _ = deliver_batch(&strong, batch).await;
                        }
                    }
                    let mut inner = strong.lock();
                    if strong.closed.load(Ordering::Acquire) || inner.consumers.is_empty() {
                        inner.poller_running = false;
                        return;
                    }
                    continue;
                }
                Next::Fetch(queues, room) => {
                    asked += room;
                    let backend = backend.clone();
                    let wait = backend.polling_interval();
                    let stop = strong.stop_waiting.clone();
                    fetches.push(Box::pin(async move {
                        let outcome = backend
                            .fetch_batch_until(&queues, wait, room.max(1), &stop)
                            .await;
                        (queues, room, outcome)
                    }));
                    continue;
                }
                Next::Low => {
                    let since = *low_since.get_or_insert_with(Instant::now);
                    REFILL_DELAY.saturating_sub(since.elapsed())
                }
                Next::Wait => strong.backend.polling_interval(),
            };
            let wake = strong.wake_poller.clone();
            drop(strong);
            // Wake on a fetch done, on room (an ack, a consumer), or at the
            // timeout (which also re-checks the weak reference).
            let done = tokio::select! {
                done = fetches.next(), if !fetches.is_empty() => done,
                _ = wake.notified() => None,
                _ = tokio::time::sleep(wait) => None,
            };
            let Some((queues, room, outcome)) = done else {
                continue;
            };
            asked -= room;
            let Some(strong) = state.upgrade() else {
                continue;
            };
            let failed = match outcome {
                Ok(batch) => deliver_batch(&strong, batch).await.err(),
                Err(err) => Some(err),
            };
            if let Some(err) = failed {
                report(&strong, &queues, err).await;
                let interval = strong.backend.polling_interval();
                drop(strong);
                tokio::time::sleep(interval).await;
            }
        }
    });
}

/// Decide the loop's next step; `force` fetches even below the low-water
/// mark (the loop has waited [`REFILL_DELAY`] for more room); `asked` is
/// the room the fetches under way may fill.
fn next_step<B: VirtualBackend>(state: &State<B>, force: bool, asked: usize) -> Next {
    let inner = &mut *state.lock();
    if state.closed.load(Ordering::Acquire) || inner.consumers.is_empty() {
        return Next::Stop;
    }
    let taken = inner.unacked.len() + asked;
    if inner.prefetch > 0 && taken >= usize::from(inner.prefetch) {
        return Next::Wait;
    }
    // Room left under the prefetch limit (no limit: as many as the backend
    // likes to take at once, one fetch at a time).
    let room = if inner.prefetch > 0 {
        usize::from(inner.prefetch) - taken
    } else if asked > 0 {
        return Next::Wait;
    } else {
        usize::from(u16::MAX)
    };
    // Below the low-water mark, but only while messages are still out: an
    // empty window always fetches.
    if !force && inner.prefetch > 0 && taken > 0 && room < refill_at(inner.prefetch) {
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

/// Admit a fetched batch and hand it to the consumers of its queues.
async fn deliver_batch<B: VirtualBackend>(
    state: &Arc<State<B>>,
    batch: Vec<Fetched>,
) -> Result<()> {
    let mut first_error = None;
    // The consumer of the previous message's queue and that queue's
    // declaration (a batch usually comes from one queue): looked up once,
    // not per message. Messages that need nothing awaited are readied in
    // a row and handed out together (one lock, one send, one wake-up of
    // the consumer); the others go the slow way, in their turn.
    let mut group: Option<Group> = None;
    let mut ready: Vec<Prepared> = Vec::with_capacity(batch.len());
    let mut outbox: Batch = Vec::with_capacity(batch.len());
    for fetched in batch {
        if !matches!(&group, Some(g) if g.queue == fetched.queue) {
            if let Some(g) = &group {
                g.flush(state, &mut ready, &mut outbox);
                if let Some(target) = &g.target {
                    hand_over(state, &target.2, std::mem::take(&mut outbox)).await?;
                }
            }
            group = Some(Group {
                queue: fetched.queue.clone(),
                target: consumer_of(state, &fetched.queue),
                declaration: state.known_declaration(&fetched.queue),
            });
        }
        let g = group.as_mut().expect("set above");
        let fetched = match (&g.target, &g.declaration) {
            (Some((_, false, _)), Some(declaration)) => {
                match state.prepare(fetched, declaration.as_deref()) {
                    Ok(prepared) => {
                        ready.push(prepared);
                        continue;
                    }
                    Err(fetched) => fetched,
                }
            }
            _ => fetched,
        };
        // The slow way; what was readied before it goes first.
        g.flush(state, &mut ready, &mut outbox);
        // Admit every message of the batch even if one fails, so none
        // stays reserved without an owner.
        match admit(state, fetched, g.target.as_ref()).await {
            Ok(Some(item)) => outbox.push(item),
            Ok(None) => {}
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
        g.declaration = state.known_declaration(&g.queue);
    }
    if let Some(g) = &group {
        g.flush(state, &mut ready, &mut outbox);
        if let Some(target) = &g.target {
            hand_over(state, &target.2, outbox).await?;
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The messages of one queue in a fetched batch: who gets them and the
/// queue's declaration, if at hand.
struct Group {
    queue: String,
    target: Option<Target>,
    declaration: Option<Option<Arc<crate::entity::Queue>>>,
}

impl Group {
    /// Hand out what is readied (tags given, held as unacked) into `outbox`.
    fn flush<B: VirtualBackend>(
        &self,
        state: &State<B>,
        ready: &mut Vec<Prepared>,
        outbox: &mut Batch,
    ) {
        if ready.is_empty() {
            return;
        }
        let tag = self.target.as_ref().map(|(tag, _, _)| tag.as_str());
        outbox.extend(
            state
                .hand_out(std::mem::take(ready), tag, false)
                .into_iter()
                .map(Ok),
        );
    }
}

/// What goes to a consumer in one send: the deliveries of one fetch.
pub(super) type Batch = Vec<Result<Box<Delivery>>>;

/// The consumer a message goes to: its tag, no_ack and sender.
type Target = (String, bool, tokio::sync::mpsc::Sender<Batch>);

fn consumer_of<B: VirtualBackend>(state: &State<B>, queue: &str) -> Option<Target> {
    let inner = state.lock();
    inner
        .consumers
        .iter()
        .find(|c| c.queue == queue)
        .map(|c| (c.tag.clone(), c.no_ack, c.sender.clone()))
}

/// Admit one fetched message for the consumer of its queue (`target`, or
/// none when the consumer left: then it goes back): what to hand over.
async fn admit<B: VirtualBackend>(
    state: &Arc<State<B>>,
    fetched: super::Fetched,
    target: Option<&Target>,
) -> Result<Option<Result<Box<Delivery>>>> {
    let Some((tag, no_ack, _)) = target else {
        let queue = fetched.queue;
        // The consumer left (or the channel closed) while we fetched.
        if let Some(item) = Unacked::fetched(queue, fetched.receipt, fetched.body) {
            state.release(item, false).await?;
        }
        return Ok(None);
    };
    Ok(match state.admit(fetched, *no_ack, Some(tag)).await? {
        Admitted::Deliver(delivery) => Some(Ok(delivery)),
        Admitted::Skipped => None,
        Admitted::Corrupt(error) => Some(Err(error)),
    })
}

/// Send deliveries to their consumer; if the consumer is gone, put them back.
async fn hand_over<B: VirtualBackend>(
    state: &Arc<State<B>>,
    sender: &tokio::sync::mpsc::Sender<Batch>,
    batch: Batch,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let Err(returned) = sender.send(batch).await else {
        return Ok(());
    };
    // Its receiver is gone: forget the consumer and put the messages back.
    let items: Vec<Unacked> = {
        let mut inner = state.lock();
        inner.consumers.retain(|c| !c.sender.is_closed());
        returned
            .0
            .into_iter()
            .filter_map(|d| d.ok())
            .filter_map(|d| inner.unacked.remove(d.delivery_tag))
            .collect()
    };
    let mut first_error = None;
    for item in items {
        if let Err(err) = state.release(item, false).await {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
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
        let _ = sender.try_send(vec![Err(copy)]);
    }
}

#[cfg(test)]
mod tests {
    use super::room_reached;

    #[test]
    fn acks_wake_the_loop_at_the_low_water_mark() {
        // Window 100, mark 25: full until 75 are unacked.
        assert!(!room_reached(100, 100, 99));
        assert!(!room_reached(100, 77, 76));
        assert!(room_reached(100, 76, 75), "the 25th free slot");
        assert!(!room_reached(100, 75, 74), "already past the mark");
        assert!(room_reached(100, 90, 10), "a multiple ack across it");
        assert!(room_reached(100, 1, 0), "the window emptied");
        assert!(room_reached(0, 5, 4), "no window");
        assert!(room_reached(1, 1, 0));
        assert!(room_reached(4, 4, 3), "mark 1");
    }
}
