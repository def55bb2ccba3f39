//! Delayed delivery on `nats://` (KOMBU_TEST_NATS_URL) beyond the
//! conformance check: the looks before a message's time never count
//! toward its queue's delivery limit, a consumer that starts after the
//! delay ended still gets it (from another connection's publish), and
//! purge removes waiting delayed messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::{Connection, Consumer, Producer, PublishOptions, Queue, Registry};

fn connect() -> Option<Connection> {
    let url = kombu_testkit::test_url("nats")?;
    let mut registry = Registry::new();
    kombu_nats::register(&mut registry);
    Some(Connection::with_registry(&url, Arc::new(registry)).expect("KOMBU_TEST_NATS_URL"))
}

async fn consumer(conn: &Connection, queue: &Queue) -> Consumer {
    Consumer::builder(conn)
        .queue(queue.clone())
        .prefetch_count(1)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_looks_do_not_count_toward_the_delivery_limit() {
    let Some(conn) = connect() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let channel = conn.channel().await.unwrap();
        let dead = Queue::new(kombu_testkit::unique("nats-delay-dead"));
        dead.declare(channel.as_ref()).await.unwrap();
        // A limit of 0: the first return would dead-letter it.
        let q = Queue::new(kombu_testkit::unique("nats-delay-limit"))
            .delivery_limit(0)
            .dead_letter_exchange("")
            .dead_letter_routing_key(&dead.name);
        q.declare(channel.as_ref()).await.unwrap();
        // The consumer looks at the delay stream every 200 ms for 1.5 s
        // before the message is due.
        let mut c = consumer(&conn, &q).await;
        let sent = Instant::now();
        Producer::new(&conn)
            .publish(
                serde_json::json!("later"),
                PublishOptions::new()
                    .routing_key(&q.name)
                    .delay(Duration::from_millis(1500)),
            )
            .await
            .unwrap();
        let m = kombu_testkit::recv(&mut c).await.unwrap();
        assert!(sent.elapsed() >= Duration::from_millis(1500));
        assert_eq!(m.decode::<String>().unwrap(), "later");
        assert!(!m.redelivered(), "a first delivery");
        assert!(
            m.headers().get(kombu_nats::NOT_BEFORE_HEADER).is_none(),
            "the delay header stays in the delay stream"
        );
        m.ack().await.unwrap();
        assert_eq!(channel.queue_size(&dead.name).await.unwrap(), 0);
        drop(c);
        for name in [&q.name, &dead.name] {
            channel.queue_delete(name).await.unwrap();
        }
    })
    .await
    .expect("bounded");
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_consumer_gets_it_and_purge_removes_waiting_ones() {
    let Some(producer_conn) = connect() else {
        return;
    };
    let consumer_conn = connect().unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        let channel = producer_conn.channel().await.unwrap();
        let q = Queue::new(kombu_testkit::unique("nats-delay-late"));
        q.declare(channel.as_ref()).await.unwrap();
        let p = Producer::new(&producer_conn);
        for (body, delay) in [("soon", 500), ("purged", 60_000)] {
            p.publish(
                serde_json::json!(body),
                PublishOptions::new()
                    .routing_key(&q.name)
                    .delay(Duration::from_millis(delay)),
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        // Another connection, started after the first delay ended.
        let mut c = consumer(&consumer_conn, &q).await;
        let m = kombu_testkit::recv(&mut c).await.unwrap();
        assert_eq!(m.decode::<String>().unwrap(), "soon");
        m.ack().await.unwrap();
        drop(c);
        assert_eq!(
            channel.queue_purge(&q.name).await.unwrap(),
            1,
            "the waiting delayed message"
        );
        channel.queue_delete(&q.name).await.unwrap();
    })
    .await
    .expect("bounded");
    consumer_conn.close().await.unwrap();
    producer_conn.close().await.unwrap();
}
