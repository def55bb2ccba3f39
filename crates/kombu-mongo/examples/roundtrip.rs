//! Publish N messages to a fresh queue, then consume and ack them; print
//! the rates. `N` defaults to 100 (SecantusDB scans the queue on each claim).
//!
//! ```text
//! cargo run -p kombu-mongo --release --example roundtrip -- \
//!     'mongodb://127.0.0.1:27017/kombu_bench?retryWrites=false' 100
//! ```

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kombu_core::{Connection, Consumer, Producer, PublishOptions, Queue, Registry};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> kombu_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "mongodb://127.0.0.1:27017/kombu_bench?retryWrites=false".into());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100);
    let mut registry = Registry::new();
    kombu_mongo::register(&mut registry);
    let conn = Connection::with_registry(&url, Arc::new(registry))?;
    let queue = Queue::new(format!("bench-{}", std::process::id()));
    let channel = conn.channel().await?;
    queue.declare(channel.as_ref()).await?;

    let producer = Producer::new(&conn);
    let started = Instant::now();
    for i in 0..n {
        producer
            .publish(
                serde_json::json!({ "n": i }),
                PublishOptions::new().routing_key(&queue.name),
            )
            .await?;
    }
    let published = started.elapsed();

    let mut consumer = Consumer::builder(&conn)
        .queue(queue.clone())
        .prefetch_count(10)
        .build()
        .await?;
    let started = Instant::now();
    for _ in 0..n {
        let message = consumer.next().await.expect("stream open")?;
        message.ack().await?;
    }
    let consumed = started.elapsed();
    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
    println!(
        "{n} messages: publish {:.0}/s ({published:.2?}), consume+ack {:.0}/s ({consumed:.2?})",
        rate(published),
        rate(consumed)
    );
    channel.queue_delete(&queue.name).await?;
    conn.close().await
}
