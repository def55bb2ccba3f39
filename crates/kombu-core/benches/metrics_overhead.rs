//! What kombu-rs's metrics cost on the hottest path there is: publish,
//! then consume and ack, one 100-byte message at a time on `memory://`,
//! first with no recorder (the facade's no-op), then with metrics-util's
//! debugging recorder installed (every counter and histogram recording).
//!
//! Run with `cargo bench -p kombu-core --bench metrics_overhead`
//! (figures in docs/metrics.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::StreamExt;
use kombu_core::serialization::Payload;
use kombu_core::{Connection, Consumer, Producer, PublishOptions, Queue, Registry};
use metrics_util::debugging::DebuggingRecorder;

/// Publish `iters` messages, each consumed and acked before the next.
async fn round_trips(
    producer: &Producer,
    consumer: &mut Consumer,
    body: &Bytes,
    iters: u64,
) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        producer
            .publish(Payload::from(body.clone()), PublishOptions::new())
            .await
            .unwrap();
        let message = consumer.next().await.unwrap().unwrap();
        message.ack().await.unwrap();
    }
    started.elapsed()
}

/// One connection, producer and consumer (created after the recorder, as
/// the docs ask), timed over `iters` round trips.
fn run(label: &str, c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut registry = Registry::new();
    kombu_memory::register(&mut registry);
    let url = format!("memory://metrics-overhead-{label}");
    let conn = Connection::with_registry(&url, Arc::new(registry)).unwrap();
    let producer = Producer::new(&conn).routing_key("bench");
    let mut consumer = runtime.block_on(async {
        producer
            .publish(
                "warm-up",
                PublishOptions::new().declare(Queue::new("bench")),
            )
            .await
            .unwrap();
        let mut consumer = Consumer::builder(&conn)
            .queue(Queue::new("bench"))
            .prefetch_count(100)
            .build()
            .await
            .unwrap();
        consumer.next().await.unwrap().unwrap().ack().await.unwrap();
        consumer
    });
    let body = Bytes::from(vec![b'x'; 100]);
    let mut group = c.benchmark_group("memory_publish_consume_ack");
    group.throughput(Throughput::Elements(1));
    group.bench_function(label, |b| {
        b.iter_custom(|iters| runtime.block_on(round_trips(&producer, &mut consumer, &body, iters)))
    });
    group.finish();
}

fn overhead(c: &mut Criterion) {
    run("no_recorder", c);
    DebuggingRecorder::new()
        .install()
        .expect("the only recorder of this process");
    run("debugging_recorder", c);
}

criterion_group!(benches, overhead);
criterion_main!(benches);
