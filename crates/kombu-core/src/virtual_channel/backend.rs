//! The primitives a virtual transport writes (kombu's `_put`, `_get`,
//! `_purge`, `_size`, `_delete`, `_new_queue`, `_has_queue`, plus the
//! binding table and acknowledgement).

use std::time::Duration;

use async_trait::async_trait;

use crate::entity::{Exchange, Queue};
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::routing::QueueBinding;
use crate::transport::Capabilities;

use super::StoredMessage;

/// A backend's handle on a fetched, not yet acked message (a Redis delivery
/// tag, an SQS receipt handle, a beanstalk job id...).
pub type Receipt = String;

/// The body of a fetched message: the envelope, or the raw bytes that could
/// not be read as one (the channel rejects those and goes on).
#[derive(Debug)]
#[non_exhaustive]
pub enum FetchedBody {
    /// A readable envelope.
    Envelope(Envelope),
    /// A message kept as the channel handed it over
    /// ([`VirtualBackend::put_message`]): an in-process backend's.
    Message(StoredMessage),
    /// Bytes that are not a kombu envelope, and why.
    Corrupt {
        /// What was stored.
        raw: Vec<u8>,
        /// Why it could not be read.
        error: Error,
    },
}

/// One message taken from a queue and reserved for this client until
/// [`VirtualBackend::ack`] or [`VirtualBackend::requeue`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Fetched {
    /// The queue it came from.
    pub queue: String,
    /// The backend's handle for ack and requeue.
    pub receipt: Receipt,
    /// The message.
    pub body: FetchedBody,
    /// How often the broker delivered it before (and it came back), where
    /// the broker counts (beanstalk's reserves, SQS's receive count): the
    /// core reads a queue's `x-delivery-limit` against the larger of this
    /// and the message's `x-delivery-count` header. `None`: the header only.
    pub returned: Option<u64>,
}

impl Fetched {
    /// Say how often the broker delivered it before (see
    /// [`returned`](Self::returned)).
    pub fn with_returned(mut self, returned: u64) -> Self {
        self.returned = Some(returned);
        self
    }

    /// A fetched envelope.
    pub fn new(queue: impl Into<String>, receipt: impl Into<Receipt>, envelope: Envelope) -> Self {
        Fetched {
            queue: queue.into(),
            receipt: receipt.into(),
            body: FetchedBody::Envelope(envelope),
            returned: None,
        }
    }

    /// A fetched message that was kept as the channel handed it over.
    pub fn message(
        queue: impl Into<String>,
        receipt: impl Into<Receipt>,
        message: StoredMessage,
    ) -> Self {
        Fetched {
            queue: queue.into(),
            receipt: receipt.into(),
            body: FetchedBody::Message(message),
            returned: None,
        }
    }

    /// Parse `raw` as an envelope; keep the bytes and the error if it is not one.
    pub fn from_json(queue: impl Into<String>, receipt: impl Into<Receipt>, raw: &[u8]) -> Self {
        let body = match Envelope::from_json(raw) {
            Ok(envelope) => FetchedBody::Envelope(envelope),
            Err(error) => FetchedBody::Corrupt {
                raw: raw.to_vec(),
                error,
            },
        };
        Fetched {
            queue: queue.into(),
            receipt: receipt.into(),
            body,
            returned: None,
        }
    }
}

/// Raised when a channel closes: a fetch of its consume loop that is
/// waiting for messages stops waiting
/// ([`VirtualBackend::fetch_batch_until`]).
///
/// ```
/// # async fn demo() {
/// use kombu_core::spi::StopWaiting;
/// use std::time::Duration;
/// let stop = StopWaiting::default();
/// assert!(!stop.wait(Duration::from_millis(1)).await, "not raised: the full wait");
/// stop.raise();
/// assert!(stop.is_raised());
/// assert!(stop.wait(Duration::from_secs(60)).await, "raised: at once");
/// # }
/// ```
#[derive(Debug, Default)]
pub struct StopWaiting {
    raised: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl StopWaiting {
    /// Stop every wait, now and later.
    pub fn raise(&self) {
        self.raised
            .store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_waiters();
    }

    /// True once raised.
    pub fn is_raised(&self) -> bool {
        self.raised.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Wait up to `limit`, or until raised; true when raised.
    pub async fn wait(&self, limit: Duration) -> bool {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_raised() {
            return true;
        }
        let _ = tokio::time::timeout(limit, notified).await;
        self.is_raised()
    }

    /// Wait for `other` up to `limit`, or until raised; true when raised.
    pub async fn wait_or<F: std::future::Future>(&self, limit: Duration, other: F) -> bool {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_raised() {
            return true;
        }
        tokio::select! {
            _ = notified => {}
            _ = other => {}
            _ = tokio::time::sleep(limit) => {}
        }
        self.is_raised()
    }
}

/// The storage primitives of a virtual transport. [`super::VirtualChannel`]
/// builds routing, QoS, unacked tracking, redelivery, TTL, max-length and
/// dead-lettering on top of them.
///
/// Priorities passed in are AMQP's (higher first); a backend maps them to
/// its store (Redis lists, beanstalk's lower-is-urgent, ...).
#[async_trait]
pub trait VirtualBackend: Send + Sync + 'static {
    /// What the backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Create the queue's storage and remember its declaration.
    async fn new_queue(&self, queue: &Queue) -> Result<()>;
    /// The queue's declaration, if it was declared (for TTL, max length, DLX).
    async fn queue_declaration(&self, queue: &str) -> Result<Option<Queue>>;
    /// True when the queue exists.
    async fn has_queue(&self, queue: &str) -> Result<bool>;
    /// Delete the queue, its messages and its bindings.
    async fn delete_queue(&self, queue: &str) -> Result<()>;
    /// Remove ready messages; returns how many.
    async fn purge(&self, queue: &str) -> Result<u64>;
    /// Ready messages in the queue.
    async fn size(&self, queue: &str) -> Result<u64>;

    /// Store a message in a queue.
    async fn put(&self, queue: &str, envelope: &Envelope, priority: u8) -> Result<()>;
    /// Store a message in a queue, taking the envelope: what the channel
    /// calls. A backend that keeps envelopes as they are (in process)
    /// overrides it to store this one instead of a copy. By default
    /// [`put`](Self::put).
    async fn put_owned(&self, queue: &str, envelope: Envelope, priority: u8) -> Result<()> {
        self.put(queue, &envelope, priority).await
    }
    /// Store a message in a queue: what the channel calls for every
    /// message it stores. A backend that keeps messages in process keeps
    /// this one as it is (and hands it back as
    /// [`FetchedBody::Message`]); by default its kombu envelope goes to
    /// [`put_owned`](Self::put_owned).
    async fn put_message(&self, queue: &str, message: StoredMessage, priority: u8) -> Result<()> {
        self.put_owned(queue, message.into_envelope(), priority)
            .await
    }
    /// Store a delayed message: `queue` gets it no sooner than
    /// `not_before` (Unix milliseconds, in the future), kept on the broker
    /// meanwhile (a restart of the client loses nothing). What the channel
    /// calls for a message published with
    /// [`PublishOptions::delay`](crate::PublishOptions::delay). By default
    /// an `Unsupported` error: a transport with delayed delivery overrides
    /// it and says so in its capabilities (`delayed_delivery`).
    async fn put_delayed(
        &self,
        queue: &str,
        message: StoredMessage,
        priority: u8,
        not_before_ms: u64,
    ) -> Result<()> {
        let _ = (queue, message, priority, not_before_ms);
        Err(Error::new(
            ErrorKind::Unsupported,
            "this transport has no delayed delivery",
        ))
    }
    /// Store many messages in one queue: what the channel calls for a
    /// batch publish. By default their envelopes go to
    /// [`put_many`](Self::put_many).
    async fn put_messages(&self, queue: &str, messages: Vec<(StoredMessage, u8)>) -> Result<()> {
        let envelopes = messages
            .into_iter()
            .map(|(message, priority)| (message.into_envelope(), priority))
            .collect();
        self.put_many(queue, envelopes).await
    }
    /// Store many messages (with their priorities) in one queue: what the
    /// channel calls for a batch publish
    /// ([`Channel::basic_publish_many`](crate::transport::Channel::basic_publish_many)).
    /// A backend with a batch primitive (a pipeline, `SendMessageBatch`,
    /// `_bulk_docs`, `insert_many`) overrides it; an error means some of
    /// them may not be stored (every message of the call is reported
    /// failed). By default every [`put_owned`](Self::put_owned) at once,
    /// concurrently (a backend that pipelines concurrent calls sends them
    /// together); every one is tried and the first error is returned.
    async fn put_many(&self, queue: &str, messages: Vec<(Envelope, u8)>) -> Result<()> {
        let stored = futures::future::join_all(
            messages
                .into_iter()
                .map(|(envelope, priority)| self.put_owned(queue, envelope, priority)),
        )
        .await;
        stored.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }
    /// Take the next message of any of `queues` (a fair rotation across them
    /// is the caller's job: it rotates the slice), waiting up to `wait` for
    /// one to arrive. The message stays reserved until acked or requeued.
    async fn fetch(&self, queues: &[String], wait: Duration) -> Result<Option<Fetched>>;
    /// Take up to `max` messages (at least one is asked for) of `queues`
    /// in one go, waiting up to `wait` for the first. The consume loop asks
    /// for as many as the channel's prefetch has room for, so a backend
    /// that receives in batches (SQS: up to 10 per request) never holds
    /// more than the prefetch allows. By default one [`fetch`](Self::fetch).
    async fn fetch_batch(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        let _ = max;
        Ok(self.fetch(queues, wait).await?.into_iter().collect())
    }
    /// How many fetches the consume loop of one channel keeps under way at
    /// once (each for part of the prefetch room), so the next batch is on
    /// the wire while the last one is read and handed over. A backend
    /// whose fetches can overlap on one connection (a multiplexed Redis
    /// connection) says 2; by default 1.
    fn concurrent_fetches(&self) -> usize {
        1
    }
    /// [`fetch_batch`](Self::fetch_batch) that stops waiting (and returns
    /// what it has, maybe nothing) once `stop` is raised: what the consume
    /// loop calls, so that closing a channel does not wait out a fetch
    /// that waits for messages. A backend that waits on the client side
    /// (a poll with pauses) overrides it; one whose wait is the server's
    /// (a long poll) need not. By default `fetch_batch`.
    async fn fetch_batch_until(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
        stop: &StopWaiting,
    ) -> Result<Vec<Fetched>> {
        let _ = stop;
        self.fetch_batch(queues, wait, max).await
    }
    /// Forget a fetched message for good.
    async fn ack(&self, fetched_from: &str, receipt: &Receipt) -> Result<()>;
    /// Keep a fetched, unacked message reserved for `by` from now (see
    /// `Channel::extend_lease`). By default `Unsupported`; a backend with
    /// a [`lease_duration`](Self::lease_duration) overrides both.
    async fn extend_lease(
        &self,
        fetched_from: &str,
        receipt: &Receipt,
        by: Duration,
    ) -> Result<()> {
        let _ = (fetched_from, receipt, by);
        Err(Error::new(
            ErrorKind::Unsupported,
            "this transport cannot extend a delivery's lease",
        ))
    }
    /// How long a fetched message stays reserved before another consumer
    /// may get it (`visibility_timeout`); `None` (the default): until the
    /// channel gives it back (messages kept in process).
    fn lease_duration(&self) -> Option<Duration> {
        None
    }
    /// Forget many fetched messages (queue, receipt) at once: what the
    /// channel's coalesced acks call. A backend with a batch primitive (a
    /// pipeline, a batch delete) overrides it; by default every
    /// [`ack`](Self::ack) at once, concurrently (a backend that batches
    /// concurrent calls, as SQS's deletes do, sends them together); every
    /// one is tried and the first error is returned.
    async fn ack_many(&self, acks: &[(String, Receipt)]) -> Result<()> {
        let sent =
            futures::future::join_all(acks.iter().map(|(queue, receipt)| self.ack(queue, receipt)))
                .await;
        sent.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }
    /// True when a fetched message lives only in the channel that took it
    /// (an in-process store, which forgets a message when it hands it
    /// out; the channel puts it back on requeue or close): an ack then has
    /// nothing to tell the backend, and the channel makes no
    /// [`ack`](Self::ack) call. By default false.
    fn acks_are_local(&self) -> bool {
        false
    }
    /// Most acks the channel coalesces into one
    /// [`ack_many`](Self::ack_many) (it also flushes within about a
    /// millisecond). 1 sends each ack as it is made (a backend whose ack
    /// costs nothing: memory). By default 64.
    fn ack_batch_size(&self) -> usize {
        64
    }
    /// Drop a message rejected without requeue (the channel has already
    /// dead-lettered it when the queue declares a dead-letter exchange).
    /// A backend with a dead-letter store of its own (an SQS redrive
    /// policy) may move it there. By default [`ack`](Self::ack).
    async fn discard(&self, queue: &str, receipt: &Receipt, envelope: &Envelope) -> Result<()> {
        let _ = envelope;
        self.ack(queue, receipt).await
    }
    /// Return a fetched message to its queue, to be served next, with the
    /// envelope given (marked redelivered).
    async fn requeue(&self, queue: &str, receipt: &Receipt, envelope: &Envelope) -> Result<()>;
    /// Return a message fetched as [`FetchedBody::Message`] to its queue
    /// (marked redelivered). By default its envelope goes to
    /// [`requeue`](Self::requeue).
    async fn requeue_message(
        &self,
        queue: &str,
        receipt: &Receipt,
        message: StoredMessage,
    ) -> Result<()> {
        self.requeue(queue, receipt, &message.into_envelope()).await
    }

    /// Remember an exchange (its type matters to every publisher).
    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()>;
    /// A declared exchange, if known.
    async fn exchange(&self, name: &str) -> Result<Option<Exchange>>;
    /// Forget an exchange and its bindings.
    async fn delete_exchange(&self, name: &str) -> Result<()>;
    /// Add a binding of `exchange` (no duplicates).
    async fn bind(&self, exchange: &str, binding: &QueueBinding) -> Result<()>;
    /// Remove a binding of `exchange`.
    async fn unbind(&self, exchange: &str, binding: &QueueBinding) -> Result<()>;
    /// The bindings of `exchange`.
    async fn bindings(&self, exchange: &str) -> Result<Vec<QueueBinding>>;

    /// Publish to a fanout exchange the backend broadcasts natively
    /// (Redis PUB/SUB); return `Ok(false)` to let the channel route it into
    /// each bound queue instead (the default).
    async fn put_fanout(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<bool> {
        let _ = (exchange, routing_key, envelope);
        Ok(false)
    }

    /// How long a fetch waits before the consume loop looks again (also its
    /// back-off after an error).
    fn polling_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// How long closing a channel waits for its consume loop's fetch under
    /// way (before it puts the unacked messages back), so that what that
    /// fetch takes returns to its queue before the process may exit. A
    /// backend whose fetch can outlast the default (a long poll the server
    /// keeps open) returns its longest fetch. By default the polling
    /// interval + 5 s.
    fn close_wait(&self) -> Duration {
        self.polling_interval() + Duration::from_secs(5)
    }

    /// Check the store answers (a PING, a cheap request): what a heartbeat
    /// runs. An error that is a connection error marks the connection lost.
    /// By default nothing is sent and the check passes.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    /// False once the connection is known to be lost or closed. The core's
    /// guard around every backend answers this; a backend need not
    /// override it (true by default).
    fn is_alive(&self) -> bool {
        true
    }

    /// How long one backend call may take before the virtual channel gives
    /// up on it with a [`Timeout`](crate::ErrorKind::Timeout) and marks the
    /// connection lost (a fetch may take its `wait` on top). The
    /// `operation_timeout` transport option wins; then this; `None` (the
    /// default) means 30 s. A backend whose client has a timeout of its own
    /// (a socket or response timeout) returns it here.
    fn operation_timeout(&self) -> Option<Duration> {
        None
    }

    /// Release connections; called once when the transport closes.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
