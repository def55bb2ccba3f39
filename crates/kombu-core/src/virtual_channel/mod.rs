//! AMQP emulated on a store: a virtual transport writes a
//! [`VirtualBackend`] and gets a full [`Channel`] from [`VirtualChannel`]
//! and a [`Transport`] from [`VirtualTransport`].
//!
//! The channel does the exchange routing (direct, topic, fanout, headers),
//! QoS/prefetch, unacked tracking and redelivery (with the redelivered flag),
//! per-message and per-queue TTL, max length (drop oldest) and
//! dead-lettering. Unroutable messages are dropped (counted and logged) or,
//! with the `unroutable_queue` option, kept in that queue.

mod acks;
mod admit;
mod backend;
mod consume;
mod convert;
mod factory;
mod guarded;
mod publish_many;
mod stored;
mod stored_json;
mod unacked;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, Notify};

use acks::AckBatcher;
use admit::Admitted;
pub use backend::{Fetched, FetchedBody, Receipt, StopWaiting, VirtualBackend};
pub use convert::new_delivery_tag;
pub use factory::VirtualFactory;
pub use guarded::DEFAULT_OPERATION_TIMEOUT;
use guarded::{Guarded, Liveness};
pub use stored::StoredMessage;

use crate::entity::{Binding, Exchange, ExchangeType, Queue};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Delivery, RawMessage};
use crate::routing::{route, QueueBinding};
use crate::transport::{Capabilities, Channel, DeliveryStream, QueueInfo, Transport};
use convert::now_ms;
use unacked::{Held, Unacked, UnackedTable};

/// Options of the virtual channel, shared by every virtual transport.
///
/// ```
/// use kombu_core::spi::VirtualOptions;
/// let opts = VirtualOptions::default().unroutable_queue("lost");
/// assert_eq!(opts.unroutable_queue.as_deref(), Some("lost"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VirtualOptions {
    /// Queue that receives messages no binding matched (default: drop them).
    pub unroutable_queue: Option<String>,
    /// How long one backend call may take (the `operation_timeout`
    /// transport option, in seconds); `None`: the backend's own
    /// [`operation_timeout`](VirtualBackend::operation_timeout) or
    /// [`DEFAULT_OPERATION_TIMEOUT`].
    pub operation_timeout: Option<Duration>,
    /// The transport's name, for errors and logs.
    pub transport_name: &'static str,
    /// Keep what would be dropped for good (an unreadable stored value, a
    /// message rejected or over its delivery limit, without a dead-letter
    /// exchange) in the queue's quarantine, `<queue>.quarantine` (the
    /// `quarantine` transport option; default true).
    pub quarantine: bool,
}

/// The quarantine queue of `queue`: `<queue>.quarantine`.
///
/// ```
/// assert_eq!(kombu_core::quarantine_of("tasks"), "tasks.quarantine");
/// ```
pub fn quarantine_of(queue: &str) -> String {
    format!("{queue}{QUARANTINE_SUFFIX}")
}

/// What a quarantine queue's name ends with.
pub const QUARANTINE_SUFFIX: &str = ".quarantine";

impl Default for VirtualOptions {
    fn default() -> Self {
        VirtualOptions {
            unroutable_queue: None,
            operation_timeout: None,
            transport_name: "virtual",
            quarantine: true,
        }
    }
}

/// Transport options every virtual transport understands (on top of its own).
pub const VIRTUAL_OPTIONS: &[&str] = &["unroutable_queue", "operation_timeout", "quarantine"];

impl VirtualOptions {
    /// Keep unroutable messages in `queue` instead of dropping them.
    pub fn unroutable_queue(mut self, queue: impl Into<String>) -> Self {
        self.unroutable_queue = Some(queue.into());
        self
    }

    /// Bound every backend call by `timeout`.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = Some(timeout);
        self
    }

    /// Name the transport in errors and logs.
    pub fn transport_name(mut self, name: &'static str) -> Self {
        self.transport_name = name;
        self
    }

    /// Read the channel's options from transport options
    /// (`unroutable_queue`, `operation_timeout`).
    pub fn from_transport_options(options: &crate::options::TransportOptions) -> Result<Self> {
        Ok(VirtualOptions {
            unroutable_queue: options.get_str("unroutable_queue")?.map(str::to_owned),
            operation_timeout: options.get_duration_secs("operation_timeout")?,
            quarantine: options.get_bool("quarantine")?.unwrap_or(true),
            ..VirtualOptions::default()
        })
    }
}

/// A [`Transport`] over a [`VirtualBackend`]: every channel is a
/// [`VirtualChannel`] sharing the backend. It owns the connection's
/// liveness: a heartbeat runs [`VirtualBackend::ping`], every backend call
/// is bounded by the operation timeout, and a connection error from either
/// marks the connection lost ([`Transport::is_connected`] turns false, new
/// channels fail with [`ErrorKind::ConnectionLost`]), so the
/// [`Connection`](crate::Connection) replaces it.
///
/// ```
/// # use kombu_core::spi::{VirtualBackend, VirtualOptions, VirtualTransport};
/// # fn make<B: VirtualBackend>(backend: B) {
/// let transport = VirtualTransport::new(backend, VirtualOptions::default());
/// # let _ = transport; }
/// ```
pub struct VirtualTransport<B: VirtualBackend> {
    backend: Arc<B>,
    guarded: Arc<Guarded<B>>,
    /// The acks queued by every channel of the connection.
    acks: Arc<AckBatcher<Guarded<B>>>,
    liveness: Arc<Liveness>,
    options: VirtualOptions,
    unroutable: Arc<AtomicU64>,
}

impl<B: VirtualBackend> VirtualTransport<B> {
    /// A transport over `backend`.
    pub fn new(backend: B, options: VirtualOptions) -> Self {
        let backend = Arc::new(backend);
        let liveness = Arc::new(Liveness::default());
        let timeout = options
            .operation_timeout
            .or_else(|| backend.operation_timeout())
            .unwrap_or(DEFAULT_OPERATION_TIMEOUT);
        let guarded = Arc::new(Guarded::new(
            backend.clone(),
            liveness.clone(),
            options.transport_name,
            timeout,
        ));
        VirtualTransport {
            backend,
            acks: AckBatcher::new(guarded.clone()),
            guarded,
            liveness,
            options,
            unroutable: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Messages dropped (or diverted) because no binding matched them.
    pub fn unroutable_count(&self) -> u64 {
        self.unroutable.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl<B: VirtualBackend> Transport for VirtualTransport<B> {
    fn capabilities(&self) -> Capabilities {
        // The quarantine is the virtual channel's own.
        self.backend
            .capabilities()
            .with_quarantine(self.options.quarantine)
    }

    async fn create_channel(&self) -> Result<Arc<dyn Channel>> {
        self.liveness.check(self.options.transport_name)?;
        let channel = VirtualChannel::with_parts(
            self.guarded.clone(),
            self.options.clone(),
            self.unroutable.clone(),
            self.acks.clone(),
        );
        Ok(Arc::new(channel))
    }

    fn is_connected(&self) -> bool {
        self.liveness.is_alive()
    }

    async fn heartbeat_check(&self) -> Result<()> {
        self.guarded.ping().await
    }

    fn extension(&self) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        Some(self.backend.clone())
    }

    async fn close(&self) -> Result<()> {
        if self.liveness.is_alive() {
            // Queued acks first, while the connection still takes them.
            if let Err(err) = self.acks.flush(ACK_FLUSH_WAIT).await {
                tracing::warn!(error = %err, "closing: acks could not be sent; those messages will be delivered again");
            }
        }
        if self.liveness.close() {
            self.guarded.close().await?;
        }
        Ok(())
    }
}

/// A registered consumer.
struct ConsumerEntry {
    tag: String,
    queue: String,
    no_ack: bool,
    sender: mpsc::Sender<consume::Batch>,
}

#[derive(Default)]
struct Inner {
    unacked: UnackedTable,
    /// The next delivery tag (tags start at 1).
    next_tag: u64,
    prefetch: u16,
    consumers: Vec<ConsumerEntry>,
    poller_running: bool,
    rotation: usize,
    declarations: HashMap<String, Option<Arc<Queue>>>,
}

/// Longest closing waits for ack flushes under way.
const ACK_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Shared state of one channel (the consume loop holds a weak reference).
pub(crate) struct State<B: VirtualBackend> {
    backend: Arc<B>,
    options: VirtualOptions,
    acks: Arc<AckBatcher<B>>,
    inner: Mutex<Inner>,
    /// Woken when an ack, a reject or a QoS change frees prefetch room, or
    /// when consumers change.
    wake_poller: Arc<Notify>,
    /// Raised on close: the consume loop's waiting fetches stop waiting.
    stop_waiting: Arc<StopWaiting>,
    closed: AtomicBool,
    unroutable: Arc<AtomicU64>,
}

/// The [`Channel`] of every virtual transport.
pub struct VirtualChannel<B: VirtualBackend> {
    state: Arc<State<B>>,
}

impl<B: VirtualBackend> VirtualChannel<B> {
    /// A channel over `backend`.
    pub fn new(backend: Arc<B>, options: VirtualOptions) -> Self {
        let acks = AckBatcher::new(backend.clone());
        Self::with_parts(backend, options, Arc::new(AtomicU64::new(0)), acks)
    }

    fn with_parts(
        backend: Arc<B>,
        options: VirtualOptions,
        unroutable: Arc<AtomicU64>,
        acks: Arc<AckBatcher<B>>,
    ) -> Self {
        VirtualChannel {
            state: Arc::new(State {
                backend,
                options,
                acks,
                inner: Mutex::new(Inner {
                    next_tag: 1,
                    ..Inner::default()
                }),
                wake_poller: Arc::new(Notify::new()),
                stop_waiting: Arc::new(StopWaiting::default()),
                closed: AtomicBool::new(false),
                unroutable,
            }),
        }
    }

    /// Messages this channel's transport dropped or diverted as unroutable.
    pub fn unroutable_count(&self) -> u64 {
        self.state.unroutable.load(Ordering::Relaxed)
    }
}

impl<B: VirtualBackend> Drop for VirtualChannel<B> {
    fn drop(&mut self) {
        if self.state.closed.load(Ordering::Acquire) {
            return;
        }
        let state = self.state.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(err) = state.close().await {
                        tracing::warn!(error = %err, "closing a dropped channel failed");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(
                    "virtual channel dropped outside a runtime: its unacked messages return \
                     only when the transport restores them"
                );
            }
        }
    }
}

impl<B: VirtualBackend> State<B> {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::new(
                ErrorKind::ChannelClosed,
                "the channel is closed",
            ))
        } else {
            Ok(())
        }
    }

    async fn declaration(&self, queue: &str) -> Result<Option<Arc<Queue>>> {
        if let Some(found) = self.lock().declarations.get(queue) {
            return Ok(found.clone());
        }
        let found = self.backend.queue_declaration(queue).await?.map(Arc::new);
        self.lock()
            .declarations
            .insert(queue.to_owned(), found.clone());
        Ok(found)
    }

    /// Route `message` through `exchange` and store a copy in each queue.
    async fn route_and_put(
        &self,
        exchange: &str,
        routing_key: &str,
        message: StoredMessage,
        priority: u8,
        mandatory: bool,
    ) -> Result<()> {
        if exchange.is_empty() {
            // The default exchange routes to the queue named by the key.
            return self.put_in_queue(routing_key, message, priority).await;
        }
        let queues: Vec<String> = {
            let kind = self
                .backend
                .exchange(exchange)
                .await?
                .map(|e| e.kind)
                .unwrap_or(ExchangeType::Direct);
            // A delayed fanout message goes to the bound queues' storage
            // (PUB/SUB has no "later").
            if kind == ExchangeType::Fanout
                && message.not_before_ms().is_none()
                && self
                    .backend
                    .put_fanout(exchange, routing_key, &message.to_envelope())
                    .await?
            {
                return Ok(());
            }
            let bindings = self.backend.bindings(exchange).await?;
            route(kind, &bindings, routing_key, message.headers())
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        if queues.is_empty() {
            // Boxed (as below): rare paths stay out of every publish's future.
            return Box::pin(self.unroutable(exchange, routing_key, message, priority, mandatory))
                .await;
        }
        let Some((last, others)) = queues.split_last() else {
            return Ok(());
        };
        for queue in others {
            self.put_in_queue(queue, message.clone(), priority).await?;
        }
        self.put_in_queue(last, message, priority).await
    }

    async fn unroutable(
        &self,
        exchange: &str,
        routing_key: &str,
        message: StoredMessage,
        priority: u8,
        mandatory: bool,
    ) -> Result<()> {
        self.unroutable.fetch_add(1, Ordering::Relaxed);
        if mandatory {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "message to exchange {exchange:?} with routing key {routing_key:?} \
                     matched no queue (mandatory)"
                ),
            ));
        }
        match &self.options.unroutable_queue {
            Some(queue) => {
                tracing::warn!(exchange, routing_key, queue = %queue, "unroutable message kept");
                self.backend.put_message(queue, message, priority).await
            }
            None => {
                tracing::warn!(exchange, routing_key, "unroutable message dropped");
                Ok(())
            }
        }
    }

    async fn put_in_queue(
        &self,
        queue: &str,
        mut message: StoredMessage,
        priority: u8,
    ) -> Result<()> {
        let declaration = self.declaration(queue).await?;
        let queue_ttl = declaration.as_ref().and_then(|q| q.message_ttl);
        let now = now_ms();
        if queue_ttl.is_some() || message.has_expiration() {
            message.stamp_published(now);
        }
        match message.not_before_ms() {
            Some(due) if due > now => {
                message.clear_not_before();
                self.backend
                    .put_delayed(queue, message, priority, due)
                    .await?;
            }
            _ => self.backend.put_message(queue, message, priority).await?,
        }
        if let Some(max) = declaration.as_ref().and_then(|q| q.max_length) {
            Box::pin(self.enforce_max_length(queue, max)).await?;
        }
        Ok(())
    }

    /// Drop the oldest messages (dead-lettering them) until `queue` holds `max`.
    async fn enforce_max_length(&self, queue: &str, max: u64) -> Result<()> {
        let names = [queue.to_owned()];
        while self.backend.size(queue).await? > max {
            let Some(fetched) = self.backend.fetch(&names, Duration::ZERO).await? else {
                break;
            };
            let Fetched { receipt, body, .. } = fetched;
            if let Some(item) = Unacked::fetched(queue.to_owned(), receipt.clone(), body) {
                self.dead_letter(queue, item.held.into_stored(), "maxlen")
                    .await?;
            }
            self.backend.ack(queue, &receipt).await?;
        }
        Ok(())
    }

    /// Send `message` to `queue`'s dead-letter exchange, if it has one.
    /// (Boxed: dead-lettering routes, and routing may dead-letter again.)
    fn dead_letter<'a>(
        &'a self,
        queue: &'a str,
        message: StoredMessage,
        reason: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(self.dead_letter_inner(queue, message, reason))
    }

    async fn dead_letter_inner(
        &self,
        queue: &str,
        mut message: StoredMessage,
        reason: &str,
    ) -> Result<()> {
        let declaration = self.declaration(queue).await?;
        let Some(dlx) = declaration
            .as_ref()
            .and_then(|d| d.dead_letter_exchange.clone())
        else {
            return self.quarantine_or_drop(queue, message, reason).await;
        };
        let declaration = declaration.expect("a dead-letter exchange comes from a declaration");
        let routing_key = declaration
            .dead_letter_routing_key
            .clone()
            .unwrap_or_else(|| message.routing_key().to_owned());
        send_on(&mut message, queue, reason, &dlx, &routing_key);
        let priority = message.priority();
        tracing::debug!(queue, reason, exchange = %dlx, "message dead-lettered");
        self.route_and_put(&dlx, &routing_key, message, priority, false)
            .await
    }

    /// No dead-letter exchange: a message rejected (or unreadable) or over
    /// its delivery limit goes to the queue's quarantine, unless the
    /// `quarantine` option is off or the queue is a quarantine itself;
    /// an expired or overflowing one is dropped, as RabbitMQ does.
    async fn quarantine_or_drop(
        &self,
        queue: &str,
        mut message: StoredMessage,
        reason: &str,
    ) -> Result<()> {
        let keep = self.options.quarantine
            && matches!(reason, "rejected" | "delivery_limit")
            && !queue.ends_with(QUARANTINE_SUFFIX);
        if !keep {
            tracing::debug!(queue, reason, "message dropped (no dead-letter exchange)");
            return Ok(());
        }
        let target = quarantine_of(queue);
        send_on(&mut message, queue, reason, "", &target);
        let declared = self.lock().declarations.contains_key(&target);
        if !declared {
            self.backend.new_queue(&Queue::new(&target)).await?;
            self.lock().declarations.insert(target.clone(), None);
        }
        tracing::warn!(queue, reason, quarantine = %target, "message quarantined (no dead-letter exchange)");
        let priority = message.priority();
        self.put_in_queue(&target, message, priority).await
    }

    /// True when a message published at `published` (ms) with
    /// `message_ttl` has outlived it or its queue's TTL.
    fn expired(
        &self,
        published: Option<u64>,
        message_ttl: Option<Duration>,
        declaration: Option<&Queue>,
    ) -> bool {
        let Some(published) = published else {
            return false;
        };
        let queue_ttl = declaration.and_then(|q| q.message_ttl);
        let ttl = match (message_ttl, queue_ttl) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return false,
        };
        now_ms() >= published.saturating_add(ttl.as_millis() as u64)
    }

    /// Put a reserved message back (redelivered unless it was never handed out).
    async fn release(&self, item: Unacked, redelivered: bool) -> Result<()> {
        let Unacked {
            queue,
            receipt,
            held,
        } = item;
        // A queue with a delivery limit counts returns in the message.
        let counted = redelivered
            && self
                .known_declaration(&queue)
                .flatten()
                .is_some_and(|q| q.arguments.contains_key("x-delivery-limit"));
        match held {
            Held::Envelope { envelope, body } => {
                let mut envelope = Held::whole_envelope(envelope, body);
                if redelivered {
                    envelope.mark_redelivered();
                }
                if counted {
                    envelope.count_return();
                }
                self.backend.requeue(&queue, &receipt, &envelope).await
            }
            Held::Message(mut message) => {
                if redelivered {
                    message.mark_redelivered();
                }
                if counted {
                    message.count_return();
                }
                self.backend
                    .requeue_message(&queue, &receipt, message)
                    .await
            }
        }
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.lock().consumers.clear();
        self.stop_waiting.raise();
        self.wake_poller.notify_one();
        // Let a fetch that is under way finish: what it took goes back to
        // its queue now rather than when the reservation times out (a lease,
        // a visibility timeout), which matters when the process exits next.
        let deadline = tokio::time::Instant::now() + self.backend.close_wait();
        while self.lock().poller_running && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let unacked = self.lock().unacked.take_all();
        let mut first_error = None;
        // The acks made on it (queued with the other channels' of the
        // connection) go out now.
        if let Err(err) = self.acks.flush(ACK_FLUSH_WAIT).await {
            tracing::warn!(error = %err, "closing: acks could not be sent; those messages will be delivered again");
            first_error.get_or_insert(err);
        }
        for item in unacked {
            if let Err(err) = self.release(item, true).await {
                tracing::warn!(error = %err, "could not return an unacked message");
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Record a dead-lettering of a message from `queue` (published to
/// `exchange` with routing key `rk`) for `reason` (`rejected`, `expired`,
/// `maxlen`, `delivery_limit`) in its `x-death` header, as RabbitMQ does:
/// newest first, a repeat of the same queue and reason counted up, and
/// `x-first-death-reason`/`-queue` kept from the first.
///
/// ```
/// let mut headers = serde_json::Map::new();
/// kombu_core::add_x_death(&mut headers, "q", "rejected", "ex", "rk");
/// kombu_core::add_x_death(&mut headers, "q", "rejected", "ex", "rk");
/// assert_eq!(headers["x-death"][0]["count"], 2);
/// assert_eq!(headers["x-first-death-queue"], "q");
/// ```
pub fn add_x_death(
    headers: &mut Map<String, Value>,
    queue: &str,
    reason: &str,
    exchange: &str,
    rk: &str,
) {
    let deaths = headers
        .entry("x-death")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !deaths.is_array() {
        *deaths = Value::Array(Vec::new());
    }
    let list = deaths.as_array_mut().expect("x-death is an array");
    let same = list.iter_mut().find(|d| {
        d.get("queue").and_then(Value::as_str) == Some(queue)
            && d.get("reason").and_then(Value::as_str) == Some(reason)
    });
    if let Some(Value::Object(entry)) = same {
        let count = entry.get("count").and_then(Value::as_u64).unwrap_or(0) + 1;
        entry.insert("count".into(), count.into());
        return;
    }
    let mut entry = Map::new();
    entry.insert("count".into(), 1.into());
    entry.insert("reason".into(), reason.into());
    entry.insert("queue".into(), queue.into());
    entry.insert("time".into(), (now_ms() / 1000).into());
    entry.insert("exchange".into(), exchange.into());
    entry.insert("routing-keys".into(), Value::Array(vec![rk.into()]));
    list.insert(0, Value::Object(entry));
    headers
        .entry("x-first-death-reason")
        .or_insert_with(|| reason.into());
    headers
        .entry("x-first-death-queue")
        .or_insert_with(|| queue.into());
}

#[async_trait]
impl<B: VirtualBackend> Channel for VirtualChannel<B> {
    async fn exchange_declare(&self, exchange: &Exchange) -> Result<()> {
        self.state.ensure_open()?;
        if exchange.is_default() {
            return Ok(());
        }
        let caps = self.state.backend.capabilities();
        if !caps.supports(exchange.kind) {
            return Err(Error::unsupported(format!(
                "{} exchanges are not supported by this transport",
                exchange.kind
            )));
        }
        let existing = self.state.backend.exchange(&exchange.name).await?;
        if exchange.passive {
            return match existing {
                Some(_) => Ok(()),
                None => Err(Error::new(
                    ErrorKind::NotFound,
                    format!("exchange {:?} does not exist", exchange.name),
                )),
            };
        }
        if let Some(existing) = existing {
            if existing.kind != exchange.kind {
                return Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    format!(
                        "exchange {:?} exists with type {}, not {}",
                        exchange.name, existing.kind, exchange.kind
                    ),
                ));
            }
        }
        self.state.backend.declare_exchange(exchange).await
    }

    async fn exchange_delete(&self, name: &str) -> Result<()> {
        self.state.ensure_open()?;
        self.state.backend.delete_exchange(name).await
    }

    async fn queue_declare(&self, queue: &Queue) -> Result<QueueInfo> {
        self.state.ensure_open()?;
        if queue.arguments.contains_key("x-delivery-limit")
            && !self.state.backend.capabilities().delivery_limit
        {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "queue {:?}: this transport cannot count deliveries yet, so it cannot \
                     honour x-delivery-limit",
                    queue.name
                ),
            ));
        }
        let exists = self.state.backend.has_queue(&queue.name).await?;
        if queue.passive && !exists {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("queue {:?} does not exist", queue.name),
            ));
        }
        if !queue.passive {
            self.state.backend.new_queue(queue).await?;
            self.state
                .lock()
                .declarations
                .insert(queue.name.clone(), Some(Arc::new(queue.clone())));
        }
        let size = self.state.backend.size(&queue.name).await?;
        Ok(QueueInfo::new(queue.name.clone(), size, 0))
    }

    async fn queue_bind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.state.ensure_open()?;
        if binding.exchange.is_empty() {
            return Ok(());
        }
        let entry = QueueBinding::new(queue, binding.routing_key.clone())
            .with_arguments(binding.arguments.clone());
        self.state.backend.bind(&binding.exchange, &entry).await
    }

    async fn queue_unbind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.state.ensure_open()?;
        let entry = QueueBinding::new(queue, binding.routing_key.clone())
            .with_arguments(binding.arguments.clone());
        self.state.backend.unbind(&binding.exchange, &entry).await
    }

    async fn queue_delete(&self, name: &str) -> Result<u64> {
        self.state.ensure_open()?;
        let size = self.state.backend.size(name).await?;
        self.state.backend.delete_queue(name).await?;
        self.state.lock().declarations.remove(name);
        Ok(size)
    }

    async fn queue_purge(&self, name: &str) -> Result<u64> {
        self.state.ensure_open()?;
        self.state.backend.purge(name).await
    }

    async fn queue_size(&self, name: &str) -> Result<u64> {
        self.state.ensure_open()?;
        self.state.backend.size(name).await
    }

    async fn basic_publish(
        &self,
        message: RawMessage,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Result<()> {
        self.state.ensure_open()?;
        let priority = message.properties.priority.unwrap_or(0);
        let message = StoredMessage::new(message, exchange, routing_key);
        self.state
            .route_and_put(exchange, routing_key, message, priority, mandatory)
            .await
    }

    async fn basic_publish_many(
        &self,
        messages: Vec<RawMessage>,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
    ) -> Vec<Result<()>> {
        if let Err(err) = self.state.ensure_open() {
            return messages
                .iter()
                .map(|_| Err(publish_many::copy_error(&err)))
                .collect();
        }
        if messages.iter().any(|m| m.not_before.is_some()) {
            // Delayed messages take the one-by-one path (rare in batches).
            let mut results = Vec::with_capacity(messages.len());
            for message in messages {
                results.push(
                    self.basic_publish(message, exchange, routing_key, mandatory)
                        .await,
                );
            }
            return results;
        }
        let messages = messages
            .into_iter()
            .map(|message| {
                let priority = message.properties.priority.unwrap_or(0);
                (StoredMessage::new(message, exchange, routing_key), priority)
            })
            .collect();
        self.state
            .route_and_put_many(exchange, routing_key, messages, mandatory)
            .await
    }

    async fn basic_get(&self, queue: &str, no_ack: bool) -> Result<Option<Delivery>> {
        self.state.ensure_open()?;
        let names = [queue.to_owned()];
        loop {
            let Some(fetched) = self.state.backend.fetch(&names, Duration::ZERO).await? else {
                return Ok(None);
            };
            match self.state.admit(fetched, no_ack, None).await? {
                Admitted::Deliver(delivery) => return Ok(Some(*delivery)),
                Admitted::Skipped => continue,
                Admitted::Corrupt(error) => return Err(error),
            }
        }
    }

    async fn basic_consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        no_ack: bool,
    ) -> Result<DeliveryStream> {
        self.state.ensure_open()?;
        // Batches of at most the prefetch window: a few suffice.
        let (sender, receiver) = mpsc::channel(16);
        let start_poller = {
            let mut inner = self.state.lock();
            if inner.consumers.iter().any(|c| c.tag == consumer_tag) {
                return Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    format!("consumer tag {consumer_tag:?} is already in use on this channel"),
                ));
            }
            inner.consumers.push(ConsumerEntry {
                tag: consumer_tag.to_owned(),
                queue: queue.to_owned(),
                no_ack,
                sender,
            });
            !std::mem::replace(&mut inner.poller_running, true)
        };
        if start_poller {
            consume::spawn_poller(Arc::downgrade(&self.state));
        } else {
            self.state.wake_poller.notify_one();
        }
        Ok(Box::pin(futures::stream::unfold(
            (receiver, std::collections::VecDeque::new()),
            |(mut receiver, mut ready)| async move {
                loop {
                    if let Some(item) = ready.pop_front() {
                        return Some((item, (receiver, ready)));
                    }
                    ready.extend(receiver.recv().await?);
                }
            },
        )))
    }

    async fn basic_cancel(&self, consumer_tag: &str) -> Result<()> {
        self.state
            .lock()
            .consumers
            .retain(|c| c.tag != consumer_tag);
        self.state.wake_poller.notify_one();
        Ok(())
    }

    async fn extend_lease(&self, delivery_tag: u64, by: Duration) -> Result<()> {
        self.state.ensure_open()?;
        if self.state.backend.acks_are_local() {
            // Held by this channel until it gives it back: nothing to do.
            return if self.state.lock().unacked.contains(delivery_tag) {
                Ok(())
            } else {
                Err(unknown_tag(delivery_tag))
            };
        }
        let (queue, receipt) = {
            let inner = self.state.lock();
            let item = inner
                .unacked
                .get(delivery_tag)
                .ok_or_else(|| unknown_tag(delivery_tag))?;
            (item.queue.clone(), item.receipt.clone())
        };
        self.state.backend.extend_lease(&queue, &receipt, by).await
    }

    fn lease_duration(&self) -> Option<Duration> {
        self.state.backend.lease_duration()
    }

    async fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<()> {
        self.state.ensure_open()?;
        let local = self.state.backend.acks_are_local();
        if !multiple {
            let (item, batch, wake) = {
                let mut inner = self.state.lock();
                let item = take_one_unacked(&mut inner, delivery_tag)?;
                let after = inner.unacked.len();
                let wake = consume::room_reached(inner.prefetch, after + 1, after);
                (item, self.state.acks.batch_for(inner.prefetch), wake)
            };
            if wake {
                self.state.wake_poller.notify_one();
            }
            if local {
                return Ok(());
            }
            let ack = std::iter::once((item.queue, item.receipt));
            return self.state.acks.ack(ack, batch).await;
        }
        let (items, batch, wake) = {
            let mut inner = self.state.lock();
            let items = take_unacked(&mut inner, delivery_tag, multiple)?;
            let after = inner.unacked.len();
            let wake = consume::room_reached(inner.prefetch, after + items.len(), after);
            (items, self.state.acks.batch_for(inner.prefetch), wake)
        };
        if wake {
            self.state.wake_poller.notify_one();
        }
        if local {
            return Ok(());
        }
        let acks = items.into_iter().map(|item| (item.queue, item.receipt));
        self.state.acks.ack(acks, batch).await
    }

    async fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<()> {
        self.state.ensure_open()?;
        let items = take_unacked(&mut self.state.lock(), delivery_tag, false)?;
        self.state.wake_poller.notify_one();
        for item in items {
            if requeue {
                self.state.release(item, true).await?;
            } else {
                let Unacked {
                    queue,
                    receipt,
                    held,
                } = item;
                // The backend gets the message as it stored it.
                let (message, envelope) = match held {
                    Held::Envelope { envelope, body } => {
                        let envelope = Held::whole_envelope(envelope, body);
                        (StoredMessage::from_envelope(envelope.clone()), envelope)
                    }
                    Held::Message(message) => {
                        let envelope = message.to_envelope();
                        (message, envelope)
                    }
                };
                self.state.dead_letter(&queue, message, "rejected").await?;
                self.state
                    .backend
                    .discard(&queue, &receipt, &envelope)
                    .await?;
            }
        }
        Ok(())
    }

    async fn basic_qos(&self, prefetch_count: u16) -> Result<()> {
        self.state.lock().prefetch = prefetch_count;
        self.state.wake_poller.notify_one();
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.state.close().await
    }

    fn is_open(&self) -> bool {
        !self.state.closed.load(Ordering::Acquire) && self.state.backend.is_alive()
    }
}

fn unknown_tag(delivery_tag: u64) -> Error {
    Error::new(
        ErrorKind::PreconditionFailed,
        format!("unknown delivery tag {delivery_tag} (already acked, or from another channel)"),
    )
}

/// Ready a message leaving `queue` for `reason` to go to `exchange` with
/// `routing_key`: its `x-death` entry added, its expiry cleared.
fn send_on(
    message: &mut StoredMessage,
    queue: &str,
    reason: &str,
    exchange: &str,
    routing_key: &str,
) {
    let (from_exchange, published_key) = (
        message.exchange().to_owned(),
        message.routing_key().to_owned(),
    );
    add_x_death(
        message.headers_mut(),
        queue,
        reason,
        &from_exchange,
        &published_key,
    );
    message.clear_expiry();
    message.set_destination(exchange, routing_key);
}

fn take_one_unacked(inner: &mut Inner, delivery_tag: u64) -> Result<Unacked> {
    inner
        .unacked
        .remove(delivery_tag)
        .ok_or_else(|| unknown_tag(delivery_tag))
}

fn take_unacked(inner: &mut Inner, delivery_tag: u64, multiple: bool) -> Result<Vec<Unacked>> {
    if !inner.unacked.contains(delivery_tag) {
        return Err(unknown_tag(delivery_tag));
    }
    if multiple {
        Ok(inner.unacked.remove_up_to(delivery_tag))
    } else {
        Ok(inner.unacked.remove(delivery_tag).into_iter().collect())
    }
}
