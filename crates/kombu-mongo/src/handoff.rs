//! Handing a message this transport publishes straight to one of its own
//! fetches that waits on the queue (no claim request).
//!
//! A fetch that found nothing opens a [`Slot`] on its queues while it
//! waits. A put into one of them reserves the first open slot, inserts the
//! message already leased to this transport (as a claim would have left
//! it), and fills the slot: the fetch returns it without asking the server
//! again. The message is stored before the fetch has it and held under a
//! lease like any claimed one: acked, it is deleted; lost with the process,
//! its lease lapses and another consumer gets it. A fetch that stops
//! waiting first closes its slot; a put that then finds it closed gives
//! the lease back at once (the message becomes claimable).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kombu_core::spi::Fetched;
use mongodb::bson::oid::ObjectId;

use crate::lease::LeaseCounter;

/// A message handed over: what the fetch returns, and the `_id` and lease
/// id it is held under.
#[derive(Debug)]
pub(crate) struct Handed {
    pub(crate) fetched: Fetched,
    pub(crate) id: ObjectId,
    pub(crate) lease_id: String,
}

/// Where a slot stands.
#[derive(Debug, Default)]
enum State {
    /// The fetch waits; no put has picked it.
    #[default]
    Open,
    /// A put picked it and is storing its message.
    Reserved,
    /// The put stored the message; the fetch has not taken it yet.
    Filled(Box<Handed>),
    /// The fetch stopped waiting.
    Closed,
}

/// One waiting fetch's place for a handed-over message.
#[derive(Debug, Default)]
pub(crate) struct Slot(Mutex<State>);

impl Slot {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hand a message over; given back when the fetch stopped waiting
    /// meanwhile.
    pub(crate) fn fill(&self, handed: Box<Handed>) -> Result<(), Box<Handed>> {
        let mut state = self.state();
        match *state {
            State::Reserved => {
                *state = State::Filled(handed);
                Ok(())
            }
            _ => Err(handed),
        }
    }
}

/// Open slots by queue.
#[derive(Debug)]
pub(crate) struct Handoffs {
    open: Mutex<HashMap<String, Vec<Arc<Slot>>>>,
    /// The transport's held messages: a handed-over message its fetch
    /// never took is let go (its lease lapses).
    leases: Arc<LeaseCounter>,
    /// Messages a fetch took.
    taken: AtomicU64,
}

/// A fetch's open slot: closed (and unregistered) by [`Waiting::close`]
/// or when dropped.
pub(crate) struct Waiting<'a> {
    handoffs: &'a Handoffs,
    queues: &'a [String],
    slot: Arc<Slot>,
}

impl Handoffs {
    pub(crate) fn new(leases: Arc<LeaseCounter>) -> Self {
        Handoffs {
            open: Mutex::default(),
            leases,
            taken: AtomicU64::new(0),
        }
    }

    /// A fetch returns a handed-over message.
    pub(crate) fn took_one(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages handed over and taken by their fetch.
    pub(crate) fn handed_over(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    fn open_slots(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<Slot>>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fetch starts waiting on `queues`.
    pub(crate) fn wait_on<'a>(&'a self, queues: &'a [String]) -> Waiting<'a> {
        let slot = Arc::new(Slot::default());
        let mut open = self.open_slots();
        for queue in queues {
            open.entry(queue.clone()).or_default().push(slot.clone());
        }
        Waiting {
            handoffs: self,
            queues,
            slot,
        }
    }

    /// A put into `queue`: the slot of a fetch waiting on it, reserved for
    /// this put, if one waits.
    pub(crate) fn reserve(&self, queue: &str) -> Option<Arc<Slot>> {
        let open = self.open_slots();
        open.get(queue)?.iter().find_map(|slot| {
            let mut state = slot.state();
            matches!(*state, State::Open).then(|| {
                *state = State::Reserved;
                slot.clone()
            })
        })
    }

    fn unregister(&self, queues: &[String], slot: &Arc<Slot>) {
        let mut open = self.open_slots();
        for queue in queues {
            if let Some(slots) = open.get_mut(queue) {
                slots.retain(|s| !Arc::ptr_eq(s, slot));
                if slots.is_empty() {
                    open.remove(queue);
                }
            }
        }
    }
}

impl Waiting<'_> {
    /// Stop waiting: the message handed over meanwhile, if any. A put
    /// still storing one finds the slot closed and gives its lease back.
    pub(crate) fn close(self) -> Option<Box<Handed>> {
        match std::mem::replace(&mut *self.slot.state(), State::Closed) {
            State::Filled(handed) => Some(handed),
            _ => None,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.handoffs.unregister(self.queues, &self.slot);
        // Dropped with a message in it (the fetch was given up on): stop
        // renewing its lease, so it lapses and the message is claimed again.
        if let State::Filled(handed) = std::mem::replace(&mut *self.slot.state(), State::Closed) {
            tracing::info!(
                queue = %handed.fetched.queue,
                id = %handed.id,
                "a fetch given up on had a message handed over; it is redelivered when its lease lapses"
            );
            self.handoffs.leases.remove(handed.id, &handed.lease_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(receipt: &str) -> Box<Handed> {
        Box::new(Handed {
            fetched: Fetched::from_json("q", receipt, br#"{"body": "", "properties": {}}"#),
            id: ObjectId::new(),
            lease_id: "lease".into(),
        })
    }

    fn handoffs() -> Handoffs {
        Handoffs::new(Arc::default())
    }

    #[test]
    fn a_put_fills_the_slot_of_a_waiting_fetch_once() {
        let handoffs = handoffs();
        let queues = vec!["q".to_owned(), "r".to_owned()];
        let waiting = handoffs.wait_on(&queues);
        let slot = handoffs.reserve("r").expect("a waiting fetch");
        // Reserved: no second put gets it, on either queue.
        assert!(handoffs.reserve("q").is_none());
        assert!(slot.fill(fetched("a")).is_ok());
        assert_eq!(waiting.close().map(|h| h.fetched.receipt), Some("a".into()));
        assert!(handoffs.open_slots().is_empty());
    }

    #[test]
    fn a_closed_slot_gives_the_message_back() {
        let handoffs = handoffs();
        let queues = vec!["q".to_owned()];
        let waiting = handoffs.wait_on(&queues);
        let slot = handoffs.reserve("q").unwrap();
        assert!(waiting.close().is_none());
        let back = slot.fill(fetched("a")).unwrap_err();
        assert_eq!(back.fetched.receipt, "a");
        assert!(handoffs.reserve("q").is_none());
    }

    #[test]
    fn a_dropped_slot_lets_its_message_go() {
        let leases = Arc::new(LeaseCounter::default());
        let handoffs = Handoffs::new(leases.clone());
        let queues = vec!["q".to_owned()];
        let waiting = handoffs.wait_on(&queues);
        let slot = handoffs.reserve("q").unwrap();
        let handed = fetched("a");
        leases.add(&handed.lease_id, [handed.id]);
        slot.fill(handed).unwrap();
        drop(waiting);
        assert!(leases.held().0.is_empty());
    }

    #[test]
    fn no_slot_without_a_waiting_fetch() {
        let handoffs = handoffs();
        assert!(handoffs.reserve("q").is_none());
        let queues = vec!["q".to_owned()];
        drop(handoffs.wait_on(&queues));
        assert!(handoffs.reserve("q").is_none());
    }
}
