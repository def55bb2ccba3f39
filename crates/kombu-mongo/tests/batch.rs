//! Batches: a batch publish is one `insert_many` of the documents a single
//! publish writes; a consumer with a prefetch window claims a batch under
//! one lease and its acks delete them together; consumers competing for a
//! queue get each message once.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Consumer, Message, Producer, PublishOptions, Queue, TransportOptions};
use mongodb::bson::{Bson, Document};
use serde_json::{json, Value};

use support::*;

fn keys(document: &Document) -> Vec<&str> {
    document.keys().map(String::as_str).collect()
}

fn payload(document: &Document) -> Value {
    serde_json::from_str(document.get_str("payload").expect("payload is a string"))
        .expect("payload is JSON")
}

/// The envelope's keys, nested, in order (what kombu reads).
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Array(
            map.iter()
                .map(|(key, value)| json!([key, shape(value)]))
                .collect(),
        ),
        _ => Value::Null,
    }
}

async fn next_message(consumer: &mut Consumer) -> Message {
    tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("a message within 30 s")
        .expect("stream open")
        .expect("message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_many_writes_what_publish_writes() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("kputmany");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    // With `ttl` each document gets its `expire_at` too.
    let conn = connection(&url, TransportOptions::new().set("ttl", true));
    let channel = conn.channel().await.unwrap();
    let queue = "manyq";
    Queue::new(queue)
        .message_ttl(Duration::from_secs(60))
        .declare(channel.as_ref())
        .await
        .unwrap();
    let options = PublishOptions::new().routing_key(queue).priority(3);
    let producer = Producer::new(&conn);
    producer
        .publish(json!({"n": 0}), options.clone())
        .await
        .unwrap();
    let results = producer
        .publish_many((1..=4).map(|n| json!({ "n": n })), options)
        .await;
    assert_eq!(results.len(), 4);
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let messages = documents(&raw, "messages").await;
    assert_eq!(messages.len(), 5, "{messages:?}");
    let single = &messages[0];
    let single_payload = payload(single);
    let mut ids = Vec::new();
    for document in &messages {
        assert_eq!(
            keys(document),
            ["_id", "payload", "queue", "priority", "expire_at"]
        );
        assert_eq!(document.get_str("queue").unwrap(), queue);
        assert_eq!(document.get("priority"), Some(&Bson::Int32(6)));
        assert!(matches!(document.get("expire_at"), Some(Bson::DateTime(_))));
        let envelope = payload(document);
        assert_eq!(
            shape(&envelope),
            shape(&single_payload),
            "same envelope layout"
        );
        for field in ["content-type", "content-encoding", "headers"] {
            assert_eq!(envelope[field], single_payload[field], "{field}");
        }
        assert_eq!(
            envelope["properties"]["delivery_info"],
            single_payload["properties"]["delivery_info"]
        );
        assert_eq!(envelope["properties"]["priority"], json!(3));
        ids.push(document.get_object_id("_id").unwrap());
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "stored in publish order");

    // Consumed in publish order.
    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(queue))
        .declare(false)
        .prefetch_count(10)
        .build()
        .await
        .unwrap();
    for n in 0..=4 {
        let message = next_message(&mut consumer).await;
        assert_eq!(message.decode::<Value>().unwrap(), json!({ "n": n }));
        message.ack().await.unwrap();
    }
    consumer.close().await.unwrap();
    assert!(documents(&raw, "messages").await.is_empty(), "acks delete");
    let _ = conn.close().await;
    drop_database(&raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_window_is_claimed_under_one_lease_and_acked_together() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("kbatch");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let conn = connection(&url, TransportOptions::new());
    let channel = conn.channel().await.unwrap();
    let queue = "batchq";
    Queue::new(queue).declare(channel.as_ref()).await.unwrap();
    let results = Producer::new(&conn)
        .publish_many(
            (0..12).map(|n| json!(n)),
            PublishOptions::new().routing_key(queue),
        )
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(queue))
        .declare(false)
        .prefetch_count(8)
        .build()
        .await
        .unwrap();
    let mut held = Vec::new();
    for n in 0..8 {
        let message = next_message(&mut consumer).await;
        assert_eq!(message.decode::<i64>().unwrap(), n);
        held.push(message);
    }
    let stored = documents(&raw, "messages").await;
    assert_eq!(stored.len(), 12, "nothing deleted before its ack");
    let leased: Vec<&Document> = stored
        .iter()
        .filter(|d| d.get_str("lease_id").is_ok())
        .collect();
    assert_eq!(leased.len(), 8, "the prefetch window is leased: {stored:?}");
    let lease_ids: HashSet<&str> = leased
        .iter()
        .map(|d| d.get_str("lease_id").unwrap())
        .collect();
    assert_eq!(
        lease_ids.len(),
        1,
        "one claim for the window: {lease_ids:?}"
    );
    assert_eq!(
        channel.queue_size(queue).await.unwrap(),
        4,
        "leased messages are not ready"
    );

    for message in held {
        message.ack().await.unwrap();
    }
    for n in 8..12 {
        let message = next_message(&mut consumer).await;
        assert_eq!(message.decode::<i64>().unwrap(), n);
        message.ack().await.unwrap();
    }
    consumer.close().await.unwrap();
    assert!(
        documents(&raw, "messages").await.is_empty(),
        "every ack deleted its message"
    );
    let _ = conn.close().await;
    drop_database(&raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_batch_claims_deliver_each_message_once() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("kcompete");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let queue = "competeq";
    const MESSAGES: i64 = 120;
    let publisher = connection(&url, TransportOptions::new());
    let channel = publisher.channel().await.unwrap();
    Queue::new(queue).declare(channel.as_ref()).await.unwrap();
    let results = Producer::new(&publisher)
        .publish_many(
            (0..MESSAGES).map(|n| json!(n)),
            PublishOptions::new().routing_key(queue),
        )
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    // Three consumers, each on its own connection (its own transport),
    // claiming batches of the same queue at once.
    let mut tasks = Vec::new();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<i64>();
    for _ in 0..3 {
        let conn = connection(&url, TransportOptions::new());
        let seen = seen_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut consumer = Consumer::builder(&conn)
                .queue(Queue::new(queue))
                .declare(false)
                .prefetch_count(20)
                .build()
                .await
                .unwrap();
            while let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_secs(3), consumer.next()).await
            {
                let message = message.unwrap();
                seen.send(message.decode::<i64>().unwrap()).unwrap();
                message.ack().await.unwrap();
            }
            consumer.close().await.unwrap();
            let _ = conn.close().await;
        }));
    }
    drop(seen_tx);
    for task in tasks {
        task.await.unwrap();
    }
    let mut seen = Vec::new();
    while let Some(n) = seen_rx.recv().await {
        seen.push(n);
    }
    let distinct: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), distinct.len(), "a message was delivered twice");
    assert_eq!(distinct.len() as i64, MESSAGES, "messages were lost");
    assert!(documents(&raw, "messages").await.is_empty());
    let _ = publisher.close().await;
    drop_database(&raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_batch_leases_are_renewed_until_acked() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("krenew");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let queue = "renewq";
    // Leases of 1 s, renewed every 0.2 s.
    let options = TransportOptions::new()
        .set("lease_timeout", 1.0)
        .set("lease_renew_interval", 0.2);
    let holder = connection(&url, options.clone());
    let thief = connection(&url, options);
    let channel = holder.channel().await.unwrap();
    Queue::new(queue).declare(channel.as_ref()).await.unwrap();
    let results = Producer::new(&holder)
        .publish_many(
            (0..3).map(|n| json!(n)),
            PublishOptions::new().routing_key(queue),
        )
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut consumer = Consumer::builder(&holder)
        .queue(Queue::new(queue))
        .declare(false)
        .prefetch_count(3)
        .build()
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next_message(&mut consumer).await);
    }
    let first_deadline = |documents: &[Document]| {
        documents
            .iter()
            .map(|d| {
                d.get_datetime("lease_until")
                    .expect("leased")
                    .timestamp_millis()
            })
            .min()
            .expect("documents")
    };
    let claimed_until = first_deadline(&documents(&raw, "messages").await);

    // Held for more than twice the lease: renewal keeps every lease.
    let thief_channel = thief.channel().await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            thief_channel
                .basic_get(queue, false)
                .await
                .unwrap()
                .is_none(),
            "a renewed lease is not claimable"
        );
    }
    let stored = documents(&raw, "messages").await;
    assert_eq!(stored.len(), 3);
    assert!(
        first_deadline(&stored) > claimed_until + 1000,
        "every lease was pushed back: {stored:?}"
    );
    for message in held {
        assert!(!message.redelivered());
        message.ack().await.unwrap();
    }
    consumer.close().await.unwrap();
    assert!(documents(&raw, "messages").await.is_empty());
    let _ = holder.close().await;
    let _ = thief.close().await;
    drop_database(&raw).await;
}
