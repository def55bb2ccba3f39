//! Coalesced acks of a virtual transport: an ack joins the next flush,
//! which sends every ack queued so far in one
//! [`VirtualBackend::ack_many`] call (one Redis MULTI, one SQS
//! `DeleteMessageBatch` per ten, ...).
//!
//! A flush goes out when the acks queued reach the batch size (half the
//! channel's prefetch, at most the backend's
//! [`ack_batch_size`](VirtualBackend::ack_batch_size)), or
//! [`FLUSH_AFTER`] after the first queued ack, or when a channel or the
//! transport closes. Flushes run in the background (a failure is logged
//! and marks the connection lost when it is a connection error); with
//! [`MAX_FLUSHES_IN_FLIGHT`] full batches already under way, the ack that
//! fills the next one sends it itself and returns its outcome, so acks
//! never run ahead of the broker unboundedly. A batch size of 1 (prefetch
//! 1, or a backend that does not batch) sends each ack as it is made and
//! returns its outcome. A channel without a prefetch limit does not batch
//! either (as kombu-amqp: half of no window is no batch). The user's ack frees its prefetch slot
//! at once. An ack that never reaches the broker (the process dies, the
//! connection drops) leaves the message reserved: it is delivered again,
//! never lost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{Receipt, VirtualBackend};
use crate::error::Result;

/// Longest a queued ack waits for its batch (tokio's timers round it up to
/// their millisecond).
pub(crate) const FLUSH_AFTER: Duration = Duration::from_micros(500);

/// Full batches sent in the background at once; past that an ack that
/// fills a batch sends it itself and waits (backpressure).
const MAX_FLUSHES_IN_FLIGHT: usize = 2;

#[derive(Default)]
struct Pending {
    acks: Vec<(String, Receipt)>,
    /// A background flush is scheduled.
    timer_armed: bool,
}

/// The acks queued on one transport (shared by its channels), and the
/// backend they go to.
pub(crate) struct AckBatcher<B: VirtualBackend> {
    backend: Arc<B>,
    pending: Mutex<Pending>,
    /// Flushes under way (closing waits for them).
    in_flight: AtomicUsize,
    /// Full batches being sent in the background.
    background: AtomicUsize,
}

impl<B: VirtualBackend> AckBatcher<B> {
    pub(crate) fn new(backend: Arc<B>) -> Arc<Self> {
        Arc::new(AckBatcher {
            backend,
            pending: Mutex::new(Pending::default()),
            in_flight: AtomicUsize::new(0),
            background: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The batch size for a channel with this prefetch: half of it (so
    /// queued acks never hold the window full), at most the backend's; 1
    /// (each ack sent as it is made) without a prefetch limit, as on amqp.
    pub(crate) fn batch_for(&self, prefetch: u16) -> usize {
        let most = self.backend.ack_batch_size().max(1);
        (usize::from(prefetch) / 2).clamp(1, most)
    }

    /// Queue acks; flush now (and return how it went) when `batch` are
    /// queued, else within [`FLUSH_AFTER`].
    pub(crate) async fn ack(
        self: &Arc<Self>,
        items: impl IntoIterator<Item = (String, Receipt)>,
        batch: usize,
    ) -> Result<()> {
        let (now, arm) = {
            let mut pending = self.lock();
            pending.acks.extend(items);
            if pending.acks.len() >= batch {
                (Some(std::mem::take(&mut pending.acks)), false)
            } else {
                (None, !std::mem::replace(&mut pending.timer_armed, true))
            }
        };
        if let Some(acks) = now {
            if batch <= 1 || self.background.load(Ordering::Acquire) >= MAX_FLUSHES_IN_FLIGHT {
                // Enough under way: this ack waits for its own (backpressure).
                return self.send(acks).await;
            }
            self.send_in_background(acks);
            return Ok(());
        }
        if arm {
            let batcher = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(FLUSH_AFTER).await;
                let acks = {
                    let mut pending = batcher.lock();
                    pending.timer_armed = false;
                    std::mem::take(&mut pending.acks)
                };
                batcher.send_logged(acks).await;
            });
        }
        Ok(())
    }

    fn send_in_background(self: &Arc<Self>, acks: Vec<(String, Receipt)>) {
        // Counted before the task runs, so closing waits for it.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.background.fetch_add(1, Ordering::AcqRel);
        let batcher = self.clone();
        tokio::spawn(async move {
            batcher.send_logged(acks).await;
            batcher.background.fetch_sub(1, Ordering::AcqRel);
            batcher.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    async fn send_logged(&self, acks: Vec<(String, Receipt)>) {
        let count = acks.len();
        if let Err(err) = self.send(acks).await {
            tracing::warn!(
                error = %err,
                count,
                "acks could not be sent; those messages will be delivered again"
            );
        }
    }

    /// Send what is queued and wait (up to `wait`) for flushes under way:
    /// what a channel or the transport runs when it closes.
    pub(crate) async fn flush(&self, wait: Duration) -> Result<()> {
        let acks = std::mem::take(&mut self.lock().acks);
        let sent = self.send(acks).await;
        let deadline = tokio::time::Instant::now() + wait;
        while self.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sent
    }

    async fn send(&self, acks: Vec<(String, Receipt)>) -> Result<()> {
        if acks.is_empty() {
            return Ok(());
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let sent = self.backend.ack_many(&acks).await;
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        sent
    }
}
