//! A value in a queue's list that is not a kombu envelope (written there by
//! something else) is not delivered and not lost: it ends in the queue's
//! quarantine, `<queue>.quarantine`, its bytes intact and the error in its
//! `x-kombu-error` header, and the consumer goes on with the next message.
//! With `quarantine=false` it is dropped.

mod common;

use std::time::Duration;

use common::{base_url, connect, prefix};
use futures::StreamExt;
use kombu_core::{Consumer, Producer, PublishOptions, Queue};
use serde_json::json;

const GARBAGE: &[u8] = b"\xff\x00not json at all {";

async fn push_garbage(url: &str, list: &str) {
    let client = redis::Client::open(url).unwrap();
    let push = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("LPUSH")
            .arg(list)
            .arg(GARBAGE)
            .query_async::<i64>(&mut conn)
            .await
    };
    tokio::time::timeout(Duration::from_secs(5), push)
        .await
        .expect("redis answers within 5 s")
        .unwrap();
}

/// The next message the consumer can read (the unreadable one is reported
/// as an error item, and the stream goes on).
async fn next_readable(consumer: &mut Consumer) -> kombu_core::Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery within 10 s")
            .expect("the stream goes on")
        {
            Ok(message) => return message,
            Err(err) => eprintln!("reported, as expected: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_value_ends_in_the_quarantine_with_its_bytes() {
    let Some(url) = base_url() else { return };
    let prefix = prefix("quarantine");
    let conn = connect(&url, &prefix, &[]);
    let queue = kombu_testkit::unique("garbage-q");
    let channel = conn.channel().await.unwrap();
    Queue::new(&queue).declare(channel.as_ref()).await.unwrap();
    push_garbage(&url, &format!("{prefix}{queue}")).await;
    Producer::new(&conn)
        .publish(json!("good"), PublishOptions::new().routing_key(&queue))
        .await
        .unwrap();
    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(&queue))
        .prefetch_count(10)
        .build()
        .await
        .unwrap();
    // The consumer goes on: the next delivery is the good message.
    let good = next_readable(&mut consumer).await;
    assert_eq!(good.decode::<String>().unwrap(), "good");
    good.ack().await.unwrap();
    let quarantine = kombu_core::quarantine_of(&queue);
    let mut held = Consumer::builder(&conn)
        .queue(Queue::new(&quarantine))
        .accept(kombu_core::Accept::all())
        .build()
        .await
        .unwrap();
    let kept = tokio::time::timeout(Duration::from_secs(10), held.next())
        .await
        .expect("quarantined within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(kept.body(), GARBAGE, "the bytes, intact");
    let error = kept.headers().get("x-kombu-error").and_then(|e| e.as_str());
    assert!(error.is_some_and(|e| !e.is_empty()), "{:?}", kept.headers());
    kept.ack().await.unwrap();
    for name in [queue.as_str(), quarantine.as_str()] {
        channel.queue_delete(name).await.unwrap();
    }
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_quarantine_off_a_garbage_value_is_dropped() {
    let Some(url) = base_url() else { return };
    let prefix = prefix("no-quarantine");
    let conn = connect(&url, &prefix, &[("quarantine", json!(false))]);
    let queue = kombu_testkit::unique("garbage-off");
    let channel = conn.channel().await.unwrap();
    Queue::new(&queue).declare(channel.as_ref()).await.unwrap();
    push_garbage(&url, &format!("{prefix}{queue}")).await;
    Producer::new(&conn)
        .publish(json!("good"), PublishOptions::new().routing_key(&queue))
        .await
        .unwrap();
    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(&queue))
        .build()
        .await
        .unwrap();
    let good = next_readable(&mut consumer).await;
    good.ack().await.unwrap();
    let quarantine = kombu_core::quarantine_of(&queue);
    assert_eq!(channel.queue_size(&quarantine).await.unwrap(), 0);
    channel.queue_delete(&queue).await.unwrap();
    conn.close().await.unwrap();
}
