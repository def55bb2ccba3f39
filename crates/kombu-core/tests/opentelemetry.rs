//! The `opentelemetry` feature: a producer span per publish and a
//! consumer span per delivery over `memory://`, read back from the SDK's
//! in-memory exporter (installed as the global provider of this process).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, Consumer, Producer, PublishOptions, Queue, Registry, TraceContext};

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

/// Every wait on the broker ends by then.
const DEADLINE: Duration = Duration::from_secs(10);

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn memory() -> Connection {
    let mut registry = Registry::new();
    kombu_memory::register(&mut registry);
    let url = format!("memory://{}", kombu_testkit::unique("otel"));
    Connection::with_registry(&url, Arc::new(registry)).unwrap()
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|KeyValue { key: k, .. }| k.as_str() == key)
        .map(|kv| &kv.value)
}

fn find<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

#[tokio::test]
async fn a_publish_and_its_delivery_are_producer_and_consumer_spans_of_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let conn = memory();
    let queue = kombu_testkit::unique("otel-q");
    let producer = Producer::new(&conn).routing_key(queue.as_str());
    let options = PublishOptions::new().declare(Queue::new(queue.as_str()));

    // 1. Under the application's span: the producer span is its child.
    let app = provider.tracer("app").start("handle request");
    let app_cx = Context::current_with_span(app);
    let app_span = app_cx.span().span_context().clone();
    producer
        .publish("one", options.clone())
        .with_context(app_cx.clone())
        .await
        .unwrap();
    // 2. With a trace context given in the options: its child.
    let given = TraceContext::parse(TRACEPARENT).unwrap();
    producer
        .publish("two", options.clone().trace_context(&given))
        .await
        .unwrap();

    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(queue.as_str()))
        .prefetch_count(10)
        .build()
        .await
        .unwrap();
    let mut received = Vec::new();
    for _ in 0..2 {
        let next = tokio::time::timeout(DEADLINE, consumer.next()).await;
        received.push(next.expect("a message within 10 s").unwrap().unwrap());
    }
    // The application's work on a delivery is a child of its span.
    let work = provider
        .tracer("app")
        .start_with_context("work", received[0].otel_context());
    drop(work);
    received[0].ack().await.unwrap();
    received[1].reject().await.unwrap();
    app_cx.span().end();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let publish = spans
        .iter()
        .filter(|span| span.name == format!("publish {queue}"))
        .collect::<Vec<_>>();
    assert_eq!(publish.len(), 2, "{spans:#?}");
    let (first, second) = (publish[0], publish[1]);
    assert_eq!(first.span_kind, SpanKind::Producer);
    assert_eq!(first.parent_span_id, app_span.span_id());
    assert_eq!(first.span_context.trace_id(), app_span.trace_id());
    assert_eq!(
        second.span_context.trace_id(),
        opentelemetry::trace::TraceId::from(given.trace_id())
    );
    assert_eq!(
        second.parent_span_id,
        opentelemetry::trace::SpanId::from(given.parent_id())
    );
    for (key, want) in [
        ("messaging.system", "memory"),
        ("messaging.operation.type", "send"),
        ("messaging.operation.name", "publish"),
        ("messaging.destination.name", queue.as_str()),
    ] {
        assert_eq!(
            attribute(first, key).map(Value::as_str).as_deref(),
            Some(want),
            "{key}"
        );
    }

    // The message carried the producer span's own context.
    let carried = received[0].trace_context().unwrap();
    assert_eq!(
        opentelemetry::trace::SpanId::from(carried.parent_id()),
        first.span_context.span_id()
    );

    let process = spans
        .iter()
        .filter(|span| span.name == format!("process {queue}"))
        .collect::<Vec<_>>();
    assert_eq!(process.len(), 2, "{spans:#?}");
    for (consumed, produced, settled) in
        [(process[0], first, "ack"), (process[1], second, "reject")]
    {
        assert_eq!(consumed.span_kind, SpanKind::Consumer);
        assert_eq!(consumed.parent_span_id, produced.span_context.span_id());
        assert_eq!(
            consumed.span_context.trace_id(),
            produced.span_context.trace_id()
        );
        assert_eq!(
            attribute(consumed, "messaging.operation.type")
                .map(Value::as_str)
                .as_deref(),
            Some("process")
        );
        assert_eq!(
            attribute(consumed, "messaging.destination.name")
                .map(Value::as_str)
                .as_deref(),
            Some(queue.as_str())
        );
        assert!(
            consumed.events.iter().any(|event| event.name == settled),
            "{settled} event on {consumed:#?}"
        );
    }
    let work = find(&spans, "work");
    assert_eq!(work.parent_span_id, process[0].span_context.span_id());
}
