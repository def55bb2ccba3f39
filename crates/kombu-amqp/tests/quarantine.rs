//! The amqp quarantine beyond the conformance check: a reject with the
//! `quarantine=false` option is RabbitMQ's drop; a queue this connection
//! did not declare is left to RabbitMQ; a quarantined message keeps its
//! properties and headers; a requeue is never quarantined.

mod common;

use std::time::Duration;

use futures::StreamExt;
use kombu_core::{
    Connection, ConnectionOptions, Consumer, Message, Producer, PublishOptions, Queue,
    TransportOptions,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn connect(url: &str, quarantine: bool) -> Connection {
    common::connection(
        url,
        ConnectionOptions::new()
            .transport_options(TransportOptions::new().set("quarantine", quarantine)),
    )
}

async fn next(consumer: &mut Consumer) -> Message {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the stream goes on")
        .expect("a message")
}

async fn publish(conn: &Connection, queue: &str, body: &str) {
    Producer::new(conn)
        .publish(
            json!(body),
            PublishOptions::new()
                .routing_key(queue)
                .header("trace", "t-1")
                .correlation_id("c-1"),
        )
        .await
        .unwrap();
}

/// The size of `queue` as RabbitMQ counts it, after a moment (its counts
/// are updated asynchronously), asked on a connection of its own.
async fn size_of(url: &str, queue: &str) -> u64 {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conn = connect(url, true);
    let channel = conn.channel().await.unwrap();
    let size = channel.queue_size(queue).await.unwrap_or(0);
    conn.close().await.unwrap();
    size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_keeps_its_properties_and_a_requeue_is_not_quarantined() {
    let Some(url) = common::url() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let conn = connect(&url, true);
        let channel = conn.channel().await.unwrap();
        let queue = kombu_testkit::unique("amqp-quar");
        let quarantine = kombu_core::quarantine_of(&queue);
        Queue::new(&queue).declare(channel.as_ref()).await.unwrap();
        publish(&conn, &queue, "kept").await;
        let mut consumer = Consumer::builder(&conn)
            .queue(Queue::new(&queue))
            .prefetch_count(1)
            .build()
            .await
            .unwrap();
        let first = next(&mut consumer).await;
        first.requeue().await.unwrap();
        let again = next(&mut consumer).await;
        assert!(again.redelivered(), "the requeue put it back in its queue");
        again.reject().await.unwrap();
        let mut held = Consumer::builder(&conn)
            .queue(Queue::new(&quarantine))
            .build()
            .await
            .unwrap();
        let kept = next(&mut held).await;
        assert_eq!(kept.decode::<String>().unwrap(), "kept");
        assert_eq!(kept.headers().get("trace"), Some(&json!("t-1")));
        assert_eq!(
            kept.delivery().message.properties.correlation_id.as_deref(),
            Some("c-1")
        );
        let death = &kept.headers()["x-death"][0];
        assert_eq!(death["reason"], "rejected");
        assert_eq!(death["queue"], json!(queue));
        assert_eq!(death["count"], 1, "one reject: the requeue is not a death");
        assert!(kept.headers()["x-kombu-error"].is_string());
        kept.ack().await.unwrap();
        drop((consumer, held));
        for name in [&queue, &quarantine] {
            channel.queue_delete(name).await.unwrap();
        }
        conn.close().await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_quarantine_off_or_a_queue_declared_elsewhere_rabbitmq_decides() {
    let Some(url) = common::url() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        // quarantine=false: the reject is RabbitMQ's (no dead-letter
        // exchange: dropped).
        let off = connect(&url, false);
        assert!(!off.capabilities().await.unwrap().quarantine);
        let channel = off.channel().await.unwrap();
        let queue = kombu_testkit::unique("amqp-quar-off");
        Queue::new(&queue).declare(channel.as_ref()).await.unwrap();
        publish(&off, &queue, "dropped").await;
        let mut consumer = Consumer::builder(&off)
            .queue(Queue::new(&queue))
            .build()
            .await
            .unwrap();
        next(&mut consumer).await.reject().await.unwrap();
        drop(consumer);
        let quarantine = kombu_core::quarantine_of(&queue);
        assert_eq!(size_of(&url, &queue).await, 0, "dropped from its queue");
        assert_eq!(size_of(&url, &quarantine).await, 0, "no quarantine");
        // Declared by `off`, consumed by another connection that never
        // declared it (passive consumers): its arguments are unknown
        // there, so the reject is RabbitMQ's too.
        publish(&off, &queue, "dropped too").await;
        let other = connect(&url, true);
        let mut passive = Consumer::builder(&other)
            .queue(Queue::new(&queue).passive(true))
            .build()
            .await
            .unwrap();
        next(&mut passive).await.reject().await.unwrap();
        drop(passive);
        assert_eq!(size_of(&url, &quarantine).await, 0, "left to RabbitMQ");
        channel.queue_delete(&queue).await.unwrap();
        let _ = channel.queue_delete(&quarantine).await;
        other.close().await.unwrap();
        off.close().await.unwrap();
    })
    .await
    .expect("bounded");
}
