//! Publish N small messages awaited one at a time, then N more with
//! `Producer::publish_many`, then consume and ack all of them (prefetch
//! 100, acks coalesced into `ack_many`), and print the rates. Checks that
//! every message arrived once.
//!
//! ```text
//! cargo run --release -p kombu-couchdb --example publish_many -- [N] [URL]
//! ```
//!
//! The URL defaults to `KOMBU_TEST_COUCHDB_URL`, then
//! `couchdb://127.0.0.1:5984/kombu_bench`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Consumer, Producer, PublishOptions, Queue, Registry};
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> kombu_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let url = args
        .next()
        .or_else(|| std::env::var("KOMBU_TEST_COUCHDB_URL").ok())
        .unwrap_or_else(|| "couchdb://127.0.0.1:5984/kombu_bench".into());
    let mut registry = Registry::new();
    kombu_couchdb::register(&mut registry);
    let conn = Connection::with_registry(&url, Arc::new(registry))?;
    let queue = Queue::new(format!(
        "bench-many-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    let channel = conn.channel().await?;
    queue.declare(channel.as_ref()).await?;
    let producer = Producer::new(&conn);
    let options = PublishOptions::new().routing_key(&queue.name);

    let started = Instant::now();
    for i in 0..n {
        producer.publish(json!({ "n": i }), options.clone()).await?;
    }
    let one_by_one = started.elapsed();

    let started = Instant::now();
    let results = producer
        .publish_many((n..2 * n).map(|i| json!({ "n": i })), options.clone())
        .await;
    let many = started.elapsed();
    for result in results {
        result?;
    }
    let stored = channel.queue_size(&queue.name).await?;
    assert_eq!(stored, 2 * n, "messages stored");

    let mut consumer = Consumer::builder(&conn)
        .queue(queue.clone())
        .prefetch_count(100)
        .build()
        .await?;
    let mut seen = HashSet::new();
    let started = Instant::now();
    for _ in 0..2 * n {
        let message = consumer.next().await.expect("consumer open")?;
        let body: serde_json::Value = message.decode()?;
        assert!(
            seen.insert(body["n"].as_u64().unwrap_or(u64::MAX)),
            "a duplicate"
        );
        message.ack().await?;
    }
    let consume = started.elapsed();
    drop(consumer);
    assert_eq!(seen.len() as u64, 2 * n, "every message once");

    let rate = |count: u64, took: Duration| count as f64 / took.as_secs_f64();
    // Never the login a URL may carry.
    let shown = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let shown = shown.rsplit('@').next().unwrap_or(shown);
    println!(
        "couchdb://{shown}, {n} messages each way: publish one at a time {:.0} msgs/s, \
         publish_many {:.0} msgs/s ({:.1}x); consume+ack of {} (prefetch 100) {:.0} msgs/s",
        rate(n, one_by_one),
        rate(n, many),
        one_by_one.as_secs_f64() / many.as_secs_f64(),
        2 * n,
        rate(2 * n, consume),
    );
    // Wait for the last acks' flush before deleting (they are coalesced).
    tokio::time::sleep(Duration::from_millis(50)).await;
    channel.queue_delete(&queue.name).await?;
    conn.close().await
}
