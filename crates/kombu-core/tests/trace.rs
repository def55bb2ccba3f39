//! W3C trace context in message headers over `memory://` (the
//! `opentelemetry` feature's spans are in tests/opentelemetry.rs).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{
    Connection, Consumer, Message, Producer, PublishOptions, Queue, Registry, TraceContext,
};

/// Every wait on the broker ends by then.
const DEADLINE: Duration = Duration::from_secs(10);

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn memory() -> Connection {
    let mut registry = Registry::new();
    kombu_memory::register(&mut registry);
    let url = format!("memory://{}", kombu_testkit::unique("trace"));
    Connection::with_registry(&url, Arc::new(registry)).unwrap()
}

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
    let conn = memory();
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
