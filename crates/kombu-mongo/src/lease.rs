//! Leases on claimed messages: a live transport renews the leases it holds;
//! a dead one's lapse, and its messages become claimable again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::Collection;
use tokio::task::AbortHandle;

use crate::documents::{after_millis, lease};

/// The leases this transport holds (claimed, handed to the channel, not
/// yet acked or requeued), by lease id: renewal pushes back these and no
/// others. A claim whose answer never reached the channel (a fetch given up
/// on by a timeout) is not among them, so its lease lapses and the message
/// is claimed again, instead of being renewed for as long as the
/// transport lives.
#[derive(Debug, Default)]
pub(crate) struct LeaseCounter(Mutex<HashSet<String>>);

impl LeaseCounter {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add(&self, lease_id: &str) {
        self.set().insert(lease_id.to_owned());
    }

    pub(crate) fn remove(&self, lease_id: &str) {
        self.set().remove(lease_id);
    }

    /// The lease ids held now.
    pub(crate) fn held(&self) -> Vec<String> {
        self.set().iter().cloned().collect()
    }
}

/// Every `interval`, push the deadline of each lease `owner` holds to
/// now + `timeout`. `None` when renewal is off (`interval` zero).
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
            let held = leases.held();
            if held.is_empty() {
                continue;
            }
            let until = after_millis(DateTime::now(), timeout.as_millis() as u64);
            let renewed = messages
                .update_many(
                    doc! { lease::OWNER: &owner, lease::ID: { "$in": held } },
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
