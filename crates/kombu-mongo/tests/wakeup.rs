//! An idle consumer is woken when a message arrives: by its own
//! transport's put, and by the change stream for another process's insert
//! or requeue.
//!
//! Each test sets `polling_interval` to an hour: once the change stream is
//! open an idle fetch polls only every `polling_interval` (and the consume
//! loop's fetch waits five times that), so a message that arrives within
//! the test's generous bound was delivered by a wake-up, not by a poll.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, Consumer, Producer, PublishOptions, Queue, TransportOptions};
use kombu_mongo::MongoBackend;
use serde_json::json;

use support::*;

/// Far longer than any poll pause the tests could see.
const HOUR: f64 = 3600.0;

/// The bound on a delivery the tests wait for: well under the hour a poll
/// would take, long enough for a loaded machine.
const ARRIVAL: Duration = Duration::from_secs(30);

fn slow_polling() -> TransportOptions {
    TransportOptions::new().set("polling_interval", HOUR)
}

/// Wait until `conn`'s change stream is open (its consumer has been idle
/// for a moment); panics after 20 s.
async fn stream_opens(conn: &Connection) {
    let backend: Arc<MongoBackend> = conn.extension::<MongoBackend>().await.expect("backend");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !backend.change_stream_open() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change stream did not open within 20 s (the test server has change streams)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_body(consumer: &mut Consumer) -> String {
    let message = tokio::time::timeout(ARRIVAL, consumer.next())
        .await
        .expect("the idle consumer was not woken")
        .expect("stream open")
        .expect("message");
    let body: String = message.decode().expect("body");
    message.ack().await.expect("ack");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_consumer_is_woken_by_puts_of_this_and_other_processes() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("kwake");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let queue = "wakeq";
    let conn = connection(&url, slow_polling());
    let other = connection(&url, slow_polling());
    let channel = conn.channel().await.unwrap();
    Queue::new(queue).declare(channel.as_ref()).await.unwrap();
    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(queue))
        .prefetch_count(10)
        .build()
        .await
        .unwrap();
    stream_opens(&conn).await;

    // Another process (connection): the change stream reports the insert.
    Producer::new(&other)
        .publish(
            json!("from another"),
            PublishOptions::new().routing_key(queue),
        )
        .await
        .unwrap();
    assert_eq!(next_body(&mut consumer).await, "from another");

    // This transport: its put wakes the consumer (the stream's event for
    // it wakes nobody).
    stream_opens(&conn).await;
    Producer::new(&conn)
        .publish(json!("from here"), PublishOptions::new().routing_key(queue))
        .await
        .unwrap();
    assert_eq!(next_body(&mut consumer).await, "from here");

    // A batch from another process.
    stream_opens(&conn).await;
    let results = Producer::new(&other)
        .publish_many(
            ["b1", "b2", "b3"].map(|b| json!(b)),
            PublishOptions::new().routing_key(queue),
        )
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for expected in ["b1", "b2", "b3"] {
        assert_eq!(next_body(&mut consumer).await, expected);
    }

    consumer.close().await.unwrap();
    let _ = conn.close().await;
    let _ = other.close().await;
    drop_database(&raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_consumer_is_woken_by_another_process_requeue() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("kwakerq");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let queue = "wakerq";
    let holder = connection(&url, slow_polling());
    let holder_channel = holder.channel().await.unwrap();
    Queue::new(queue)
        .declare(holder_channel.as_ref())
        .await
        .unwrap();
    Producer::new(&holder)
        .publish(json!("requeued"), PublishOptions::new().routing_key(queue))
        .await
        .unwrap();
    let held = holder_channel
        .basic_get(queue, false)
        .await
        .unwrap()
        .expect("the holder claims it");

    let waiter = connection(&url, slow_polling());
    let mut consumer = Consumer::builder(&waiter)
        .queue(Queue::new(queue))
        .prefetch_count(1)
        .build()
        .await
        .unwrap();
    stream_opens(&waiter).await;
    holder_channel
        .basic_reject(held.delivery_tag, true)
        .await
        .unwrap();
    let message = tokio::time::timeout(ARRIVAL, consumer.next())
        .await
        .expect("the idle consumer was not woken by the requeue")
        .expect("stream open")
        .expect("message");
    assert!(message.redelivered(), "a requeued message is redelivered");
    message.ack().await.unwrap();

    consumer.close().await.unwrap();
    let _ = waiter.close().await;
    let _ = holder.close().await;
    drop_database(&raw).await;
}

/// A consumer waiting on a queue gets this transport's publish handed
/// over: stored already leased to it (no claim request), deleted by the ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_publish_is_handed_to_the_waiting_consumer_leased() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("khand");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let queue = "handq";
    let conn = connection(&url, slow_polling());
    let backend: Arc<MongoBackend> = conn.extension::<MongoBackend>().await.unwrap();
    let channel = conn.channel().await.unwrap();
    Queue::new(queue).declare(channel.as_ref()).await.unwrap();
    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(queue))
        .prefetch_count(1)
        .build()
        .await
        .unwrap();
    // Idle long enough for its fetch to wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Producer::new(&conn)
        .publish(json!("handed"), PublishOptions::new().routing_key(queue))
        .await
        .unwrap();
    let message = tokio::time::timeout(ARRIVAL, consumer.next())
        .await
        .expect("delivered")
        .expect("stream open")
        .expect("message");
    assert_eq!(message.decode::<String>().unwrap(), "handed");
    assert!(!message.redelivered());
    assert_eq!(backend.handed_over(), 1, "the publish was handed over");
    let stored = documents(&raw, "messages").await;
    assert_eq!(stored.len(), 1, "stored before the ack: {stored:?}");
    assert_eq!(
        stored[0].get_str("lease_owner").ok(),
        Some(backend.lease_owner()),
        "stored leased to this transport"
    );
    message.ack().await.unwrap();
    consumer.close().await.unwrap();
    assert!(
        documents(&raw, "messages").await.is_empty(),
        "the ack deleted it"
    );
    let _ = conn.close().await;
    drop_database(&raw).await;
}
