//! Claiming messages with a lease, one or a batch, and acking a batch.
//!
//! One message: `find_one_and_update` (one request). A batch of up to `max`:
//!
//! 1. `find` the first `max` claimable messages (by stored priority, then
//!    `_id`);
//! 2. `update_many` those `_id`s that are still claimable, setting one
//!    lease (owner, lease id, deadline) on all of them;
//! 3. only when fewer matched than were found (another consumer claimed
//!    some in between): `find` which of them carry this lease.
//!
//! Two requests for a batch instead of one per message; on SecantusDB,
//! which scans the queue on each request, that is most of the consume rate.
//! A message whose holder's lease lapsed is claimed like a free one and
//! delivered flagged redelivered (seen in step 1). Step 2's filter is
//! evaluated by the server, so a message renewed or taken in between is not
//! claimed twice.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use futures::TryStreamExt;
use kombu_core::spi::{Fetched, FetchedBody, Receipt};
use kombu_core::{Error, ErrorKind, Result};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::options::ReturnDocument;

use super::{MongoBackend, MESSAGE_RECEIPT};
use crate::broadcast::RECEIPT_PREFIX;
use crate::documents::{after_millis, lease, payload_bytes};
use crate::error::driver;

/// How often a message was claimed before, read from its document as it
/// was before the claim (`deliveries`, absent on a message never claimed
/// or stored by Python kombu).
fn earlier_deliveries(document: &Document) -> u64 {
    match document.get(lease::DELIVERIES) {
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Double(n)) if *n > 0.0 => *n as u64,
        _ => 0,
    }
}

/// The claim order: lowest stored priority (highest message priority), then
/// oldest.
fn claim_order() -> Document {
    doc! { "priority": 1, "_id": 1 }
}

impl MongoBackend {
    /// The claim filter: the queue's messages nobody holds, or whose
    /// holder's lease lapsed.
    pub(super) fn claimable(queue: &str, now: DateTime) -> Document {
        doc! {
            "queue": queue,
            "$or": [
                { lease::UNTIL: Bson::Null },
                { lease::UNTIL: { "$lte": now } },
            ],
        }
    }

    /// The update of a claim: the lease (`$set`) and one more delivery
    /// (`$inc` of [`lease::DELIVERIES`]).
    pub(super) fn lease_fields(&self, lease_id: &str, now: DateTime) -> Document {
        let until = after_millis(now, self.config.lease_timeout.as_millis() as u64);
        doc! {
            "$set": {
                lease::OWNER: &self.owner,
                lease::ID: lease_id,
                lease::UNTIL: until,
            },
            "$inc": { lease::DELIVERIES: 1 },
        }
    }

    /// Claim up to `max` messages of `queue` (at least one is asked for).
    pub(super) async fn claim_up_to(&self, queue: &str, max: usize) -> Result<Vec<Fetched>> {
        if max <= 1 {
            return Ok(self.claim(queue).await?.into_iter().collect());
        }
        self.claim_batch(queue, max).await
    }

    /// Claim the next message of `queue` with a lease.
    pub(super) async fn claim(&self, queue: &str) -> Result<Option<Fetched>> {
        let now = DateTime::now();
        let lease_id = ObjectId::new().to_hex();
        let before = self
            .collections
            .messages
            .find_one_and_update(
                Self::claimable(queue, now),
                self.lease_fields(&lease_id, now),
            )
            .sort(claim_order())
            .return_document(ReturnDocument::Before)
            .await
            .map_err(driver("claiming a message"))?;
        let Some(document) = before else {
            return Ok(None);
        };
        let Ok(id) = document.get_object_id("_id") else {
            self.drop_foreign(queue, &document).await?;
            return Ok(None);
        };
        self.leases.add(&lease_id, [id]);
        Ok(Some(self.fetched(queue, id, &lease_id, &document)))
    }

    /// Claim up to `max` messages of `queue` under one lease id.
    async fn claim_batch(&self, queue: &str, max: usize) -> Result<Vec<Fetched>> {
        let now = DateTime::now();
        let found: Vec<Document> = self
            .collections
            .messages
            .find(Self::claimable(queue, now))
            .sort(claim_order())
            .limit(i64::try_from(max).unwrap_or(i64::MAX))
            .projection(doc! { "payload": 1, lease::UNTIL: 1, lease::DELIVERIES: 1 })
            .await
            .map_err(driver("looking for messages to claim"))?
            .try_collect()
            .await
            .map_err(driver("looking for messages to claim"))?;
        let mut candidates: Vec<(ObjectId, Document)> = Vec::with_capacity(found.len());
        for document in found {
            match document.get_object_id("_id") {
                Ok(id) => candidates.push((id, document)),
                Err(_) => self.drop_foreign(queue, &document).await?,
            }
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let lease_id = ObjectId::new().to_hex();
        let ids: Vec<ObjectId> = candidates.iter().map(|(id, _)| *id).collect();
        let mut filter = Self::claimable(queue, now);
        filter.insert("_id", doc! { "$in": &ids });
        let claimed = self
            .collections
            .messages
            .update_many(filter, self.lease_fields(&lease_id, now))
            .await
            .map_err(driver("claiming messages"))?;
        if (claimed.matched_count as usize) < candidates.len() {
            // Another consumer took some between the find and the update.
            let ours: Vec<ObjectId> = self
                .collections
                .messages
                .find(doc! { "_id": { "$in": &ids }, lease::ID: &lease_id })
                .projection(doc! { "_id": 1 })
                .await
                .map_err(driver("reading a claim"))?
                .try_collect::<Vec<Document>>()
                .await
                .map_err(driver("reading a claim"))?
                .iter()
                .filter_map(|d| d.get_object_id("_id").ok())
                .collect();
            candidates.retain(|(id, _)| ours.contains(id));
        }
        self.leases
            .add(&lease_id, candidates.iter().map(|(id, _)| *id));
        Ok(candidates
            .iter()
            .map(|(id, document)| self.fetched(queue, *id, &lease_id, document))
            .collect())
    }

    /// A claimed message as the channel gets it. `document` is the message
    /// as it was before the claim: a lease on it had lapsed (its holder died
    /// before ack or requeue), so it is flagged redelivered. Its earlier
    /// claims ([`lease::DELIVERIES`] before this one) are its returns.
    fn fetched(&self, queue: &str, id: ObjectId, lease_id: &str, document: &Document) -> Fetched {
        self.fetched.fetch_add(1, Ordering::Relaxed);
        let receipt = format!("{MESSAGE_RECEIPT}{}:{lease_id}", id.to_hex());
        let returned = earlier_deliveries(document);
        let mut fetched =
            Fetched::from_json(queue, receipt, &payload_bytes(document)).with_returned(returned);
        if matches!(document.get(lease::UNTIL), Some(Bson::DateTime(_))) {
            if let FetchedBody::Envelope(envelope) = &mut fetched.body {
                envelope.mark_redelivered();
            }
            tracing::info!(queue, id = %id, "reclaimed a message whose lease lapsed");
        }
        fetched
    }

    /// Give back the lease of a message nobody took (it becomes
    /// claimable); on failure it lapses instead.
    pub(super) async fn release(&self, queue: &str, id: ObjectId, lease_id: &str) {
        self.leases.remove(id, lease_id);
        let released = self
            .collections
            .messages
            .update_one(
                doc! { "_id": id, lease::ID: lease_id },
                doc! {
                    "$unset": { lease::OWNER: "", lease::ID: "", lease::UNTIL: "" },
                    // Nobody got it: not a delivery.
                    "$inc": { lease::DELIVERIES: -1 },
                },
            )
            .await;
        if let Err(err) = released {
            tracing::warn!(queue, id = %id, error = %err, "giving back a lease failed; it lapses");
        }
    }

    /// A message not written by kombu: no ObjectId to ack it by. Drop it.
    async fn drop_foreign(&self, queue: &str, document: &Document) -> Result<()> {
        tracing::warn!(queue, "message without an ObjectId _id removed");
        self.collections
            .messages
            .delete_one(doc! { "_id": document.get("_id").cloned().unwrap_or(Bson::Null) })
            .await
            .map_err(driver("removing a message"))?;
        Ok(())
    }

    /// Parse a message receipt into its `_id` and lease id.
    pub(super) fn parse_receipt(receipt: &str) -> Result<(ObjectId, &str)> {
        let bad = || {
            Error::new(
                ErrorKind::Other,
                format!("mongodb: not a receipt: {receipt:?}"),
            )
        };
        let rest = receipt.strip_prefix(MESSAGE_RECEIPT).ok_or_else(bad)?;
        let (id, lease_id) = rest.split_once(':').ok_or_else(bad)?;
        Ok((ObjectId::parse_str(id).map_err(|_| bad())?, lease_id))
    }

    /// Delete the acked messages of `acks` with one `delete_many` (each
    /// only while its lease holds). Broadcast receipts need nothing; a
    /// receipt that is not one is reported after the others are deleted.
    pub(super) async fn delete_acked(&self, acks: &[(String, Receipt)]) -> Result<()> {
        let mut first_error = None;
        // Lease id -> the messages acked under it.
        let mut by_lease: HashMap<&str, Vec<ObjectId>> = HashMap::new();
        for (_, receipt) in acks {
            if receipt.starts_with(RECEIPT_PREFIX) {
                continue;
            }
            match Self::parse_receipt(receipt) {
                Ok((id, lease_id)) => by_lease.entry(lease_id).or_default().push(id),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        let expected: usize = by_lease.values().map(Vec::len).sum();
        if expected > 0 {
            let deleted = self
                .collections
                .messages
                .delete_many(acked_filter(&by_lease))
                .await
                .map_err(driver("acknowledging messages"))?;
            for (lease_id, ids) in &by_lease {
                for id in ids {
                    self.leases.remove(*id, lease_id);
                }
            }
            let lost = expected.saturating_sub(deleted.deleted_count as usize);
            if lost > 0 {
                tracing::warn!(
                    lost,
                    acked = expected,
                    "ack: leases were lost (they lapsed and another consumer claimed the \
                     messages, or a Python kombu consumer popped them); they may be processed twice"
                );
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The filter matching each acked message while its lease holds.
fn acked_filter(by_lease: &HashMap<&str, Vec<ObjectId>>) -> Document {
    let mut clauses: Vec<Document> = by_lease
        .iter()
        .map(|(lease_id, ids)| match ids.as_slice() {
            [id] => doc! { "_id": id, lease::ID: *lease_id },
            _ => doc! { "_id": { "$in": ids }, lease::ID: *lease_id },
        })
        .collect();
    if clauses.len() == 1 {
        clauses.remove(0)
    } else {
        doc! { "$or": clauses }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lease_is_one_clause() {
        let id = ObjectId::new();
        let by_lease = HashMap::from([("l1", vec![id])]);
        assert_eq!(
            acked_filter(&by_lease),
            doc! { "_id": id, "lease_id": "l1" }
        );
        let other = ObjectId::new();
        let by_lease = HashMap::from([("l1", vec![id, other])]);
        assert_eq!(
            acked_filter(&by_lease),
            doc! { "_id": { "$in": [id, other] }, "lease_id": "l1" }
        );
        let by_lease = HashMap::from([("l1", vec![id]), ("l2", vec![ObjectId::new()])]);
        let filter = acked_filter(&by_lease);
        assert_eq!(filter.get_array("$or").map(Vec::len), Ok(2));
    }
}
