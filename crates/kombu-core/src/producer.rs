//! [`Producer`]: serialize, compress and publish.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::connection::Connection;
use crate::entity::{Exchange, Queue};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{DeliveryMode, Headers, Properties, RawMessage};
use crate::metrics::PublishMetricsCache;
use crate::retry::RetryPolicy;
use crate::serialization::Payload;
use crate::trace::TraceContext;
#[cfg(feature = "opentelemetry")]
use crate::trace_spans::PublishSpan;
use crate::transport::Channel;

/// How many publishes [`Producer::publish_many`] keeps in flight at once.
pub const PUBLISH_MANY_WINDOW: usize = 256;

/// The options of one publish, as kombu's `Producer.publish` keywords.
///
/// ```
/// use std::time::Duration;
/// use kombu_core::PublishOptions;
/// let opts = PublishOptions::new()
///     .routing_key("tasks")
///     .serializer("msgpack")
///     .compression("zlib")
///     .priority(5)
///     .expiration(Duration::from_secs(30))
///     .header("x-origin", "docs");
/// assert_eq!(opts.routing_key.as_deref(), Some("tasks"));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Exchange to publish to (default: the producer's).
    pub exchange: Option<Exchange>,
    /// Routing key (default: the producer's).
    pub routing_key: Option<String>,
    /// Serializer name: json (default), msgpack, yaml, raw, text, or a registered one.
    pub serializer: Option<String>,
    /// Compression name: zlib, bzip2, lzma, brotli, zstd.
    pub compression: Option<String>,
    /// Content type to send raw bytes with (with `content_encoding`).
    pub content_type: Option<String>,
    /// Content encoding to send raw bytes with.
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Headers,
    /// Properties (priority, expiration, correlation id, ...).
    pub properties: Properties,
    /// Queues to declare (with their exchanges and bindings) before publishing.
    pub declare: Vec<Queue>,
    /// Fail when no queue takes the message.
    pub mandatory: bool,
    /// Retry a publish that fails with a recoverable error (a lost
    /// connection), reconnecting first (kombu's `retry`).
    pub retry: bool,
    /// How to retry (kombu's `retry_policy`; default
    /// [`RetryPolicy::for_publish`]).
    pub retry_policy: Option<RetryPolicy>,
    /// Deliver no sooner than this ([`delay`](Self::delay),
    /// [`eta`](Self::eta)).
    pub not_before: Option<SystemTime>,
}

impl PublishOptions {
    /// No options: the producer's defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Publish to this exchange.
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchange = Some(exchange);
        self
    }
    /// Use this routing key.
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = Some(routing_key.into());
        self
    }
    /// Use this serializer.
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = Some(name.into());
        self
    }
    /// Compress the body.
    pub fn compression(mut self, name: impl Into<String>) -> Self {
        self.compression = Some(name.into());
        self
    }
    /// Send raw bytes with this content type and encoding.
    pub fn content_type(mut self, content_type: &str, content_encoding: &str) -> Self {
        self.content_type = Some(content_type.to_owned());
        self.content_encoding = Some(content_encoding.to_owned());
        self
    }
    /// Add a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }
    /// Set the priority (higher is delivered first).
    pub fn priority(mut self, priority: u8) -> Self {
        self.properties.priority = Some(priority);
        self
    }
    /// Expire the message after `ttl`.
    pub fn expiration(mut self, ttl: Duration) -> Self {
        self.properties.set_expiration(ttl);
        self
    }
    /// Persistent (default) or transient.
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.properties.delivery_mode = Some(mode);
        self
    }
    /// Set the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.properties.correlation_id = Some(id.into());
        self
    }
    /// Set the reply-to queue.
    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        self.properties.reply_to = Some(queue.into());
        self
    }
    /// Set the message id.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.properties.message_id = Some(id.into());
        self
    }
    /// Declare `queue` (and its exchanges and bindings) first.
    pub fn declare(mut self, queue: Queue) -> Self {
        self.declare.push(queue);
        self
    }
    /// Retry a publish that fails because the connection was lost, after
    /// reconnecting (kombu's `retry=True`).
    pub fn retry(mut self, retry: bool) -> Self {
        self.retry = retry;
        self
    }
    /// Retry as `policy` says (and turn retrying on).
    ///
    /// ```
    /// use kombu_core::{PublishOptions, RetryPolicy};
    /// let opts = PublishOptions::new().retry_policy(RetryPolicy::new().max_retries(3));
    /// assert!(opts.retry);
    /// ```
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = true;
        self.retry_policy = Some(policy);
        self
    }
    /// Deliver the message no sooner than `delay` from now (delayed
    /// delivery: Celery's `countdown`). Every transport keeps it on the
    /// broker until then (how, and what a Python kombu peer sees, is on
    /// each transport's page); a transport that cannot refuses the publish
    /// with an `Unsupported` error.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use kombu_core::PublishOptions;
    /// let opts = PublishOptions::new().routing_key("tasks").delay(Duration::from_secs(30));
    /// assert!(opts.not_before.unwrap() > SystemTime::now() + Duration::from_secs(29));
    /// ```
    pub fn delay(self, delay: Duration) -> Self {
        self.eta(SystemTime::now() + delay)
    }

    /// Deliver the message no sooner than `when` (Celery's `eta`); a time
    /// in the past means at once.
    pub fn eta(mut self, when: SystemTime) -> Self {
        self.not_before = Some(when);
        self
    }

    /// Fail when no queue takes the message.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Carry this W3C trace context: the `traceparent` (and `tracestate`)
    /// headers, ordinary application headers every transport and a
    /// Python kombu/Celery peer keep. The consumer reads it back with
    /// [`Message::trace_context`](crate::Message::trace_context). With the
    /// `opentelemetry` feature, the publish's span is its child and the
    /// message carries the span's own context instead.
    ///
    /// ```
    /// use kombu_core::{PublishOptions, TraceContext};
    /// let ctx = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    /// let opts = PublishOptions::new().trace_context(&ctx);
    /// assert_eq!(opts.headers["traceparent"], ctx.traceparent());
    /// ```
    pub fn trace_context(mut self, ctx: &TraceContext) -> Self {
        ctx.write_headers(&mut self.headers);
        self
    }
}

/// Publishes messages to an exchange (the default exchange unless told).
///
/// ```
/// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
/// use kombu_core::{Exchange, Producer, PublishOptions};
/// let producer = Producer::new(&conn).exchange(Exchange::topic("logs"));
/// producer
///     .publish(serde_json::json!({"level": "error"}), PublishOptions::new().routing_key("app.error"))
///     .await?;
/// # Ok(()) }
/// ```
pub struct Producer {
    connection: Connection,
    /// The channel in use and the connection epoch it belongs to.
    channel: std::sync::Mutex<Option<(Arc<dyn Channel>, u64)>>,
    /// Held while a channel is being opened (one at a time).
    opening: tokio::sync::Mutex<()>,
    exchange: Exchange,
    routing_key: String,
    serializer: Option<String>,
    compression: Option<String>,
    auto_declare: bool,
    serializers: std::sync::Arc<crate::serialization::SerializerRegistry>,
    compressors: std::sync::Arc<crate::compression::CompressionRegistry>,
    metrics: PublishMetricsCache,
}

impl Producer {
    /// A producer on `connection` publishing to the default exchange.
    pub fn new(connection: &Connection) -> Self {
        Producer {
            connection: connection.clone(),
            channel: std::sync::Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            exchange: Exchange::default_exchange(),
            routing_key: String::new(),
            serializer: None,
            compression: None,
            auto_declare: true,
            serializers: connection.serializers().clone(),
            compressors: connection.compressors().clone(),
            metrics: PublishMetricsCache::default(),
        }
    }

    /// Use these serializers (for example with one of your own registered)
    /// instead of the connection's.
    pub fn serializers(
        mut self,
        serializers: std::sync::Arc<crate::serialization::SerializerRegistry>,
    ) -> Self {
        self.serializers = serializers;
        self
    }

    /// Use these compression methods instead of the connection's.
    pub fn compressors(
        mut self,
        compressors: std::sync::Arc<crate::compression::CompressionRegistry>,
    ) -> Self {
        self.compressors = compressors;
        self
    }

    /// Publish to `exchange` by default (declared before the first publish).
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchange = exchange;
        self
    }
    /// Default routing key.
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = routing_key.into();
        self
    }
    /// Default serializer.
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = Some(name.into());
        self
    }
    /// Default compression.
    pub fn compression(mut self, name: impl Into<String>) -> Self {
        self.compression = Some(name.into());
        self
    }
    /// Declare exchanges before publishing to them (default true, as kombu).
    pub fn auto_declare(mut self, yes: bool) -> Self {
        self.auto_declare = yes;
        self
    }

    /// The producer's channel (opened on first use, and again after the
    /// connection was lost or the channel closed).
    pub async fn channel(&self) -> Result<Arc<dyn Channel>> {
        self.channel_at().await.map(|(channel, _)| channel)
    }

    async fn channel_at(&self) -> Result<(Arc<dyn Channel>, u64)> {
        if let Some(open) = self.open_channel() {
            return Ok(open);
        }
        // Boxed: opening is rare, and a publish future is moved on every await.
        Box::pin(self.open_new_channel()).await
    }

    /// The channel in use, if it is open on the current connection.
    fn open_channel(&self) -> Option<(Arc<dyn Channel>, u64)> {
        let slot = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        let (channel, epoch) = slot.as_ref()?;
        (channel.is_open() && *epoch == self.connection.epoch()).then(|| (channel.clone(), *epoch))
    }

    async fn open_new_channel(&self) -> Result<(Arc<dyn Channel>, u64)> {
        let _opening = self.opening.lock().await;
        if let Some(open) = self.open_channel() {
            return Ok(open);
        }
        let fresh = self.connection.channel_at().await?;
        *self.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    /// Serialize `body` and publish it.
    ///
    /// With [`PublishOptions::retry`], a publish that fails because the
    /// connection or channel was lost is tried again on a new connection
    /// (declarations included) as the retry policy says. Without
    /// confirmations from the broker a retried message can arrive twice.
    pub async fn publish(&self, body: impl Into<Payload>, options: PublishOptions) -> Result<()> {
        let message = self.prepare(&body.into(), &options)?;
        self.send(message, &options).await
    }

    /// Publish many bodies with the same options, in batches of
    /// [`PUBLISH_MANY_WINDOW`] handed to the channel at once
    /// ([`Channel::basic_publish_many`]): a virtual transport stores each
    /// batch with its backend's batch primitive (a Redis pipeline, SQS
    /// `SendMessageBatch`, CouchDB `_bulk_docs`, MongoDB `insert_many`,
    /// pipelined beanstalk puts), AMQP has the whole batch in flight on its
    /// channel. The result has one entry per body, in order: each message
    /// succeeds or fails on its own (a batch the broker refused fails every
    /// message in it; with [`PublishOptions::retry`], each is published and
    /// retried on its own). Concurrent [`publish`](Self::publish) calls on
    /// one producer pipeline too; this is the call for a known set.
    ///
    /// ```
    /// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
    /// use kombu_core::{Producer, PublishOptions};
    /// let producer = Producer::new(&conn);
    /// let bodies = (0..100).map(|n| serde_json::json!({"n": n}));
    /// let results = producer
    ///     .publish_many(bodies, PublishOptions::new().routing_key("tasks"))
    ///     .await;
    /// assert_eq!(results.len(), 100);
    /// for result in results {
    ///     result?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn publish_many<B: Into<Payload>>(
        &self,
        bodies: impl IntoIterator<Item = B>,
        options: PublishOptions,
    ) -> Vec<Result<()>> {
        use futures::StreamExt as _;
        if options.retry {
            return futures::stream::iter(bodies)
                .map(|body| self.publish(body, options.clone()))
                .buffered(PUBLISH_MANY_WINDOW)
                .collect()
                .await;
        }
        let bodies: Vec<Payload> = bodies.into_iter().map(Into::into).collect();
        let options = &options;
        // One batch after the other, so that messages are stored in the
        // order given.
        let mut results = Vec::with_capacity(bodies.len());
        for batch in bodies.chunks(PUBLISH_MANY_WINDOW) {
            results.extend(self.publish_batch(batch, options).await);
        }
        results
    }

    /// One batch of [`publish_many`](Self::publish_many): prepared, then
    /// handed to the channel in one call.
    async fn publish_batch(&self, bodies: &[Payload], options: &PublishOptions) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = Vec::with_capacity(bodies.len());
        let mut ready = Vec::with_capacity(bodies.len());
        let mut slots = Vec::with_capacity(bodies.len());
        for body in bodies {
            match self.prepare(body, options) {
                Ok(message) => {
                    slots.push(results.len());
                    ready.push(message);
                    results.push(Ok(()));
                }
                Err(err) => results.push(Err(err)),
            }
        }
        if ready.is_empty() {
            return results;
        }
        let (exchange, routing_key) = self.destination(options);
        #[cfg(feature = "opentelemetry")]
        let spans: Vec<PublishSpan> = ready
            .iter_mut()
            .map(|message| {
                let transport = self.connection.transport_name();
                PublishSpan::start(transport, exchange, routing_key, message)
            })
            .collect();
        let started = Instant::now();
        let sent = match self.publish_many_once(ready, options).await {
            Ok(sent) => sent,
            Err(err) => slots
                .iter()
                .map(|_| Err(Error::new(err.kind(), err.message().to_owned())))
                .collect(),
        };
        let took = started.elapsed();
        let transport = self.connection.transport_name();
        let ok = sent.iter().filter(|outcome| outcome.is_ok()).count();
        let destination = (transport, exchange, routing_key);
        self.metrics.record(destination, ok > 0, took, ok);
        #[cfg(feature = "opentelemetry")]
        for (span, outcome) in spans.into_iter().zip(&sent) {
            span.end(outcome);
        }
        for (slot, outcome) in slots.into_iter().zip(sent) {
            results[slot] = outcome;
        }
        results
    }

    /// Declare what `options` asks for, then hand `messages` to the channel.
    async fn publish_many_once(
        &self,
        messages: Vec<RawMessage>,
        options: &PublishOptions,
    ) -> Result<Vec<Result<()>>> {
        let (channel, epoch) = self.channel_at().await?;
        let exchange = options.exchange.as_ref().unwrap_or(&self.exchange);
        let declared = self.declare_for(channel.as_ref(), exchange, options).await;
        if let Err(err) = declared {
            if err.is_connection_error() {
                self.connection.mark_lost(epoch, &err).await;
            }
            return Err(err);
        }
        let routing_key = options.routing_key.as_deref().unwrap_or(&self.routing_key);
        let sent = channel
            .basic_publish_many(messages, &exchange.name, routing_key, options.mandatory)
            .await;
        if let Some(err) = sent
            .iter()
            .filter_map(|r| r.as_ref().err())
            .find(|err| err.is_connection_error())
        {
            self.connection.mark_lost(epoch, err).await;
        } else if sent.iter().any(|r| {
            r.as_ref()
                .is_err_and(|err| err.kind() == ErrorKind::Rejected)
        }) {
            self.retire_channel(&channel);
        }
        Ok(sent)
    }

    /// True when [`declare_for`](Self::declare_for) has anything to do.
    fn declares(&self, exchange: &Exchange, options: &PublishOptions) -> bool {
        !options.declare.is_empty() || (self.auto_declare && !exchange.is_default())
    }

    /// The queues `options` declares and, unless auto-declaring is off,
    /// the exchange.
    async fn declare_for(
        &self,
        channel: &dyn Channel,
        exchange: &Exchange,
        options: &PublishOptions,
    ) -> Result<()> {
        for queue in &options.declare {
            self.connection.declare_queue(channel, queue).await?;
        }
        if self.auto_declare && !exchange.is_default() {
            self.connection.maybe_declare(channel, exchange).await?;
        }
        Ok(())
    }

    /// Publish an already serialized message.
    pub async fn publish_raw(&self, message: RawMessage, options: PublishOptions) -> Result<()> {
        self.send(message, &options).await
    }

    /// The exchange and routing key a publish with `options` goes to.
    fn destination<'a>(&'a self, options: &'a PublishOptions) -> (&'a str, &'a str) {
        let exchange = options.exchange.as_ref().unwrap_or(&self.exchange);
        let routing_key = options.routing_key.as_deref().unwrap_or(&self.routing_key);
        (&exchange.name, routing_key)
    }

    /// Publish a prepared message once, or with retries when `options`
    /// asks for them (counted, timed and, with the `opentelemetry`
    /// feature, traced).
    #[cfg_attr(not(feature = "opentelemetry"), allow(unused_mut))]
    async fn send(&self, mut message: RawMessage, options: &PublishOptions) -> Result<()> {
        let (exchange, routing_key) = self.destination(options);
        let transport = self.connection.transport_name();
        #[cfg(feature = "opentelemetry")]
        let span = PublishSpan::start(transport, exchange, routing_key, &mut message);
        let started = Instant::now();
        let outcome = if options.retry {
            let policy = options
                .retry_policy
                .clone()
                .unwrap_or_else(RetryPolicy::for_publish);
            // Boxed: the retrying future is large, and most publishes do
            // not retry (a publish future is moved on every await).
            Box::pin(
                self.connection
                    .ensure(&policy, || self.publish_once(message.clone(), options)),
            )
            .await
        } else {
            self.publish_once(message, options).await
        };
        self.metrics.record(
            (transport, exchange, routing_key),
            outcome.is_ok(),
            started.elapsed(),
            1,
        );
        #[cfg(feature = "opentelemetry")]
        span.end(&outcome);
        outcome
    }

    async fn publish_once(&self, message: RawMessage, options: &PublishOptions) -> Result<()> {
        let (channel, epoch) = self.channel_at().await?;
        let result = async {
            let exchange = options.exchange.as_ref().unwrap_or(&self.exchange);
            if self.declares(exchange, options) {
                // Boxed: declaring is rare after the first publish.
                Box::pin(self.declare_for(channel.as_ref(), exchange, options)).await?;
            }
            let routing_key = options.routing_key.as_deref().unwrap_or(&self.routing_key);
            channel
                .basic_publish(message, &exchange.name, routing_key, options.mandatory)
                .await
        }
        .await;
        if let Err(err) = &result {
            if err.is_connection_error() {
                // Boxed: rare, and kept out of every publish's future.
                Box::pin(self.connection.mark_lost(epoch, err)).await;
            } else if err.kind() == ErrorKind::Rejected {
                self.retire_channel(&channel);
            }
        }
        result
    }

    /// The broker refused a publish on `channel` (a nack, or a mandatory
    /// message returned): the next publish opens a fresh channel.
    /// RabbitMQ 3.10 nacks every later publish of a channel that was opened
    /// while a quorum queue had no leader (a node of the cluster just died)
    /// until the channel is reopened; a new channel costs one round trip.
    fn retire_channel(&self, channel: &Arc<dyn Channel>) {
        let mut slot = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        if slot
            .as_ref()
            .is_some_and(|(cached, _)| Arc::ptr_eq(cached, channel))
        {
            *slot = None;
        }
    }

    /// Build the message `publish` would send: serialized, compressed, with
    /// headers and properties.
    pub fn prepare(&self, body: &Payload, options: &PublishOptions) -> Result<RawMessage> {
        let serializer = options.serializer.as_deref().or(self.serializer.as_deref());
        let compression = options
            .compression
            .as_deref()
            .or(self.compression.as_deref());
        if let (Payload::Bytes(bytes), None | Some("raw"), None) = (body, serializer, compression) {
            // Raw bytes go as they are: shared, not copied.
            return Ok(Self::raw_message(bytes.clone(), options));
        }
        let serializers = &self.serializers;
        let (mut bytes, mut content_type, mut content_encoding) =
            serializers.encode_payload(body, serializer)?;
        if let (Some(ct), Payload::Bytes(_)) = (&options.content_type, body) {
            content_type = ct.clone();
            content_encoding = options
                .content_encoding
                .clone()
                .unwrap_or_else(|| "binary".into());
        }
        let mut headers = options.headers.clone();
        if let Some(name) = compression {
            let compressor = self.compressors.by_name(name).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOption,
                    format!("unknown compression {name:?}"),
                )
            })?;
            bytes = compressor.compress(&bytes)?;
            headers.insert("compression".into(), compressor.content_type().into());
        }
        let mut properties = options.properties.clone();
        properties
            .delivery_mode
            .get_or_insert(DeliveryMode::Persistent);
        Ok(RawMessage {
            body: bytes.into(),
            content_type: Some(content_type),
            content_encoding: Some(content_encoding),
            headers,
            properties,
            not_before: options.not_before,
        })
    }

    /// [`prepare`](Self::prepare) of raw bytes, neither serialized nor
    /// compressed: `application/data`, `binary` (or the content type the
    /// options give).
    fn raw_message(body: bytes::Bytes, options: &PublishOptions) -> RawMessage {
        let (content_type, content_encoding) = match &options.content_type {
            Some(ct) => (
                ct.clone(),
                options
                    .content_encoding
                    .clone()
                    .unwrap_or_else(|| "binary".into()),
            ),
            None => (
                crate::serialization::CONTENT_TYPE_DATA.to_owned(),
                "binary".to_owned(),
            ),
        };
        let mut properties = options.properties.clone();
        properties
            .delivery_mode
            .get_or_insert(DeliveryMode::Persistent);
        RawMessage {
            body,
            content_type: Some(content_type),
            content_encoding: Some(content_encoding),
            headers: options.headers.clone(),
            properties,
            not_before: options.not_before,
        }
    }
}
