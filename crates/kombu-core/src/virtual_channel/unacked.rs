//! The messages a virtual channel has reserved and not yet settled, by
//! delivery tag.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{FetchedBody, Receipt, StoredMessage};
use crate::envelope::Envelope;

/// A message reserved for this channel: delivered and not yet acked, or
/// fetched for a consumer that left.
pub(super) struct Unacked {
    pub(super) queue: String,
    pub(super) receipt: Receipt,
    pub(super) held: Held,
}

/// A reserved message as its backend stored it.
pub(super) enum Held {
    /// A kombu envelope (kept as read, so a requeue writes it back as it
    /// was); its body lives in `body` meanwhile (shared with the delivery
    /// handed out, so it is not copied per message).
    Envelope { envelope: Envelope, body: Bytes },
    /// A message an in-process backend keeps as the channel gave it.
    Message(StoredMessage),
}

impl Held {
    /// The message in either form, for dead-lettering.
    pub(super) fn into_stored(self) -> StoredMessage {
        match self {
            Held::Envelope { envelope, body } => {
                StoredMessage::from_envelope(Held::whole_envelope(envelope, body))
            }
            Held::Message(message) => message,
        }
    }

    /// The envelope with its body back in it.
    pub(super) fn whole_envelope(mut envelope: Envelope, body: Bytes) -> Envelope {
        if !body.is_empty() {
            envelope.body = Vec::from(body);
        }
        envelope
    }
}

impl Unacked {
    /// A fetched message, as it came (`None` for an unreadable one).
    pub(super) fn fetched(queue: String, receipt: Receipt, body: FetchedBody) -> Option<Self> {
        let held = match body {
            FetchedBody::Envelope(envelope) => Held::Envelope {
                envelope,
                body: Bytes::new(),
            },
            FetchedBody::Message(message) => Held::Message(message),
            _ => return None,
        };
        Some(Unacked {
            queue,
            receipt,
            held,
        })
    }
}

/// Unacked messages by delivery tag. Tags are given in increasing order
/// as messages are inserted (under the channel's lock), so the table is a
/// deque indexed by `tag - first`: inserting appends, acking in order pops
/// from the front, and nothing is shifted or rebalanced (a `BTreeMap` of
/// these 200-byte entries moved them around on every ack).
///
/// ```text
/// first = 7:  [Some(7), None(acked), Some(9)]   len = 2
/// ```
#[derive(Default)]
pub(super) struct UnackedTable {
    /// The tag of `slots[0]`.
    first: u64,
    slots: VecDeque<Option<Unacked>>,
    len: usize,
}

impl UnackedTable {
    /// How many messages are held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Hold `item` under `tag`, which is above every tag inserted before.
    pub(super) fn insert(&mut self, tag: u64, item: Unacked) {
        if self.slots.is_empty() {
            self.first = tag;
        }
        debug_assert!(tag >= self.first + self.slots.len() as u64);
        while self.first + (self.slots.len() as u64) < tag {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(item));
        self.len += 1;
    }

    /// True when `tag` is held.
    pub(super) fn contains(&self, tag: u64) -> bool {
        self.index(tag)
            .is_some_and(|i| self.slots.get(i).is_some_and(Option::is_some))
    }

    fn index(&self, tag: u64) -> Option<usize> {
        tag.checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|i| *i < self.slots.len())
    }

    /// The message held under `tag`.
    pub(super) fn get(&self, tag: u64) -> Option<&Unacked> {
        self.slots.get(self.index(tag)?)?.as_ref()
    }

    /// Take the message held under `tag`.
    pub(super) fn remove(&mut self, tag: u64) -> Option<Unacked> {
        let index = self.index(tag)?;
        let item = self.slots.get_mut(index)?.take()?;
        self.len -= 1;
        self.trim();
        Some(item)
    }

    /// Take every message held under `tag` or below, in tag order.
    pub(super) fn remove_up_to(&mut self, tag: u64) -> Vec<Unacked> {
        let mut taken = Vec::new();
        while self.first <= tag {
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            self.first += 1;
            if let Some(item) = slot {
                self.len -= 1;
                taken.push(item);
            }
        }
        self.trim();
        taken
    }

    /// Take every message, in tag order.
    pub(super) fn take_all(&mut self) -> Vec<Unacked> {
        let taken: Vec<Unacked> = self.slots.drain(..).flatten().collect();
        self.len = 0;
        taken
    }

    /// Drop the settled slots at the front.
    fn trim(&mut self) {
        // Counted, then dropped in place (popping moved each slot out).
        let settled = self.slots.iter().take_while(|slot| slot.is_none()).count();
        self.slots.drain(..settled);
        self.first += settled as u64;
        if self.slots.is_empty() {
            self.first = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u64) -> Unacked {
        Unacked {
            queue: format!("q{n}"),
            receipt: n.to_string(),
            held: Held::Message(StoredMessage::new(crate::RawMessage::new(vec![]), "", "q")),
        }
    }

    fn tags(items: &[Unacked]) -> Vec<String> {
        items.iter().map(|i| i.receipt.clone()).collect()
    }

    #[test]
    fn in_and_out_of_order() {
        let mut table = UnackedTable::default();
        for tag in [3, 4, 5, 8] {
            table.insert(tag, item(tag));
        }
        assert_eq!(table.len(), 4);
        assert!(table.contains(8) && !table.contains(6) && !table.contains(2));
        assert_eq!(table.remove(4).map(|i| i.receipt).as_deref(), Some("4"));
        assert!(table.remove(4).is_none(), "taken once");
        assert_eq!(table.remove(3).map(|i| i.receipt).as_deref(), Some("3"));
        assert_eq!(table.len(), 2);
        assert_eq!(tags(&table.remove_up_to(6)), ["5"]);
        assert!(table.contains(8));
        table.insert(9, item(9));
        assert_eq!(tags(&table.take_all()), ["8", "9"]);
        assert_eq!(table.len(), 0);
        assert!(table.remove(9).is_none());
        table.insert(20, item(20));
        assert!(table.contains(20));
        assert_eq!(tags(&table.remove_up_to(100)), ["20"]);
    }
}
