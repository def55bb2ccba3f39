//! What kombu-rs counts and times, through the [`metrics`] crate's facade.
//!
//! Every producer, consumer and connection records here; nothing is kept
//! and nothing costs more than the facade's no-op until the application
//! installs a recorder (a Prometheus exporter, say). Install it before
//! creating connections, consumers and producers: they look up their
//! counters once, when they are created (and a consumer again when it
//! reconnects).
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | [`PUBLISHED`] | counter | transport, queue or exchange |
//! | [`PUBLISH_DURATION`] | histogram (s) | transport, queue or exchange |
//! | [`DELIVERED`] | counter | transport, queue |
//! | [`REDELIVERED`] | counter | transport, queue |
//! | [`ACKED`] | counter | transport, queue |
//! | [`ACK_DURATION`] | histogram (s) | transport, queue |
//! | [`REJECTED`] | counter | transport, queue |
//! | [`REQUEUED`] | counter | transport, queue |
//! | [`IN_FLIGHT`] | gauge | transport, queue |
//! | [`RECONNECTS`] | counter | transport |
//!
//! `transport` is the transport's name (`amqp`, `redis`, `memory`, ...).
//! A publish to the default exchange is labelled with the `queue` its
//! routing key names; any other publish with its `exchange` (a routing
//! key there can be anything, and a label must not grow without bound).
//!
//! ```
//! // With a recorder installed (metrics-exporter-prometheus, ...):
//! kombu_core::metrics::describe();
//! assert_eq!(kombu_core::metrics::PUBLISHED, "kombu_messages_published_total");
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, SharedString};

use crate::message::DeliveryInfo;

/// Messages the broker took (a publish that returned `Ok`).
pub const PUBLISHED: &str = "kombu_messages_published_total";
/// How long one publish took, from the call to the broker's answer
/// (its confirmation where the transport has them), retries included.
pub const PUBLISH_DURATION: &str = "kombu_publish_duration_seconds";
/// Messages handed to the application (by a consumer or a `get`).
pub const DELIVERED: &str = "kombu_messages_delivered_total";
/// Delivered messages flagged redelivered (delivered before, not acked).
pub const REDELIVERED: &str = "kombu_messages_redelivered_total";
/// Messages acknowledged.
pub const ACKED: &str = "kombu_messages_acked_total";
/// How long one acknowledgement took (the call to the transport).
pub const ACK_DURATION: &str = "kombu_ack_duration_seconds";
/// Messages rejected (dead-lettered where the queue says so, else dropped).
pub const REJECTED: &str = "kombu_messages_rejected_total";
/// Messages put back in their queue ([`Message::requeue`](crate::Message::requeue)).
pub const REQUEUED: &str = "kombu_messages_requeued_total";
/// Messages delivered and not yet acked, rejected, requeued or dropped.
pub const IN_FLIGHT: &str = "kombu_messages_in_flight";
/// Connections established again after one was lost.
pub const RECONNECTS: &str = "kombu_reconnects_total";

/// Label: the transport's name.
pub const LABEL_TRANSPORT: &str = "transport";
/// Label: the queue.
pub const LABEL_QUEUE: &str = "queue";
/// Label: the exchange (publishes not to the default exchange).
pub const LABEL_EXCHANGE: &str = "exchange";

/// Describe every metric to the installed recorder (units and help
/// text; a Prometheus exporter prints them as `# HELP` lines). Call it
/// once after installing the recorder; without one it does nothing.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(PUBLISHED, "Messages published (the broker took them)");
    describe_histogram!(
        PUBLISH_DURATION,
        Unit::Seconds,
        "Time one publish took, retries included"
    );
    describe_counter!(DELIVERED, "Messages delivered to the application");
    describe_counter!(REDELIVERED, "Delivered messages flagged redelivered");
    describe_counter!(ACKED, "Messages acknowledged");
    describe_histogram!(ACK_DURATION, Unit::Seconds, "Time one acknowledgement took");
    describe_counter!(REJECTED, "Messages rejected");
    describe_counter!(REQUEUED, "Messages put back in their queue");
    describe_gauge!(IN_FLIGHT, "Messages delivered and not yet settled");
    describe_counter!(RECONNECTS, "Connections established again after a loss");
}

/// The recorder's handles for one destination of publishes.
pub(crate) struct PublishMetrics {
    published: Counter,
    duration: Histogram,
}

impl PublishMetrics {
    fn new(transport: &'static str, exchange: &str, routing_key: &str) -> Self {
        let (label, value) = if exchange.is_empty() {
            (LABEL_QUEUE, routing_key)
        } else {
            (LABEL_EXCHANGE, exchange)
        };
        let labels = [
            (LABEL_TRANSPORT, SharedString::const_str(transport)),
            (label, SharedString::from(value.to_owned())),
        ];
        PublishMetrics {
            published: metrics::counter!(PUBLISHED, &labels),
            duration: metrics::histogram!(PUBLISH_DURATION, &labels),
        }
    }

    /// `count` messages published in `took` each.
    fn published(&self, count: usize, took: Duration) {
        self.published.increment(count as u64);
        self.duration.record_many(took.as_secs_f64(), count);
    }
}

/// A producer's handles for the destination it published to last (a
/// producer mostly publishes to one place, so the lookup is a compare).
#[derive(Default)]
pub(crate) struct PublishMetricsCache {
    last: Mutex<Option<(String, String, PublishMetrics)>>,
}

impl PublishMetricsCache {
    /// Record `count` messages published (`ok`) to `(transport, exchange,
    /// routing key)` in `took` each; nothing when not `ok`.
    pub(crate) fn record(
        &self,
        (transport, exchange, routing_key): (&'static str, &str, &str),
        ok: bool,
        took: Duration,
        count: usize,
    ) {
        if !ok {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        // Only the default exchange labels by routing key.
        let key = if exchange.is_empty() { routing_key } else { "" };
        match last.as_ref() {
            Some((ex, rk, handles)) if ex == exchange && rk == key => {
                handles.published(count, took);
            }
            _ => {
                let handles = PublishMetrics::new(transport, exchange, routing_key);
                handles.published(count, took);
                *last = Some((exchange.to_owned(), key.to_owned(), handles));
            }
        }
    }
}

/// The recorder's handles for deliveries from one queue.
pub(crate) struct QueueMetrics {
    /// The transport's name (the consumer span's `messaging.system`).
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(crate) transport: &'static str,
    /// The queue's name.
    pub(crate) queue: Arc<str>,
    delivered: Counter,
    redelivered: Counter,
    acked: Counter,
    ack_duration: Histogram,
    rejected: Counter,
    requeued: Counter,
    in_flight: Gauge,
}

impl QueueMetrics {
    /// Handles for deliveries from `queue` over `transport`.
    pub(crate) fn new(transport: &'static str, queue: &str) -> Self {
        let queue: Arc<str> = queue.into();
        let labels = [
            (LABEL_TRANSPORT, SharedString::const_str(transport)),
            (LABEL_QUEUE, SharedString::from_shared(queue.clone())),
        ];
        QueueMetrics {
            transport,
            delivered: metrics::counter!(DELIVERED, &labels),
            redelivered: metrics::counter!(REDELIVERED, &labels),
            acked: metrics::counter!(ACKED, &labels),
            ack_duration: metrics::histogram!(ACK_DURATION, &labels),
            rejected: metrics::counter!(REJECTED, &labels),
            requeued: metrics::counter!(REQUEUED, &labels),
            in_flight: metrics::gauge!(IN_FLIGHT, &labels),
            queue,
        }
    }

    /// A message was handed out; `settles`: it waits for an ack (not
    /// consumed with no_ack).
    pub(crate) fn delivered(&self, redelivered: bool, settles: bool) {
        self.delivered.increment(1);
        if redelivered {
            self.redelivered.increment(1);
        }
        if settles {
            self.in_flight.increment(1.0);
        }
    }

    /// A delivered message was settled or dropped unsettled.
    pub(crate) fn left(&self) {
        self.in_flight.decrement(1.0);
    }

    /// An ack went through in `took`.
    pub(crate) fn acked(&self, took: Duration) {
        self.acked.increment(1);
        self.ack_duration.record(took.as_secs_f64());
    }

    /// A reject went through.
    pub(crate) fn rejected(&self) {
        self.rejected.increment(1);
    }

    /// A requeue went through.
    pub(crate) fn requeued(&self) {
        self.requeued.increment(1);
    }
}

/// A consumer's handles, one set per queue it consumes.
pub(crate) struct ConsumerMetrics {
    queues: Vec<Arc<QueueMetrics>>,
}

impl ConsumerMetrics {
    /// Handles for each of `queues` (at least one).
    pub(crate) fn new(transport: &'static str, queues: &[String]) -> Self {
        ConsumerMetrics {
            queues: queues
                .iter()
                .map(|queue| Arc::new(QueueMetrics::new(transport, queue)))
                .collect(),
        }
    }

    /// The handles of the queue `info` says the delivery came from (the
    /// first queue when the transport does not say).
    pub(crate) fn of(&self, info: &DeliveryInfo) -> &Arc<QueueMetrics> {
        if let [only] = self.queues.as_slice() {
            return only;
        }
        info.queue
            .as_deref()
            .and_then(|name| self.queues.iter().find(|q| &*q.queue == name))
            .unwrap_or(&self.queues[0])
    }
}

/// A connection was established again after one was lost.
pub(crate) fn reconnected(transport: &'static str) {
    metrics::counter!(RECONNECTS, LABEL_TRANSPORT => transport).increment(1);
}
