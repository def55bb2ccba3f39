//! The traits a transport implements: [`TransportFactory`] (registration),
//! [`Transport`] (one connection) and [`Channel`] (the AMQP-shaped surface).
//!
//! Virtual transports do not implement [`Channel`] themselves: they write a
//! [`VirtualBackend`](crate::virtual_channel::VirtualBackend) and get a
//! channel from [`VirtualChannel`](crate::virtual_channel::VirtualChannel).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::entity::{Arguments, Binding, Exchange, ExchangeType, Queue};
use crate::error::{Error, Result};
use crate::message::{Delivery, RawMessage};
use crate::options::ConnectionOptions;
use crate::transport_info::TransportInfo;
use crate::url::BrokerUrl;

/// Native transports speak a broker protocol with exchanges of its own;
/// virtual ones emulate AMQP on a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportKind {
    /// The broker routes (AMQP).
    Native,
    /// The client routes, over a store (Redis, SQS, ...).
    Virtual,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Native => "Native",
            TransportKind::Virtual => "Virtual",
        })
    }
}

/// What a transport can do; the testkit skips what it cannot, and the
/// transport table is made from it.
///
/// ```
/// use kombu_core::{Capabilities, ExchangeType, TransportKind};
/// let caps = Capabilities::new(TransportKind::Virtual)
///     .with_priority(true)
///     .with_shared_declarations(true)
///     .with_fanout_note("PUB/SUB");
/// assert!(caps.supports(ExchangeType::Fanout));
/// assert!(caps.priority);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Native or virtual.
    pub kind: TransportKind,
    /// Exchange types it routes.
    pub exchange_types: Vec<ExchangeType>,
    /// How fanout is done, for the table (empty: plain "Yes").
    pub fanout_note: String,
    /// Higher priority messages are delivered first.
    pub priority: bool,
    /// Per-message and per-queue TTL.
    pub ttl: bool,
    /// Dead-lettering of rejected, expired and dropped messages.
    pub dead_letter: bool,
    /// `max_length` on queues.
    pub max_length: bool,
    /// Declarations (exchanges, bindings) are visible to every client of the
    /// broker, not only the process that made them.
    pub shared_declarations: bool,
    /// Messages survive a restart of the broker.
    pub persistent: bool,
    /// An unacked message of a consumer that died is delivered again.
    pub redelivers_unacked: bool,
    /// The largest serialized body the transport carries (after its own
    /// encoding overhead, approximately), when it has a limit (SQS: 256 KiB
    /// for the whole message). A larger message is a
    /// [`LimitExceeded`](crate::ErrorKind::LimitExceeded) error.
    pub max_body_size: Option<u64>,
    /// A message published with a delay
    /// ([`PublishOptions::delay`](crate::PublishOptions::delay)) waits on
    /// the broker until its time.
    pub delayed_delivery: bool,
    /// [`Channel::extend_lease`] keeps an unacked delivery reserved (or
    /// deliveries stay reserved while the channel lives, so there is
    /// nothing to extend).
    pub lease_extension: bool,
    /// A queue's `x-delivery-limit` is honoured: a message returned more
    /// often than the limit is dead-lettered instead of delivered again.
    pub delivery_limit: bool,
    /// What would be dropped for good without a dead-letter exchange (an
    /// unreadable stored value, a rejected message, one over its delivery
    /// limit) is kept in the queue's quarantine, `<queue>.quarantine`.
    pub quarantine: bool,
}

impl Capabilities {
    /// Every exchange type, priorities, TTL, dead-lettering and max length;
    /// declarations not shared, not persistent. Adjust with the `with_` methods.
    pub fn new(kind: TransportKind) -> Self {
        Capabilities {
            kind,
            exchange_types: ExchangeType::ALL.to_vec(),
            fanout_note: String::new(),
            priority: true,
            ttl: true,
            dead_letter: true,
            max_length: true,
            shared_declarations: false,
            persistent: false,
            redelivers_unacked: true,
            max_body_size: None,
            delayed_delivery: false,
            lease_extension: false,
            delivery_limit: false,
            quarantine: false,
        }
    }

    /// True when `kind` exchanges route.
    pub fn supports(&self, kind: ExchangeType) -> bool {
        self.exchange_types.contains(&kind)
    }

    /// Set the exchange types.
    pub fn with_exchange_types(mut self, types: &[ExchangeType]) -> Self {
        self.exchange_types = types.to_vec();
        self
    }
    /// Describe how fanout works (for the table).
    pub fn with_fanout_note(mut self, note: impl Into<String>) -> Self {
        self.fanout_note = note.into();
        self
    }
    /// Set priority support.
    pub fn with_priority(mut self, yes: bool) -> Self {
        self.priority = yes;
        self
    }
    /// Set TTL support.
    pub fn with_ttl(mut self, yes: bool) -> Self {
        self.ttl = yes;
        self
    }
    /// Set dead-letter support.
    pub fn with_dead_letter(mut self, yes: bool) -> Self {
        self.dead_letter = yes;
        self
    }
    /// Set max-length support.
    pub fn with_max_length(mut self, yes: bool) -> Self {
        self.max_length = yes;
        self
    }
    /// Set whether declarations are shared between processes.
    pub fn with_shared_declarations(mut self, yes: bool) -> Self {
        self.shared_declarations = yes;
        self
    }
    /// Set whether messages survive a broker restart.
    pub fn with_persistent(mut self, yes: bool) -> Self {
        self.persistent = yes;
        self
    }
    /// Set whether unacked messages of a dead consumer come back.
    pub fn with_redelivers_unacked(mut self, yes: bool) -> Self {
        self.redelivers_unacked = yes;
        self
    }
    /// Set whether dropped messages are kept in a quarantine.
    pub fn with_quarantine(mut self, yes: bool) -> Self {
        self.quarantine = yes;
        self
    }
    /// Set whether `x-delivery-limit` is honoured.
    pub fn with_delivery_limit(mut self, yes: bool) -> Self {
        self.delivery_limit = yes;
        self
    }
    /// Set whether leases can be extended.
    pub fn with_lease_extension(mut self, yes: bool) -> Self {
        self.lease_extension = yes;
        self
    }
    /// Set whether delayed delivery is kept on the broker.
    pub fn with_delayed_delivery(mut self, yes: bool) -> Self {
        self.delayed_delivery = yes;
        self
    }
    /// Set the largest body the transport carries (`None`: no limit).
    pub fn with_max_body_size(mut self, bytes: Option<u64>) -> Self {
        self.max_body_size = bytes;
        self
    }
}

/// What a queue declaration reports.
///
/// ```
/// use kombu_core::QueueInfo;
/// let info = QueueInfo::new("q", 3, 1);
/// assert_eq!(info.message_count, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct QueueInfo {
    /// The queue's name (the broker's, when it chose one).
    pub name: String,
    /// Messages ready in the queue.
    pub message_count: u64,
    /// Consumers on the queue (0 where unknown).
    pub consumer_count: u64,
}

impl QueueInfo {
    /// A queue report.
    pub fn new(name: impl Into<String>, message_count: u64, consumer_count: u64) -> Self {
        QueueInfo {
            name: name.into(),
            message_count,
            consumer_count,
        }
    }
}

/// The messages of one consumer, as a stream. An `Err` item reports a
/// problem (a message that could not be read, a lost connection) without
/// ending the stream; the stream ends when the consumer is cancelled or the
/// channel closes. Deliveries come boxed: they are handed along (to a
/// [`Message`](crate::Message)) without being copied.
pub type DeliveryStream = BoxStream<'static, Result<Box<Delivery>>>;

/// The AMQP-shaped surface every transport offers (kombu's channel).
///
/// Delivery tags are scoped to the channel. Closing a channel (or dropping
/// it) returns its unacked messages to their queues.
#[async_trait]
pub trait Channel: Send + Sync {
    /// Declare an exchange (idempotent).
    async fn exchange_declare(&self, exchange: &Exchange) -> Result<()>;
    /// Delete an exchange.
    async fn exchange_delete(&self, name: &str) -> Result<()>;
    /// Declare a queue (not its bindings: see [`Channel::queue_bind`]).
    async fn queue_declare(&self, queue: &Queue) -> Result<QueueInfo>;
    /// Bind `queue` as described by `binding`.
    async fn queue_bind(&self, queue: &str, binding: &Binding) -> Result<()>;
    /// Remove a binding.
    async fn queue_unbind(&self, queue: &str, binding: &Binding) -> Result<()>;
    /// Delete a queue; returns how many messages it held.
    async fn queue_delete(&self, name: &str) -> Result<u64>;
    /// Remove every ready message; returns how many.
    async fn queue_purge(&self, name: &str) -> Result<u64>;
    /// Ready messages in the queue.
    async fn queue_size(&self, name: &str) -> Result<u64>;
    /// Bind exchange `destination` to exchange `source`.
    async fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
    ) -> Result<()> {
        let _ = (destination, source, routing_key);
        Err(Error::unsupported(
            "exchange-to-exchange bindings are not supported by this transport",
        ))
    }
    /// Publish a message. With `mandatory`, a message no queue takes is an error.
    async fn basic_publish(
        &self,
        message: RawMessage,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Result<()>;
    /// Publish many messages to one exchange with one routing key (what
    /// [`Producer::publish_many`](crate::Producer::publish_many) sends):
    /// one result per message, in order. A transport with a batch
    /// primitive sends them together (a virtual transport hands each
    /// queue's share to [`VirtualBackend::put_many`](crate::spi::VirtualBackend::put_many));
    /// by default every [`basic_publish`](Self::basic_publish) at once,
    /// concurrently.
    async fn basic_publish_many(
        &self,
        messages: Vec<RawMessage>,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Vec<Result<()>> {
        futures::future::join_all(
            messages
                .into_iter()
                .map(|message| self.basic_publish(message, exchange, routing_key, mandatory)),
        )
        .await
    }
    /// Take one message, if there is one, without waiting.
    async fn basic_get(&self, queue: &str, no_ack: bool) -> Result<Option<Delivery>>;
    /// Start consuming `queue` under `consumer_tag`.
    async fn basic_consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        no_ack: bool,
    ) -> Result<DeliveryStream>;
    /// [`basic_consume`](Self::basic_consume) with consumer arguments
    /// (AMQP's `basic.consume` arguments, e.g. RabbitMQ's
    /// `x-stream-offset` or `x-priority`). Transports without consumer
    /// arguments ignore them, as kombu's virtual transports do (the
    /// default).
    async fn basic_consume_with_arguments(
        &self,
        queue: &str,
        consumer_tag: &str,
        no_ack: bool,
        arguments: &Arguments,
    ) -> Result<DeliveryStream> {
        let _ = arguments;
        self.basic_consume(queue, consumer_tag, no_ack).await
    }
    /// Stop a consumer; its stream ends.
    async fn basic_cancel(&self, consumer_tag: &str) -> Result<()>;
    /// Acknowledge a delivery (and, with `multiple`, every earlier one).
    async fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<()>;
    /// Reject a delivery: back to its queue with `requeue`, else dead-lettered or dropped.
    async fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<()>;
    /// Keep an unacked delivery reserved for `by` from now: it is not
    /// delivered to another consumer meanwhile (a lease extension: Redis's
    /// unacked index, SQS's ChangeMessageVisibility, beanstalk's touch).
    /// A transport whose deliveries stay reserved for as long as the
    /// channel lives ([`lease_duration`](Self::lease_duration) `None`)
    /// answers `Ok` at once. By default `Unsupported`.
    async fn extend_lease(&self, delivery_tag: u64, by: std::time::Duration) -> Result<()> {
        let _ = (delivery_tag, by);
        Err(Error::new(
            crate::ErrorKind::Unsupported,
            "this transport cannot extend a delivery's lease",
        ))
    }
    /// How long an unacked delivery stays reserved before the broker gives
    /// it to another consumer (the transport's `visibility_timeout`), when
    /// that happens at all; `None`: for as long as the channel lives (the
    /// default).
    fn lease_duration(&self) -> Option<std::time::Duration> {
        None
    }
    /// Limit unacked deliveries on this channel (0: no limit).
    async fn basic_qos(&self, prefetch_count: u16) -> Result<()>;
    /// Close the channel; unacked messages return to their queues.
    async fn close(&self) -> Result<()>;
    /// False once closed.
    fn is_open(&self) -> bool;
}

/// One connection to a broker.
#[async_trait]
pub trait Transport: Send + Sync {
    /// What this connection can do: the transport's static capabilities,
    /// less what its options or its server turn off (SQS with
    /// `supports_fanout=false` routes no fanout).
    fn capabilities(&self) -> Capabilities;
    /// Open a channel.
    async fn create_channel(&self) -> Result<Arc<dyn Channel>>;
    /// True while the connection is up.
    fn is_connected(&self) -> bool;
    /// Check the connection is alive (a heartbeat or a ping). On a closed
    /// transport: [`ErrorKind::Closed`](crate::ErrorKind::Closed); on a lost
    /// one: a connection error.
    async fn heartbeat_check(&self) -> Result<()> {
        Ok(())
    }
    /// The transport's own API, for
    /// [`Connection::extension`](crate::Connection::extension): a virtual
    /// transport gives its backend (Redis's `restore_visible`, ...).
    fn extension(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        None
    }
    /// Close the connection and every channel.
    async fn close(&self) -> Result<()>;
}

/// Makes transports for some URL schemes: the unit of registration. Its
/// [`TransportInfo`] says everything known without connecting.
#[async_trait]
pub trait TransportFactory: Send + Sync {
    /// The transport's static description.
    fn info(&self) -> &'static TransportInfo;
    /// The transport's name for people (`memory`, `redis`, ...).
    fn name(&self) -> &'static str {
        self.info().name
    }
    /// The URL schemes it serves; the first is its main one.
    fn schemes(&self) -> &'static [&'static str] {
        self.info().schemes
    }
    /// Connect. `url` has had the transport's defaults filled in (and only
    /// those: a part the user did not write and the transport has no default
    /// for stays absent); `options` are the keyword options with the URL's
    /// query applied.
    async fn connect(
        &self,
        url: &BrokerUrl,
        options: &ConnectionOptions,
    ) -> Result<Arc<dyn Transport>>;
}
