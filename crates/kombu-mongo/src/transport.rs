//! [`MongoTransport`]: the virtual channel over [`MongoBackend`], with a
//! heartbeat, and every operation bounded in time.
//!
//! The Rust driver has no socket timeout: an operation on a server that
//! stopped answering (hung, SIGSTOPped, cut off) waits until the driver's
//! own monitoring gives the server up, if ever. So each backend operation
//! runs under `socket_timeout` (a fetch under its wait plus that), and a
//! late answer is a [`ErrorKind::Timeout`] error.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kombu_core::routing::QueueBinding;
use kombu_core::virtual_channel::{
    Fetched, Receipt, VirtualBackend, VirtualOptions, VirtualTransport,
};
use kombu_core::{
    async_trait, Capabilities, Channel, Envelope, Error, ErrorKind, Exchange, Queue, Result,
    Transport,
};

use crate::backend::MongoBackend;

/// The transport `mongodb://` connections get.
///
/// [`Transport::heartbeat_check`] runs `ping` within the `socket_timeout`
/// transport option (default 10 s); when it fails,
/// [`Transport::is_connected`] turns false and the
/// [`Connection`](kombu_core::Connection) connects afresh on its next use.
pub struct MongoTransport {
    inner: VirtualTransport<Bounded>,
    dead: AtomicBool,
}

impl MongoTransport {
    pub(crate) fn new(backend: MongoBackend, options: VirtualOptions) -> Self {
        let limit = backend.socket_timeout();
        let bounded = Bounded {
            backend: Arc::new(backend),
            limit,
        };
        MongoTransport {
            inner: VirtualTransport::new(bounded, options),
            dead: AtomicBool::new(false),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<MongoBackend> {
        &self.inner.backend().backend
    }
}

#[async_trait]
impl Transport for MongoTransport {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn create_channel(&self) -> Result<Arc<dyn Channel>> {
        self.inner.create_channel().await
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected() && !self.dead.load(Ordering::Acquire)
    }

    async fn heartbeat_check(&self) -> Result<()> {
        if !self.inner.is_connected() {
            return Err(Error::new(
                ErrorKind::ConnectionLost,
                "the mongodb transport is closed",
            ));
        }
        let result = self.backend().ping().await.map_err(|err| {
            if err.is_connection_error() {
                err
            } else {
                Error::new(
                    ErrorKind::ConnectionLost,
                    format!("mongodb heartbeat failed: {err}"),
                )
            }
        });
        if let Err(err) = &result {
            tracing::warn!(error = %err, "mongodb heartbeat failed");
            self.dead.store(true, Ordering::Release);
        }
        result
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// [`MongoBackend`] with each operation bounded by `limit`.
pub(crate) struct Bounded {
    backend: Arc<MongoBackend>,
    limit: Duration,
}

impl Bounded {
    async fn within<T>(
        &self,
        what: &str,
        extra: Duration,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.limit + extra;
        tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "mongodb: {what}: no answer within {:.1} s",
                    limit.as_secs_f64()
                ),
            ))
        })
    }
}

#[async_trait]
impl VirtualBackend for Bounded {
    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }
    async fn new_queue(&self, queue: &Queue) -> Result<()> {
        let work = self.backend.new_queue(queue);
        self.within("declaring a queue", Duration::ZERO, work).await
    }
    async fn queue_declaration(&self, queue: &str) -> Result<Option<Queue>> {
        let work = self.backend.queue_declaration(queue);
        self.within("reading a queue", Duration::ZERO, work).await
    }
    async fn has_queue(&self, queue: &str) -> Result<bool> {
        let work = self.backend.has_queue(queue);
        self.within("looking up a queue", Duration::ZERO, work)
            .await
    }
    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let work = self.backend.delete_queue(queue);
        self.within("deleting a queue", Duration::ZERO, work).await
    }
    async fn purge(&self, queue: &str) -> Result<u64> {
        let work = self.backend.purge(queue);
        self.within("purging a queue", Duration::ZERO, work).await
    }
    async fn size(&self, queue: &str) -> Result<u64> {
        let work = self.backend.size(queue);
        self.within("counting messages", Duration::ZERO, work).await
    }
    async fn put(&self, queue: &str, envelope: &Envelope, priority: u8) -> Result<()> {
        let work = self.backend.put(queue, envelope, priority);
        self.within("storing a message", Duration::ZERO, work).await
    }
    async fn fetch(&self, queues: &[String], wait: Duration) -> Result<Option<Fetched>> {
        let work = self.backend.fetch(queues, wait);
        self.within("fetching a message", wait, work).await
    }
    async fn fetch_batch(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        let work = self.backend.fetch_batch(queues, wait, max);
        self.within("fetching messages", wait, work).await
    }
    async fn ack(&self, fetched_from: &str, receipt: &Receipt) -> Result<()> {
        let work = self.backend.ack(fetched_from, receipt);
        self.within("acking a message", Duration::ZERO, work).await
    }
    async fn discard(&self, queue: &str, receipt: &Receipt, envelope: &Envelope) -> Result<()> {
        let work = self.backend.discard(queue, receipt, envelope);
        self.within("dropping a message", Duration::ZERO, work)
            .await
    }
    async fn requeue(&self, queue: &str, receipt: &Receipt, envelope: &Envelope) -> Result<()> {
        let work = self.backend.requeue(queue, receipt, envelope);
        self.within("requeueing a message", Duration::ZERO, work)
            .await
    }
    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        let work = self.backend.declare_exchange(exchange);
        self.within("declaring an exchange", Duration::ZERO, work)
            .await
    }
    async fn exchange(&self, name: &str) -> Result<Option<Exchange>> {
        let work = self.backend.exchange(name);
        self.within("reading an exchange", Duration::ZERO, work)
            .await
    }
    async fn delete_exchange(&self, name: &str) -> Result<()> {
        let work = self.backend.delete_exchange(name);
        self.within("deleting an exchange", Duration::ZERO, work)
            .await
    }
    async fn bind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        let work = self.backend.bind(exchange, binding);
        self.within("binding a queue", Duration::ZERO, work).await
    }
    async fn unbind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        let work = self.backend.unbind(exchange, binding);
        self.within("unbinding a queue", Duration::ZERO, work).await
    }
    async fn bindings(&self, exchange: &str) -> Result<Vec<QueueBinding>> {
        let work = self.backend.bindings(exchange);
        self.within("reading bindings", Duration::ZERO, work).await
    }
    async fn put_fanout(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<bool> {
        let work = self.backend.put_fanout(exchange, routing_key, envelope);
        self.within("broadcasting a message", Duration::ZERO, work)
            .await
    }
    fn polling_interval(&self) -> Duration {
        self.backend.polling_interval()
    }
    async fn close(&self) -> Result<()> {
        let work = self.backend.close();
        self.within("closing", Duration::ZERO, work).await
    }
}
