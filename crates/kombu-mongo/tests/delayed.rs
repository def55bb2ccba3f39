//! Delayed delivery on MongoDB: a delayed message is parked under
//! `_kombu-rs.delayed.<queue>` until due (no consumer of the queue sees it,
//! Python kombu's included), then moved into its queue by the publishing
//! connection or by any kombu-rs fetch of the queue.

mod support;

use std::time::{Duration, Instant};

use kombu_core::{Consumer, Producer, PublishOptions, Queue, TransportOptions};
use mongodb::bson::{Bson, Document};
use serde_json::{json, Value};

use support::*;

/// A fresh database and its URL, or `None` after a skip line.
fn fresh(prefix: &str) -> Option<(String, String)> {
    let url = base_url()?;
    let database = fresh_database(prefix);
    Some((with_database(&url, &database), database))
}

async fn delayed_publish(conn: &kombu_core::Connection, queue: &str, delay: Duration) -> Instant {
    let sent = Instant::now();
    Producer::new(conn)
        .publish(
            json!("later"),
            PublishOptions::new().routing_key(queue).delay(delay),
        )
        .await
        .unwrap();
    sent
}

/// The message documents of `queue` (the queue field as stored).
async fn stored(db: &mongodb::Database, queue: &str) -> Vec<Document> {
    documents(db, "messages")
        .await
        .into_iter()
        .filter(|d| d.get_str("queue") == Ok(queue))
        .collect()
}

/// Parked with its due time, invisible to the queue (and to `size`);
/// moved by the publishing connection's mover when due, with no consumer
/// anywhere, into an ordinary kombu document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_until_due_then_moved_by_the_publisher() {
    let Some((url, database)) = fresh("kombu_delay_park") else {
        return;
    };
    let conn = connection(&url, TransportOptions::new());
    let db = raw_database(&url, &database).await;
    let q = Queue::new("dq");
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let delay = Duration::from_millis(1500);
    let sent = delayed_publish(&conn, &q.name, delay).await;
    let parked = stored(&db, &kombu_mongo::parked_name(&q.name)).await;
    assert_eq!(parked.len(), 1, "parked: {parked:?}");
    assert!(matches!(
        parked[0].get("not_before"),
        Some(Bson::DateTime(_))
    ));
    assert!(stored(&db, &q.name).await.is_empty());
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);
    // No consumer: the publisher's mover moves it.
    let deadline = sent + delay + Duration::from_secs(5);
    let moved = loop {
        let found = stored(&db, &q.name).await;
        if let Some(d) = found.into_iter().next() {
            break d;
        }
        assert!(Instant::now() < deadline, "never moved into its queue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = sent.elapsed();
    println!("delay {delay:?}: moved into its queue after {took:?} (publisher's mover)");
    assert!(took >= delay, "moved after {took:?}, before its time");
    assert!(
        took <= delay + Duration::from_secs(1),
        "moved {took:?} after the publish"
    );
    let keys: Vec<&str> = moved.keys().map(String::as_str).collect();
    assert_eq!(keys, ["_id", "payload", "queue", "priority"]);
    assert!(stored(&db, &kombu_mongo::parked_name(&q.name))
        .await
        .is_empty());
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 1);
    conn.close().await.unwrap();
    drop_database(&db).await;
}

/// A consumer on another connection (which did not publish it, so knows
/// of it only from the database) gets it on time: not before, within a
/// second after, once; and purge drops parked messages too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_connection_consumes_it_on_time() {
    let Some((url, database)) = fresh("kombu_delay_other") else {
        return;
    };
    let db = raw_database(&url, &database).await;
    let consumer_conn = connection(&url, TransportOptions::new());
    let q = Queue::new("dq");
    let mut c = Consumer::builder(&consumer_conn)
        .queue(q.clone())
        .prefetch_count(10)
        .build()
        .await
        .unwrap();
    // The consumer is waiting before the publish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let publisher = connection(&url, TransportOptions::new());
    for delay in [Duration::from_millis(1200), Duration::from_secs(2)] {
        let sent = delayed_publish(&publisher, &q.name, delay).await;
        let m = kombu_testkit::recv_within(
            &mut c,
            delay + Duration::from_secs(10),
            "the delayed message",
        )
        .await
        .unwrap();
        let took = sent.elapsed();
        println!("delay {delay:?}: delivered to another connection after {took:?}");
        assert_eq!(m.decode::<String>().unwrap(), "later");
        assert!(!m.redelivered());
        assert!(took >= delay, "delivered after {took:?}, before {delay:?}");
        assert!(
            took <= delay + Duration::from_secs(1),
            "delivered {took:?} after the publish"
        );
        m.ack().await.unwrap();
    }
    drop(c);
    // Purge drops what is still parked.
    delayed_publish(&publisher, &q.name, Duration::from_secs(60)).await;
    let channel = publisher.channel().await.unwrap();
    assert_eq!(channel.queue_purge(&q.name).await.unwrap(), 1);
    assert!(documents(&db, "messages").await.is_empty());
    publisher.close().await.unwrap();
    consumer_conn.close().await.unwrap();
    drop_database(&db).await;
}

/// A Python kombu 5.7 consumer of the queue does not see a parked message
/// (its `find_one_and_delete({'queue': ...})` does not match it) and gets
/// it, as an ordinary message, once moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kombu_gets_it_when_due() {
    let Some((url, database)) = fresh("kombu_delay_py") else {
        return;
    };
    let Some(python) = kombu_testkit::python_peer() else {
        return;
    };
    let conn = connection(&url, TransportOptions::new());
    let db = raw_database(&url, &database).await;
    let q = Queue::new("dq");
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let delay = Duration::from_secs(2);
    delayed_publish(&conn, &q.name, delay).await;
    let script = r#"
import json, os, time
from kombu import Connection, Queue
started = float(os.environ["STARTED"])
with Connection(os.environ["URL"]) as conn:
    q = Queue("dq")(conn.default_channel)
    deadline = time.time() + 20
    while time.time() < deadline:
        m = q.get(no_ack=False)
        if m is None:
            time.sleep(0.02)
            continue
        print(json.dumps({"body": m.decode(), "after": time.time() - started}))
        m.ack()
        break
"#;
    // The publishing connection stays open: its mover moves the message.
    let out = kombu_testkit::run_python(
        &python,
        script,
        &[("URL", &url), ("STARTED", &started.to_string())],
    )
    .await
    .unwrap();
    let seen: Value = serde_json::from_str(out.trim()).expect("Python got the message");
    println!("Python kombu got the 2 s delayed message: {seen}");
    assert_eq!(seen["body"], "later");
    let after = seen["after"].as_f64().unwrap();
    assert!(after >= 2.0, "Python got it early: {after}");
    assert!(after <= 3.0, "Python got it late: {after}");
    assert!(documents(&db, "messages").await.is_empty());
    conn.close().await.unwrap();
    drop_database(&db).await;
}
