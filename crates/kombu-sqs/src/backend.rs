//! [`SqsBackend`]: the [`VirtualBackend`] of `sqs://`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use kombu_core::spi::{async_trait, Fetched, QueueBinding, Receipt, StoredMessage, VirtualBackend};
use kombu_core::{
    Capabilities, Envelope, Error, ErrorKind, Exchange, ExchangeType, Queue, Result, TransportKind,
};

use crate::batch::{Batcher, MAX_BATCH};
use crate::bulk::{self, DeleteItem, SendItem};
use crate::catalog;
use crate::clients::AwsClients;
use crate::codec::{decode_body, encode_body, Outgoing};
use crate::delay::{self, NOT_BEFORE_ATTRIBUTE};
use crate::errors::{code_of, from_sdk, is_missing_queue};
use crate::fanout::policy_allowing;
use crate::lease;
use crate::names::{canonical, exchange_marker, is_fifo};
use crate::pace::{self, Pace};
use crate::settings::SqsSettings;

/// How long a queue's redrive policy is reused before it is read again
/// (kombu: 5 minutes).
const REDRIVE_CACHE: Duration = Duration::from_secs(300);

/// What closing a channel waits beyond its long poll: the round trips that
/// put back what the poll took, with room for a slow endpoint.
const CLOSE_MARGIN: Duration = Duration::from_secs(5);

/// About the largest serialized body that fits in `max_message_size`: the
/// envelope base64-encodes the body, and `sqs_base64_encoding` the
/// envelope (1 KiB is left for the envelope's other fields).
pub(crate) fn max_body_size(max_message_size: usize, base64: bool) -> u64 {
    let envelope = if base64 {
        max_message_size / 4 * 3
    } else {
        max_message_size
    };
    (envelope.saturating_sub(1024) / 4 * 3) as u64
}

/// The capabilities of `sqs://` with fanout on or off.
pub(crate) fn capabilities(fanout: bool, max_body: u64) -> Capabilities {
    let types: &[ExchangeType] = if fanout {
        &ExchangeType::ALL
    } else {
        &[
            ExchangeType::Direct,
            ExchangeType::Topic,
            ExchangeType::Headers,
        ]
    };
    Capabilities::new(TransportKind::Virtual)
        .with_exchange_types(types)
        .with_fanout_note("SNS")
        .with_priority(false)
        .with_max_length(false)
        .with_delayed_delivery(true)
        .with_lease_extension(true)
        .with_delivery_limit(true)
        .with_shared_declarations(true)
        .with_persistent(true)
        .with_max_body_size(Some(max_body))
}

/// A queue's SQS identity: its URL and the client allowed to use it.
#[derive(Clone)]
struct QueueRef {
    url: String,
    client: aws_sdk_sqs::Client,
    sqs_name: String,
}

struct ExchangeEntry {
    read_at: Instant,
    kind: Option<ExchangeType>,
    bindings: Vec<QueueBinding>,
}

#[derive(Default)]
struct Caches {
    urls: HashMap<String, String>,
    exchanges: HashMap<String, ExchangeEntry>,
    declarations: HashMap<String, Option<Queue>>,
    redrive: HashMap<String, (Option<String>, Instant)>,
    topics: HashMap<String, String>,
    queue_arns: HashMap<String, String>,
    /// Messages this process holds: SQS message id -> (the receipt the
    /// channel knows, the latest receipt). A standard queue may hand the
    /// same message out again while it is held (SQS delivers at least
    /// once; moto races concurrent receives): the copy is not delivered
    /// twice, and ack/requeue use the latest receipt, as SQS requires.
    held: HashMap<String, (String, String)>,
    /// The receipt the channel knows -> the SQS message id.
    held_ids: HashMap<String, String>,
    /// What the last receive of each queue said about it, which sets how
    /// long the next one waits (see [`crate::pace`]); no entry: unknown.
    paces: HashMap<String, Pace>,
}

/// The storage primitives of `sqs://` over the AWS SDK (see the crate docs
/// for how each maps to SQS and SNS calls).
pub struct SqsBackend {
    settings: SqsSettings,
    clients: AwsClients,
    predefined_clients: HashMap<String, aws_sdk_sqs::Client>,
    caches: Mutex<Caches>,
    sender: Arc<Batcher<SendItem>>,
    deleter: Arc<Batcher<DeleteItem>>,
}

impl std::fmt::Debug for SqsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBackend")
            .field("endpoint_url", &self.settings.endpoint_url)
            .field("region", &self.clients.region())
            .field("queue_name_prefix", &self.settings.queue_name_prefix)
            .finish_non_exhaustive()
    }
}

impl SqsBackend {
    /// Check SQS answers: `ListQueues` for one queue (with the queue name
    /// prefix), within `socket_timeout`, without retries. What the
    /// heartbeat runs ([`VirtualBackend::ping`]).
    ///
    /// ```no_run
    /// # async fn run(conn: kombu_core::Connection) -> kombu_core::Result<()> {
    /// let backend = conn.extension::<kombu_sqs::SqsBackend>().await?;
    /// backend.ping().await?;
    /// # Ok(()) }
    /// ```
    pub async fn ping(&self) -> Result<()> {
        let limit = self.settings.socket_timeout;
        let mut request = self.clients.sqs.list_queues().max_results(1);
        if !self.settings.queue_name_prefix.is_empty() {
            request = request.queue_name_prefix(&self.settings.queue_name_prefix);
        }
        match tokio::time::timeout(limit, request.send()).await {
            Ok(answer) => answer
                .map(|_| ())
                .map_err(|e| from_sdk("listing SQS queues (heartbeat)", e)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "sqs: listing queues (heartbeat): no answer within {:.1} s",
                    limit.as_secs_f64()
                ),
            )),
        }
    }

    pub(crate) fn new(settings: SqsSettings, clients: AwsClients) -> SqsBackend {
        let predefined_clients = settings
            .predefined_queues
            .iter()
            .filter(|(_, q)| q.keys.is_some() || q.region.is_some())
            .map(|(name, q)| {
                (
                    name.clone(),
                    clients.sqs_with(q.keys.as_ref(), q.region.as_deref()),
                )
            })
            .collect();
        let budget = settings.max_message_size;
        SqsBackend {
            settings,
            clients,
            predefined_clients,
            caches: Mutex::new(Caches::default()),
            sender: Batcher::new(budget, |url, items| Box::pin(bulk::flush_sends(url, items))),
            deleter: Batcher::new(usize::MAX, |url, items| {
                Box::pin(bulk::flush_deletes(url, items))
            }),
        }
    }

    fn caches(&self) -> MutexGuard<'_, Caches> {
        self.caches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The SQS name of an AMQP queue name.
    fn sqs_name(&self, queue: &str) -> Result<String> {
        canonical(&self.settings.queue_name_prefix, queue)
    }

    fn predefined(
        &self,
        queue: &str,
        sqs_name: &str,
    ) -> Option<(&String, &crate::settings::PredefinedQueue)> {
        let queues = &self.settings.predefined_queues;
        queues
            .get_key_value(queue)
            .or_else(|| queues.get_key_value(sqs_name))
    }

    /// Find a queue; `Ok(None)` when it does not exist.
    async fn lookup(&self, queue: &str) -> Result<Option<QueueRef>> {
        let sqs_name = self.sqs_name(queue)?;
        if !self.settings.predefined_queues.is_empty() {
            let Some((key, def)) = self.predefined(queue, &sqs_name) else {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("queue {queue:?} ({sqs_name}) must be defined in predefined_queues"),
                ));
            };
            let client = self
                .predefined_clients
                .get(key)
                .cloned()
                .unwrap_or_else(|| self.clients.sqs.clone());
            return Ok(Some(QueueRef {
                url: def.url.clone(),
                client,
                sqs_name,
            }));
        }
        self.lookup_sqs_name(sqs_name).await
    }

    async fn lookup_sqs_name(&self, sqs_name: String) -> Result<Option<QueueRef>> {
        let client = self.clients.sqs.clone();
        if let Some(url) = self.caches().urls.get(&sqs_name).cloned() {
            return Ok(Some(QueueRef {
                url,
                client,
                sqs_name,
            }));
        }
        match client.get_queue_url().queue_name(&sqs_name).send().await {
            Ok(out) => {
                let url = out.queue_url().unwrap_or_default().to_owned();
                self.caches().urls.insert(sqs_name.clone(), url.clone());
                Ok(Some(QueueRef {
                    url,
                    client,
                    sqs_name,
                }))
            }
            Err(e) if is_missing_queue(&e) => Ok(None),
            Err(e) => Err(from_sdk(&format!("looking up SQS queue {sqs_name}"), e)),
        }
    }

    /// Find a queue or fail with NotFound.
    async fn existing(&self, queue: &str) -> Result<QueueRef> {
        self.lookup(queue).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("SQS queue for {queue:?} does not exist"),
            )
        })
    }

    /// Find a queue, creating it (with `tags`) when it does not exist.
    async fn ensure_queue(&self, queue: &str, tags: &[(String, String)]) -> Result<QueueRef> {
        if let Some(found) = self.lookup(queue).await? {
            return Ok(found);
        }
        let sqs_name = self.sqs_name(queue)?;
        self.create_sqs_queue(sqs_name, tags, true).await
    }

    async fn create_sqs_queue(
        &self,
        sqs_name: String,
        tags: &[(String, String)],
        with_settings: bool,
    ) -> Result<QueueRef> {
        let client = self.clients.sqs.clone();
        let mut req = client.create_queue().queue_name(&sqs_name);
        if with_settings {
            req = req.attributes(
                QueueAttributeName::VisibilityTimeout,
                self.settings.visibility_timeout.to_string(),
            );
            for (k, v) in &self.settings.creation_attributes {
                req = req.attributes(QueueAttributeName::from(k.as_str()), v);
            }
            for (k, v) in &self.settings.queue_tags {
                req = req.tags(k, v);
            }
        }
        if is_fifo(&sqs_name) {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
        }
        for (k, v) in tags {
            req = req.tags(k, v);
        }
        let out = req
            .send()
            .await
            .map_err(|e| from_sdk(&format!("creating SQS queue {sqs_name}"), e))?;
        let url = out.queue_url().unwrap_or_default().to_owned();
        self.caches().urls.insert(sqs_name.clone(), url.clone());
        Ok(QueueRef {
            url,
            client,
            sqs_name,
        })
    }

    async fn tags_of(&self, q: &QueueRef) -> Result<HashMap<String, String>> {
        let out = q
            .client
            .list_queue_tags()
            .queue_url(&q.url)
            .send()
            .await
            .map_err(|e| from_sdk(&format!("reading the tags of SQS queue {}", q.sqs_name), e))?;
        Ok(out.tags().cloned().unwrap_or_default())
    }

    async fn tag(&self, q: &QueueRef, tags: Vec<(String, String)>) -> Result<()> {
        if tags.is_empty() {
            return Ok(());
        }
        let mut req = q.client.tag_queue().queue_url(&q.url);
        for (k, v) in tags {
            req = req.tags(k, v);
        }
        req.send().await.map_err(|e| {
            let mut err = from_sdk(&format!("tagging SQS queue {}", q.sqs_name), e);
            if err.kind() == ErrorKind::Other || err.kind() == ErrorKind::Rejected {
                err = Error::new(
                    ErrorKind::LimitExceeded,
                    format!(
                        "{} (an SQS queue keeps at most {} tags: bindings per exchange and \
                         queue_tags count)",
                        err.message(),
                        catalog::MAX_TAGS
                    ),
                );
            }
            err
        })?;
        Ok(())
    }

    async fn untag(&self, q: &QueueRef, keys: Vec<String>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        q.client
            .untag_queue()
            .queue_url(&q.url)
            .set_tag_keys(Some(keys))
            .send()
            .await
            .map_err(|e| from_sdk(&format!("untagging SQS queue {}", q.sqs_name), e))?;
        Ok(())
    }

    async fn queue_attribute(
        &self,
        q: &QueueRef,
        name: QueueAttributeName,
    ) -> Result<Option<String>> {
        let out = q
            .client
            .get_queue_attributes()
            .queue_url(&q.url)
            .attribute_names(name.clone())
            .send()
            .await
            .map_err(|e| {
                from_sdk(
                    &format!("reading attributes of SQS queue {}", q.sqs_name),
                    e,
                )
            })?;
        Ok(out.attributes().and_then(|a| a.get(&name)).cloned())
    }

    async fn queue_arn(&self, q: &QueueRef) -> Result<String> {
        if let Some(arn) = self.caches().queue_arns.get(&q.url).cloned() {
            return Ok(arn);
        }
        let arn = self
            .queue_attribute(q, QueueAttributeName::QueueArn)
            .await?
            .ok_or_else(|| Error::protocol(format!("SQS queue {} has no ARN", q.sqs_name)))?;
        self.caches().queue_arns.insert(q.url.clone(), arn.clone());
        Ok(arn)
    }

    // ----- exchanges -----

    async fn marker(&self, exchange: &str) -> Result<Option<QueueRef>> {
        let name = exchange_marker(&self.settings.queue_name_prefix, exchange)?;
        self.lookup_sqs_name(name).await
    }

    async fn ensure_marker(&self, exchange: &str, tags: &[(String, String)]) -> Result<QueueRef> {
        if let Some(found) = self.marker(exchange).await? {
            return Ok(found);
        }
        let name = exchange_marker(&self.settings.queue_name_prefix, exchange)?;
        self.create_sqs_queue(name, tags, false).await
    }

    /// Type and bindings of `exchange`, from the cache when fresh.
    async fn exchange_entry(
        &self,
        exchange: &str,
    ) -> Result<(Option<ExchangeType>, Vec<QueueBinding>)> {
        if let Some(entry) = self.caches().exchanges.get(exchange) {
            if entry.read_at.elapsed() < self.settings.binding_cache {
                return Ok((entry.kind, entry.bindings.clone()));
            }
        }
        let (kind, bindings) = match self.marker(exchange).await? {
            None => (None, Vec::new()),
            Some(marker) => match self.tags_of(&marker).await {
                Ok(tags) => catalog::read_exchange(&tags),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    self.caches().urls.remove(&marker.sqs_name);
                    (None, Vec::new())
                }
                Err(e) => return Err(e),
            },
        };
        self.caches().exchanges.insert(
            exchange.to_owned(),
            ExchangeEntry {
                read_at: Instant::now(),
                kind,
                bindings: bindings.clone(),
            },
        );
        Ok((kind, bindings))
    }

    fn forget_exchange(&self, exchange: &str) {
        self.caches().exchanges.remove(exchange);
    }

    // ----- SNS -----

    fn topic_name(&self, exchange: &str) -> Result<String> {
        canonical(&self.settings.queue_name_prefix, exchange)
    }

    async fn topic_arn(&self, exchange: &str) -> Result<String> {
        if let Some(arn) = self.caches().topics.get(exchange).cloned() {
            return Ok(arn);
        }
        let name = self.topic_name(exchange)?;
        // The attributes and tags Python kombu creates its topics with, so
        // either side's CreateTopic finds the other's topic.
        let mut req = self
            .clients
            .sns
            .create_topic()
            .name(&name)
            .attributes("FifoTopic", if is_fifo(&name) { "true" } else { "false" });
        for (key, value) in [
            ("ManagedBy", "Celery/Kombu"),
            (
                "Description",
                "This SNS topic is used by Kombu to enable Fanout support for AWS SQS.",
            ),
        ] {
            let tag = aws_sdk_sns::types::Tag::builder()
                .key(key)
                .value(value)
                .build()
                .map_err(|e| Error::invalid_option(format!("bad SNS tag: {e}")))?;
            req = req.tags(tag);
        }
        let out = req
            .send()
            .await
            .map_err(|e| from_sdk(&format!("creating SNS topic {name}"), e))?;
        let arn = out.topic_arn().unwrap_or_default().to_owned();
        self.caches()
            .topics
            .insert(exchange.to_owned(), arn.clone());
        Ok(arn)
    }

    async fn subscribe(&self, exchange: &str, queue: &QueueRef) -> Result<()> {
        let topic_arn = self.topic_arn(exchange).await?;
        let queue_arn = self.queue_arn(queue).await?;
        let policy = self
            .queue_attribute(queue, QueueAttributeName::Policy)
            .await?;
        let new_policy = policy_allowing(policy.as_deref(), &queue_arn, &topic_arn);
        if policy.as_deref() != Some(new_policy.as_str()) {
            queue
                .client
                .set_queue_attributes()
                .queue_url(&queue.url)
                .attributes(QueueAttributeName::Policy, new_policy)
                .send()
                .await
                .map_err(|e| from_sdk("letting the SNS topic send to the SQS queue", e))?;
        }
        self.clients
            .sns
            .subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(&queue_arn)
            .attributes("RawMessageDelivery", "true")
            .return_subscription_arn(true)
            .send()
            .await
            .map_err(|e| from_sdk("subscribing the SQS queue to the SNS topic", e))?;
        Ok(())
    }

    async fn unsubscribe(&self, exchange: &str, queue: &QueueRef) -> Result<()> {
        let topic_arn = self.topic_arn(exchange).await?;
        let queue_arn = self.queue_arn(queue).await?;
        let mut token = None;
        loop {
            let out = self
                .clients
                .sns
                .list_subscriptions_by_topic()
                .topic_arn(&topic_arn)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| from_sdk("listing SNS subscriptions", e))?;
            for sub in out.subscriptions() {
                if sub.endpoint() == Some(queue_arn.as_str()) {
                    if let Some(arn) = sub.subscription_arn() {
                        self.clients
                            .sns
                            .unsubscribe()
                            .subscription_arn(arn)
                            .send()
                            .await
                            .map_err(|e| from_sdk("unsubscribing from SNS", e))?;
                    }
                }
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(());
            }
        }
    }

    // ----- messages -----

    async fn receive(&self, queue: &str, max: usize, wait_seconds: i32) -> Result<Vec<Fetched>> {
        let q = self.existing(queue).await?;
        let out = q
            .client
            .receive_message()
            .queue_url(&q.url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(wait_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            // All of them: a message re-delayed is sent again with them.
            .message_attribute_names("All")
            .customize()
            .config_override(AwsClients::receive_timeouts(&self.settings, wait_seconds))
            .send()
            .await
            .map_err(|e| from_sdk(&format!("receiving from SQS queue {}", q.sqs_name), e))?;
        let mut fetched = Vec::new();
        let mut early = Vec::new();
        let now = delay::now_ms();
        for message in out.messages() {
            let Some(receipt) = message.receipt_handle() else {
                continue;
            };
            if let Some(due) = delay::not_before(message).filter(|due| *due > now) {
                early.push((message, receipt, due));
                continue;
            }
            let mut envelope = decode_body(message.body().unwrap_or_default(), queue);
            let receives = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(1);
            if let Some(id) = message.message_id() {
                let mut caches = self.caches();
                if let Some((_, latest)) = caches.held.get_mut(id) {
                    tracing::debug!(
                        queue,
                        message_id = id,
                        "SQS handed out a held message again"
                    );
                    *latest = receipt.to_owned();
                    continue;
                }
                caches
                    .held
                    .insert(id.to_owned(), (receipt.to_owned(), receipt.to_owned()));
                caches.held_ids.insert(receipt.to_owned(), id.to_owned());
            }
            if receives > 1 {
                envelope.mark_redelivered();
            }
            lease::hold(receipt, &q.client, &q.url);
            // SQS counts receives: the ones before this are its returns
            // (requeued, or its visibility timeout ended).
            fetched.push(Fetched::new(queue, receipt, envelope).with_returned(receives - 1));
        }
        if !early.is_empty() {
            let redelays = early
                .into_iter()
                .map(|(message, receipt, due)| self.redelay(&q, message, receipt, due));
            for (outcome, (message_id, due)) in futures::future::join_all(redelays).await {
                if let Err(error) = outcome {
                    // Left in flight: it comes back after the visibility
                    // timeout and is re-delayed (or delivered) then.
                    tracing::warn!(
                        queue,
                        message_id,
                        due,
                        %error,
                        "could not re-delay an early SQS message"
                    );
                }
            }
        }
        Ok(fetched)
    }

    /// Send a message received before its due time (`due`, Unix ms) again
    /// with the delay left (at most `max_delay_seconds`), its body and
    /// message attributes as received, then delete the copy received (in
    /// that order: a failure between the two leaves two copies, never
    /// none). Returns the outcome with the message id and due time.
    async fn redelay(
        &self,
        q: &QueueRef,
        message: &aws_sdk_sqs::types::Message,
        receipt: &str,
        due: u64,
    ) -> (Result<()>, (String, u64)) {
        let id = message.message_id().unwrap_or_default().to_owned();
        let (seconds, _) = delay::delay_step(due, delay::now_ms(), self.settings.max_delay_seconds);
        tracing::debug!(
            queue = q.sqs_name,
            message_id = id,
            due,
            seconds,
            "re-delaying an early SQS message"
        );
        let sent = q
            .client
            .send_message()
            .queue_url(&q.url)
            .message_body(message.body().unwrap_or_default())
            .set_message_attributes(message.message_attributes().cloned())
            .delay_seconds(seconds)
            .send()
            .await
            .map_err(|e| {
                from_sdk(
                    &format!("re-delaying a message in SQS queue {}", q.sqs_name),
                    e,
                )
            });
        let outcome = match sent {
            Ok(_) => {
                let item = DeleteItem {
                    client: q.client.clone(),
                    receipt: receipt.to_owned(),
                };
                self.deleter.submit(&q.url, item, 0).await
            }
            Err(e) => Err(e),
        };
        (outcome, (id, due))
    }

    /// How long the next receive of `queue` waits, at most `long_poll`
    /// (see [`crate::pace`]).
    fn poll_seconds(&self, queue: &str, long_poll: i32) -> i32 {
        pace::poll_seconds(self.caches().paces.get(queue).copied(), long_poll)
    }

    /// Receive up to `max` from `queue`, waiting as its pace says (at most
    /// `long_poll`, and at most `cap` seconds), and remember what it found.
    async fn paced_receive(
        &self,
        queue: &str,
        max: usize,
        long_poll: i32,
        cap: i32,
    ) -> Result<(Vec<Fetched>, i32)> {
        let wait = self.poll_seconds(queue, long_poll).min(cap);
        let found = self.receive(queue, max, wait).await?;
        if long_poll > 0 {
            let next = pace::after(max, found.len(), wait);
            let mut caches = self.caches();
            match next {
                Some(pace) => {
                    if caches.paces.get(queue) != Some(&pace) {
                        caches.paces.insert(queue.to_owned(), pace);
                    }
                }
                None => {
                    caches.paces.remove(queue);
                }
            }
        }
        Ok((found, wait))
    }

    /// The latest receipt of a held message (SQS may have handed it to
    /// this process again under a new receipt), without letting it go.
    fn latest_receipt(&self, receipt: &str) -> String {
        let caches = self.caches();
        caches
            .held_ids
            .get(receipt)
            .and_then(|id| caches.held.get(id))
            .map_or_else(|| receipt.to_owned(), |(_, latest)| latest.clone())
    }

    /// Forget a held message; returns its latest receipt.
    fn let_go(&self, receipt: &str) -> String {
        lease::release(receipt);
        let mut caches = self.caches();
        match caches.held_ids.remove(receipt) {
            Some(id) => caches
                .held
                .remove(&id)
                .map_or_else(|| receipt.to_owned(), |(_, latest)| latest),
            None => receipt.to_owned(),
        }
    }

    async fn delete_message(&self, queue: &str, receipt: &str) -> Result<()> {
        let receipt = self.let_go(receipt);
        let q = self.existing(queue).await?;
        let item = DeleteItem {
            client: q.client.clone(),
            receipt,
        };
        self.deleter.submit(&q.url, item, 0).await
    }

    async fn declaration(&self, queue: &str) -> Result<Option<Queue>> {
        if let Some(found) = self.caches().declarations.get(queue) {
            return Ok(found.clone());
        }
        let Some(q) = self.lookup(queue).await? else {
            return Ok(None);
        };
        let tags = match self.tags_of(&q).await {
            Ok(tags) => tags,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            // Predefined queues may not allow ListQueueTags.
            Err(e) if e.kind() == ErrorKind::Auth => {
                tracing::debug!(queue, error = %e, "cannot read queue tags");
                HashMap::new()
            }
            Err(e) => return Err(e),
        };
        let declaration = Some(catalog::read_declaration(queue, &tags));
        self.caches()
            .declarations
            .insert(queue.to_owned(), declaration.clone());
        Ok(declaration)
    }

    /// The ARN of the dead-letter queue of `q`'s redrive policy, if any.
    async fn redrive_target(&self, q: &QueueRef) -> Result<Option<String>> {
        if let Some((target, at)) = self.caches().redrive.get(&q.url) {
            if at.elapsed() < REDRIVE_CACHE {
                return Ok(target.clone());
            }
        }
        let policy = self
            .queue_attribute(q, QueueAttributeName::RedrivePolicy)
            .await?;
        let target = policy
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
            .and_then(|p| p.get("deadLetterTargetArn")?.as_str().map(str::to_owned));
        self.caches()
            .redrive
            .insert(q.url.clone(), (target.clone(), Instant::now()));
        Ok(target)
    }

    /// The URL of the queue an ARN names (`arn:aws:sqs:region:account:name`).
    async fn url_of_arn(&self, client: &aws_sdk_sqs::Client, arn: &str) -> Result<String> {
        let parts: Vec<&str> = arn.split(':').collect();
        let (account, name) = match parts.as_slice() {
            [.., account, name] => (*account, *name),
            _ => return Err(Error::protocol(format!("not an SQS queue ARN: {arn}"))),
        };
        let out = client
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .map_err(|e| from_sdk(&format!("looking up dead-letter queue {name}"), e))?;
        Ok(out.queue_url().unwrap_or_default().to_owned())
    }

    /// Send a message straight to a queue URL (no batching).
    async fn send_to_url(
        &self,
        client: &aws_sdk_sqs::Client,
        url: &str,
        outgoing: Outgoing,
    ) -> Result<()> {
        let item = SendItem {
            client: client.clone(),
            outgoing,
        };
        let size = item.outgoing.body.len();
        self.sender.submit(url, item, size).await
    }
}

#[async_trait]
impl VirtualBackend for SqsBackend {
    fn capabilities(&self) -> Capabilities {
        capabilities(
            self.settings.supports_fanout,
            max_body_size(
                self.settings.max_message_size,
                self.settings.base64_encoding,
            ),
        )
    }

    async fn new_queue(&self, queue: &Queue) -> Result<()> {
        let tags = catalog::declaration_tags(queue)?;
        let known = self
            .caches()
            .declarations
            .get(&queue.name)
            .cloned()
            .flatten();
        let unchanged =
            known.is_some_and(|k| catalog::declaration_tags(&k).ok() == Some(tags.clone()));
        match self.lookup(&queue.name).await? {
            Some(_) if unchanged => Ok(()),
            Some(existing) => {
                self.tag(&existing, tags).await?;
                self.caches().declarations.remove(&queue.name);
                Ok(())
            }
            None => {
                self.caches().declarations.remove(&queue.name);
                self.ensure_queue(&queue.name, &tags).await.map(|_| ())
            }
        }
    }

    async fn queue_declaration(&self, queue: &str) -> Result<Option<Queue>> {
        self.declaration(queue).await
    }

    async fn has_queue(&self, queue: &str) -> Result<bool> {
        Ok(self.lookup(queue).await?.is_some())
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        if !self.settings.predefined_queues.is_empty() {
            // kombu leaves predefined queues alone.
            return Ok(());
        }
        let Some(q) = self.lookup(queue).await? else {
            return Ok(());
        };
        let tags = match self.tags_of(&q).await {
            Ok(tags) => tags,
            Err(e) if e.kind() == ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        for exchange in catalog::bound_exchanges(&tags) {
            self.forget_exchange(&exchange);
            if let Some(marker) = self.marker(&exchange).await? {
                let marker_tags = self.tags_of(&marker).await?;
                let (kind, _) = catalog::read_exchange(&marker_tags);
                self.untag(&marker, catalog::binding_keys_of_queue(&marker_tags, queue))
                    .await?;
                if kind == Some(ExchangeType::Fanout) && self.settings.supports_fanout {
                    self.unsubscribe(&exchange, &q).await?;
                }
            }
        }
        match q.client.delete_queue().queue_url(&q.url).send().await {
            Ok(_) => {}
            Err(e) if is_missing_queue(&e) => {}
            Err(e) => return Err(from_sdk(&format!("deleting SQS queue {}", q.sqs_name), e)),
        }
        let mut caches = self.caches();
        caches.urls.remove(&q.sqs_name);
        caches.declarations.remove(queue);
        caches.queue_arns.remove(&q.url);
        caches.redrive.remove(&q.url);
        caches.paces.remove(queue);
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let Some(q) = self.lookup(queue).await? else {
            return Ok(0);
        };
        let size = self.size(queue).await?;
        match q.client.purge_queue().queue_url(&q.url).send().await {
            Ok(_) => Ok(size),
            Err(e) if code_of(&e).is_some_and(|c| c.ends_with("PurgeQueueInProgress")) => {
                // One purge a minute: delete what can be received instead.
                let mut removed = 0;
                loop {
                    let batch = self.receive(queue, MAX_BATCH, 0).await?;
                    if batch.is_empty() {
                        return Ok(removed);
                    }
                    for fetched in batch {
                        self.delete_message(queue, &fetched.receipt).await?;
                        removed += 1;
                    }
                }
            }
            Err(e) => Err(from_sdk(&format!("purging SQS queue {}", q.sqs_name), e)),
        }
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        let Some(q) = self.lookup(queue).await? else {
            return Ok(0);
        };
        let n = self
            .queue_attribute(&q, QueueAttributeName::ApproximateNumberOfMessages)
            .await?;
        Ok(n.and_then(|n| n.parse().ok()).unwrap_or(0))
    }

    async fn put(&self, queue: &str, envelope: &Envelope, _priority: u8) -> Result<()> {
        // Like kombu, publishing to a queue that does not exist creates it.
        let q = self.ensure_queue(queue, &[]).await?;
        let outgoing = Outgoing::new(
            envelope,
            &q.sqs_name,
            self.settings.base64_encoding,
            &self.settings.message_attributes,
            self.settings.max_message_size,
        )?;
        self.send_to_url(&q.client, &q.url, outgoing).await
    }

    /// `DelaySeconds` up to `max_delay_seconds` (900 s); a longer delay
    /// also carries [`NOT_BEFORE_ATTRIBUTE`] and is re-delayed by the
    /// consumer that receives it early (see the `delay` module). A FIFO
    /// queue takes no per-message delay: refused with `Unsupported`.
    async fn put_delayed(
        &self,
        queue: &str,
        message: StoredMessage,
        _priority: u8,
        not_before_ms: u64,
    ) -> Result<()> {
        let q = self.ensure_queue(queue, &[]).await?;
        if is_fifo(&q.sqs_name) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "SQS FIFO queue {} takes no per-message delay: a delayed publish is refused",
                    q.sqs_name
                ),
            ));
        }
        let (seconds, long) = delay::delay_step(
            not_before_ms,
            delay::now_ms(),
            self.settings.max_delay_seconds,
        );
        let mut attributes = self.settings.message_attributes.clone();
        if long {
            attributes.insert(NOT_BEFORE_ATTRIBUTE.to_owned(), not_before_ms.to_string());
        }
        let mut outgoing = Outgoing::new(
            &message.into_envelope(),
            &q.sqs_name,
            self.settings.base64_encoding,
            &attributes,
            self.settings.max_message_size,
        )?;
        outgoing.delay_seconds = Some(seconds);
        if long {
            // Ours wins over a per-message attribute of the same name.
            outgoing
                .attributes
                .retain(|(k, _)| k != NOT_BEFORE_ATTRIBUTE);
            outgoing
                .attributes
                .push((NOT_BEFORE_ATTRIBUTE.to_owned(), not_before_ms.to_string()));
        }
        self.send_to_url(&q.client, &q.url, outgoing).await
    }

    /// `SendMessageBatch` requests of at most 10 messages and
    /// `max_message_size` bytes (256 KiB by default) each; a FIFO queue's
    /// go one after another (in order), a standard queue's a few at once.
    /// Every message is checked against the size limit before anything is
    /// sent; any entry SQS refuses makes the call an error.
    async fn put_many(&self, queue: &str, messages: Vec<(Envelope, u8)>) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        // Like kombu, publishing to a queue that does not exist creates it.
        let q = self.ensure_queue(queue, &[]).await?;
        let mut outgoing = messages
            .iter()
            .map(|(envelope, _)| {
                Outgoing::new(
                    envelope,
                    &q.sqs_name,
                    self.settings.base64_encoding,
                    &self.settings.message_attributes,
                    self.settings.max_message_size,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        if outgoing.len() == 1 {
            // Alone: it may share a request with concurrent publishes.
            let lone = outgoing.remove(0);
            return self.send_to_url(&q.client, &q.url, lone).await;
        }
        let budget = self.settings.max_message_size;
        bulk::send_all(&q.client, &q.url, outgoing, budget, is_fifo(&q.sqs_name)).await
    }

    async fn fetch(&self, queues: &[String], wait: Duration) -> Result<Option<Fetched>> {
        let mut batch = self.fetch_batch(queues, wait, 1).await?;
        Ok(batch.pop())
    }

    async fn fetch_batch(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let max = max.clamp(1, MAX_BATCH);
        let long_poll = if wait.is_zero() {
            0
        } else {
            self.settings.wait_time_seconds
        };
        let (found, waited) = if queues.len() == 1 {
            self.paced_receive(&queues[0], max, long_poll, i32::MAX)
                .await?
        } else {
            // Poll several queues at once, sharing out `max` so the total
            // stays within the prefetch; at most a short wait so one quiet
            // queue does not hold up the others.
            let k = queues.len().min(max);
            let polls = queues[..k].iter().enumerate().map(|(i, q)| {
                let share = max / k + usize::from(i < max % k);
                self.paced_receive(q, share, long_poll, pace::SETTLE_POLL_SECONDS)
            });
            let mut all = Vec::new();
            let mut waited = 0;
            let mut first_error = None;
            for result in futures::future::join_all(polls).await {
                match result {
                    Ok((batch, wait)) => {
                        all.extend(batch);
                        waited = waited.max(wait);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if all.is_empty() {
                if let Some(e) = first_error {
                    return Err(e);
                }
            }
            (all, waited)
        };
        // kombu's polling_interval: a pause after a poll that waited and
        // found nothing (not after one that did not wait: the next waits).
        if found.is_empty() && waited > 0 && !self.settings.polling_interval.is_zero() {
            tokio::time::sleep(self.settings.polling_interval).await;
        }
        Ok(found)
    }

    /// The channel's coalesced acks: per queue, `DeleteMessageBatch`
    /// requests of 10, a few at once (a lone ack joins whatever request to
    /// its queue overlaps it). Every one is tried; any entry SQS refuses
    /// makes the call an error (that message comes back after its
    /// visibility timeout).
    async fn ack_many(&self, acks: &[(String, Receipt)]) -> Result<()> {
        // Per queue, in order: the latest receipt of each message.
        let mut by_queue: Vec<(&str, Vec<String>)> = Vec::new();
        for (queue, receipt) in acks {
            let latest = self.let_go(receipt);
            match by_queue.iter_mut().find(|(q, _)| *q == queue.as_str()) {
                Some((_, receipts)) => receipts.push(latest),
                None => by_queue.push((queue.as_str(), vec![latest])),
            }
        }
        let mut outcomes = Vec::with_capacity(by_queue.len());
        for (queue, mut receipts) in by_queue {
            let q = match self.existing(queue).await {
                Ok(q) => q,
                Err(e) => {
                    outcomes.push(Err(e));
                    continue;
                }
            };
            outcomes.push(if receipts.len() == 1 {
                // Alone: it may share a request with concurrent acks.
                let item = DeleteItem {
                    client: q.client.clone(),
                    receipt: receipts.remove(0),
                };
                self.deleter.submit(&q.url, item, 0).await
            } else {
                bulk::delete_all(&q.client, &q.url, receipts).await
            });
        }
        bulk::first_error(outcomes)
    }

    async fn ack(&self, queue: &str, receipt: &Receipt) -> Result<()> {
        self.delete_message(queue, receipt).await
    }

    /// `ChangeMessageVisibility` with the message's latest receipt handle:
    /// invisible for `by` from now (whole seconds, rounded up; SQS allows
    /// at most 12 hours from the first receive). A receipt SQS no longer
    /// takes (the message became visible and another consumer received
    /// it, or it was deleted) is a `PreconditionFailed` error.
    async fn extend_lease(&self, queue: &str, receipt: &Receipt, by: Duration) -> Result<()> {
        let latest = self.latest_receipt(receipt);
        let q = self.existing(queue).await?;
        let seconds = i32::try_from(by.as_secs() + u64::from(by.subsec_nanos() > 0))
            .unwrap_or(i32::MAX)
            .min(43_200);
        q.client
            .change_message_visibility()
            .queue_url(&q.url)
            .receipt_handle(latest)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|e| {
                let err = from_sdk(
                    &format!(
                        "extending the lease of a message of SQS queue {}",
                        q.sqs_name
                    ),
                    e,
                );
                if err.kind() == ErrorKind::PreconditionFailed {
                    Error::new(
                        ErrorKind::PreconditionFailed,
                        format!(
                            "sqs: the lease on a message of {queue:?} had already ended (its \
                             visibility timeout passed and another consumer received it, or it \
                             was deleted): it may be delivered again ({err})"
                        ),
                    )
                } else {
                    err
                }
            })?;
        Ok(())
    }

    /// The transport's `visibility_timeout` (what kombu-rs creates queues
    /// with; a queue made elsewhere keeps its own).
    fn lease_duration(&self) -> Option<Duration> {
        Some(Duration::from_secs(
            u64::try_from(self.settings.visibility_timeout).unwrap_or(0),
        ))
    }

    async fn requeue(&self, queue: &str, receipt: &Receipt, _envelope: &Envelope) -> Result<()> {
        let receipt = &self.let_go(receipt);
        let q = self.existing(queue).await?;
        match q
            .client
            .change_message_visibility()
            .queue_url(&q.url)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = from_sdk("making an SQS message visible again", e);
                if err.kind() == ErrorKind::PreconditionFailed {
                    // The receipt expired: SQS makes the message visible
                    // again by itself.
                    tracing::debug!(queue, error = %err, "requeue of an expired receipt");
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn discard(&self, queue: &str, receipt: &Receipt, envelope: &Envelope) -> Result<()> {
        let declared_dlx = self
            .declaration(queue)
            .await?
            .is_some_and(|d| d.dead_letter_exchange.is_some());
        if !declared_dlx {
            let q = self.existing(queue).await?;
            if let Some(target) = self.redrive_target(&q).await? {
                let url = self.url_of_arn(&q.client, &target).await?;
                let dlq_name = target.rsplit(':').next().unwrap_or_default().to_owned();
                let outgoing = Outgoing::new(
                    envelope,
                    &dlq_name,
                    self.settings.base64_encoding,
                    &self.settings.message_attributes,
                    self.settings.max_message_size,
                )?;
                self.send_to_url(&q.client, &url, outgoing).await?;
                tracing::debug!(queue, dead_letter_queue = %dlq_name, "rejected message moved");
            }
        }
        self.delete_message(queue, receipt).await
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        let type_tag = vec![(
            catalog::TYPE_TAG.to_owned(),
            exchange.kind.as_str().to_owned(),
        )];
        let marker = self.ensure_marker(&exchange.name, &type_tag).await?;
        self.tag(&marker, type_tag).await?;
        if exchange.kind == ExchangeType::Fanout && self.settings.supports_fanout {
            self.topic_arn(&exchange.name).await?;
        }
        self.forget_exchange(&exchange.name);
        Ok(())
    }

    async fn exchange(&self, name: &str) -> Result<Option<Exchange>> {
        let (kind, _) = self.exchange_entry(name).await?;
        Ok(kind.map(|kind| Exchange::new(name, kind)))
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        let (kind, _) = self.exchange_entry(name).await?;
        if let Some(marker) = self.marker(name).await? {
            match marker
                .client
                .delete_queue()
                .queue_url(&marker.url)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if is_missing_queue(&e) => {}
                Err(e) => return Err(from_sdk("deleting an exchange's SQS marker queue", e)),
            }
            self.caches().urls.remove(&marker.sqs_name);
        }
        if kind == Some(ExchangeType::Fanout) && self.settings.supports_fanout {
            let arn = self.topic_arn(name).await?;
            self.clients
                .sns
                .delete_topic()
                .topic_arn(arn)
                .send()
                .await
                .map_err(|e| from_sdk("deleting an SNS topic", e))?;
            self.caches().topics.remove(name);
        }
        self.forget_exchange(name);
        Ok(())
    }

    async fn bind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        let tag = catalog::binding_tag(exchange, binding)?;
        let marker = self.ensure_marker(exchange, &[]).await?;
        self.tag(&marker, vec![tag]).await?;
        self.forget_exchange(exchange);
        let (kind, _) = self.exchange_entry(exchange).await?;
        if let Some(q) = self.lookup(&binding.queue).await? {
            if let Some(bound) = catalog::bound_tag(exchange) {
                if self.settings.predefined_queues.is_empty() {
                    self.tag(&q, vec![bound]).await?;
                }
            }
            if kind == Some(ExchangeType::Fanout) && self.settings.supports_fanout {
                self.subscribe(exchange, &q).await?;
            }
        }
        Ok(())
    }

    async fn unbind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        let (key, _) = catalog::binding_tag(exchange, binding)?;
        let (kind, _) = self.exchange_entry(exchange).await?;
        if let Some(marker) = self.marker(exchange).await? {
            self.untag(&marker, vec![key]).await?;
        }
        self.forget_exchange(exchange);
        if kind == Some(ExchangeType::Fanout) && self.settings.supports_fanout {
            if let Some(q) = self.lookup(&binding.queue).await? {
                self.unsubscribe(exchange, &q).await?;
            }
        }
        Ok(())
    }

    async fn bindings(&self, exchange: &str) -> Result<Vec<QueueBinding>> {
        Ok(self.exchange_entry(exchange).await?.1)
    }

    async fn put_fanout(
        &self,
        exchange: &str,
        _routing_key: &str,
        envelope: &Envelope,
    ) -> Result<bool> {
        if !self.settings.supports_fanout {
            return Ok(false);
        }
        let topic_arn = self.topic_arn(exchange).await?;
        let name = self.topic_name(exchange)?;
        // Python kombu publishes the envelope JSON as it is (SNS delivers it
        // raw into each queue); the size check is the same as for SQS.
        let outgoing = Outgoing::new(
            envelope,
            &name,
            false,
            &self.settings.message_attributes,
            self.settings.max_message_size,
        )?;
        let mut req = self
            .clients
            .sns
            .publish()
            .topic_arn(topic_arn)
            .message(encode_body(envelope, false))
            .set_message_group_id(outgoing.group_id)
            .set_message_deduplication_id(outgoing.dedup_id);
        for (k, v) in &outgoing.attributes {
            let value = aws_sdk_sns::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map_err(|e| Error::invalid_option(format!("bad message attribute: {e}")))?;
            req = req.message_attributes(k, value);
        }
        req.send()
            .await
            .map_err(|e| from_sdk(&format!("publishing to SNS topic {name}"), e))?;
        Ok(true)
    }

    fn polling_interval(&self) -> Duration {
        self.settings.polling_interval.max(Duration::from_secs(1))
    }

    /// The heartbeat: [`SqsBackend::ping`]. Any failure counts as a lost
    /// connection (an answer such as expired credentials too: the next
    /// connection makes new clients and resolves credentials again).
    async fn ping(&self) -> Result<()> {
        SqsBackend::ping(self).await.map_err(|err| {
            if err.is_connection_error() {
                err
            } else {
                Error::new(
                    ErrorKind::ConnectionLost,
                    format!("sqs heartbeat failed: {err}"),
                )
            }
        })
    }

    /// One call may take an attempt's `socket_timeout` on top of the
    /// longest thing it waits for: a long poll (`wait_time_seconds`) and
    /// the `polling_interval` sleep after an empty one. (The SDK bounds
    /// each attempt by `socket_timeout` itself, so a dead or silent endpoint
    /// usually fails a call sooner, after its retries.)
    fn operation_timeout(&self) -> Option<Duration> {
        let poll = Duration::from_secs(self.settings.wait_time_seconds.max(0) as u64);
        Some(self.settings.socket_timeout + poll + self.settings.polling_interval)
    }

    /// A long poll stays open on the server until it ends, and SQS gives a
    /// message that arrives meanwhile to it even if the client has gone:
    /// that message would then stay invisible for `visibility_timeout`.
    /// So closing waits for the whole poll (`wait_time_seconds`, and the
    /// `polling_interval` sleep after an empty one), and the consume loop
    /// puts back what it took, before the process may exit.
    fn close_wait(&self) -> Duration {
        let poll = Duration::from_secs(self.settings.wait_time_seconds.max(0) as u64);
        poll + self.settings.polling_interval + CLOSE_MARGIN
    }
}
