//! The visibility timeout (the consumer's ack wait) and lease extension
//! (in-progress acks) on `nats://` (KOMBU_TEST_NATS_URL).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::{Connection, Consumer, Producer, PublishOptions, Queue, Registry};
use kombu_nats::NatsBackend;

/// A connection whose unacked messages come back after 2 s.
fn connect() -> Option<Connection> {
    let url = kombu_testkit::test_url("nats")?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut registry = Registry::new();
    kombu_nats::register(&mut registry);
    Some(
        Connection::with_registry(
            &format!("{url}{sep}visibility_timeout=2"),
            Arc::new(registry),
        )
        .expect("KOMBU_TEST_NATS_URL"),
    )
}

/// Publish one message to a fresh queue and take it (unacked) with a consumer of `conn`.
async fn hold_one(conn: &Connection, queue: &Queue) -> (Consumer, kombu_core::Message) {
    let channel = conn.channel().await.unwrap();
    queue.declare(channel.as_ref()).await.unwrap();
    Producer::new(conn)
        .publish("held", PublishOptions::new().routing_key(&queue.name))
        .await
        .unwrap();
    let mut consumer = Consumer::builder(conn)
        .queue(queue.clone())
        .prefetch_count(1)
        .build()
        .await
        .unwrap();
    let message = kombu_testkit::recv(&mut consumer).await.unwrap();
    assert!(!message.redelivered());
    (consumer, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_message_comes_back_after_the_visibility_timeout() {
    let (Some(holder), Some(other)) = (connect(), connect()) else {
        return;
    };
    let queue = Queue::new(kombu_testkit::unique("visibility-q"));
    let (_consumer, held) = hold_one(&holder, &queue).await;
    let started = Instant::now();
    let again = other.simple_queue(&queue.name);
    let message = again
        .get(Some(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the held message delivered again within 10 s");
    let after = started.elapsed();
    assert!(message.redelivered(), "not flagged redelivered");
    assert!(
        after >= Duration::from_millis(1500),
        "delivered again after {after:?}, before the 2 s visibility timeout"
    );
    message.ack().await.unwrap();
    held.ack().await.unwrap();
    let channel = holder.channel().await.unwrap();
    channel.queue_delete(&queue.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_lease_keeps_a_message_past_the_visibility_timeout() {
    let (Some(holder), Some(other)) = (connect(), connect()) else {
        return;
    };
    let queue = Queue::new(kombu_testkit::unique("lease-q"));
    let (_consumer, held) = hold_one(&holder, &queue).await;
    let backend = holder.extension::<NatsBackend>().await.unwrap();
    let watcher = other.simple_queue(&queue.name);
    // 4 s held (twice the visibility timeout), the lease extended every second.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        backend.extend_lease(&held).await.unwrap();
        assert!(
            watcher.get_nowait().await.unwrap().is_none(),
            "delivered to another consumer while its lease was extended"
        );
    }
    held.ack().await.unwrap();
    // Stopped extending and acked: it never comes again.
    assert!(watcher
        .get(Some(Duration::from_secs(3)))
        .await
        .unwrap()
        .is_none());
    let channel = holder.channel().await.unwrap();
    channel.queue_delete(&queue.name).await.unwrap();
}
