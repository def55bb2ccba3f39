//! What kombu-rs tells about its messages: the metrics every producer,
//! consumer and connection records, read back from metrics-util's
//! debugging recorder over `memory://` (and the fault-injecting transport
//! for reconnects), and the W3C trace context carried in message headers
//! (the `opentelemetry` feature's spans are in tests/opentelemetry.rs: an
//! SDK installed there would change the headers checked here).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use kombu_core::metrics::{
    ACKED, ACK_DURATION, DELIVERED, IN_FLIGHT, PUBLISHED, PUBLISH_DURATION, RECONNECTS,
    REDELIVERED, REJECTED, REQUEUED,
};
use kombu_core::{
    Connection, Consumer, ErrorKind, Exchange, Message, Producer, PublishOptions, Queue, Registry,
    TraceContext,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};

/// Every wait on the broker ends by then.
const DEADLINE: Duration = Duration::from_secs(10);

/// The process's recorder (installed once: tests run side by side, each
/// on queues of its own).
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("no other recorder in this test");
        kombu_core::metrics::describe();
        snapshotter
    })
}

/// What a metric added up to: a snapshot drains the recorder (counters
/// and gauges back to 0, histograms emptied), so every snapshot is added
/// to these totals (gauges move by increments and decrements only, so
/// they add up too).
#[derive(Default, Clone, Copy)]
struct Total {
    kind: Option<MetricKind>,
    sum: f64,
    values: usize,
}

/// The total of metric `name` whose labels include all of `labels`.
fn total(name: &str, labels: &[(&str, &str)]) -> Total {
    static TOTALS: OnceLock<Mutex<HashMap<CompositeKey, Total>>> = OnceLock::new();
    let mut totals = TOTALS.get_or_init(Default::default).lock().unwrap();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let total = totals.entry(key.clone()).or_default();
        total.kind = Some(key.kind());
        match value {
            DebugValue::Counter(n) => total.sum += n as f64,
            DebugValue::Gauge(n) => total.sum += n.into_inner(),
            DebugValue::Histogram(values) => {
                assert!(values.iter().all(|v| v.into_inner() >= 0.0), "{values:?}");
                total.values += values.len();
            }
        }
    }
    totals
        .iter()
        .find(|(key, _)| {
            let key = key.key();
            key.name() == name
                && labels.iter().all(|(k, v)| {
                    key.labels()
                        .any(|label| label.key() == *k && label.value() == *v)
                })
        })
        .map(|(_, total)| *total)
        .unwrap_or_default()
}

fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    let total = total(name, labels);
    assert!(
        matches!(total.kind, None | Some(MetricKind::Counter)),
        "{name}"
    );
    total.sum as u64
}

fn gauge(name: &str, labels: &[(&str, &str)]) -> f64 {
    let total = total(name, labels);
    assert!(
        matches!(total.kind, None | Some(MetricKind::Gauge)),
        "{name}"
    );
    total.sum
}

/// How many values histogram `name` was given (each seconds, >= 0).
fn histogram_count(name: &str, labels: &[(&str, &str)]) -> usize {
    let total = total(name, labels);
    assert!(
        matches!(total.kind, None | Some(MetricKind::Histogram)),
        "{name}"
    );
    total.values
}

fn memory(name: &str) -> Connection {
    snapshotter();
    let mut registry = Registry::new();
    kombu_memory::register(&mut registry);
    let url = format!("memory://{}", kombu_testkit::unique(name));
    Connection::with_registry(&url, Arc::new(registry)).unwrap()
}

async fn next(consumer: &mut Consumer) -> Message {
    tokio::time::timeout(DEADLINE, consumer.next())
        .await
        .expect("a message within 10 s")
        .expect("the consumer goes on")
        .expect("a message, not an error")
}

#[tokio::test]
async fn every_counter_moves_as_messages_are_published_and_settled() {
    let conn = memory("metrics");
    let queue = kombu_testkit::unique("metrics-q");
    let q = [("transport", "memory"), ("queue", queue.as_str())];
    let producer = Producer::new(&conn).routing_key(queue.as_str());
    let options = PublishOptions::new().declare(Queue::new(queue.as_str()));

    // 6 single publishes and 4 in one publish_many: 10 to the queue.
    for n in 0..6 {
        producer
            .publish(serde_json::json!({ "n": n }), options.clone())
            .await
            .unwrap();
    }
    let results = producer
        .publish_many((6..10).map(|n| serde_json::json!({ "n": n })), options)
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(counter(PUBLISHED, &q), 10);
    assert_eq!(histogram_count(PUBLISH_DURATION, &q), 10);

    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(queue.as_str()))
        .prefetch_count(20)
        .build()
        .await
        .unwrap();
    let mut messages = Vec::new();
    for _ in 0..10 {
        messages.push(next(&mut consumer).await);
    }
    assert_eq!(counter(DELIVERED, &q), 10);
    assert_eq!(gauge(IN_FLIGHT, &q), 10.0);
    assert_eq!(counter(REDELIVERED, &q), 0);

    // Ack 7, reject 1, requeue 1, drop 1 unsettled.
    let mut messages = messages.into_iter();
    for message in messages.by_ref().take(7) {
        message.ack().await.unwrap();
    }
    messages.next().unwrap().reject().await.unwrap();
    messages.next().unwrap().requeue().await.unwrap();
    let dropped = messages.next().unwrap();
    assert_eq!(gauge(IN_FLIGHT, &q), 1.0);
    drop(dropped);
    assert_eq!(gauge(IN_FLIGHT, &q), 0.0);
    assert_eq!(counter(ACKED, &q), 7);
    assert_eq!(histogram_count(ACK_DURATION, &q), 7);
    assert_eq!(counter(REJECTED, &q), 1);
    assert_eq!(counter(REQUEUED, &q), 1);

    // The requeued message comes back flagged redelivered.
    let again = next(&mut consumer).await;
    assert!(again.redelivered());
    assert_eq!(counter(DELIVERED, &q), 11);
    assert_eq!(counter(REDELIVERED, &q), 1);
    again.ack().await.unwrap();
    assert_eq!(counter(ACKED, &q), 8);
    // A second settle is refused and counts nothing.
    assert_eq!(
        again.ack().await.unwrap_err().kind(),
        ErrorKind::PreconditionFailed
    );
    assert_eq!(counter(ACKED, &q), 8);
    assert_eq!(gauge(IN_FLIGHT, &q), 0.0);
    assert_eq!(counter(RECONNECTS, &[("transport", "memory")]), 0);
}

#[tokio::test]
async fn publishes_to_an_exchange_are_labelled_with_it_and_no_ack_is_not_in_flight() {
    let conn = memory("metrics-ex");
    let exchange = Exchange::direct(kombu_testkit::unique("metrics-ex"));
    let queue = kombu_testkit::unique("metrics-ex-q");
    let producer = Producer::new(&conn).exchange(exchange.clone());
    let options = PublishOptions::new()
        .routing_key("key")
        .declare(Queue::new(queue.as_str()).bind(&exchange, "key"));
    for _ in 0..3 {
        producer.publish("x", options.clone()).await.unwrap();
    }
    let by_exchange = [
        ("transport", "memory"),
        ("exchange", exchange.name.as_str()),
    ];
    assert_eq!(counter(PUBLISHED, &by_exchange), 3);
    assert_eq!(counter(PUBLISHED, &[("queue", "key")]), 0);

    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(queue.as_str()))
        .no_ack(true)
        .build()
        .await
        .unwrap();
    for _ in 0..3 {
        next(&mut consumer).await;
    }
    let q = [("transport", "memory"), ("queue", queue.as_str())];
    assert_eq!(counter(DELIVERED, &q), 3);
    assert_eq!(gauge(IN_FLIGHT, &q), 0.0);
    assert_eq!(counter(ACKED, &q), 0);
}

#[tokio::test]
async fn a_connection_established_again_after_a_loss_is_a_reconnect() {
    snapshotter();
    let faults = Arc::new(support::Faults::default());
    let conn = support::connection(&faults, "");
    let producer = Producer::new(&conn).routing_key("q");
    let options = PublishOptions::new().declare(Queue::new("q"));
    producer.publish("first", options.clone()).await.unwrap();
    let faulty = [("transport", "faulty")];
    assert_eq!(counter(RECONNECTS, &faulty), 0);

    faults.fail_with(Some(ErrorKind::ConnectionLost));
    let err = producer.publish("lost", options.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err}");
    faults.fail_with(None);
    producer.publish("again", options).await.unwrap();
    assert_eq!(counter(RECONNECTS, &faulty), 1);
    assert_eq!(
        counter(PUBLISHED, &[("transport", "faulty"), ("queue", "q")]),
        2,
        "the failed publish is not counted"
    );

    // A close is not a loss: connecting after it is no reconnect.
    conn.close().await.unwrap();
    producer
        .publish("after close", PublishOptions::new())
        .await
        .unwrap();
    assert_eq!(counter(RECONNECTS, &faulty), 1);
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Publish each of `options` to a fresh queue and receive them, in order.
async fn round_trip(conn: &Connection, all: Vec<PublishOptions>) -> Vec<Message> {
    let queue = kombu_testkit::unique("trace-q");
    let producer = Producer::new(conn).routing_key(queue.as_str());
    let count = all.len();
    for options in all {
        let options = options.declare(Queue::new(queue.as_str()));
        producer.publish("traced", options).await.unwrap();
    }
    let mut consumer = Consumer::builder(conn)
        .queue(Queue::new(queue.as_str()))
        .prefetch_count(10)
        .build()
        .await
        .unwrap();
    let mut messages = Vec::new();
    for _ in 0..count {
        let next = tokio::time::timeout(DEADLINE, consumer.next()).await;
        messages.push(next.expect("a message within 10 s").unwrap().unwrap());
    }
    messages
}

#[tokio::test]
async fn trace_context_travels_in_the_headers_and_a_malformed_one_is_ignored() {
    let conn = memory("trace");
    let ctx = TraceContext::parse(TRACEPARENT)
        .unwrap()
        .with_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        .unwrap();
    let received = round_trip(
        &conn,
        vec![
            PublishOptions::new().trace_context(&ctx),
            PublishOptions::new()
                .header("traceparent", "00-not-a-trace-01")
                .header("tracestate", "rojo=1"),
            PublishOptions::new()
                .header("traceparent", TRACEPARENT)
                .header("tracestate", "Bad Key=1"),
            PublishOptions::new(),
        ],
    )
    .await;
    // (No OpenTelemetry SDK in this process: with the `opentelemetry`
    // feature, the no-op spans pass the context on unchanged.)
    assert_eq!(received[0].trace_context(), Some(ctx));
    assert_eq!(received[0].headers()["traceparent"], TRACEPARENT);
    assert_eq!(received[1].trace_context(), None, "malformed: ignored");
    assert_eq!(
        received[2].trace_context(),
        TraceContext::parse(TRACEPARENT),
        "a bad tracestate is dropped, the traceparent kept"
    );
    assert_eq!(received[3].trace_context(), None);
    for message in received {
        message.ack().await.unwrap();
    }
}
