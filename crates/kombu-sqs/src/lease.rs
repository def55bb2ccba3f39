//! Leases: keep a received SQS message invisible to other consumers while
//! a long handler runs (ChangeMessageVisibility on its receipt handle).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use kombu_core::{DeliveryInfo, Error, ErrorKind, Result};

use crate::errors::from_sdk;

/// The messages this process holds: receipt handle -> client and queue URL.
static HELD: LazyLock<Mutex<HashMap<String, (aws_sdk_sqs::Client, String)>>> =
    LazyLock::new(Default::default);

fn held() -> std::sync::MutexGuard<'static, HashMap<String, (aws_sdk_sqs::Client, String)>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn hold(receipt: &str, client: &aws_sdk_sqs::Client, url: &str) {
    held().insert(receipt.to_owned(), (client.clone(), url.to_owned()));
}

pub(crate) fn release(receipt: &str) {
    held().remove(receipt);
}

/// Make the message invisible for `timeout` more from now (SQS counts
/// from the call, at most 12 hours from its first receipt). `info` is the
/// delivery's [`DeliveryInfo`] (`message.delivery_info()`), of a message
/// this process received from `sqs://` and has not acked or rejected yet.
///
/// ```no_run
/// # async fn handle(message: kombu_core::Message) -> kombu_core::Result<()> {
/// use std::time::Duration;
/// kombu_sqs::extend_visibility(message.delivery_info(), Duration::from_secs(300)).await?;
/// // ... long work ...
/// message.ack().await
/// # }
/// ```
pub async fn extend_visibility(info: &DeliveryInfo, timeout: Duration) -> Result<()> {
    let receipt = info.receipt.as_deref().ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            "this delivery has no receipt (not from an sqs:// consumer)",
        )
    })?;
    let (client, url) = held().get(receipt).cloned().ok_or_else(|| {
        Error::new(
            ErrorKind::PreconditionFailed,
            "this SQS message is not held any more (acked, rejected, requeued or its channel closed)",
        )
    })?;
    let seconds = i32::try_from(timeout.as_secs())
        .unwrap_or(i32::MAX)
        .min(43_200);
    client
        .change_message_visibility()
        .queue_url(url)
        .receipt_handle(receipt)
        .visibility_timeout(seconds)
        .send()
        .await
        .map_err(|e| from_sdk("extending an SQS message's visibility", e))?;
    Ok(())
}

/// Extends a message's visibility every `every` (by `every` x 2) until
/// dropped: hold one while a handler of unknown length runs.
///
/// ```no_run
/// # async fn handle(message: kombu_core::Message) -> kombu_core::Result<()> {
/// use std::time::Duration;
/// let lease = kombu_sqs::Lease::keep(message.delivery_info(), Duration::from_secs(60));
/// // ... work for as long as it takes ...
/// drop(lease);
/// message.ack().await
/// # }
/// ```
#[derive(Debug)]
pub struct Lease {
    task: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Start renewing (needs a Tokio runtime).
    pub fn keep(info: &DeliveryInfo, every: Duration) -> Lease {
        let info = info.clone();
        let every = every.max(Duration::from_secs(1));
        let task = tokio::spawn(async move {
            loop {
                if let Err(err) = extend_visibility(&info, every * 2).await {
                    tracing::debug!(error = %err, "SQS lease ended");
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
        Lease { task }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}
