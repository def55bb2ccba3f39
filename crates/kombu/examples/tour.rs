//! A tour of kombu-rs on the embedded default transport (`memory://`, or
//! the URL given as the first argument / `KOMBU_URL`): publish through a
//! direct, a topic and a fanout exchange and print what each queue got.
//!
//! ```text
//! cargo run -p kombu --example tour
//! ```

use std::time::Duration;

use futures::StreamExt;
use kombu::{Connection, Consumer, Exchange, Producer, PublishOptions, Queue};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> kombu::Result<()> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("KOMBU_URL").ok())
        .unwrap_or_else(|| "memory://tour".into());
    let conn = Connection::new(&url)?;
    println!("connected to {} ({})", conn.as_uri(), conn.transport_name());

    let direct = Exchange::direct("tour.direct");
    let topic = Exchange::topic("tour.topic");
    let fanout = Exchange::fanout("tour.fanout");
    let queues = [
        Queue::new("tour.images").bind(&direct, "images"),
        Queue::new("tour.errors").bind(&topic, "*.error"),
        Queue::new("tour.all-logs").bind(&topic, "#"),
        Queue::new("tour.audit").bind(&fanout, ""),
        Queue::new("tour.backup").bind(&fanout, ""),
    ];
    let channel = conn.channel().await?;
    for queue in &queues {
        queue.declare(channel.as_ref()).await?;
        channel.queue_purge(&queue.name).await?;
    }

    let sends = [
        (&direct, "images", json!({"resize": "cat.png"})),
        (&direct, "videos", json!({"transcode": "unrouted.mp4"})),
        (&topic, "app.error", json!({"log": "disk full"})),
        (&topic, "app.info", json!({"log": "started"})),
        (&fanout, "", json!({"event": "user signed up"})),
    ];
    for (exchange, routing_key, body) in sends {
        Producer::new(&conn)
            .exchange(exchange.clone())
            .publish(body.clone(), PublishOptions::new().routing_key(routing_key))
            .await?;
        println!(
            "published to {:<11} {:<10} {body}",
            format!("{}({})", exchange.name, exchange.kind),
            format!("key={routing_key:?}")
        );
    }

    let mut consumer = Consumer::builder(&conn)
        .queues(queues.iter().cloned())
        .prefetch_count(10)
        .build()
        .await?;
    let mut received = 0;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(300), consumer.next()).await
    {
        let message = message?;
        let queue = message.delivery_info().queue.clone().unwrap_or_default();
        println!("{queue:<15} got {}", message.decode::<serde_json::Value>()?);
        message.ack().await?;
        received += 1;
    }
    println!("{received} messages received (6 expected: the \"videos\" one matched no queue)");
    conn.close().await?;
    if received == 6 {
        Ok(())
    } else {
        Err(kombu::Error::new(
            kombu::ErrorKind::Other,
            format!("expected 6 messages, got {received}"),
        ))
    }
}
