//! Publish N small messages awaited one at a time, then N more with
//! `Producer::publish_many`, then consume and ack all of them (prefetch
//! 100, acks coalesced), print the rates, and check that every message
//! arrived once. Runs on any transport compiled in:
//!
//! ```text
//! cargo run --release -p kombu --example publish_many -- [N] [URL]
//! cargo run --release -p kombu --features beanstalk --example publish_many -- 20000 beanstalk://127.0.0.1:11300
//! cargo run --release -p kombu --features couchdb --example publish_many -- 1000 couchdb://127.0.0.1:5984/kombu_bench
//! ```
//!
//! The URL defaults to `KOMBU_URL`, then `memory://`.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kombu::{Connection, Consumer, Producer, PublishOptions, Queue};
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> kombu::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let url = args
        .next()
        .or_else(|| std::env::var("KOMBU_URL").ok())
        .unwrap_or_else(|| "memory://".into());
    kombu::install_default_transports();
    let conn = Connection::new(&url)?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let queue = Queue::new(format!("bench-many-{stamp:x}"));
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
    consumer.close().await?;
    assert_eq!(seen.len() as u64, 2 * n, "every message once");

    let rate = |count: u64, took: Duration| count as f64 / took.as_secs_f64();
    // `as_uri` never shows the password.
    println!(
        "{}, {n} messages each way: publish one at a time {:.0} msgs/s, \
         publish_many {:.0} msgs/s ({:.1}x); consume+ack of {} (prefetch 100) {:.0} msgs/s",
        conn.as_uri(),
        rate(n, one_by_one),
        rate(n, many),
        one_by_one.as_secs_f64() / many.as_secs_f64(),
        2 * n,
        rate(2 * n, consume),
    );
    channel.queue_delete(&queue.name).await?;
    conn.close().await
}
