//! Fanout across two processes: each binds its own queue to the same
//! fanout exchange, and a message published by either reaches both. This
//! works because the binding table lives in beanstalkd, not in a process.

mod common;

use std::time::Duration;

use common::{child_mode, connect_with, next_line, say, spawn_child, wait_for};
use kombu_core::{ConnectionOptions, Consumer, Exchange, Producer, PublishOptions, Queue};
use kombu_testkit::recv;
use serde_json::{json, Value};

/// Child side: bind a queue to the exchange, say READY, print what arrives,
/// then publish `from-child` and wait to be told to go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_fanout_member() {
    if child_mode().as_deref() != Some("fanout") {
        return;
    }
    let exchange = Exchange::fanout(std::env::var("KOMBU_BEANSTALK_EXCHANGE").unwrap());
    let queue = Queue::new(std::env::var("KOMBU_BEANSTALK_QUEUE").unwrap()).bind(&exchange, "");
    let conn = connect_with(ConnectionOptions::new()).unwrap();
    let mut c = Consumer::builder(&conn)
        .queue(queue.clone())
        .build()
        .await
        .unwrap();
    say("READY");
    let m = recv(&mut c).await.unwrap();
    say(&format!("BODY {}", m.decode::<Value>().unwrap()));
    m.ack().await.unwrap();
    Producer::new(&conn)
        .exchange(exchange)
        .publish(
            json!("from-child"),
            PublishOptions::new().routing_key("any"),
        )
        .await
        .unwrap();
    say("PUBLISHED");
    // Our own copy of our own message.
    let m = recv(&mut c).await.unwrap();
    say(&format!("BODY {}", m.decode::<Value>().unwrap()));
    m.ack().await.unwrap();
    c.channel().queue_delete(&queue.name).await.unwrap();
    conn.close().await.unwrap();
    say("DONE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_process() {
    if child_mode().is_some() {
        return;
    }
    let Some(conn) = connect_with(ConnectionOptions::new()) else {
        return;
    };
    let exchange = Exchange::fanout(kombu_testkit::unique("xproc-fanout"));
    let mine = Queue::new(kombu_testkit::unique("xproc-parent")).bind(&exchange, "");
    let theirs = kombu_testkit::unique("xproc-child");
    let mut c = Consumer::builder(&conn)
        .queue(mine.clone())
        .build()
        .await
        .unwrap();
    let (mut child, mut lines) = spawn_child(
        "child_fanout_member",
        "fanout",
        &[
            ("KOMBU_BEANSTALK_EXCHANGE", &exchange.name),
            ("KOMBU_BEANSTALK_QUEUE", &theirs),
        ],
    );
    wait_for(&mut lines, "READY").await;
    // The child's binding is visible here: publish from a second connection.
    let other = connect_with(ConnectionOptions::new()).unwrap();
    let channel = other.channel().await.unwrap();
    Producer::new(&other)
        .exchange(exchange.clone())
        .publish(json!("from-parent"), PublishOptions::new().routing_key("x"))
        .await
        .unwrap();
    let m = recv(&mut c).await.unwrap();
    assert_eq!(m.decode::<Value>().unwrap(), json!("from-parent"));
    m.ack().await.unwrap();
    let mut child_got = Vec::new();
    while let Some(line) = next_line(&mut lines, Duration::from_secs(20)).await {
        if let Some(body) = line.strip_prefix("BODY ") {
            child_got.push(body.to_owned());
        }
        if line.ends_with("DONE") {
            break;
        }
    }
    // The child's publish reached the parent's queue through the parent's binding.
    let m = recv(&mut c).await.unwrap();
    assert_eq!(m.decode::<Value>().unwrap(), json!("from-child"));
    m.ack().await.unwrap();
    println!("cross-process fanout: child received {child_got:?}, parent received both");
    assert_eq!(child_got, [r#""from-parent""#, r#""from-child""#]);
    assert!(child.wait().await.unwrap().success(), "child failed");
    channel.queue_delete(&mine.name).await.unwrap();
    channel.exchange_delete(&exchange.name).await.unwrap();
    conn.close().await.unwrap();
    other.close().await.unwrap();
}
