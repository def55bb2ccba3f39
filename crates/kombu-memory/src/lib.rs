#![doc = include_str!("../README.md")]

mod broker;

use std::sync::Arc;
use std::time::Duration;

use kombu_core::spi::{
    async_trait, Fetched, QueueBinding, Receipt, StoredMessage, VirtualBackend, VirtualFactory,
    VIRTUAL_OPTIONS,
};
use kombu_core::{
    BrokerUrl, Capabilities, ConnectionOptions, Envelope, Exchange, Queue, Registry, Result,
    TransportInfo, TransportKind,
};

use broker::MemoryBroker;

/// The URL schemes this transport serves.
pub const SCHEMES: &[&str] = &["memory"];

/// Transport options `memory://` understands (with the core's
/// `unroutable_queue` and `operation_timeout`).
pub const KNOWN_OPTIONS: &[&str] = &["polling_interval"];

/// What `memory://` is.
///
/// ```
/// assert_eq!(kombu_memory::INFO.schemes, &["memory"]);
/// assert!(!kombu_memory::INFO.static_capabilities().shared_declarations);
/// ```
pub const INFO: TransportInfo =
    TransportInfo::new("memory", SCHEMES, TransportKind::Virtual).capabilities(capabilities);

/// Add the memory transport to `registry`.
///
/// ```
/// let mut registry = kombu_core::Registry::new();
/// kombu_memory::register(&mut registry);
/// assert!(registry.resolve("memory").is_ok());
/// ```
pub fn register(registry: &mut Registry) {
    registry.register(VirtualFactory::shared(&INFO, open));
}

fn capabilities() -> Capabilities {
    Capabilities::new(TransportKind::Virtual)
        .with_fanout_note("in-process")
        .with_shared_declarations(false)
        .with_persistent(false)
        .with_delayed_delivery(true)
        .with_lease_extension(true)
        .with_delivery_limit(true)
}

/// Open a `memory://` backend. Every connection to the same
/// `memory://<name>` in one process shares the same queues.
pub async fn open(url: BrokerUrl, options: ConnectionOptions) -> Result<MemoryBackend> {
    let transport_options = &options.transport_options;
    transport_options.check_known(&[KNOWN_OPTIONS, VIRTUAL_OPTIONS].concat(), "memory")?;
    let polling_interval = transport_options
        .get_duration_secs("polling_interval")?
        .unwrap_or(Duration::from_millis(100));
    Ok(MemoryBackend {
        broker: MemoryBroker::named(&broker_name(&url)),
        polling_interval,
    })
}

/// The in-process broker a URL names: its host and virtual host.
fn broker_name(url: &BrokerUrl) -> String {
    format!(
        "{}/{}",
        url.hostname().unwrap_or_default(),
        url.virtual_host().unwrap_or_default()
    )
}

/// Leave `bytes` in `queue` of the broker `url` names, as a writer other
/// than kombu would: a value that need not be a kombu message. For tests
/// of what a consumer meets there (a value that is not an envelope goes
/// to the queue's quarantine, `<queue>.quarantine`, its bytes intact).
/// Such values are served before the queue's messages.
///
/// ```
/// use futures::StreamExt;
/// use kombu_core::{Connection, Consumer, Queue, Registry};
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// let mut registry = Registry::new();
/// kombu_memory::register(&mut registry);
/// let conn = Connection::with_registry("memory://foreign-doc", registry.into())?;
/// let channel = conn.channel().await?;
/// Queue::new("q").declare(channel.as_ref()).await?;
/// kombu_memory::put_foreign_value(conn.url(), "q", b"not json");
/// let mut consumer = Consumer::builder(&conn).queue(Queue::new("q")).build().await?;
/// let reported = consumer.next().await.expect("an item");
/// assert!(reported.is_err(), "reported; the value is in q.quarantine");
/// assert_eq!(channel.queue_size("q.quarantine").await?, 1);
/// # Ok::<(), kombu_core::Error>(())
/// # }).unwrap();
/// ```
pub fn put_foreign_value(url: &BrokerUrl, queue: &str, bytes: &[u8]) {
    MemoryBroker::named(&broker_name(url)).put_foreign(queue, bytes);
}

/// The [`VirtualBackend`] of `memory://`.
pub struct MemoryBackend {
    broker: Arc<MemoryBroker>,
    polling_interval: Duration,
}

#[async_trait]
impl VirtualBackend for MemoryBackend {
    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn new_queue(&self, queue: &Queue) -> Result<()> {
        self.broker.new_queue(queue);
        Ok(())
    }

    async fn queue_declaration(&self, queue: &str) -> Result<Option<Queue>> {
        Ok(self.broker.declaration(queue))
    }

    async fn has_queue(&self, queue: &str) -> Result<bool> {
        Ok(self.broker.has_queue(queue))
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.broker.delete_queue(queue);
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        Ok(self.broker.purge(queue))
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        Ok(self.broker.size(queue))
    }

    async fn put(&self, queue: &str, envelope: &Envelope, priority: u8) -> Result<()> {
        let message = StoredMessage::from_envelope(envelope.clone());
        self.broker.put(queue, message, priority, false);
        Ok(())
    }

    async fn put_owned(&self, queue: &str, envelope: Envelope, priority: u8) -> Result<()> {
        let message = StoredMessage::from_envelope(envelope);
        self.broker.put(queue, message, priority, false);
        Ok(())
    }

    async fn put_message(&self, queue: &str, message: StoredMessage, priority: u8) -> Result<()> {
        // Kept as the channel handed it over: no envelope is built.
        self.broker.put(queue, message, priority, false);
        Ok(())
    }

    /// Kept in process until due (lost with the process, as every
    /// message here).
    async fn put_delayed(
        &self,
        queue: &str,
        message: StoredMessage,
        priority: u8,
        not_before_ms: u64,
    ) -> Result<()> {
        self.broker
            .put_delayed(queue, message, priority, not_before_ms);
        Ok(())
    }

    async fn put_messages(&self, queue: &str, messages: Vec<(StoredMessage, u8)>) -> Result<()> {
        self.broker.put_all(queue, messages);
        Ok(())
    }

    async fn fetch(&self, queues: &[String], wait: Duration) -> Result<Option<Fetched>> {
        Ok(self.broker.fetch(queues, wait, 1).await.pop())
    }

    async fn fetch_batch(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        Ok(self.broker.fetch(queues, wait, max).await)
    }

    async fn ack(&self, _queue: &str, _receipt: &Receipt) -> Result<()> {
        // A fetched message lives only in the channel that took it (the
        // channel puts it back on requeue or close): nothing to forget here.
        Ok(())
    }

    fn ack_batch_size(&self) -> usize {
        // Acking costs nothing here: nothing to coalesce.
        1
    }

    fn acks_are_local(&self) -> bool {
        // A fetched message lives only in the channel that took it.
        true
    }

    async fn requeue(&self, queue: &str, _receipt: &Receipt, envelope: &Envelope) -> Result<()> {
        let message = StoredMessage::from_envelope(envelope.clone());
        let priority = message.priority();
        self.broker.put(queue, message, priority, true);
        Ok(())
    }

    async fn requeue_message(
        &self,
        queue: &str,
        _receipt: &Receipt,
        message: StoredMessage,
    ) -> Result<()> {
        let priority = message.priority();
        self.broker.put(queue, message, priority, true);
        Ok(())
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.broker.declare_exchange(exchange);
        Ok(())
    }

    async fn exchange(&self, name: &str) -> Result<Option<Exchange>> {
        Ok(self.broker.exchange(name))
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.broker.delete_exchange(name);
        Ok(())
    }

    async fn bind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        self.broker.bind(exchange, binding);
        Ok(())
    }

    async fn unbind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        self.broker.unbind(exchange, binding);
        Ok(())
    }

    async fn bindings(&self, exchange: &str) -> Result<Vec<QueueBinding>> {
        Ok(self.broker.bindings(exchange))
    }

    fn polling_interval(&self) -> Duration {
        self.polling_interval
    }
}
