//! The run loop ([`kombu::Worker`]) on memory://: handlers ack by
//! returning Ok, a failing handler's message is dead-lettered and the
//! worker goes on, and shutdown returns what was not handled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kombu::{Connection, Exchange, Message, Producer, PublishOptions, Queue, Worker};
use kombu_testkit::unique;
use tokio::sync::Notify;

async fn publish_numbers(conn: &Connection, queue: &Queue, numbers: std::ops::Range<u64>) {
    let producer = Producer::new(conn);
    for n in numbers {
        producer
            .publish(
                serde_json::json!({ "n": n }),
                PublishOptions::new()
                    .routing_key(queue.name.clone())
                    .declare(queue.clone()),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_ack_and_failures_are_dead_lettered() {
    kombu::install_default_transports();
    let conn = Connection::new(&format!("memory://{}", unique("worker"))).unwrap();
    let dead = Exchange::direct("dead");
    let dead_letters = Queue::new("dead-letters").bind(&dead, "failed");
    let queue = Queue::new("jobs")
        .dead_letter_exchange("dead")
        .dead_letter_routing_key("failed");
    let channel = conn.channel().await.unwrap();
    conn.declare_queue(channel.as_ref(), &dead_letters)
        .await
        .unwrap();
    publish_numbers(&conn, &queue, 0..20).await;

    let seen = Arc::new(AtomicU64::new(0));
    let all_seen = Arc::new(Notify::new());
    let (counter, done) = (seen.clone(), all_seen.clone());
    let stats = Worker::new(&conn)
        .queue(queue.clone())
        .concurrency(4)
        .run(
            move |message: Arc<Message>| {
                let (counter, done) = (counter.clone(), done.clone());
                async move {
                    let body: serde_json::Value = message.decode()?;
                    let n = body["n"].as_u64().unwrap();
                    if counter.fetch_add(1, Ordering::SeqCst) + 1 == 20 {
                        done.notify_one();
                    }
                    if n.is_multiple_of(5) {
                        return Err(kombu::Error::new(
                            kombu::ErrorKind::Other,
                            "multiples of five fail",
                        ));
                    }
                    Ok(())
                }
            },
            async move { all_seen.notified().await },
        )
        .await
        .unwrap();
    assert_eq!(stats.handled, 20);
    assert_eq!(stats.acked, 16);
    assert_eq!(stats.rejected, 4);
    assert_eq!(stats.settle_errors, 0);
    assert_eq!(channel.queue_size("jobs").await.unwrap(), 0);
    assert_eq!(
        channel.queue_size("dead-letters").await.unwrap(),
        4,
        "the failed ones were dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_running_handlers_and_returns_the_rest() {
    kombu::install_default_transports();
    let conn = Connection::new(&format!("memory://{}", unique("worker-stop"))).unwrap();
    let queue = Queue::new("slow");
    publish_numbers(&conn, &queue, 0..10).await;

    let started = Arc::new(Notify::new());
    let signal = started.clone();
    let stats = Worker::new(&conn)
        .queue(queue.clone())
        .prefetch_count(5)
        .run(
            move |_message: Arc<Message>| {
                let signal = signal.clone();
                async move {
                    signal.notify_one();
                    // Still running when shutdown comes: the worker waits.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(())
                }
            },
            async move { started.notified().await },
        )
        .await
        .unwrap();
    assert_eq!(stats.handled, 1, "shutdown came during the first message");
    assert_eq!(stats.acked, 1, "the running handler finished and acked");
    let channel = conn.channel().await.unwrap();
    assert_eq!(
        channel.queue_size("slow").await.unwrap(),
        9,
        "prefetched but unhandled messages went back"
    );
}

#[tokio::test]
async fn a_worker_needs_a_queue() {
    kombu::install_default_transports();
    let conn = Connection::new("memory://").unwrap();
    let err = Worker::new(&conn)
        .run(|_m: Arc<Message>| async { Ok(()) }, async {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), kombu::ErrorKind::InvalidOption);
}
