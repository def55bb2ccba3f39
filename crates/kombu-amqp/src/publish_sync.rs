//! Read-your-writes across the channels of one connection.
//!
//! AMQP orders methods per channel only: a message published on one
//! channel may not be in its queue yet when another channel asks for the
//! queue's size a moment later. Before a size, purge or get, the channels
//! that published without confirms since are made to answer a synchronous
//! method (a passive declare of `amq.direct`): RabbitMQ handles a
//! channel's methods in order, so by then their messages are routed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::ExchangeKind;

use crate::acks::AckCoalescer;

/// A channel, whether it published since it was last synced, and its acks.
pub(crate) struct Tracked {
    pub(crate) channel: lapin::Channel,
    dirty: AtomicBool,
    pub(crate) acks: Arc<AckCoalescer>,
}

impl Tracked {
    /// Note an unconfirmed publish.
    pub(crate) fn mark(&self) {
        if !self.dirty.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Release);
        }
    }
}

/// The channels of one connection.
#[derive(Default)]
pub(crate) struct PublishSync {
    channels: Mutex<Vec<Weak<Tracked>>>,
}

impl PublishSync {
    /// Track `channel` (coalescing its in-order acks with `coalesce_acks`);
    /// it is forgotten when the returned handle drops.
    pub(crate) fn track(&self, channel: lapin::Channel, coalesce_acks: bool) -> Arc<Tracked> {
        let tracked = Arc::new(Tracked {
            acks: AckCoalescer::new(channel.clone(), coalesce_acks),
            channel,
            dirty: AtomicBool::new(false),
        });
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.retain(|weak| weak.strong_count() > 0);
        channels.push(Arc::downgrade(&tracked));
        tracked
    }

    /// Send the deferred acks of every channel (before the connection closes).
    pub(crate) async fn flush_acks(&self) {
        let live: Vec<Arc<Tracked>> = {
            let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            channels.iter().filter_map(Weak::upgrade).collect()
        };
        for tracked in live {
            if let Err(err) = tracked.acks.flush().await {
                tracing::debug!(error = %err, "sending deferred acks before closing failed");
            }
        }
    }

    /// Wait until every message published so far on this connection
    /// without confirms has been routed; true when there were some.
    pub(crate) async fn settle(&self) -> bool {
        let dirty: Vec<Arc<Tracked>> = {
            let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            channels
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|t| t.dirty.swap(false, Ordering::AcqRel))
                .collect()
        };
        let published = !dirty.is_empty();
        for tracked in dirty {
            if !tracked.channel.status().connected() {
                continue;
            }
            let options = ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            };
            let synced = tracked
                .channel
                .exchange_declare(
                    "amq.direct".into(),
                    ExchangeKind::Direct,
                    options,
                    FieldTable::default(),
                )
                .await;
            if let Err(err) = synced {
                tracing::debug!(error = %err, "syncing a publishing channel failed");
            }
        }
        published
    }
}
