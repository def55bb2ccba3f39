//! Publish then consume N messages on `couchdb://` and print the rates.
//!
//! ```text
//! KOMBU_TEST_COUCHDB_URL=couchdb://127.0.0.1:5984/kombu_test \
//!     cargo run --release -p kombu-couchdb --example couchdb_throughput -- 200
//! ```

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kombu_core::{Connection, Consumer, Producer, PublishOptions, Queue, Registry, Result};

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("KOMBU_TEST_COUCHDB_URL")
        .unwrap_or_else(|_| "couchdb://127.0.0.1:5984/kombu_bench".into());
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let mut registry = Registry::new();
    kombu_couchdb::register(&mut registry);
    let conn = Connection::with_registry(&url, Arc::new(registry))?;
    let queue = Queue::new(format!("bench-{}", std::process::id()));
    let channel = conn.channel().await?;
    queue.declare(channel.as_ref()).await?;

    let producer = Producer::new(&conn);
    let started = Instant::now();
    for i in 0..count {
        producer
            .publish(
                serde_json::json!({ "n": i }),
                PublishOptions::new().routing_key(&queue.name),
            )
            .await?;
    }
    let publish = started.elapsed();

    let mut consumer = Consumer::builder(&conn)
        .queue(queue.clone())
        .prefetch_count(10)
        .build()
        .await?;
    let started = Instant::now();
    for _ in 0..count {
        let message = consumer.next().await.expect("consumer ended")?;
        message.ack().await?;
    }
    let consume = started.elapsed();
    drop(consumer);
    channel.queue_delete(&queue.name).await?;
    conn.close().await?;
    let rate = |d: std::time::Duration| count as f64 / d.as_secs_f64();
    println!(
        "{count} messages: publish {:.0} msg/s ({:.1} ms each), consume+ack {:.0} msg/s ({:.1} ms each)",
        rate(publish),
        publish.as_secs_f64() * 1000.0 / count as f64,
        rate(consume),
        consume.as_secs_f64() * 1000.0 / count as f64,
    );
    Ok(())
}
