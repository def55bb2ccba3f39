//! Liveness and bounds for every virtual transport, once: [`Guarded`] wraps
//! a backend so that each call ends within the operation timeout, and any
//! connection error (or timeout) marks the shared [`Liveness`] lost. The
//! transport then reports itself disconnected and the [`Connection`]
//! replaces it.
//!
//! [`Connection`]: crate::Connection

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::backend::{Fetched, Receipt, StopWaiting, VirtualBackend};
use super::StoredMessage;
use crate::entity::{Exchange, Queue};
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::routing::QueueBinding;
use crate::transport::Capabilities;

/// How long a backend call may take when neither the backend nor the
/// `operation_timeout` option says.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a virtual transport's connection is usable: closed by the user,
/// or lost (a failed heartbeat, a connection error from any call).
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    closed: AtomicBool,
    lost: AtomicBool,
}

impl Liveness {
    pub(crate) fn is_alive(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.lost.load(Ordering::Acquire)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Mark closed; true the first time.
    pub(crate) fn close(&self) -> bool {
        !self.closed.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn mark_lost(&self, name: &str, error: &Error) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            tracing::warn!(transport = name, error = %error, "connection lost");
        }
    }

    /// The error for a call on a connection that is not usable.
    pub(crate) fn check(&self, name: &str) -> Result<()> {
        if self.is_closed() {
            Err(Error::new(
                ErrorKind::Closed,
                format!("{name}: the connection is closed"),
            ))
        } else if self.lost.load(Ordering::Acquire) {
            Err(Error::new(
                ErrorKind::ConnectionLost,
                format!("{name}: the connection was lost (a new one is needed)"),
            ))
        } else {
            Ok(())
        }
    }
}

/// A backend whose every call is bounded and watched (see the module docs).
pub(crate) struct Guarded<B> {
    inner: Arc<B>,
    liveness: Arc<Liveness>,
    name: &'static str,
    timeout: Duration,
}

impl<B: VirtualBackend> Guarded<B> {
    pub(crate) fn new(
        inner: Arc<B>,
        liveness: Arc<Liveness>,
        name: &'static str,
        timeout: Duration,
    ) -> Self {
        Guarded {
            inner,
            liveness,
            name,
            timeout,
        }
    }

    /// Run one backend call within `limit`; connection errors mark the
    /// connection lost.
    async fn bounded<T>(
        &self,
        what: &str,
        limit: Duration,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.liveness.check(self.name)?;
        let mut call = std::pin::pin!(call);
        // A call that is done at once (an in-process store) needs no timer.
        let outcome = match futures::poll!(call.as_mut()) {
            std::task::Poll::Ready(outcome) => outcome,
            std::task::Poll::Pending => match tokio::time::timeout(limit, call).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{}: {what} got no answer within {:.1} s",
                        self.name,
                        limit.as_secs_f64()
                    ),
                )),
            },
        };
        if let Err(err) = &outcome {
            if err.is_connection_error() {
                self.liveness.mark_lost(self.name, err);
            }
        }
        outcome
    }

    async fn call<T>(&self, what: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
        self.bounded(what, self.timeout, call).await
    }
}

#[async_trait]
impl<B: VirtualBackend> VirtualBackend for Guarded<B> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn new_queue(&self, queue: &Queue) -> Result<()> {
        self.call("declaring a queue", self.inner.new_queue(queue))
            .await
    }
    async fn queue_declaration(&self, queue: &str) -> Result<Option<Queue>> {
        self.call(
            "reading a queue declaration",
            self.inner.queue_declaration(queue),
        )
        .await
    }
    async fn has_queue(&self, queue: &str) -> Result<bool> {
        self.call("looking up a queue", self.inner.has_queue(queue))
            .await
    }
    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.call("deleting a queue", self.inner.delete_queue(queue))
            .await
    }
    async fn purge(&self, queue: &str) -> Result<u64> {
        self.call("purging a queue", self.inner.purge(queue)).await
    }
    async fn size(&self, queue: &str) -> Result<u64> {
        self.call("sizing a queue", self.inner.size(queue)).await
    }
    async fn put(&self, queue: &str, envelope: &Envelope, priority: u8) -> Result<()> {
        self.call(
            "storing a message",
            self.inner.put(queue, envelope, priority),
        )
        .await
    }
    async fn put_owned(&self, queue: &str, envelope: Envelope, priority: u8) -> Result<()> {
        self.call(
            "storing a message",
            self.inner.put_owned(queue, envelope, priority),
        )
        .await
    }
    async fn put_message(&self, queue: &str, message: StoredMessage, priority: u8) -> Result<()> {
        self.call(
            "storing a message",
            self.inner.put_message(queue, message, priority),
        )
        .await
    }
    async fn extend_lease(
        &self,
        fetched_from: &str,
        receipt: &Receipt,
        by: Duration,
    ) -> Result<()> {
        self.call(
            "extending a lease",
            self.inner.extend_lease(fetched_from, receipt, by),
        )
        .await
    }
    fn lease_duration(&self) -> Option<Duration> {
        self.inner.lease_duration()
    }
    async fn put_delayed(
        &self,
        queue: &str,
        message: StoredMessage,
        priority: u8,
        not_before_ms: u64,
    ) -> Result<()> {
        self.call(
            "storing a delayed message",
            self.inner
                .put_delayed(queue, message, priority, not_before_ms),
        )
        .await
    }
    async fn put_messages(&self, queue: &str, messages: Vec<(StoredMessage, u8)>) -> Result<()> {
        self.call("storing messages", self.inner.put_messages(queue, messages))
            .await
    }
    async fn put_many(&self, queue: &str, messages: Vec<(Envelope, u8)>) -> Result<()> {
        self.call("storing messages", self.inner.put_many(queue, messages))
            .await
    }
    async fn fetch(&self, queues: &[String], wait: Duration) -> Result<Option<Fetched>> {
        self.bounded(
            "fetching a message",
            wait + self.timeout,
            self.inner.fetch(queues, wait),
        )
        .await
    }
    async fn fetch_batch(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
    ) -> Result<Vec<Fetched>> {
        self.bounded(
            "fetching messages",
            wait + self.timeout,
            self.inner.fetch_batch(queues, wait, max),
        )
        .await
    }
    async fn fetch_batch_until(
        &self,
        queues: &[String],
        wait: Duration,
        max: usize,
        stop: &StopWaiting,
    ) -> Result<Vec<Fetched>> {
        self.bounded(
            "fetching messages",
            wait + self.timeout,
            self.inner.fetch_batch_until(queues, wait, max, stop),
        )
        .await
    }
    async fn ack(&self, fetched_from: &str, receipt: &Receipt) -> Result<()> {
        self.call("acking a message", self.inner.ack(fetched_from, receipt))
            .await
    }
    async fn ack_many(&self, acks: &[(String, Receipt)]) -> Result<()> {
        self.call("acking messages", self.inner.ack_many(acks))
            .await
    }
    fn ack_batch_size(&self) -> usize {
        self.inner.ack_batch_size()
    }
    fn acks_are_local(&self) -> bool {
        self.inner.acks_are_local()
    }
    fn concurrent_fetches(&self) -> usize {
        self.inner.concurrent_fetches()
    }
    async fn discard(&self, queue: &str, receipt: &Receipt, envelope: &Envelope) -> Result<()> {
        self.call(
            "discarding a message",
            self.inner.discard(queue, receipt, envelope),
        )
        .await
    }
    async fn requeue(&self, queue: &str, receipt: &Receipt, envelope: &Envelope) -> Result<()> {
        self.call(
            "returning a message",
            self.inner.requeue(queue, receipt, envelope),
        )
        .await
    }
    async fn requeue_message(
        &self,
        queue: &str,
        receipt: &Receipt,
        message: StoredMessage,
    ) -> Result<()> {
        self.call(
            "returning a message",
            self.inner.requeue_message(queue, receipt, message),
        )
        .await
    }
    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.call(
            "declaring an exchange",
            self.inner.declare_exchange(exchange),
        )
        .await
    }
    async fn exchange(&self, name: &str) -> Result<Option<Exchange>> {
        self.call("looking up an exchange", self.inner.exchange(name))
            .await
    }
    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.call("deleting an exchange", self.inner.delete_exchange(name))
            .await
    }
    async fn bind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        self.call("binding a queue", self.inner.bind(exchange, binding))
            .await
    }
    async fn unbind(&self, exchange: &str, binding: &QueueBinding) -> Result<()> {
        self.call("unbinding a queue", self.inner.unbind(exchange, binding))
            .await
    }
    async fn bindings(&self, exchange: &str) -> Result<Vec<QueueBinding>> {
        self.call("reading bindings", self.inner.bindings(exchange))
            .await
    }
    async fn put_fanout(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<bool> {
        self.call(
            "broadcasting a message",
            self.inner.put_fanout(exchange, routing_key, envelope),
        )
        .await
    }
    fn polling_interval(&self) -> Duration {
        self.inner.polling_interval()
    }
    fn close_wait(&self) -> Duration {
        self.inner.close_wait()
    }
    async fn ping(&self) -> Result<()> {
        self.call("a heartbeat", self.inner.ping()).await
    }
    fn operation_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }
    fn is_alive(&self) -> bool {
        self.liveness.is_alive() && self.inner.is_alive()
    }
    async fn close(&self) -> Result<()> {
        // Closing goes through even when the connection is lost.
        match tokio::time::timeout(self.timeout, self.inner.close()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("{}: closing got no answer", self.name),
            )),
        }
    }
}
