//! Publish then consume N small messages over `beanstalk://` and print the
//! rates. `cargo run --release -p kombu-beanstalk --example throughput -- [N] [URL]`

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kombu_core::{Connection, Consumer, Exchange, Producer, PublishOptions, Queue, Registry};
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> kombu_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let url = args
        .next()
        .unwrap_or_else(|| "beanstalk://127.0.0.1:11300".into());
    let mut registry = Registry::new();
    kombu_beanstalk::register(&mut registry);
    let conn = Connection::with_registry(&url, Arc::new(registry))?;
    let tag = uuid_suffix();
    let queue = Queue::new(format!("bench-{tag}"));
    let channel = conn.channel().await?;
    queue.declare(channel.as_ref()).await?;

    let producer = Producer::new(&conn);
    let started = Instant::now();
    for i in 0..n {
        producer
            .publish(
                json!({"i": i}),
                PublishOptions::new().routing_key(&queue.name),
            )
            .await?;
    }
    let publish = started.elapsed();

    let mut consumer = Consumer::builder(&conn)
        .queue(queue.clone())
        .prefetch_count(100)
        .build()
        .await?;
    let started = Instant::now();
    for _ in 0..n {
        let m = consumer.next().await.expect("stream open")?;
        m.ack().await?;
    }
    let consume = started.elapsed();

    // Through a fanout exchange (two bound queues): the binding table is
    // read from beanstalkd on every publish.
    let exchange = Exchange::fanout(format!("bench-fanout-{tag}"));
    let q1 = Queue::new(format!("bench-f1-{tag}")).bind(&exchange, "");
    let q2 = Queue::new(format!("bench-f2-{tag}")).bind(&exchange, "");
    for q in [&q1, &q2] {
        q.declare(channel.as_ref()).await?;
        for b in &q.bindings {
            channel.queue_bind(&q.name, b).await?;
        }
    }
    let fanout_producer = Producer::new(&conn).exchange(exchange.clone());
    let m = n.min(2000);
    let started = Instant::now();
    for i in 0..m {
        fanout_producer
            .publish(json!({"i": i}), PublishOptions::new())
            .await?;
    }
    let fanout = started.elapsed();

    println!(
        "{n} messages: publish {:.0} msg/s, consume+ack (prefetch 100) {:.0} msg/s; \
         fanout to 2 queues: {:.0} publishes/s ({m} publishes)",
        n as f64 / publish.as_secs_f64(),
        n as f64 / consume.as_secs_f64(),
        m as f64 / fanout.as_secs_f64(),
    );
    for q in [&queue, &q1, &q2] {
        channel.queue_delete(&q.name).await?;
    }
    channel.exchange_delete(&exchange.name).await?;
    conn.close().await
}

fn uuid_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}
