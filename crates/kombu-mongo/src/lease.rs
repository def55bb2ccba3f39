//! Leases on claimed messages: a live transport renews the leases it holds;
//! a dead one's lapse, and its messages become claimable again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::Collection;
use tokio::task::AbortHandle;

use crate::documents::{after_millis, lease};

/// How many leases this transport holds (claimed, not yet acked or
/// requeued): renewal runs only while there are some.
#[derive(Debug, Default)]
pub(crate) struct LeaseCounter(AtomicUsize);

impl LeaseCounter {
    pub(crate) fn add(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn remove(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }

    pub(crate) fn held(&self) -> usize {
        self.0.load(Ordering::Acquire)
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
            if leases.held() == 0 {
                continue;
            }
            let until = after_millis(DateTime::now(), timeout.as_millis() as u64);
            let renewed = messages
                .update_many(
                    doc! { lease::OWNER: &owner },
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
