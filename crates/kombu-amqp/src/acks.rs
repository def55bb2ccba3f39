//! Acks made in delivery order, sent as one multiple-ack per batch.
//!
//! Acking each message costs one `basic.ack` frame, and RabbitMQ does one
//! unit of work per frame; acking with `multiple=true` settles a run of
//! messages in one frame. A `basic.ack` with `multiple=true` of tag `t`
//! settles *every* unacked delivery of the channel up to `t`, so it may
//! only be sent when the user has settled all of them. Per channel we keep
//! `settled_through`: every tag in `1..=settled_through` has been acked or
//! rejected by the user (tags count from 1 per channel, over every
//! consumer and `basic.get` of the channel). An ack of the next tag is
//! deferred; the deferred acks go out as one multiple-ack of the highest of
//! them ([`AckState::deferred_top`], always a tag the user acked and the
//! broker still holds) when:
//!
//! - the batch is full: half the smallest prefetch set on the channel
//!   (at most [`MAX_BATCH`]), so deferred acks never hold the prefetch
//!   window full;
//! - [`FLUSH_AFTER`] has passed since the first deferred ack;
//! - before a reject, a user multiple-ack, an out-of-order duplicate, a
//!   `basic.qos`, a `basic.cancel` and a channel or connection close.
//!
//! Acks out of order (a lower tag is still unsettled) are sent at once,
//! alone. A delivery the user never settles stops the run: later acks are
//! sent one by one, which is slower and still exact. Nothing the user did
//! not ack is ever acked.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicRejectOptions};

use crate::errors::op;

/// Most acks sent as one multiple-ack.
pub(crate) const MAX_BATCH: u64 = 64;

/// Longest a deferred ack waits for its batch.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(4);

/// A frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckFrame {
    /// `basic.ack` of one tag.
    Single(u64),
    /// `basic.ack` with `multiple=true`.
    Multiple(u64),
}

/// What to do for one user ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AckPlan {
    /// Send first: the deferred acks, as one multiple-ack.
    pub(crate) flush: Option<AckFrame>,
    /// Then send this.
    pub(crate) send: Option<AckFrame>,
    /// The ack was deferred and no flush timer is running.
    pub(crate) arm_timer: bool,
}

/// The bookkeeping of one channel (pure: no I/O, unit-tested).
#[derive(Debug)]
pub(crate) struct AckState {
    /// Every tag in `1..=settled_through` was acked or rejected by the user.
    settled_through: u64,
    /// Tags above `settled_through + 1` the user settled.
    settled_ahead: BTreeSet<u64>,
    /// The highest deferred (not yet sent) ack; every tag below it is settled.
    deferred_top: Option<u64>,
    /// How many acks are deferred.
    deferred: u64,
    /// Flush at this many deferred acks (below 2: never defer).
    batch: u64,
    /// The smallest non-zero prefetch set on the channel.
    min_prefetch: Option<u16>,
    /// A flush timer is pending.
    timer_armed: bool,
}

impl Default for AckState {
    fn default() -> Self {
        AckState {
            settled_through: 0,
            settled_ahead: BTreeSet::new(),
            deferred_top: None,
            deferred: 0,
            batch: MAX_BATCH,
            min_prefetch: None,
            timer_armed: false,
        }
    }
}

impl AckState {
    /// Note that `tag` is settled (acked, rejected, or delivered with no_ack).
    pub(crate) fn settle(&mut self, tag: u64) {
        if tag <= self.settled_through {
            return;
        }
        if tag == self.settled_through + 1 {
            self.settled_through = tag;
            while self.settled_ahead.remove(&(self.settled_through + 1)) {
                self.settled_through += 1;
            }
        } else {
            self.settled_ahead.insert(tag);
        }
    }

    /// Note a multiple-ack (or multiple-reject) of every tag up to `tag`.
    fn settle_through(&mut self, tag: u64) {
        if tag > self.settled_through {
            self.settled_through = tag;
            self.settled_ahead = self.settled_ahead.split_off(&(tag + 1));
            while self.settled_ahead.remove(&(self.settled_through + 1)) {
                self.settled_through += 1;
            }
        }
    }

    fn is_settled(&self, tag: u64) -> bool {
        tag <= self.settled_through || self.settled_ahead.contains(&tag)
    }

    /// Take the deferred acks as one frame.
    pub(crate) fn take_deferred(&mut self) -> Option<AckFrame> {
        self.deferred = 0;
        self.deferred_top.take().map(AckFrame::Multiple)
    }

    /// How many acks wait.
    #[cfg(test)]
    pub(crate) fn deferred(&self) -> u64 {
        self.deferred
    }

    /// A prefetch was set on the channel: batches stay below half of it.
    pub(crate) fn set_prefetch(&mut self, prefetch: u16) {
        if prefetch > 0 {
            let smallest = self.min_prefetch.map_or(prefetch, |p| p.min(prefetch));
            self.min_prefetch = Some(smallest);
            self.batch = (u64::from(smallest) / 2).min(MAX_BATCH);
        }
    }

    /// The user acked `tag` (with `multiple` as given); `can_defer` is false
    /// where no timer can run. The caller sends `flush` then `send`.
    pub(crate) fn ack(&mut self, tag: u64, multiple: bool, can_defer: bool) -> AckPlan {
        if multiple {
            // The user's own multiple-ack: sent as is; it covers the
            // deferred acks at or below it.
            let flush = match self.deferred_top {
                Some(top) if top > tag => self.take_deferred(),
                Some(_) => {
                    self.take_deferred();
                    None
                }
                None => None,
            };
            self.settle_through(tag);
            return AckPlan {
                flush,
                send: Some(AckFrame::Multiple(tag)),
                arm_timer: false,
            };
        }
        if self.is_settled(tag) {
            // Acked twice (or after a reject): send it as asked, after the
            // deferred ones, and let the broker answer as it would have.
            return AckPlan {
                flush: self.take_deferred(),
                send: Some(AckFrame::Single(tag)),
                arm_timer: false,
            };
        }
        if tag != self.settled_through + 1 {
            // Out of order: a lower tag is still unsettled.
            self.settle(tag);
            return AckPlan {
                flush: None,
                send: Some(AckFrame::Single(tag)),
                arm_timer: false,
            };
        }
        self.settle(tag);
        if !can_defer || self.batch < 2 || self.deferred + 1 >= self.batch {
            // Send now; a multiple-ack of `tag` takes the deferred ones too.
            let send = if self.take_deferred().is_some() {
                AckFrame::Multiple(tag)
            } else {
                AckFrame::Single(tag)
            };
            return AckPlan {
                flush: None,
                send: Some(send),
                arm_timer: false,
            };
        }
        self.deferred_top = Some(tag);
        self.deferred += 1;
        let arm_timer = !self.timer_armed;
        self.timer_armed = true;
        AckPlan {
            flush: None,
            send: None,
            arm_timer,
        }
    }
}

/// The ack coalescing of one channel: the state and the order of frames.
pub(crate) struct AckCoalescer {
    channel: lapin::Channel,
    state: Mutex<AckState>,
    /// Held from deciding on frames until they are sent, so frames leave in
    /// the order they were decided.
    wire: tokio::sync::Mutex<()>,
    /// Ack coalescing is on (the `ack_coalescing` transport option).
    enabled: AtomicBool,
}

impl AckCoalescer {
    pub(crate) fn new(channel: lapin::Channel, enabled: bool) -> Arc<Self> {
        Arc::new(AckCoalescer {
            channel,
            state: Mutex::new(AckState::default()),
            wire: tokio::sync::Mutex::new(()),
            enabled: AtomicBool::new(enabled),
        })
    }

    fn state(&self) -> MutexGuard<'_, AckState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A delivery nobody will ack (consumed or got with no_ack).
    pub(crate) fn note_unacked_delivery(&self, tag: u64) {
        self.state().settle(tag);
    }

    async fn send(&self, frame: AckFrame) -> kombu_core::Result<()> {
        let (tag, multiple) = match frame {
            AckFrame::Single(tag) => (tag, false),
            AckFrame::Multiple(tag) => (tag, true),
        };
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple })
            .await
            .map_err(op("basic.ack"))
    }

    /// The user acks `tag`.
    pub(crate) async fn ack(self: &Arc<Self>, tag: u64, multiple: bool) -> kombu_core::Result<()> {
        let _wire = self.wire.lock().await;
        let can_defer =
            self.enabled.load(Ordering::Relaxed) && tokio::runtime::Handle::try_current().is_ok();
        let plan = self.state().ack(tag, multiple, can_defer);
        if let Some(frame) = plan.flush {
            self.send(frame).await?;
        }
        if let Some(frame) = plan.send {
            self.send(frame).await?;
        }
        if plan.arm_timer {
            let this: Weak<Self> = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(FLUSH_AFTER).await;
                if let Some(this) = this.upgrade() {
                    if let Err(err) = this.flush_on_timer().await {
                        tracing::debug!(error = %err, "sending deferred acks failed");
                    }
                }
            });
        }
        Ok(())
    }

    async fn flush_on_timer(&self) -> kombu_core::Result<()> {
        let _wire = self.wire.lock().await;
        let frame = {
            let mut state = self.state();
            state.timer_armed = false;
            state.take_deferred()
        };
        match frame {
            Some(frame) => self.send(frame).await,
            None => Ok(()),
        }
    }

    /// Send the deferred acks now.
    pub(crate) async fn flush(&self) -> kombu_core::Result<()> {
        let _wire = self.wire.lock().await;
        self.flush_locked().await
    }

    async fn flush_locked(&self) -> kombu_core::Result<()> {
        let frame = self.state().take_deferred();
        match frame {
            // A channel already closed has nothing to ack any more.
            Some(frame) if self.channel.status().connected() => self.send(frame).await,
            _ => Ok(()),
        }
    }

    /// The user rejects `tag`: the deferred acks go first.
    pub(crate) async fn reject(&self, tag: u64, requeue: bool) -> kombu_core::Result<()> {
        let _wire = self.wire.lock().await;
        self.flush_locked().await?;
        self.channel
            .basic_reject(tag, BasicRejectOptions { requeue })
            .await
            .map_err(op("basic.reject"))?;
        // Only once sent: a later multiple-ack must never ack a message
        // whose reject did not go out.
        self.state().settle(tag);
        Ok(())
    }

    /// A prefetch is set: flush, and keep batches below half of it.
    pub(crate) async fn set_prefetch(&self, prefetch: u16) -> kombu_core::Result<()> {
        let _wire = self.wire.lock().await;
        self.state().set_prefetch(prefetch);
        self.flush_locked().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(prefetch: u16) -> AckState {
        let mut s = AckState::default();
        s.set_prefetch(prefetch);
        s
    }

    #[test]
    fn in_order_acks_are_deferred_then_sent_as_one_multiple_ack() {
        let mut s = state(10); // batch of 5
        for tag in 1..=4 {
            let plan = s.ack(tag, false, true);
            assert_eq!(plan.send, None);
            assert_eq!(plan.flush, None);
            assert_eq!(plan.arm_timer, tag == 1);
        }
        let plan = s.ack(5, false, true);
        assert_eq!(plan.send, Some(AckFrame::Multiple(5)));
        assert_eq!(s.deferred(), 0);
    }

    #[test]
    fn a_gap_is_never_covered() {
        let mut s = state(100);
        assert_eq!(s.ack(1, false, true).send, None);
        assert_eq!(s.ack(2, false, true).send, None);
        // 3 is not acked: 4 goes alone, and the flush acks up to 2 only.
        assert_eq!(s.ack(4, false, true).send, Some(AckFrame::Single(4)));
        assert_eq!(s.take_deferred(), Some(AckFrame::Multiple(2)));
        // 3 acked late: 1..=4 are settled, 3 is deferred and covers only itself.
        assert_eq!(s.ack(3, false, true).send, None);
        assert_eq!(s.take_deferred(), Some(AckFrame::Multiple(3)));
        assert_eq!(s.ack(5, false, true).send, None);
        assert_eq!(s.take_deferred(), Some(AckFrame::Multiple(5)));
    }

    #[test]
    fn rejects_count_as_settled_and_never_get_acked_after() {
        let mut s = state(100);
        s.ack(1, false, true);
        s.settle(2); // rejected (sent after a flush)
        assert_eq!(s.take_deferred(), Some(AckFrame::Multiple(1)));
        // 3 follows a settled run: deferred; its multiple-ack skips 2,
        // which the broker no longer holds.
        assert_eq!(s.ack(3, false, true).send, None);
        assert_eq!(s.take_deferred(), Some(AckFrame::Multiple(3)));
    }

    #[test]
    fn small_prefetch_or_no_runtime_sends_at_once() {
        let mut s = state(1);
        assert_eq!(s.ack(1, false, true).send, Some(AckFrame::Single(1)));
        let mut s = state(3); // batch of 1
        assert_eq!(s.ack(1, false, true).send, Some(AckFrame::Single(1)));
        let mut s = state(100);
        assert_eq!(s.ack(1, false, false).send, Some(AckFrame::Single(1)));
        // With deferred acks waiting, the immediate one takes them along.
        let mut s = state(100);
        s.ack(1, false, true);
        assert_eq!(s.ack(2, false, false).send, Some(AckFrame::Multiple(2)));
        assert_eq!(s.take_deferred(), None);
    }

    #[test]
    fn the_smallest_prefetch_bounds_the_batch() {
        let mut s = state(100);
        s.set_prefetch(4);
        s.set_prefetch(1000);
        assert_eq!(s.ack(1, false, true).send, None);
        assert_eq!(s.ack(2, false, true).send, Some(AckFrame::Multiple(2)));
        let mut s = AckState::default(); // no prefetch: MAX_BATCH
        for tag in 1..MAX_BATCH {
            assert_eq!(s.ack(tag, false, true).send, None);
        }
        assert_eq!(
            s.ack(MAX_BATCH, false, true).send,
            Some(AckFrame::Multiple(MAX_BATCH))
        );
    }

    #[test]
    fn duplicates_flush_first_and_go_as_asked() {
        let mut s = state(100);
        s.ack(1, false, true);
        s.ack(2, false, true);
        let plan = s.ack(2, false, true);
        assert_eq!(plan.flush, Some(AckFrame::Multiple(2)));
        assert_eq!(plan.send, Some(AckFrame::Single(2)));
    }

    #[test]
    fn user_multiple_acks_take_what_is_below_them() {
        let mut s = state(100);
        s.ack(1, false, true);
        s.ack(2, false, true);
        let plan = s.ack(5, true, true);
        assert_eq!(plan.flush, None);
        assert_eq!(plan.send, Some(AckFrame::Multiple(5)));
        assert_eq!(s.take_deferred(), None);
        assert_eq!(s.ack(6, false, true).send, None);
        // A multiple-ack below the deferred top: flush first.
        let plan = s.ack(3, true, true);
        assert_eq!(plan.flush, Some(AckFrame::Multiple(6)));
        assert_eq!(plan.send, Some(AckFrame::Multiple(3)));
    }

    #[test]
    fn no_ack_deliveries_do_not_stop_the_run() {
        let mut s = state(100);
        s.settle(1); // delivered with no_ack
        assert_eq!(s.ack(2, false, true).send, None);
        assert_eq!(s.take_deferred(), Some(AckFrame::Multiple(2)));
    }
}
