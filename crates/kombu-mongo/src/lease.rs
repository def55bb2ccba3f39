//! Leases on claimed messages: a live transport renews the leases it holds;
//! a dead one's lapse, and its messages become claimable again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, DateTime, Document};
use mongodb::Collection;
use tokio::task::AbortHandle;

use crate::documents::{after_millis, lease};

/// The messages this transport holds (claimed, handed to the channel, not
/// yet acked or requeued), by `_id`, with the lease each is held under (a
/// batch claim leases several messages under one id): renewal pushes back
/// these and no others, looking them up by `_id` (no index on the lease
/// fields to maintain on every claim and ack). A claim whose answer never
/// reached the channel (a fetch given up on by a timeout) is not among
/// them, so its lease lapses and the message is claimed again, instead of
/// being renewed for as long as the transport lives.
#[derive(Debug, Default)]
pub(crate) struct LeaseCounter(Mutex<HashMap<ObjectId, String>>);

impl LeaseCounter {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The messages `ids` are held under `lease_id`.
    pub(crate) fn add(&self, lease_id: &str, ids: impl IntoIterator<Item = ObjectId>) {
        let mut map = self.map();
        for id in ids {
            map.insert(id, lease_id.to_owned());
        }
    }

    /// The message `id` was acked or requeued (under `lease_id`).
    pub(crate) fn remove(&self, id: ObjectId, lease_id: &str) {
        let mut map = self.map();
        if map.get(&id).is_some_and(|held| held == lease_id) {
            map.remove(&id);
        }
    }

    /// The messages held now and the lease ids they are held under.
    pub(crate) fn held(&self) -> (Vec<ObjectId>, Vec<String>) {
        let map = self.map();
        let mut leases: Vec<String> = map.values().cloned().collect();
        leases.sort_unstable();
        leases.dedup();
        (map.keys().copied().collect(), leases)
    }
}

/// Every `interval`, push the deadline of each lease `owner` holds to
/// now + `timeout` (one that ends later, extended, is left alone). `None` when renewal is off (`interval` zero).
pub(crate) fn spawn_renewal(
    messages: Collection<Document>,
    owner: String,
    leases: Arc<LeaseCounter>,
    timeout: Duration,
    interval: Duration,
) -> Option<AbortHandle> {
    if interval.is_zero() {
        return None;
    }
    let handle = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let (ids, lease_ids) = leases.held();
            if ids.is_empty() {
                continue;
            }
            let until = after_millis(DateTime::now(), timeout.as_millis() as u64);
            let renewed = messages
                .update_many(
                    doc! {
                        "_id": { "$in": ids },
                        lease::OWNER: &owner,
                        lease::ID: { "$in": lease_ids },
                        // An extended lease (extend_lease) is not cut short.
                        lease::UNTIL: { "$lt": until },
                    },
                    doc! { "$set": { lease::UNTIL: until } },
                )
                .await;
            match renewed {
                Ok(result) => {
                    tracing::trace!(owner, renewed = result.modified_count, "leases renewed")
                }
                Err(err) => tracing::warn!(owner, error = %err, "renewing leases failed"),
            }
        }
    });
    Some(handle.abort_handle())
}

#[cfg(test)]
mod tests {
    use super::LeaseCounter;
    use mongodb::bson::oid::ObjectId;

    #[test]
    fn a_message_is_held_until_acked_or_requeued_under_its_lease() {
        let leases = LeaseCounter::default();
        let (a, b, c) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        leases.add("batch", [a, b]);
        leases.add("single", [c]);
        leases.remove(a, "batch");
        leases.remove(c, "another lease");
        let (mut ids, leases_held) = leases.held();
        ids.sort();
        let mut expected = vec![b, c];
        expected.sort();
        assert_eq!(ids, expected);
        assert_eq!(leases_held, ["batch", "single"]);
        leases.remove(b, "batch");
        leases.remove(c, "single");
        assert!(leases.held().0.is_empty());
    }
}
