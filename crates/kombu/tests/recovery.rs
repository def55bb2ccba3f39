//! Staying up on a real RabbitMQ: the broker closes our connection
//! (`rabbitmqctl close_connection`, as an operator or a failing node would)
//! and the core reconnects, declares again and resumes consumers; late acks
//! of messages from the dead connection fail clearly; publishes retry;
//! failover lists move on to the next URL.

#![cfg(feature = "amqp")]

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use kombu::{
    Connection, ConnectionOptions, Consumer, ErrorKind, Exchange, FailoverStrategy, Message,
    Producer, PublishOptions, Queue, RetryPolicy,
};
use kombu_testkit::{test_url, unique};

const LIMIT: Duration = Duration::from_secs(30);

/// A connection to the test RabbitMQ named `name` (so the test can find it
/// in `rabbitmqctl list_connections`).
fn named_connection(url: &str, name: &str) -> Connection {
    let options = ConnectionOptions::new().transport_option("connection_name", name);
    Connection::with_options(url, options).unwrap()
}

/// Close every broker connection whose client-provided name (in its
/// client properties) is `name`,
/// waiting until there is one to close. Returns how many were closed.
async fn broker_closes(name: &str) -> usize {
    for _ in 0..50 {
        let listing = Command::new("rabbitmqctl")
            .args([
                "-q",
                "list_connections",
                "--no-table-headers",
                "pid",
                "client_properties",
            ])
            .output()
            .expect("rabbitmqctl runs");
        let text = String::from_utf8_lossy(&listing.stdout).into_owned();
        let ours: Vec<String> = text
            .lines()
            .filter(|line| line.contains(name))
            .filter_map(|line| line.split('\t').next().map(str::to_owned))
            .collect();
        if !ours.is_empty() {
            for conn in &ours {
                let status = Command::new("rabbitmqctl")
                    .args([
                        "-q",
                        "close_connection",
                        conn,
                        "closed by the kombu-rs recovery test",
                    ])
                    .status()
                    .expect("rabbitmqctl runs");
                assert!(status.success(), "rabbitmqctl close_connection {conn}");
            }
            return ours.len();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no broker connection named {name} showed up");
}

async fn next_message(consumer: &mut Consumer) -> Message {
    tokio::time::timeout(LIMIT, consumer.next())
        .await
        .expect("a message within the limit")
        .expect("the stream goes on")
        .expect("a message, not an error")
}

fn body(message: &Message) -> String {
    message.decode::<String>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_resumes_after_the_broker_closes_the_connection() {
    kombu::install_default_transports();
    let Some(url) = test_url("amqp") else { return };
    let name = unique("recovery-consumer");
    let conn = named_connection(&url, &name);
    // A durable queue: the unacked message must come back after the drop.
    let queue = Queue::new(unique("recovery-durable")).durable(true);
    let producer = Producer::new(&conn);
    let publish = |text: &str| {
        producer.publish(
            serde_json::json!(text),
            PublishOptions::new()
                .routing_key(queue.name.clone())
                .declare(queue.clone())
                .retry_policy(
                    RetryPolicy::new()
                        .max_retries(10)
                        .interval_start(Duration::from_millis(200)),
                ),
        )
    };
    let mut consumer = Consumer::builder(&conn)
        .queue(queue.clone())
        .prefetch_count(5)
        .build()
        .await
        .unwrap();
    publish("first").await.unwrap();
    let stale = next_message(&mut consumer).await;
    assert_eq!(body(&stale), "first");
    assert!(!stale.redelivered());

    assert_eq!(broker_closes(&name).await, 1);

    // The stream does not end: the same message comes again, redelivered,
    // on a new connection.
    let again = next_message(&mut consumer).await;
    assert_eq!(body(&again), "first");
    assert!(
        again.redelivered(),
        "the broker requeued the unacked message"
    );
    assert!(consumer.reconnects() >= 1);

    // The late ack of the message from the dead connection is refused and
    // acks nothing else.
    let err = stale.ack().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err}");
    again.ack().await.unwrap();

    // Publishing goes on (the producer's channel was on the dead
    // connection: it reconnects) and the consumer gets it.
    publish("second").await.unwrap();
    let second = next_message(&mut consumer).await;
    assert_eq!(body(&second), "second");
    assert!(!second.redelivered());
    second.ack().await.unwrap();

    let channel = conn.channel().await.unwrap();
    assert_eq!(
        channel.queue_size(&queue.name).await.unwrap(),
        0,
        "nothing left over"
    );
    consumer.close().await.unwrap();
    channel.queue_delete(&queue.name).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_come_back_after_a_reconnect() {
    kombu::install_default_transports();
    let Some(url) = test_url("amqp") else { return };
    let name = unique("recovery-topology");
    let conn = named_connection(&url, &name);
    // Auto-delete entities vanish with the connection that used them; the
    // reconnect must declare the exchange, the queue and the binding again.
    let exchange = Exchange::direct(unique("recovery-ex"))
        .durable(false)
        .auto_delete(true);
    let queue = Queue::new(unique("recovery-auto"))
        .durable(false)
        .auto_delete(true)
        .bind(&exchange, "k");
    let producer = Producer::new(&conn).exchange(exchange.clone());
    let mut consumer = Consumer::builder(&conn)
        .queue(queue.clone())
        .build()
        .await
        .unwrap();
    let (exchanges, queues) = conn.declared();
    assert!(exchanges.contains(&exchange.name), "{exchanges:?}");
    assert!(queues.contains(&queue.name), "{queues:?}");

    assert_eq!(broker_closes(&name).await, 1);

    // Routed through the exchange: arrives only if the exchange, the queue
    // and the binding were all declared again.
    let retry = RetryPolicy::new()
        .max_retries(20)
        .interval_start(Duration::from_millis(100))
        .interval_step(Duration::from_millis(100))
        .interval_max(Duration::from_millis(500));
    producer
        .publish(
            serde_json::json!("routed"),
            PublishOptions::new()
                .routing_key("k")
                .mandatory(true)
                .retry_policy(retry),
        )
        .await
        .unwrap();
    let message = next_message(&mut consumer).await;
    assert_eq!(body(&message), "routed");
    message.ack().await.unwrap();
    assert!(consumer.reconnects() >= 1);
    consumer.close().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_retries_an_operation_across_a_lost_connection() {
    kombu::install_default_transports();
    let Some(url) = test_url("amqp") else { return };
    let name = unique("recovery-ensure");
    let conn = named_connection(&url, &name);
    let queue = Queue::new(unique("recovery-ensure-q")).auto_delete(true);
    conn.ensure_connection(&RetryPolicy::new().max_retries(3))
        .await
        .unwrap();
    let channel = conn.channel().await.unwrap();
    conn.declare_queue(channel.as_ref(), &queue).await.unwrap();
    assert_eq!(broker_closes(&name).await, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The channel died with its connection: a plain call fails with a
    // connection-kind error...
    let err = channel.queue_size(&queue.name).await.unwrap_err();
    assert!(err.is_recoverable(), "{err}");
    // ...and ensure() reconnects (declaring the queue again) and succeeds.
    let mut errors = Vec::new();
    let size = conn
        .ensure_with(
            &RetryPolicy::new()
                .max_retries(5)
                .interval_start(Duration::from_millis(100)),
            || async { conn.channel().await?.queue_size(&queue.name).await },
            |err, _wait| errors.push(err.kind()),
        )
        .await
        .unwrap();
    assert_eq!(size, 0);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_moves_on_to_the_next_url() {
    kombu::install_default_transports();
    let Some(url) = test_url("amqp") else { return };
    // Nothing listens on port 1 of localhost.
    let list = format!("amqp://guest:guest@127.0.0.1:1//;{url}");
    let conn = Connection::new(&list).unwrap();
    conn.connect().await.unwrap();
    assert_eq!(conn.url().port(), Some(5672), "{}", conn.as_uri());

    // A custom order that tries the good URL first.
    let options = ConnectionOptions::new().failover_strategy(FailoverStrategy::custom(
        |urls: &[kombu::BrokerUrl], _last: usize| {
            let mut order: Vec<usize> = (0..urls.len()).collect();
            order.sort_by_key(|i| urls[*i].port() == Some(1));
            order
        },
    ));
    let custom = Connection::with_options(&list, options).unwrap();
    custom.connect().await.unwrap();
    assert_eq!(custom.url().port(), Some(5672));

    // Shuffle: connects whatever the order.
    let options = ConnectionOptions::new().failover_strategy(FailoverStrategy::Shuffle);
    let shuffled = Connection::with_options(&list, options).unwrap();
    shuffled.connect().await.unwrap();
    assert_eq!(shuffled.url().port(), Some(5672));

    // ensure_connection gives up after max_retries with the last error and
    // reports each failure to the callback.
    let dead = Connection::new("amqp://guest:guest@127.0.0.1:1//").unwrap();
    let mut waits = Vec::new();
    let err = dead
        .ensure_connection_with(
            &RetryPolicy::new()
                .max_retries(2)
                .interval_start(Duration::from_millis(10))
                .interval_step(Duration::from_millis(10)),
            |_err, wait| waits.push(wait),
        )
        .await
        .unwrap_err();
    assert!(err.is_connection_error(), "{err}");
    assert_eq!(
        waits,
        [Duration::from_millis(10), Duration::from_millis(20)]
    );
    for conn in [conn, custom, shuffled] {
        conn.close().await.unwrap();
    }
}
