//! The simple interface: a queue you `put` to and `get` from
//! (kombu's `SimpleQueue` and `SimpleBuffer`).

use std::sync::Arc;
use std::time::Duration;

use crate::connection::Connection;
use crate::consumer::{Decoder, Message};
use crate::entity::{Exchange, Queue};
use crate::error::Result;
use crate::message::DeliveryMode;
use crate::producer::{Producer, PublishOptions};
use crate::serialization::{Accept, Payload};
use crate::transport::Channel;

/// A named queue with `put` and `get`, declared on first use.
///
/// As in kombu, the queue is bound to a direct exchange of the same name
/// with the queue's name as routing key, so Python's `SimpleQueue("name")`
/// and this one share messages.
///
/// ```
/// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
/// use std::time::Duration;
/// let queue = conn.simple_queue("inbox");
/// queue.put(serde_json::json!({"hello": "world"})).await?;
/// if let Some(message) = queue.get(Some(Duration::from_secs(1))).await? {
///     message.ack().await?;
/// }
/// # Ok(()) }
/// ```
pub struct SimpleQueue {
    connection: Connection,
    queue: Queue,
    producer: Producer,
    channel: tokio::sync::Mutex<Option<(Arc<dyn Channel>, u64)>>,
    decoder: Arc<Decoder>,
    no_ack: bool,
    delivery_mode: DeliveryMode,
    metrics: Arc<crate::metrics::QueueMetrics>,
}

impl SimpleQueue {
    fn build(connection: &Connection, name: &str, buffer: bool) -> Self {
        let exchange = Exchange::direct(name).durable(!buffer).auto_delete(buffer);
        let queue = Queue::new(name)
            .bind(&exchange, name)
            .durable(!buffer)
            .auto_delete(buffer);
        SimpleQueue {
            connection: connection.clone(),
            producer: Producer::new(connection)
                .exchange(exchange)
                .routing_key(name),
            queue,
            channel: tokio::sync::Mutex::new(None),
            decoder: Arc::new(Decoder::new(connection, Accept::default())),
            metrics: Arc::new(crate::metrics::QueueMetrics::new(
                connection.transport_name(),
                name,
            )),
            no_ack: buffer,
            delivery_mode: if buffer {
                DeliveryMode::Transient
            } else {
                DeliveryMode::Persistent
            },
        }
    }

    /// A durable simple queue.
    pub fn new(connection: &Connection, name: &str) -> Self {
        Self::build(connection, name, false)
    }

    /// A simple buffer: transient messages, auto-deleted queue, no acks.
    pub fn buffer(connection: &Connection, name: &str) -> Self {
        Self::build(connection, name, true)
    }

    /// Accept these content types on `get` (default: json only).
    pub fn accept(mut self, accept: Accept) -> Self {
        Arc::make_mut(&mut self.decoder).accept = accept;
        self
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.queue.name
    }

    /// The queue's channel, opened (and the queue declared) on first use
    /// and again after the connection was lost.
    async fn channel(&self) -> Result<(Arc<dyn Channel>, u64)> {
        let mut slot = self.channel.lock().await;
        if let Some((channel, epoch)) = slot.as_ref() {
            if channel.is_open() && *epoch == self.connection.epoch() {
                return Ok((channel.clone(), *epoch));
            }
        }
        let (channel, epoch) = self.connection.channel_at().await?;
        self.connection
            .declare_queue(channel.as_ref(), &self.queue)
            .await?;
        *slot = Some((channel.clone(), epoch));
        Ok((channel, epoch))
    }

    /// Publish `body` to the queue.
    pub async fn put(&self, body: impl Into<Payload>) -> Result<()> {
        self.put_with(body, PublishOptions::new()).await
    }

    /// Publish `body` with options (serializer, compression, headers...).
    pub async fn put_with(&self, body: impl Into<Payload>, options: PublishOptions) -> Result<()> {
        self.channel().await?;
        let mut options = options;
        options
            .properties
            .delivery_mode
            .get_or_insert(self.delivery_mode);
        self.producer.publish(body, options).await
    }

    /// Take a message without waiting; `None` when the queue is empty.
    pub async fn get_nowait(&self) -> Result<Option<Message>> {
        let (channel, epoch) = self.channel().await?;
        Ok(channel
            .basic_get(&self.queue.name, self.no_ack)
            .await?
            .map(|d| {
                Message::new(
                    Box::new(d),
                    channel.clone(),
                    self.decoder.clone(),
                    self.no_ack,
                    epoch,
                    self.metrics.clone(),
                )
            }))
    }

    /// Take a message, waiting up to `timeout` (forever with `None`);
    /// `None` when nothing came in time.
    pub async fn get(&self, timeout: Option<Duration>) -> Result<Option<Message>> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(message) = self.get_nowait().await? {
                return Ok(Some(message));
            }
            let now = tokio::time::Instant::now();
            if let Some(deadline) = deadline {
                if now >= deadline {
                    return Ok(None);
                }
                pause = pause.min(deadline - now);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Messages waiting in the queue.
    pub async fn qsize(&self) -> Result<u64> {
        self.channel().await?.0.queue_size(&self.queue.name).await
    }

    /// Remove every waiting message; returns how many.
    pub async fn clear(&self) -> Result<u64> {
        self.channel().await?.0.queue_purge(&self.queue.name).await
    }

    /// Close the queue's channel (unacked messages go back).
    pub async fn close(&self) -> Result<()> {
        match self.channel.lock().await.take() {
            Some((channel, _)) => channel.close().await,
            None => Ok(()),
        }
    }
}

impl Connection {
    /// A [`SimpleQueue`] named `name` on this connection.
    pub fn simple_queue(&self, name: &str) -> SimpleQueue {
        SimpleQueue::new(self, name)
    }

    /// A [`SimpleQueue::buffer`] named `name` on this connection.
    pub fn simple_buffer(&self, name: &str) -> SimpleQueue {
        SimpleQueue::buffer(self, name)
    }
}
