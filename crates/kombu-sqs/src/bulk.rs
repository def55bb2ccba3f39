//! Sends and deletes, alone or in SQS batch requests (`SendMessageBatch`,
//! `DeleteMessageBatch`: at most `MAX_BATCH` (10) entries each, and a
//! send batch at most `max_message_size` bytes together): what the
//! opportunistic [`Batcher`](crate::batch::Batcher)s flush, and what
//! `put_many` and `ack_many` send.
//!
//! Every entry of a batch gets its own outcome: an entry SQS lists as
//! failed, or does not answer for, is an error.

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};
use futures::StreamExt as _;
use kombu_core::{Error, Result};

use crate::batch::split;
use crate::codec::Outgoing;
use crate::errors::{error_kind_for_code, from_sdk};

/// Batch requests of one `put_many` or `ack_many` under way at once (on a
/// standard queue: a FIFO queue's sends go one after another, in order).
pub(crate) const BATCHES_IN_FLIGHT: usize = 4;

/// One message to send.
pub(crate) struct SendItem {
    pub(crate) client: aws_sdk_sqs::Client,
    pub(crate) outgoing: Outgoing,
}

/// One received message to delete, by its latest receipt handle.
pub(crate) struct DeleteItem {
    pub(crate) client: aws_sdk_sqs::Client,
    pub(crate) receipt: String,
}

/// Copying an error's kind and text (errors are not `Clone`).
pub(crate) fn copy(error: &Error) -> Error {
    Error::new(error.kind(), error.message().to_owned())
}

fn attribute(value: &str) -> Result<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| Error::invalid_option(format!("bad message attribute: {e}")))
}

/// The same error for each of `count` entries.
fn all_failed(count: usize, error: &Error) -> Vec<Result<()>> {
    (0..count).map(|_| Err(copy(error))).collect()
}

/// One outcome per entry of a batch of `count` entries (ids `0..count`)
/// from SQS's answer: the ids it lists as successful are `Ok`, the failed
/// ones carry their error, and an entry it does not answer for is an error
/// too (never taken for sent or deleted). A failed id that names no entry
/// fails them all.
pub(crate) fn entry_outcomes<'a>(
    count: usize,
    successful: impl IntoIterator<Item = &'a str>,
    failed: impl IntoIterator<Item = (&'a str, Error)>,
) -> Vec<Result<()>> {
    let unanswered = || {
        Err(Error::protocol(
            "SQS's batch answer lists this entry neither as successful nor as failed",
        ))
    };
    let mut outcomes: Vec<Result<()>> = (0..count).map(|_| unanswered()).collect();
    for id in successful {
        if let Some(slot) = id.parse::<usize>().ok().and_then(|i| outcomes.get_mut(i)) {
            *slot = Ok(());
        }
    }
    for (id, error) in failed {
        match id.parse::<usize>().ok().and_then(|i| outcomes.get_mut(i)) {
            Some(slot) => *slot = Err(error),
            None => return all_failed(count, &error),
        }
    }
    outcomes
}

/// The first error among `outcomes`, if any.
pub(crate) fn first_error(outcomes: impl IntoIterator<Item = Result<()>>) -> Result<()> {
    outcomes.into_iter().find(Result::is_err).unwrap_or(Ok(()))
}

/// Send `items` (all for the queue at `url`): one `SendMessage` for a lone
/// item, else one `SendMessageBatch` (the caller keeps it within
/// `MAX_BATCH` (10) entries and the byte budget). One outcome per item.
pub(crate) async fn flush_sends(url: String, items: Vec<SendItem>) -> Vec<Result<()>> {
    let Some(first) = items.first() else {
        return Vec::new();
    };
    let client = first.client.clone();
    if items.len() == 1 {
        let o = &first.outgoing;
        let mut req = client
            .send_message()
            .queue_url(&url)
            .message_body(&o.body)
            .set_message_group_id(o.group_id.clone())
            .set_message_deduplication_id(o.dedup_id.clone())
            .set_delay_seconds(o.delay_seconds);
        for (k, v) in &o.attributes {
            match attribute(v) {
                Ok(a) => req = req.message_attributes(k, a),
                Err(e) => return vec![Err(e)],
            }
        }
        return vec![req
            .send()
            .await
            .map(|_| ())
            .map_err(|e| from_sdk("sending a message to SQS", e))];
    }
    let mut req = client.send_message_batch().queue_url(&url);
    for (i, item) in items.iter().enumerate() {
        let o = &item.outgoing;
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .message_body(&o.body)
            .set_message_group_id(o.group_id.clone())
            .set_message_deduplication_id(o.dedup_id.clone())
            .set_delay_seconds(o.delay_seconds);
        for (k, v) in &o.attributes {
            match attribute(v) {
                Ok(a) => entry = entry.message_attributes(k, a),
                Err(e) => return all_failed(items.len(), &e),
            }
        }
        match entry.build() {
            Ok(entry) => req = req.entries(entry),
            Err(e) => {
                let err = Error::invalid_option(format!("bad SQS batch entry: {e}"));
                return all_failed(items.len(), &err);
            }
        }
    }
    match req.send().await {
        Err(e) => all_failed(items.len(), &from_sdk("sending messages to SQS", e)),
        Ok(out) => entry_outcomes(
            items.len(),
            out.successful().iter().map(|s| s.id()),
            out.failed().iter().map(|f| {
                let error = Error::new(
                    error_kind_for_code(f.code()),
                    format!(
                        "SQS refused a message: {} {}",
                        f.code(),
                        f.message().unwrap_or_default()
                    ),
                );
                (f.id(), error)
            }),
        ),
    }
}

/// Delete `items` (all of the queue at `url`): one `DeleteMessage` for a
/// lone item, else one `DeleteMessageBatch` (at most `MAX_BATCH` (10)).
/// One outcome per item.
pub(crate) async fn flush_deletes(url: String, items: Vec<DeleteItem>) -> Vec<Result<()>> {
    let Some(first) = items.first() else {
        return Vec::new();
    };
    let client = first.client.clone();
    if items.len() == 1 {
        return vec![client
            .delete_message()
            .queue_url(&url)
            .receipt_handle(&first.receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| from_sdk("deleting an SQS message", e))];
    }
    let mut req = client.delete_message_batch().queue_url(&url);
    for (i, item) in items.iter().enumerate() {
        match DeleteMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .receipt_handle(&item.receipt)
            .build()
        {
            Ok(entry) => req = req.entries(entry),
            Err(e) => {
                let err = Error::invalid_option(format!("bad SQS batch entry: {e}"));
                return all_failed(items.len(), &err);
            }
        }
    }
    match req.send().await {
        Err(e) => all_failed(items.len(), &from_sdk("deleting SQS messages", e)),
        Ok(out) => entry_outcomes(
            items.len(),
            out.successful().iter().map(|s| s.id()),
            out.failed().iter().map(|f| {
                let error = Error::new(
                    error_kind_for_code(f.code()),
                    format!("SQS could not delete a message: {}", f.code()),
                );
                (f.id(), error)
            }),
        ),
    }
}

/// Send every message of `outgoing` to the queue at `url` in batch
/// requests (split by [`split`]: at most `MAX_BATCH` (10) entries and
/// `budget` bytes each). `ordered` (a FIFO queue) sends one request after
/// another and stops at the first that fails, so no later message is
/// stored ahead of an earlier one; otherwise [`BATCHES_IN_FLIGHT`] are
/// under way at once and every one is tried. Any entry that fails makes
/// the whole call an error (some of the messages may be stored).
pub(crate) async fn send_all(
    client: &aws_sdk_sqs::Client,
    url: &str,
    outgoing: Vec<Outgoing>,
    budget: usize,
    ordered: bool,
) -> Result<()> {
    let items = outgoing
        .into_iter()
        .map(|outgoing| SendItem {
            client: client.clone(),
            outgoing,
        })
        .collect();
    let requests = split(items, |item: &SendItem| item.outgoing.wire_size(), budget)
        .into_iter()
        .map(|chunk| flush_sends(url.to_owned(), chunk));
    if ordered {
        for request in requests {
            first_error(request.await)?;
        }
        return Ok(());
    }
    let outcomes: Vec<Vec<Result<()>>> = futures::stream::iter(requests)
        .buffer_unordered(BATCHES_IN_FLIGHT)
        .collect()
        .await;
    first_error(outcomes.into_iter().flatten())
}

/// Delete `receipts` of the queue at `url` in `DeleteMessageBatch`
/// requests of `MAX_BATCH` (10), [`BATCHES_IN_FLIGHT`] at once; every one
/// is tried, and any entry that fails makes the call an error (that message
/// comes back after its visibility timeout).
pub(crate) async fn delete_all(
    client: &aws_sdk_sqs::Client,
    url: &str,
    receipts: Vec<String>,
) -> Result<()> {
    let items: Vec<DeleteItem> = receipts
        .into_iter()
        .map(|receipt| DeleteItem {
            client: client.clone(),
            receipt,
        })
        .collect();
    let requests = split(items, |_| 0, usize::MAX)
        .into_iter()
        .map(|chunk| flush_deletes(url.to_owned(), chunk));
    let outcomes: Vec<Vec<Result<()>>> = futures::stream::iter(requests)
        .buffer_unordered(BATCHES_IN_FLIGHT)
        .collect()
        .await;
    first_error(outcomes.into_iter().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kombu_core::ErrorKind;

    fn refused(code: &str) -> Error {
        Error::new(error_kind_for_code(code), format!("refused: {code}"))
    }

    #[test]
    fn a_failed_entry_is_an_error_and_the_rest_succeed() {
        let outcomes = entry_outcomes(3, ["0", "2"], [("1", refused("InvalidParameterValue"))]);
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok());
        assert!(outcomes[1]
            .as_ref()
            .unwrap_err()
            .message()
            .contains("InvalidParameterValue"));
        assert!(
            first_error(outcomes).is_err(),
            "one failed entry fails the call"
        );
    }

    #[test]
    fn an_unanswered_entry_is_never_taken_for_done() {
        let outcomes = entry_outcomes(3, ["0", "1"], []);
        assert!(outcomes[2].is_err());
        assert_eq!(
            outcomes[2].as_ref().unwrap_err().kind(),
            ErrorKind::Protocol
        );
        let all = entry_outcomes(2, ["0", "1"], []);
        assert!(first_error(all).is_ok());
    }

    #[test]
    fn a_failed_id_that_names_no_entry_fails_them_all() {
        let outcomes = entry_outcomes(2, ["0", "1"], [("x", refused("InternalError"))]);
        assert!(outcomes.iter().all(Result::is_err));
        let outcomes = entry_outcomes(2, ["0", "1"], [("7", refused("InternalError"))]);
        assert!(outcomes.iter().all(Result::is_err));
    }
}
