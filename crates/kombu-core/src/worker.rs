//! [`Worker`]: a run loop that consumes with a handler, stays connected
//! and shuts down gracefully (kombu's `ConsumerMixin`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinSet;

use crate::connection::Connection;
use crate::consumer::{Consumer, Message};
use crate::entity::Queue;
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::serialization::Accept;

/// What a [`Worker`] did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Messages handed to the handler.
    pub handled: u64,
    /// Messages acked after the handler returned `Ok` (by it or by the worker).
    pub acked: u64,
    /// Messages rejected because the handler returned an error.
    pub rejected: u64,
    /// Acks and rejects that failed (the broker delivers those messages again).
    pub settle_errors: u64,
    /// Times the consumer reconnected.
    pub reconnects: u64,
}

/// Consume queues with a handler until told to stop; reconnect forever.
///
/// The handler gets each message as an `Arc<Message>`. When it returns
/// `Ok(())` the message is acked (unless the handler settled it itself);
/// when it returns an error the message is rejected, so the queue's
/// dead-letter settings apply, and the worker goes on. On shutdown the
/// worker stops taking messages, waits for the handlers that are running,
/// and closes its channel: messages received and not handled go back to
/// their queues.
///
/// ```
/// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
/// use std::sync::Arc;
/// use kombu_core::{Message, Queue, Worker};
///
/// let stats = Worker::new(&conn)
///     .queue(Queue::new("tasks"))
///     .prefetch_count(20)
///     .concurrency(4)
///     .run_until_signal(|message: Arc<Message>| async move {
///         let task: serde_json::Value = message.decode()?;
///         println!("{task}");
///         Ok(())
///     })
///     .await?;
/// println!("handled {}", stats.handled);
/// # Ok(()) }
/// ```
pub struct Worker {
    connection: Connection,
    queues: Vec<Queue>,
    prefetch_count: u16,
    concurrency: usize,
    accept: Accept,
    reconnect: RetryPolicy,
    grace: Duration,
}

impl Worker {
    /// A worker on `connection` (add queues with [`Worker::queue`]).
    pub fn new(connection: &Connection) -> Self {
        Worker {
            connection: connection.clone(),
            queues: Vec::new(),
            prefetch_count: 10,
            concurrency: 1,
            accept: Accept::default(),
            reconnect: RetryPolicy::new()
                .interval_start(Duration::from_millis(500))
                .interval_step(Duration::from_secs(1))
                .interval_max(Duration::from_secs(10)),
            grace: Duration::from_secs(30),
        }
    }
    /// Consume this queue too.
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queues.push(queue);
        self
    }
    /// Most unacked messages at once (default 10; at least the concurrency).
    pub fn prefetch_count(mut self, count: u16) -> Self {
        self.prefetch_count = count;
        self
    }
    /// Handlers running at once (default 1: one message at a time).
    pub fn concurrency(mut self, tasks: usize) -> Self {
        self.concurrency = tasks.max(1);
        self
    }
    /// Content types accepted (default: json only).
    pub fn accept(mut self, accept: Accept) -> Self {
        self.accept = accept;
        self
    }
    /// How to wait between reconnect attempts (it retries forever unless
    /// the policy has `max_retries` or `timeout`).
    pub fn reconnect(mut self, policy: RetryPolicy) -> Self {
        self.reconnect = policy;
        self
    }
    /// How long shutdown waits for running handlers (default 30 s).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Run until Ctrl-C (SIGINT) or SIGTERM, then shut down gracefully.
    pub async fn run_until_signal<H, Fut>(self, handler: H) -> Result<WorkerStats>
    where
        H: Fn(Arc<Message>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.run(handler, shutdown_signal()).await
    }

    /// Run until `shutdown` completes, then shut down gracefully.
    pub async fn run<H, Fut>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<WorkerStats>
    where
        H: Fn(Arc<Message>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        if self.queues.is_empty() {
            return Err(Error::invalid_option("a worker needs at least one queue"));
        }
        let handler = Arc::new(handler);
        let mut stats = WorkerStats::default();
        tokio::pin!(shutdown);
        let Some(mut consumer) = (tokio::select! {
            consumer = self.start() => Some(consumer?),
            _ = &mut shutdown => None,
        }) else {
            return Ok(stats);
        };
        let mut running: JoinSet<Outcome> = JoinSet::new();
        loop {
            let room = running.len() < self.concurrency;
            tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    count(&mut stats, done);
                }
                next = consumer.next(), if room => match next {
                    Some(Ok(message)) => {
                        stats.handled += 1;
                        let handler = handler.clone();
                        running.spawn(handle(handler, Arc::new(message)));
                    }
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "worker: consumer reported an error; going on");
                    }
                    None => {
                        // The consumer gave up (its reconnect policy ran
                        // out, or the connection was closed): start again.
                        stats.reconnects += consumer.reconnects();
                        consumer = self.start().await?;
                    }
                }
            }
        }
        tracing::info!(running = running.len(), "worker: shutting down");
        if let Err(err) = consumer.cancel().await {
            tracing::debug!(error = %err, "worker: cancel failed");
        }
        let drained = tokio::time::timeout(self.grace, async {
            while let Some(done) = running.join_next().await {
                count(&mut stats, done);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("worker: handlers still running after the grace period; their messages go back to the queue");
            running.abort_all();
        }
        stats.reconnects += consumer.reconnects();
        consumer.close().await?;
        Ok(stats)
    }

    /// Connect (retrying as the policy says) and build the consumer.
    async fn start(&self) -> Result<Consumer> {
        let build = || async {
            self.connection.ensure_connection(&self.reconnect).await?;
            Consumer::builder(&self.connection)
                .queues(self.queues.iter().cloned())
                .prefetch_count(self.prefetch_count.max(self.concurrency as u16))
                .accept(self.accept.clone())
                .reconnect(self.reconnect.clone())
                .build()
                .await
        };
        self.connection.ensure(&self.reconnect, build).await
    }
}

/// How one message ended.
enum Outcome {
    Acked,
    Rejected,
    SettleFailed,
}

async fn handle<H, Fut>(handler: Arc<H>, message: Arc<Message>) -> Outcome
where
    H: Fn(Arc<Message>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let work = handler(message.clone());
    let result = match message.lease_duration() {
        // A handler running past half the lease gets it extended, again
        // and again, so the broker does not hand the message to another
        // consumer while it still runs.
        Some(lease) if !lease.is_zero() => {
            tokio::pin!(work);
            loop {
                tokio::select! {
                    result = &mut work => break result,
                    _ = tokio::time::sleep(lease / 2) => {
                        if let Err(err) = message.extend_lease(lease).await {
                            tracing::warn!(error = %err, delivery_tag = message.delivery_tag(), "worker: could not extend a running message's lease; it may be delivered again");
                        }
                    }
                }
            }
        }
        _ => work.await,
    };
    let settled = match &result {
        Ok(()) if message.acknowledged() => return Outcome::Acked,
        Ok(()) => message.ack().await.map(|_| Outcome::Acked),
        Err(err) => {
            tracing::warn!(error = %err, delivery_tag = message.delivery_tag(), "worker: handler failed; rejecting the message");
            if message.acknowledged() {
                return Outcome::Rejected;
            }
            message.reject().await.map(|_| Outcome::Rejected)
        }
    };
    settled.unwrap_or_else(|err| {
        tracing::warn!(error = %err, "worker: could not settle a message; the broker delivers it again");
        Outcome::SettleFailed
    })
}

fn count(stats: &mut WorkerStats, done: std::result::Result<Outcome, tokio::task::JoinError>) {
    match done {
        Ok(Outcome::Acked) => stats.acked += 1,
        Ok(Outcome::Rejected) => stats.rejected += 1,
        Ok(Outcome::SettleFailed) => stats.settle_errors += 1,
        Err(err) => {
            tracing::warn!(error = %err, "worker: a handler panicked; its message goes back to the queue");
            stats.settle_errors += 1;
        }
    }
}

/// Completes on Ctrl-C, or on SIGTERM on Unix.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
