//! [`Consumer`] (a stream of [`Message`]s) and the received [`Message`].

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{SelectAll, Stream};
use serde::de::DeserializeOwned;

use crate::compression::CompressionRegistry;
use crate::connection::Connection;
use crate::entity::Queue;
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Delivery, DeliveryInfo, Headers, Properties};
use crate::serialization::{Accept, Payload, SerializerRegistry};
use crate::transport::{Channel, DeliveryStream};

/// How received bodies are decoded: serializers, compressors and the accept
/// list. It also keeps the connection alive while messages can still be acked.
#[derive(Clone)]
pub(crate) struct Decoder {
    pub(crate) serializers: Arc<SerializerRegistry>,
    pub(crate) compressors: Arc<CompressionRegistry>,
    pub(crate) accept: Accept,
    _connection: Connection,
}

impl Decoder {
    pub(crate) fn new(connection: &Connection, accept: Accept) -> Self {
        Decoder {
            serializers: connection.serializers().clone(),
            compressors: connection.compressors().clone(),
            accept,
            _connection: connection.clone(),
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
    delivery: Delivery,
    channel: Arc<dyn Channel>,
    decoder: Decoder,
    no_ack: bool,
    state: AtomicU8,
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
        delivery: Delivery,
        channel: Arc<dyn Channel>,
        decoder: Decoder,
        no_ack: bool,
    ) -> Self {
        Message {
            delivery,
            channel,
            decoder,
            no_ack,
            state: AtomicU8::new(if no_ack { ACKED } else { PENDING }),
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
        self.state
            .compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
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
        self.channel
            .basic_ack(self.delivery.delivery_tag, false)
            .await
    }

    /// Reject: dead-lettered where the queue says so, else dropped.
    pub async fn reject(&self) -> Result<()> {
        self.settle(REJECTED)?;
        self.channel
            .basic_reject(self.delivery.delivery_tag, false)
            .await
    }

    /// Put the message back in its queue, flagged redelivered.
    pub async fn requeue(&self) -> Result<()> {
        self.settle(REQUEUED)?;
        self.channel
            .basic_reject(self.delivery.delivery_tag, true)
            .await
    }

    /// True once acked, rejected or requeued (always true with no_ack).
    pub fn acknowledged(&self) -> bool {
        self.state.load(Ordering::Acquire) != PENDING
    }
}

/// Builds a [`Consumer`].
pub struct ConsumerBuilder {
    connection: Connection,
    queues: Vec<Queue>,
    prefetch_count: u16,
    no_ack: bool,
    accept: Accept,
    declare: bool,
    tag_prefix: String,
    serializers: Option<Arc<SerializerRegistry>>,
    compressors: Option<Arc<CompressionRegistry>>,
}

impl ConsumerBuilder {
    /// Consume this queue too.
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queues.push(queue);
        self
    }
    /// Consume these queues too.
    pub fn queues(mut self, queues: impl IntoIterator<Item = Queue>) -> Self {
        self.queues.extend(queues);
        self
    }
    /// Most unacked messages at once (0: no limit).
    pub fn prefetch_count(mut self, count: u16) -> Self {
        self.prefetch_count = count;
        self
    }
    /// Messages count as acked on delivery.
    pub fn no_ack(mut self, yes: bool) -> Self {
        self.no_ack = yes;
        self
    }
    /// Content types (or serializer names) accepted (default: json only).
    pub fn accept(mut self, accept: Accept) -> Self {
        self.accept = accept;
        self
    }
    /// Declare queues, exchanges and bindings first (default true).
    pub fn declare(mut self, yes: bool) -> Self {
        self.declare = yes;
        self
    }
    /// Prefix of consumer tags.
    pub fn tag_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.tag_prefix = prefix.into();
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
        if self.queues.is_empty() {
            return Err(Error::invalid_option("a consumer needs at least one queue"));
        }
        let channel = self.connection.channel().await?;
        if self.declare {
            for queue in &self.queues {
                queue.declare(channel.as_ref()).await?;
            }
        }
        channel.basic_qos(self.prefetch_count).await?;
        let mut streams: SelectAll<DeliveryStream> = SelectAll::new();
        let mut tags = Vec::new();
        for queue in &self.queues {
            let tag = format!("{}{}", self.tag_prefix, uuid::Uuid::new_v4().simple());
            streams.push(
                channel
                    .basic_consume(&queue.name, &tag, self.no_ack)
                    .await?,
            );
            tags.push(tag);
        }
        let mut decoder = Decoder::new(&self.connection, self.accept);
        if let Some(serializers) = self.serializers {
            decoder.serializers = serializers;
        }
        if let Some(compressors) = self.compressors {
            decoder.compressors = compressors;
        }
        Ok(Consumer {
            decoder,
            channel,
            streams,
            tags,
            no_ack: self.no_ack,
        })
    }
}

/// A stream of messages from one or more queues.
///
/// Dropping a consumer closes its channel: messages it received and did not
/// ack go back to their queues (flagged redelivered).
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
    channel: Arc<dyn Channel>,
    streams: SelectAll<DeliveryStream>,
    tags: Vec<String>,
    decoder: Decoder,
    no_ack: bool,
}

impl Consumer {
    /// Start building a consumer on `connection`.
    pub fn builder(connection: &Connection) -> ConsumerBuilder {
        ConsumerBuilder {
            connection: connection.clone(),
            queues: Vec::new(),
            prefetch_count: 0,
            no_ack: false,
            accept: Accept::default(),
            declare: true,
            tag_prefix: "kombu-rs.".into(),
            serializers: None,
            compressors: None,
        }
    }

    /// The consumer's channel.
    pub fn channel(&self) -> &Arc<dyn Channel> {
        &self.channel
    }

    /// Change the prefetch limit.
    pub async fn qos(&self, prefetch_count: u16) -> Result<()> {
        self.channel.basic_qos(prefetch_count).await
    }

    /// Stop receiving; messages already received can still be acked.
    pub async fn cancel(&mut self) -> Result<()> {
        for tag in std::mem::take(&mut self.tags) {
            self.channel.basic_cancel(&tag).await?;
        }
        Ok(())
    }

    /// Cancel and close the channel: unacked messages go back to their queues.
    pub async fn close(mut self) -> Result<()> {
        self.cancel().await?;
        self.channel.close().await
    }
}

impl Stream for Consumer {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.streams).poll_next(cx) {
            Poll::Ready(Some(Ok(delivery))) => Poll::Ready(Some(Ok(Message::new(
                delivery,
                this.channel.clone(),
                this.decoder.clone(),
                this.no_ack,
            )))),
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
