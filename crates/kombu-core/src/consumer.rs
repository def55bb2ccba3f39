//! [`Consumer`] (a stream of [`Message`]s) and the received [`Message`].

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use backon::Retryable;
use futures::future::BoxFuture;
use futures::stream::{SelectAll, Stream};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::compression::CompressionRegistry;
use crate::connection::{Connection, EpochState};
use crate::entity::{Arguments, Queue};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Delivery, DeliveryInfo, Headers, Properties};
use crate::metrics::{ConsumerMetrics, QueueMetrics};
use crate::retry::RetryPolicy;
use crate::serialization::{Accept, Payload, SerializerRegistry};
use crate::trace::TraceContext;
#[cfg(feature = "opentelemetry")]
use crate::trace_spans::DeliverySpan;
use crate::transport::{Channel, DeliveryStream};

/// How received bodies are decoded: serializers, compressors and the accept
/// list. It also keeps the connection alive while messages can still be acked.
#[derive(Clone)]
pub(crate) struct Decoder {
    pub(crate) serializers: Arc<SerializerRegistry>,
    pub(crate) compressors: Arc<CompressionRegistry>,
    pub(crate) accept: Accept,
    pub(crate) connection: Connection,
}

impl Decoder {
    pub(crate) fn new(connection: &Connection, accept: Accept) -> Self {
        Decoder {
            serializers: connection.serializers().clone(),
            compressors: connection.compressors().clone(),
            accept,
            connection: connection.clone(),
        }
    }
}

const PENDING: u8 = 0;
const ACKED: u8 = 1;
const REJECTED: u8 = 2;
const REQUEUED: u8 = 3;

/// A received message: read it, decode it, then ack, reject or requeue it
/// (once).
pub struct Message {
    delivery: Box<Delivery>,
    channel: Arc<dyn Channel>,
    decoder: Arc<Decoder>,
    no_ack: bool,
    epoch: u64,
    state: AtomicU8,
    metrics: Arc<QueueMetrics>,
    #[cfg(feature = "opentelemetry")]
    span: DeliverySpan,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("delivery_tag", &self.delivery.delivery_tag)
            .field("content_type", &self.delivery.message.content_type)
            .field("delivery_info", &self.delivery.info)
            .field("body_len", &self.delivery.message.body.len())
            .finish()
    }
}

impl Message {
    pub(crate) fn new(
        delivery: Box<Delivery>,
        channel: Arc<dyn Channel>,
        decoder: Arc<Decoder>,
        no_ack: bool,
        epoch: u64,
        metrics: Arc<QueueMetrics>,
    ) -> Self {
        metrics.delivered(delivery.info.redelivered, !no_ack);
        Message {
            #[cfg(feature = "opentelemetry")]
            span: DeliverySpan::start(metrics.transport, &metrics.queue, &delivery),
            delivery,
            channel,
            decoder,
            no_ack,
            epoch,
            state: AtomicU8::new(if no_ack { ACKED } else { PENDING }),
            metrics,
        }
    }

    /// The body as received (serialized, maybe compressed).
    pub fn body(&self) -> &[u8] {
        &self.delivery.message.body
    }
    /// MIME type of the body.
    pub fn content_type(&self) -> Option<&str> {
        self.delivery.message.content_type.as_deref()
    }
    /// Character set or `binary`.
    pub fn content_encoding(&self) -> Option<&str> {
        self.delivery.message.content_encoding.as_deref()
    }
    /// Application headers.
    pub fn headers(&self) -> &Headers {
        &self.delivery.message.headers
    }
    /// Basic properties.
    pub fn properties(&self) -> &Properties {
        &self.delivery.message.properties
    }
    /// Exchange, routing key, redelivered flag.
    pub fn delivery_info(&self) -> &DeliveryInfo {
        &self.delivery.info
    }
    /// The channel-scoped delivery tag.
    pub fn delivery_tag(&self) -> u64 {
        self.delivery.delivery_tag
    }
    /// True when delivered before and not acked.
    pub fn redelivered(&self) -> bool {
        self.delivery.info.redelivered
    }
    /// The whole delivery.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The W3C trace context the message carries (its `traceparent` and
    /// `tracestate` headers); `None` when it has none, or a malformed one
    /// (ignored, never an error).
    ///
    /// ```
    /// # fn demo(message: kombu_core::Message) {
    /// if let Some(ctx) = message.trace_context() {
    ///     println!("part of trace {:032x}", ctx.trace_id());
    /// }
    /// # }
    /// ```
    pub fn trace_context(&self) -> Option<TraceContext> {
        TraceContext::from_headers(self.headers())
    }

    /// The OpenTelemetry context of this delivery's consumer span (the
    /// `opentelemetry` feature): make your processing spans its children.
    /// The span ends when the message is settled or dropped.
    ///
    /// ```
    /// # fn demo(message: kombu_core::Message) {
    /// use opentelemetry::trace::Tracer as _;
    /// let tracer = opentelemetry::global::tracer("my-app");
    /// let _span = tracer.start_with_context("handle task", message.otel_context());
    /// # }
    /// ```
    #[cfg(feature = "opentelemetry")]
    pub fn otel_context(&self) -> &opentelemetry::Context {
        self.span.context()
    }

    /// The body decompressed and deserialized, if its content type is accepted.
    pub fn payload(&self) -> Result<Payload> {
        let message = &self.delivery.message;
        let decompressed;
        let mut body: &[u8] = &message.body;
        if let Some(kind) = message.headers.get("compression").and_then(|v| v.as_str()) {
            let compressor = self
                .decoder
                .compressors
                .by_content_type(kind)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Compression,
                        format!("unknown compression {kind:?} in message"),
                    )
                })?;
            decompressed = compressor.decompress(body)?;
            body = &decompressed;
        }
        self.decoder.serializers.decode(
            message.content_type.as_deref(),
            message.content_encoding.as_deref(),
            body,
            &self.decoder.accept,
        )
    }

    /// The body decoded into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        self.payload()?.deserialize()
    }

    fn settle(&self, to: u8) -> Result<()> {
        if self.no_ack {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                "message was consumed with no_ack: there is nothing to acknowledge",
            ));
        }
        if self.epoch != self.decoder.connection.epoch() {
            return Err(Error::new(
                ErrorKind::ConnectionLost,
                "the connection this message came on was lost: it was not settled, and the broker delivers it again",
            ));
        }
        if !self.channel.is_open() {
            return Err(Error::new(
                ErrorKind::ChannelClosed,
                "the channel this message came on is closed: it was not settled, and the broker delivers it again",
            ));
        }
        self.state
            .compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| self.metrics.left())
            .map_err(|was| {
                let what = match was {
                    ACKED => "acknowledged",
                    REJECTED => "rejected",
                    _ => "requeued",
                };
                Error::new(
                    ErrorKind::PreconditionFailed,
                    format!("message already {what}"),
                )
            })
    }

    /// Acknowledge: the broker forgets the message.
    pub async fn ack(&self) -> Result<()> {
        self.settle(ACKED)?;
        let started = Instant::now();
        let outcome = self
            .channel
            .basic_ack(self.delivery.delivery_tag, false)
            .await;
        if outcome.is_ok() {
            self.metrics.acked(started.elapsed());
        }
        #[cfg(feature = "opentelemetry")]
        self.span.settled("ack", &outcome);
        outcome
    }

    /// Reject: dead-lettered where the queue says so, else dropped.
    pub async fn reject(&self) -> Result<()> {
        self.settle(REJECTED)?;
        let outcome = self
            .channel
            .basic_reject(self.delivery.delivery_tag, false)
            .await;
        if outcome.is_ok() {
            self.metrics.rejected();
        }
        #[cfg(feature = "opentelemetry")]
        self.span.settled("reject", &outcome);
        outcome
    }

    /// Put the message back in its queue, flagged redelivered.
    pub async fn requeue(&self) -> Result<()> {
        self.settle(REQUEUED)?;
        let outcome = self
            .channel
            .basic_reject(self.delivery.delivery_tag, true)
            .await;
        if outcome.is_ok() {
            self.metrics.requeued();
        }
        #[cfg(feature = "opentelemetry")]
        self.span.settled("requeue", &outcome);
        outcome
    }

    /// Keep this message from being delivered to another consumer for `by`
    /// from now, while it is still being worked on (a lease extension;
    /// Celery-on-Redis's "task ran twice past `visibility_timeout`").
    /// Where deliveries stay reserved for as long as the channel lives
    /// (amqp, memory) it returns `Ok` at once. An error when the message
    /// was settled, its connection was lost, or its lease had already ended
    /// (the broker may have given it to another consumer: finish, and
    /// expect a duplicate). [`Worker`](crate::Worker) extends leases by
    /// itself.
    ///
    /// ```
    /// # async fn demo(message: kombu_core::Message) -> kombu_core::Result<()> {
    /// use std::time::Duration;
    /// // A long job: keep the message ours for ten more minutes.
    /// message.extend_lease(Duration::from_secs(600)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn extend_lease(&self, by: Duration) -> Result<()> {
        if self.no_ack {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                "message was consumed with no_ack: it has no lease",
            ));
        }
        if self.acknowledged() {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                "message already settled: it has no lease",
            ));
        }
        if self.epoch != self.decoder.connection.epoch() {
            return Err(Error::new(
                ErrorKind::ConnectionLost,
                "the connection this message came on was lost: the broker delivers it again",
            ));
        }
        self.channel
            .extend_lease(self.delivery.delivery_tag, by)
            .await
    }

    /// How long this message stays reserved for this consumer unless it
    /// is settled or its lease extended (the transport's
    /// `visibility_timeout`); `None`: for as long as its channel lives.
    pub fn lease_duration(&self) -> Option<Duration> {
        self.channel.lease_duration()
    }

    /// True once acked, rejected or requeued (always true with no_ack).
    pub fn acknowledged(&self) -> bool {
        self.state.load(Ordering::Acquire) != PENDING
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        if !self.acknowledged() {
            // Dropped unsettled: no longer in the application's hands.
            self.metrics.left();
        }
    }
}

/// Where a consumer of a RabbitMQ stream starts reading
/// ([`ConsumerBuilder::stream_offset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOffset {
    /// The oldest message the stream still keeps.
    First,
    /// The last chunk written (RabbitMQ's `last`).
    Last,
    /// Only messages written from now on.
    Next,
    /// The message at this offset.
    Offset(u64),
    /// Messages written in this last stretch of time (RabbitMQ's interval
    /// form, sent in whole seconds: `"90s"`).
    Ago(Duration),
}

impl StreamOffset {
    /// The `x-stream-offset` value.
    ///
    /// ```
    /// use kombu_core::StreamOffset;
    /// assert_eq!(StreamOffset::First.to_argument(), "first");
    /// assert_eq!(StreamOffset::Offset(42).to_argument(), 42);
    /// let hour = std::time::Duration::from_secs(3600);
    /// assert_eq!(StreamOffset::Ago(hour).to_argument(), "3600s");
    /// ```
    pub fn to_argument(self) -> Value {
        match self {
            StreamOffset::First => "first".into(),
            StreamOffset::Last => "last".into(),
            StreamOffset::Next => "next".into(),
            StreamOffset::Offset(n) => n.into(),
            StreamOffset::Ago(span) => format!("{}s", span.as_secs().max(1)).into(),
        }
    }
}

/// Builds a [`Consumer`].
pub struct ConsumerBuilder {
    spec: Spec,
    accept: Accept,
    reconnect: Option<RetryPolicy>,
    serializers: Option<Arc<SerializerRegistry>>,
    compressors: Option<Arc<CompressionRegistry>>,
}

/// What a consumer consumes and how: kept to consume again after a reconnect.
#[derive(Clone)]
struct Spec {
    connection: Connection,
    queues: Vec<Queue>,
    prefetch_count: u16,
    no_ack: bool,
    declare: bool,
    tag_prefix: String,
    /// `basic.consume` arguments (AMQP; ignored by virtual transports).
    arguments: Arguments,
}

impl ConsumerBuilder {
    /// Consume this queue too.
    pub fn queue(mut self, queue: Queue) -> Self {
        self.spec.queues.push(queue);
        self
    }
    /// Consume these queues too.
    pub fn queues(mut self, queues: impl IntoIterator<Item = Queue>) -> Self {
        self.spec.queues.extend(queues);
        self
    }
    /// Most unacked messages at once (0: no limit).
    pub fn prefetch_count(mut self, count: u16) -> Self {
        self.spec.prefetch_count = count;
        self
    }
    /// Messages count as acked on delivery.
    pub fn no_ack(mut self, yes: bool) -> Self {
        self.spec.no_ack = yes;
        self
    }
    /// Content types (or serializer names) accepted (default: json only).
    pub fn accept(mut self, accept: Accept) -> Self {
        self.accept = accept;
        self
    }
    /// Declare queues, exchanges and bindings first (default true).
    pub fn declare(mut self, yes: bool) -> Self {
        self.spec.declare = yes;
        self
    }
    /// Prefix of consumer tags.
    pub fn tag_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.spec.tag_prefix = prefix.into();
        self
    }
    /// A consumer argument (AMQP `basic.consume` arguments, kept across
    /// reconnects; transports without them ignore it, as in kombu), e.g.
    /// RabbitMQ's consumer priority `x-priority`.
    pub fn consumer_argument(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.spec.arguments.insert(key.into(), value.into());
        self
    }
    /// Where to start reading a RabbitMQ stream ([`Queue::stream`]): the
    /// `x-stream-offset` consumer argument. Streams keep their messages
    /// (an ack only moves the consumer on), so every consumer reads from
    /// its own offset.
    ///
    /// ```
    /// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
    /// use kombu_core::{Consumer, Queue, StreamOffset};
    /// let consumer = Consumer::builder(&conn)
    ///     .queue(Queue::new("events").stream())
    ///     .prefetch_count(100) // RabbitMQ needs a prefetch on streams
    ///     .stream_offset(StreamOffset::First)
    ///     .build()
    ///     .await?;
    /// # drop(consumer); Ok(()) }
    /// ```
    pub fn stream_offset(self, offset: StreamOffset) -> Self {
        self.consumer_argument("x-stream-offset", offset.to_argument())
    }
    /// How to reconnect when the connection is lost (`None`: do not; the
    /// stream then reports the error and ends). The default retries
    /// forever, waiting 0.5 s, then 1.5 s, ... up to 10 s.
    ///
    /// ```
    /// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
    /// use kombu_core::{Consumer, Queue, RetryPolicy};
    /// let consumer = Consumer::builder(&conn)
    ///     .queue(Queue::new("tasks"))
    ///     .reconnect(RetryPolicy::new().max_retries(10))
    ///     .build()
    ///     .await?;
    /// # drop(consumer); Ok(()) }
    /// ```
    pub fn reconnect(mut self, policy: impl Into<Option<RetryPolicy>>) -> Self {
        self.reconnect = policy.into();
        self
    }
    /// Decode with these serializers (for example with one of your own
    /// registered) instead of the connection's.
    pub fn serializers(mut self, serializers: Arc<SerializerRegistry>) -> Self {
        self.serializers = Some(serializers);
        self
    }
    /// Decompress with these compression methods instead of the connection's.
    pub fn compressors(mut self, compressors: Arc<CompressionRegistry>) -> Self {
        self.compressors = Some(compressors);
        self
    }

    /// Open a channel, declare, set QoS and start consuming.
    pub async fn build(self) -> Result<Consumer> {
        if self.spec.queues.is_empty() {
            return Err(Error::invalid_option("a consumer needs at least one queue"));
        }
        let attached = attach(self.spec.clone()).await?;
        let mut decoder = Decoder::new(&self.spec.connection, self.accept);
        if let Some(serializers) = self.serializers {
            decoder.serializers = serializers;
        }
        if let Some(compressors) = self.compressors {
            decoder.compressors = compressors;
        }
        Ok(Consumer {
            spec: self.spec,
            reconnect: self.reconnect,
            decoder: Arc::new(decoder),
            attached,
            cancelled: false,
            lost: None,
            reconnecting: None,
            reconnects: 0,
            last_reconnect: None,
        })
    }
}

/// A consumer's live part: its channel, streams and tags on one connection.
struct Attached {
    channel: Arc<dyn Channel>,
    epoch: u64,
    streams: Streams,
    tags: Vec<String>,
    metrics: Arc<ConsumerMetrics>,
}

/// The delivery streams of a consumer: one polled directly (the common
/// case, without the cost of a `SelectAll`), or several merged.
enum Streams {
    One(Option<DeliveryStream>),
    Many(SelectAll<DeliveryStream>),
}

impl Streams {
    fn new(mut streams: Vec<DeliveryStream>) -> Self {
        if streams.len() == 1 {
            Streams::One(streams.pop())
        } else {
            Streams::Many(streams.into_iter().collect())
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Streams::One(stream) => stream.is_none(),
            Streams::Many(all) => all.is_empty(),
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Box<Delivery>>>> {
        match self {
            Streams::One(slot) => match slot {
                Some(stream) => {
                    let polled = stream.as_mut().poll_next(cx);
                    if let Poll::Ready(None) = polled {
                        *slot = None;
                    }
                    polled
                }
                None => Poll::Ready(None),
            },
            Streams::Many(all) => Pin::new(all).poll_next(cx),
        }
    }
}

/// Open a channel, declare, set QoS and consume every queue of `spec`. A
/// connection error marks the connection lost so that a retry reconnects.
async fn attach(spec: Spec) -> Result<Attached> {
    let (channel, epoch) = spec.connection.channel_at().await?;
    let result = async {
        let mut names = Vec::with_capacity(spec.queues.len());
        for queue in &spec.queues {
            if spec.declare {
                let info = spec
                    .connection
                    .declare_queue(channel.as_ref(), queue)
                    .await?;
                names.push(if queue.name.is_empty() {
                    info.name
                } else {
                    queue.name.clone()
                });
            } else {
                names.push(queue.name.clone());
            }
        }
        channel.basic_qos(spec.prefetch_count).await?;
        let mut streams = Vec::with_capacity(names.len());
        let mut tags = Vec::new();
        for name in &names {
            let tag = format!("{}{}", spec.tag_prefix, uuid::Uuid::new_v4().simple());
            let stream = if spec.arguments.is_empty() {
                channel.basic_consume(name, &tag, spec.no_ack).await?
            } else {
                channel
                    .basic_consume_with_arguments(name, &tag, spec.no_ack, &spec.arguments)
                    .await?
            };
            streams.push(stream);
            tags.push(tag);
        }
        let metrics = ConsumerMetrics::new(spec.connection.transport_name(), &names);
        Ok::<_, Error>((Streams::new(streams), tags, metrics))
    }
    .await;
    match result {
        Ok((streams, tags, metrics)) => Ok(Attached {
            channel,
            epoch,
            streams,
            tags,
            metrics: Arc::new(metrics),
        }),
        Err(err) => {
            if err.is_connection_error() {
                spec.connection.mark_lost(epoch, &err).await;
            } else {
                let _ = channel.close().await;
            }
            Err(err)
        }
    }
}

/// Consume again after a loss: give up the old channel (its unacked
/// messages go back where the broker can still take them), then attach
/// anew as `policy` says.
async fn reattach(
    spec: Spec,
    policy: RetryPolicy,
    old: Arc<dyn Channel>,
    old_epoch: u64,
    cause: Option<Error>,
    pause: Duration,
) -> Result<Attached> {
    if let Some(cause) = &cause {
        if cause.is_connection_error() {
            spec.connection.mark_lost(old_epoch, cause).await;
        }
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), old.close()).await;
    });
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    (|| attach(spec.clone()))
        .retry(policy)
        .sleep(tokio::time::sleep)
        .when(Error::is_recoverable)
        .notify(|err: &Error, wait: Duration| {
            tracing::warn!(error = %err, "consumer cannot reconnect yet; retrying in {:.1} s", wait.as_secs_f64());
        })
        .await
}

/// A stream of messages from one or more queues.
///
/// Dropping a consumer closes its channel: messages it received and did not
/// ack go back to their queues (flagged redelivered).
///
/// When its connection is lost (an error from the broker, a missed
/// heartbeat, a channel closed under it), the consumer reconnects by
/// itself as its [`ConsumerBuilder::reconnect`] policy says, declares its
/// queues again and goes on: the stream does not end, the reconnect is
/// logged and counted ([`Consumer::reconnects`]). Messages received before
/// the loss and not acked are delivered again; acking one of them fails
/// with [`ErrorKind::ConnectionLost`] and never acks another message.
///
/// ```
/// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
/// use futures::StreamExt;
/// use kombu_core::{Consumer, Queue};
/// let mut consumer = Consumer::builder(&conn).queue(Queue::new("tasks")).prefetch_count(10).build().await?;
/// while let Some(message) = consumer.next().await {
///     let message = message?;
///     let value: serde_json::Value = message.decode()?;
///     println!("{value}");
///     message.ack().await?;
/// }
/// # Ok(()) }
/// ```
pub struct Consumer {
    spec: Spec,
    reconnect: Option<RetryPolicy>,
    decoder: Arc<Decoder>,
    attached: Attached,
    cancelled: bool,
    lost: Option<BoxFuture<'static, EpochState>>,
    reconnecting: Option<BoxFuture<'static, Result<Attached>>>,
    reconnects: u64,
    last_reconnect: Option<Instant>,
}

impl Consumer {
    /// Start building a consumer on `connection`.
    pub fn builder(connection: &Connection) -> ConsumerBuilder {
        ConsumerBuilder {
            spec: Spec {
                connection: connection.clone(),
                queues: Vec::new(),
                prefetch_count: 0,
                no_ack: false,
                declare: true,
                tag_prefix: "kombu-rs.".into(),
                arguments: Arguments::new(),
            },
            accept: Accept::default(),
            reconnect: Some(
                RetryPolicy::new()
                    .interval_start(Duration::from_millis(500))
                    .interval_step(Duration::from_secs(1))
                    .interval_max(Duration::from_secs(10)),
            ),
            serializers: None,
            compressors: None,
        }
    }

    /// The consumer's channel (a new one after each reconnect).
    pub fn channel(&self) -> &Arc<dyn Channel> {
        &self.attached.channel
    }

    /// How many times the consumer reconnected after losing its connection
    /// or channel.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Change the prefetch limit (kept across reconnects).
    pub async fn qos(&mut self, prefetch_count: u16) -> Result<()> {
        self.spec.prefetch_count = prefetch_count;
        self.attached.channel.basic_qos(prefetch_count).await
    }

    /// Stop receiving; messages already received can still be acked.
    pub async fn cancel(&mut self) -> Result<()> {
        self.cancelled = true;
        self.reconnecting = None;
        for tag in std::mem::take(&mut self.attached.tags) {
            self.attached.channel.basic_cancel(&tag).await?;
        }
        Ok(())
    }

    /// Cancel and close the channel: unacked messages go back to their queues.
    pub async fn close(mut self) -> Result<()> {
        self.cancel().await?;
        self.attached.channel.close().await
    }

    /// True when the consumer reconnects after a loss (it has a policy
    /// and was not cancelled).
    fn can_reconnect(&self) -> bool {
        self.reconnect.is_some() && !self.cancelled
    }

    /// Start reconnecting (call when [`Consumer::can_reconnect`]).
    fn start_reconnect(&mut self, cause: Option<Error>) {
        let Some(policy) = self.reconnect.clone() else {
            return;
        };
        match &cause {
            Some(err) => tracing::warn!(error = %err, "consumer lost its connection; reconnecting"),
            None => tracing::warn!("consumer's channel closed; reconnecting"),
        }
        // Back to back reconnects (a channel that closes at once, say) wait
        // a little, so a broken setup does not spin.
        let pause = match self.last_reconnect {
            Some(at) if at.elapsed() < Duration::from_secs(1) => Duration::from_secs(1),
            _ => Duration::ZERO,
        };
        self.lost = None;
        self.reconnecting = Some(Box::pin(reattach(
            self.spec.clone(),
            policy,
            self.attached.channel.clone(),
            self.attached.epoch,
            cause,
            pause,
        )));
    }

    fn watch_for_loss(&mut self) -> &mut BoxFuture<'static, EpochState> {
        let epoch = self.attached.epoch;
        let connection = self.spec.connection.clone();
        self.lost
            .get_or_insert_with(|| Box::pin(connection.lost_since(epoch)))
    }
}

impl Stream for Consumer {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(reconnecting) = this.reconnecting.as_mut() {
                match reconnecting.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(attached)) => {
                        this.reconnecting = None;
                        this.attached = attached;
                        this.reconnects += 1;
                        this.last_reconnect = Some(Instant::now());
                        tracing::info!(
                            reconnects = this.reconnects,
                            "consumer reconnected and consuming again"
                        );
                        continue;
                    }
                    Poll::Ready(Err(err)) => {
                        this.reconnecting = None;
                        this.cancelled = true;
                        return Poll::Ready(Some(Err(err)));
                    }
                }
            }
            if this.cancelled && this.attached.streams.is_empty() {
                return Poll::Ready(None);
            }
            if this.can_reconnect() {
                if let Poll::Ready(state) = this.watch_for_loss().as_mut().poll(cx) {
                    if state.closed {
                        // The connection was closed on purpose: end.
                        this.cancelled = true;
                        this.lost = None;
                        return Poll::Ready(None);
                    }
                    this.start_reconnect(None);
                    continue;
                }
            }
            match this.attached.streams.poll_next(cx) {
                Poll::Ready(Some(Ok(delivery))) => {
                    let metrics = this.attached.metrics.of(&delivery.info).clone();
                    return Poll::Ready(Some(Ok(Message::new(
                        delivery,
                        this.attached.channel.clone(),
                        this.decoder.clone(),
                        this.spec.no_ack,
                        this.attached.epoch,
                        metrics,
                    ))));
                }
                Poll::Ready(Some(Err(err))) => {
                    if err.is_connection_error() && this.can_reconnect() {
                        this.start_reconnect(Some(err));
                        continue;
                    }
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    if this.can_reconnect() {
                        this.start_reconnect(None);
                        continue;
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
