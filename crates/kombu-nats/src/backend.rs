//! The [`VirtualBackend`] of `nats://`: a queue is a work-queue stream with
//! one durable pull consumer; a message is kombu's envelope JSON.

use std::time::Duration;

use bytes::Bytes;
use kombu_core::spi::{
    async_trait, Fetched, QueueBinding, Receipt, StopWaiting, StoredMessage, VirtualBackend,
};
use kombu_core::{Capabilities, Envelope, Error, ErrorKind, Exchange, Queue, Result};

use crate::api::Api;
use crate::delayed::{nak_with_delay, now_ms, rest_of_delay, DelayLooks, Due, NOT_BEFORE_HEADER};
use crate::pull::{delivered_count, pull, Wait};
use crate::settings::{Settings, Storage};
use crate::topology::Topology;

/// Header set on every delivered message: the `$JS.ACK` subject of its
/// delivery, for [`NatsBackend::extend_lease`]. It is not stored again
/// when the message is dead-lettered or published anew.
pub const ACK_SUBJECT_HEADER: &str = "x-nats-ack-subject";

/// Longest one waiting pull waits on the server.
const WAIT_SLICE: Duration = Duration::from_millis(250);

/// Most messages one pull asks for.
const MAX_PULL: usize = 256;

/// What a `nats://` connection does at most (the README table).
pub(crate) fn capabilities() -> Capabilities {
    Capabilities::new(kombu_core::TransportKind::Virtual)
        .with_priority(false)
        .with_fanout_note("a copy in each bound queue's stream")
        .with_shared_declarations(true)
        .with_persistent(true)
        .with_redelivers_unacked(true)
        // In-progress acks restart the ack wait.
        .with_lease_extension(true)
        // JetStream counts deliveries (redeliveries after the ack wait too).
        .with_delivery_limit(true)
        // A delay stream per queue, moved by its consumers (delayed.rs).
        .with_delayed_delivery(true)
}

/// The NATS JetStream [`VirtualBackend`]. Reach it from a connection with
/// `conn.extension::<NatsBackend>().await?` for NATS's own operations:
/// [`extend_lease`](Self::extend_lease), [`client`](Self::client),
/// [`stream_name`](Self::stream_name).
pub struct NatsBackend {
    settings: Settings,
    api: Api,
    topology: Topology,
    /// The server's `max_payload`: a larger envelope is refused.
    max_payload: usize,
    /// When to look at each queue's delay stream.
    delay_looks: DelayLooks,
}

impl std::fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackend")
            .field("server", &self.api.client.server_info().server_name)
            .field("settings", &self.settings)
            .finish()
    }
}

fn receipt_of(message: &async_nats::Message) -> String {
    message
        .reply
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

impl NatsBackend {
    pub(crate) fn new(settings: Settings, api: Api, topology: Topology) -> Self {
        let max_payload = api.client.server_info().max_payload;
        NatsBackend {
            settings,
            api,
            topology,
            max_payload,
            delay_looks: DelayLooks::default(),
        }
    }

    /// The async-nats client of this connection (JetStream through
    /// `async_nats::jetstream::new(client)`).
    pub fn client(&self) -> async_nats::Client {
        self.api.client.clone()
    }

    /// The JetStream stream that holds `queue`'s messages.
    ///
    /// ```no_run
    /// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
    /// let backend = conn.extension::<kombu_nats::NatsBackend>().await?;
    /// assert_eq!(backend.stream_name("tasks.high")?, "KOMBU_tasks_2Ehigh");
    /// # Ok(()) }
    /// ```
    pub fn stream_name(&self, queue: &str) -> Result<String> {
        self.settings.names.stream(queue)
    }

    /// Restart the ack wait (`visibility_timeout`) of a message this
    /// consumer holds: JetStream's in-progress ack (`+WPI`), for work that
    /// takes longer than the visibility timeout.
    ///
    /// ```no_run
    /// # async fn demo(conn: kombu_core::Connection, message: kombu_core::Message) -> kombu_core::Result<()> {
    /// let backend = conn.extension::<kombu_nats::NatsBackend>().await?;
    /// backend.extend_lease(&message).await?; // one more visibility_timeout
    /// message.ack().await?;
    /// # Ok(()) }
    /// ```
    pub async fn extend_lease(&self, message: &kombu_core::Message) -> Result<()> {
        let subject = message
            .headers()
            .get(ACK_SUBJECT_HEADER)
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("nats: the message has no {ACK_SUBJECT_HEADER} header"),
                )
            })?
            .to_owned();
        self.settle(&subject, "+WPI", "extending a lease").await
    }

    /// Send an acknowledgement kind (`+ACK`, `-NAK`, `+WPI`) for a delivery
    /// and wait until JetStream has taken it. A delivery whose stream is
    /// gone has nothing to settle.
    async fn settle(&self, receipt: &str, kind: &'static str, doing: &str) -> Result<()> {
        self.settle_as(receipt, kind, doing).await
    }

    /// [`settle`](Self::settle) with any acknowledgement body (a `-NAK`
    /// with a delay).
    async fn settle_as(&self, receipt: &str, kind: impl Into<Bytes>, doing: &str) -> Result<()> {
        if !receipt.starts_with("$JS.ACK.") {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                format!("nats: {receipt:?} is not a JetStream delivery"),
            ));
        }
        match self
            .api
            .request_raw(doing, receipt.to_owned(), kind.into())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Create the queue's stream and consumer if missing. An existing
    /// consumer is updated only when `visibility_timeout` was given.
    async fn ensure_queue(&self, queue: &str) -> Result<()> {
        let stream = self.settings.names.stream(queue)?;
        let subject = self.settings.names.subject(queue)?;
        self.api
            .create_stream(&self.settings, &stream, &subject)
            .await?;
        if !self.settings.visibility_given
            && self
                .api
                .consumer_info(&stream, &self.settings.names.consumer)
                .await?
                .is_some()
        {
            return Ok(());
        }
        self.api.create_consumer(&self.settings, &stream).await
    }

    /// The stored form of an envelope, checked against `max_payload`.
    fn payload(&self, envelope: &Envelope) -> Result<Bytes> {
        let json = if envelope.headers.contains_key(ACK_SUBJECT_HEADER) {
            let mut clean = envelope.clone();
            clean.headers.shift_remove(ACK_SUBJECT_HEADER);
            clean.to_json()
        } else {
            envelope.to_json()
        };
        if json.len() > self.max_payload {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "nats: the message is {} bytes as kombu JSON, over the server's max_payload of {} bytes",
                    json.len(),
                    self.max_payload
                ),
            ));
        }
        Ok(Bytes::from(json))
    }

    /// Publish a stored message to `queue`, creating the queue when no
    /// stream takes its subject.
    async fn publish(&self, queue: &str, payload: Bytes) -> Result<()> {
        let subject = self.settings.names.subject(queue)?;
        match self.api.publish(subject.clone(), payload.clone()).await {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.ensure_queue(queue).await?;
                self.api.publish(subject, payload).await.map(|_| ())
            }
            done => done.map(|_| ()),
        }
    }

    /// Create `queue`'s delay stream and its consumer if missing.
    async fn ensure_delay_stream(&self, queue: &str) -> Result<()> {
        let stream = self.settings.names.delay_stream(queue)?;
        let subject = self.settings.names.delay_subject(queue)?;
        self.api
            .create_stream(&self.settings, &stream, &subject)
            .await?;
        self.api
            .create_consumer_with(&self.settings, &stream, -1)
            .await
    }

    /// Purge `queue`'s delay stream (and make its consumer anew, as
    /// nats-server 2.9 needs after a purge); how many messages it held.
    async fn purge_delayed(&self, queue: &str) -> Result<u64> {
        let stream = self.settings.names.delay_stream(queue)?;
        let purged = self.api.purge_stream(&stream).await?;
        if purged > 0 {
            let consumer = &self.settings.names.consumer;
            self.api.delete_consumer(&stream, consumer).await?;
            self.api
                .create_consumer_with(&self.settings, &stream, -1)
                .await?;
        }
        Ok(purged)
    }

    /// Look at the delay stream of each of `queues` whose look is due:
    /// move the due messages to their queue, NAK the others with the rest
    /// of their delay. A failed look is logged (the next one tries again).
    async fn move_due_messages(&self, queues: &[String]) {
        for queue in queues {
            if let Err(e) = self.move_due(queue).await {
                tracing::warn!(queue, error = %e, "nats: looking at a delay stream failed");
            }
        }
    }

    async fn move_due(&self, queue: &str) -> Result<()> {
        let stream = self.settings.names.delay_stream(queue)?;
        match self.delay_looks.due(queue) {
            Due::Nothing => return Ok(()),
            Due::FindStream => {
                let exists = self.api.stream_exists(&stream).await?;
                self.delay_looks.found(queue, exists);
                if !exists {
                    return Ok(());
                }
                self.delay_looks.due(queue);
            }
            Due::Pull => {}
        }
        let waiting = pull(
            &self.api,
            &stream,
            &self.settings.names.consumer,
            MAX_PULL,
            Wait::No,
            self.settings.request_timeout,
        )
        .await?;
        let now = now_ms();
        for m in waiting {
            let receipt = receipt_of(&m);
            let envelope = Envelope::from_json(&m.payload).ok();
            let not_before = envelope
                .as_ref()
                .and_then(|e| e.headers.get(NOT_BEFORE_HEADER))
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            if let Some(rest) = rest_of_delay(not_before, now) {
                self.settle_as(&receipt, nak_with_delay(rest), "delaying a message")
                    .await?;
                continue;
            }
            let payload = match envelope {
                Some(mut envelope) => {
                    envelope.headers.shift_remove(NOT_BEFORE_HEADER);
                    self.payload(&envelope)?
                }
                // Not a kombu envelope: the queue's consumer quarantines it.
                None => m.payload.clone(),
            };
            self.publish(queue, payload).await?;
            self.settle(&receipt, "+ACK", "moving a due message")
                .await?;
        }
        Ok(())
    }

    async fn fetch_some(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
        stop: Option<&StopWaiting>,
    ) -> Result<Vec<Fetched>> {
        let max = max.clamp(1, MAX_PULL);
        self.move_due_messages(queues).await;
        for queue in queues {
            let got = self.pull(queue, max, Wait::No).await?;
            if !got.is_empty() {
                return Ok(got);
            }
        }
        let Some(first) = queues.first() else {
            match stop {
                Some(stop) => {
                    stop.wait(wait).await;
                }
                None => tokio::time::sleep(wait).await,
            }
            return Ok(Vec::new());
        };
        if wait < Duration::from_millis(10) || stop.is_some_and(StopWaiting::is_raised) {
            return Ok(Vec::new());
        }
        // Waiting pulls of at most `WAIT_SLICE` each: a closing channel
        // (`stop`) waits for the one under way only, and a pull is never
        // left open on the server (what it brings would sit unacked until
        // the visibility timeout).
        let deadline = tokio::time::Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left < Duration::from_millis(10) || stop.is_some_and(StopWaiting::is_raised) {
                return Ok(got);
            }
            self.move_due_messages(queues).await;
            got = self
                .pull(first, 1, Wait::Upto(left.min(WAIT_SLICE)))
                .await?;
            if !got.is_empty() {
                break;
            }
        }
        if max > 1 {
            match self.pull(first, max - 1, Wait::No).await {
                Ok(more) => got.extend(more),
                Err(e) => tracing::debug!(error = %e, "nats: a follow-up pull failed"),
            }
        }
        Ok(got)
    }

    async fn pull(&self, queue: &str, batch: usize, wait: Wait) -> Result<Vec<Fetched>> {
        let stream = self.settings.names.stream(queue)?;
        let messages = pull(
            &self.api,
            &stream,
            &self.settings.names.consumer,
            batch,
            wait,
            self.settings.request_timeout,
        )
        .await?;
        Ok(messages
            .into_iter()
            .map(|m| {
                let receipt = receipt_of(&m);
                match Envelope::from_json(&m.payload) {
                    Ok(mut envelope) => {
                        if delivered_count(&receipt) > 1 {
                            envelope.mark_redelivered();
                        }
                        envelope
                            .headers
                            .insert(ACK_SUBJECT_HEADER.into(), receipt.clone().into());
                        let returned = delivered_count(&receipt).saturating_sub(1);
                        Fetched::new(queue, receipt, envelope).with_returned(returned)
                    }
                    Err(_) => {
                        let returned = delivered_count(&receipt).saturating_sub(1);
                        Fetched::from_json(queue, receipt, &m.payload).with_returned(returned)
                    }
                }
            })
            .collect())
    }
}

#[async_trait]
impl VirtualBackend for NatsBackend {
    fn capabilities(&self) -> Capabilities {
        // A binary body travels base64-encoded in the envelope.
        let body_limit = (self.max_payload.saturating_sub(4096) as u64) * 3 / 4;
        capabilities()
            .with_persistent(self.settings.storage == Storage::File)
            .with_max_body_size(Some(body_limit))
    }

    async fn ping(&self) -> Result<()> {
        self.api.ping().await
    }

    /// Every request waits `request_timeout` for its answer; a call makes
    /// a few.
    fn operation_timeout(&self) -> Option<Duration> {
        Some(self.settings.request_timeout * 2)
    }

    async fn new_queue(&self, queue: &Queue) -> Result<()> {
        self.ensure_queue(&queue.name).await?;
        self.topology.put_queue(queue).await
    }

    async fn queue_declaration(&self, queue: &str) -> Result<Option<Queue>> {
        self.topology.queue(queue).await
    }

    async fn has_queue(&self, queue: &str) -> Result<bool> {
        if self.topology.queue(queue).await?.is_some() {
            return Ok(true);
        }
        self.api
            .stream_exists(&self.settings.names.stream(queue)?)
            .await
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.api
            .delete_stream(&self.settings.names.stream(queue)?)
            .await?;
        self.api
            .delete_stream(&self.settings.names.delay_stream(queue)?)
            .await?;
        self.delay_looks.forget(queue);
        self.topology.delete_queue(queue).await
    }

    /// Ready and delayed messages: with nothing delivered and unacked, the stream
    /// is purged in one call and its consumer made anew (nats-server 2.9
    /// leaves a consumer behind a purge answering no `no_wait` pull);
    /// otherwise the ready messages are pulled and acked, so that the ones
    /// consumers hold stay theirs.
    async fn purge(&self, queue: &str) -> Result<u64> {
        let delayed = self.purge_delayed(queue).await?;
        let stream = self.settings.names.stream(queue)?;
        let consumer = &self.settings.names.consumer;
        let info = self.api.consumer_info(&stream, consumer).await?;
        if info.as_ref().is_none_or(|i| i.num_ack_pending == 0) {
            let purged = self.api.purge_stream(&stream).await?;
            if purged > 0 && info.is_some() {
                self.api.delete_consumer(&stream, consumer).await?;
                self.api.create_consumer(&self.settings, &stream).await?;
            }
            return Ok(delayed + purged);
        }
        let mut purged = 0;
        loop {
            let batch = self.pull(queue, MAX_PULL, Wait::No).await?;
            if batch.is_empty() {
                return Ok(delayed + purged);
            }
            purged += batch.len() as u64;
            let acks: Vec<(String, Receipt)> =
                batch.into_iter().map(|f| (f.queue, f.receipt)).collect();
            self.ack_many(&acks).await?;
        }
    }

    /// Messages not delivered yet (a requeued message counts again once
    /// it is delivered anew).
    async fn size(&self, queue: &str) -> Result<u64> {
        let stream = self.settings.names.stream(queue)?;
        Ok(self
            .api
            .consumer_info(&stream, &self.settings.names.consumer)
            .await?
            .map_or(0, |i| i.num_pending))
    }

    async fn put(&self, queue: &str, envelope: &Envelope, _priority: u8) -> Result<()> {
        let payload = self.payload(envelope)?;
        self.publish(queue, payload).await
    }

    /// Published to the queue's delay stream with its not-before time, and
    /// moved to the queue when due by the queue's consumers (delayed.rs).
    async fn put_delayed(
        &self,
        queue: &str,
        message: StoredMessage,
        _priority: u8,
        not_before_ms: u64,
    ) -> Result<()> {
        let mut envelope = message.into_envelope();
        envelope
            .headers
            .insert(NOT_BEFORE_HEADER.into(), not_before_ms.into());
        let payload = self.payload(&envelope)?;
        let subject = self.settings.names.delay_subject(queue)?;
        match self.api.publish(subject.clone(), payload.clone()).await {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.ensure_delay_stream(queue).await?;
                self.api.publish(subject, payload).await?;
            }
            done => {
                done?;
            }
        }
        self.delay_looks.found(queue, true);
        Ok(())
    }

    /// Every publish sent at once on the connection, then every answer
    /// awaited (pipelined); an error is the first one.
    async fn put_many(&self, queue: &str, messages: Vec<(Envelope, u8)>) -> Result<()> {
        let payloads = messages
            .iter()
            .map(|(envelope, _)| self.payload(envelope))
            .collect::<Result<Vec<_>>>()?;
        let sent =
            futures::future::join_all(payloads.into_iter().map(|p| self.publish(queue, p))).await;
        sent.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }

    async fn fetch(&self, queues: &[String], wait: Duration) -> Result<Option<Fetched>> {
        Ok(self.fetch_batch(queues, wait, 1).await?.into_iter().next())
    }

    /// Ready messages of the first queue that has some (a `no_wait` pull
    /// each); when none has, one pull on the first queue waits up to
    /// `wait` for a message, then takes what else is ready at once.
    async fn fetch_batch(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        self.fetch_some(queues, wait, max, None).await
    }

    /// [`fetch_batch`](Self::fetch_batch) that stops waiting when the
    /// channel closes (after the waiting pull under way, at most 250 ms).
    async fn fetch_batch_until(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
        stop: &StopWaiting,
    ) -> Result<Vec<Fetched>> {
        self.fetch_some(queues, wait, max, Some(stop)).await
    }

    /// JetStream's in-progress ack (`+WPI`): the ack wait
    /// (`visibility_timeout`) starts again, whatever `by` is.
    async fn extend_lease(&self, _queue: &str, receipt: &Receipt, _by: Duration) -> Result<()> {
        self.settle(receipt, "+WPI", "extending a lease").await
    }

    fn lease_duration(&self) -> Option<Duration> {
        Some(self.settings.visibility_timeout)
    }

    async fn ack(&self, _queue: &str, receipt: &Receipt) -> Result<()> {
        self.settle(receipt, "+ACK", "acking").await
    }

    /// The given envelope (marked redelivered, its delivery count raised
    /// by the channel) is published to the queue again, then the delivery
    /// acked: the queue's size counts it at once. It goes to the back of
    /// the queue (a NAK would keep its place, but leave the stored message
    /// unchanged and out of `num_pending` until redelivered).
    async fn requeue(&self, queue: &str, receipt: &Receipt, envelope: &Envelope) -> Result<()> {
        let payload = self.payload(envelope)?;
        self.publish(queue, payload).await?;
        self.settle(receipt, "+ACK", "requeueing").await
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.topology.put_exchange(exchange).await
    }

    async fn exchange(&self, name: &str) -> Result<Option<Exchange>> {
        self.topology.exchange(name).await
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.topology.delete_exchange(name).await
    }

    async fn bind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        self.topology.bind(exchange, binding).await
    }

    async fn unbind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        self.topology.unbind(exchange, binding).await
    }

    async fn bindings(&self, exchange: &str) -> Result<Vec<QueueBinding>> {
        self.topology.bindings(exchange).await
    }

    fn polling_interval(&self) -> Duration {
        self.settings.polling_interval
    }

    async fn close(&self) -> Result<()> {
        // Acks and publishes already awaited their answers; what is left
        // is the client's buffer.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.api.client.flush()).await;
        Ok(())
    }
}
