//! kombu's PUB/SUB fanout: one subscriber connection per transport,
//! `PSUBSCRIBE` to one pattern per fanout binding made in this process, and
//! a bounded buffer per bound queue that `fetch` serves first.
//!
//! What arrives while no one of this process has bound the queue is lost,
//! as in kombu: that is what PUB/SUB is. `fanout_mode=durable` avoids it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Error, ErrorKind, Result};
use tokio::sync::Notify;

use crate::error::map_redis;

/// Messages kept per queue before the oldest are dropped.
pub(crate) const BUFFER_LIMIT: usize = 10_000;

#[derive(Default)]
struct HubState {
    /// Pattern -> queues that subscribed with it.
    patterns: HashMap<String, HashSet<String>>,
    /// Queue -> messages received, oldest first.
    buffers: HashMap<String, VecDeque<Vec<u8>>>,
    dropped: u64,
}

/// The PUB/SUB side of a transport.
pub(crate) struct PubSubHub {
    /// Servers to subscribe on, tried in order (one, or a cluster's nodes:
    /// PUB/SUB messages reach every node of a cluster).
    clients: Vec<redis::Client>,
    sink: tokio::sync::Mutex<Option<redis::aio::PubSubSink>>,
    state: Mutex<HubState>,
    /// Woken when a message is buffered.
    pub arrived: Arc<Notify>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PubSubHub {
    pub fn new(clients: Vec<redis::Client>, arrived: Arc<Notify>) -> Arc<Self> {
        Arc::new(PubSubHub {
            clients,
            sink: tokio::sync::Mutex::new(None),
            state: Mutex::new(HubState::default()),
            arrived,
            reader: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connect the subscriber (once) and start its reader task.
    async fn ensure_connected(self: &Arc<Self>) -> Result<()> {
        let mut sink = self.sink.lock().await;
        if sink.is_some() {
            return Ok(());
        }
        let mut last = None;
        let mut pubsub = None;
        for client in &self.clients {
            match client.get_async_pubsub().await {
                Ok(connected) => {
                    pubsub = Some(connected);
                    break;
                }
                Err(err) => last = Some(err),
            }
        }
        let Some(pubsub) = pubsub else {
            return Err(last.map(map_redis).unwrap_or_else(|| {
                Error::new(
                    ErrorKind::ConnectionRefused,
                    "redis: no server to subscribe on",
                )
            }));
        };
        let (new_sink, stream) = pubsub.split();
        *sink = Some(new_sink);
        let hub = Arc::downgrade(self);
        let handle = tokio::spawn(async move {
            let mut stream = stream;
            while let Some(msg) = stream.next().await {
                let Some(hub) = hub.upgrade() else { return };
                let pattern: Option<String> = msg.get_pattern().ok();
                let channel = msg.get_channel_name().to_owned();
                let payload = msg.get_payload_bytes().to_vec();
                hub.deliver(pattern.as_deref().unwrap_or(&channel), payload);
            }
            if let Some(hub) = hub.upgrade() {
                tracing::warn!("redis PUB/SUB connection lost; resubscribing");
                hub.reconnect().await;
            }
        });
        *self.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    fn reconnect(self: Arc<Self>) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            *self.sink.lock().await = None;
            let mut delay = Duration::from_millis(100);
            loop {
                match self.ensure_connected().await {
                    Ok(()) => break,
                    Err(err) => {
                        tracing::warn!(error = %err, "redis PUB/SUB reconnect failed");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            let patterns: Vec<String> = self.lock().patterns.keys().cloned().collect();
            let mut sink = self.sink.lock().await;
            if let Some(sink) = sink.as_mut() {
                for pattern in patterns {
                    if let Err(err) = sink.psubscribe(&pattern).await {
                        tracing::warn!(error = %err, pattern, "resubscribe failed");
                    }
                }
            }
        })
    }

    fn deliver(&self, pattern: &str, payload: Vec<u8>) {
        let mut state = self.lock();
        let queues: Vec<String> = match state.patterns.get(pattern) {
            Some(queues) => queues.iter().cloned().collect(),
            None => return,
        };
        let mut dropped = 0;
        for queue in queues {
            let buffer = state.buffers.entry(queue).or_default();
            if buffer.len() >= BUFFER_LIMIT {
                buffer.pop_front();
                dropped += 1;
            }
            buffer.push_back(payload.clone());
        }
        if dropped > 0 {
            state.dropped += dropped;
            tracing::warn!(
                total = state.dropped,
                "PUB/SUB fanout buffer full: oldest messages dropped"
            );
        }
        drop(state);
        self.arrived.notify_waiters();
    }

    /// Deliver what `pattern` receives to `queue` from now on.
    pub async fn subscribe(self: &Arc<Self>, pattern: &str, queue: &str) -> Result<()> {
        self.ensure_connected().await?;
        let first = {
            let mut state = self.lock();
            let queues = state.patterns.entry(pattern.to_owned()).or_default();
            let first = queues.is_empty();
            queues.insert(queue.to_owned());
            state.buffers.entry(queue.to_owned()).or_default();
            first
        };
        if first {
            let mut sink = self.sink.lock().await;
            let sink = sink
                .as_mut()
                .ok_or_else(|| Error::new(ErrorKind::ConnectionLost, "PUB/SUB connection lost"))?;
            sink.psubscribe(pattern).await.map_err(map_redis)?;
        }
        Ok(())
    }

    /// Stop delivering `pattern` to `queue` (or to every queue when `None`).
    pub async fn unsubscribe(&self, pattern: &str, queue: Option<&str>) -> Result<()> {
        let last = {
            let mut state = self.lock();
            match state.patterns.get_mut(pattern) {
                Some(queues) => {
                    match queue {
                        Some(q) => {
                            queues.remove(q);
                        }
                        None => queues.clear(),
                    }
                    if queues.is_empty() {
                        state.patterns.remove(pattern);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last {
            if let Some(sink) = self.sink.lock().await.as_mut() {
                sink.punsubscribe(pattern).await.map_err(map_redis)?;
            }
        }
        Ok(())
    }

    /// Forget `queue` entirely (it was deleted).
    pub async fn forget_queue(&self, queue: &str) -> Result<()> {
        let patterns: Vec<String> = {
            let mut state = self.lock();
            state.buffers.remove(queue);
            state
                .patterns
                .iter()
                .filter(|(_, qs)| qs.contains(queue))
                .map(|(p, _)| p.clone())
                .collect()
        };
        for pattern in patterns {
            self.unsubscribe(&pattern, Some(queue)).await?;
        }
        Ok(())
    }

    /// The oldest buffered message of the first of `queues` that has one.
    pub fn pop(&self, queues: &[String]) -> Option<(String, Vec<u8>)> {
        let mut state = self.lock();
        for queue in queues {
            if let Some(message) = state.buffers.get_mut(queue).and_then(VecDeque::pop_front) {
                return Some((queue.clone(), message));
            }
        }
        None
    }

    /// Put a message back at the front of `queue`'s buffer.
    pub fn push_front(&self, queue: &str, message: Vec<u8>) {
        self.lock()
            .buffers
            .entry(queue.to_owned())
            .or_default()
            .push_front(message);
        self.arrived.notify_waiters();
    }

    /// Buffered messages of `queue`.
    pub fn buffered(&self, queue: &str) -> usize {
        self.lock().buffers.get(queue).map_or(0, VecDeque::len)
    }

    /// Drop `queue`'s buffered messages; returns how many.
    pub fn purge(&self, queue: &str) -> usize {
        self.lock()
            .buffers
            .get_mut(queue)
            .map_or(0, |b| std::mem::take(b).len())
    }

    /// Stop the reader and close the subscriber connection.
    pub async fn close(&self) {
        if let Some(handle) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.abort();
        }
        *self.sink.lock().await = None;
    }
}
