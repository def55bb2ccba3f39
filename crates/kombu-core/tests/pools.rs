//! Connection and producer pools (kombu-core's pool logic) on `memory://`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::{
    Connection, ConnectionOptions, ConnectionPool, Consumer, ErrorKind, ProducerPool,
    PublishOptions, Queue, Registry,
};

fn registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    kombu_memory::register(&mut registry);
    Arc::new(registry)
}

fn pool(limit: usize) -> (ConnectionPool, String) {
    let url = format!("memory://{}", kombu_testkit::unique("pools"));
    let pool =
        ConnectionPool::with_registry(&url, ConnectionOptions::new(), registry(), limit).unwrap();
    (pool, url)
}

#[tokio::test]
async fn try_acquire_past_the_limit_is_limit_exceeded() {
    let (pool, _) = pool(2);
    let a = pool.try_acquire().await.unwrap();
    let b = pool.try_acquire().await.unwrap();
    let status = pool.status();
    assert_eq!((status.limit, status.size, status.available), (2, 2, 0));
    assert_eq!(status.in_use(), 2);
    let err = pool.try_acquire().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    a.release();
    let c = pool.try_acquire().await.unwrap();
    drop((b, c));
    assert_eq!(pool.status().available, 2);
}

#[tokio::test]
async fn acquire_timeout_gives_up_with_limit_exceeded() {
    let (pool, _) = pool(1);
    let held = pool.acquire().await.unwrap();
    let started = Instant::now();
    let err = pool
        .acquire_timeout(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(200));

    // A waiting acquire gets the connection once it is released.
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire_timeout(Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pool.status().waiting, 1);
    held.release();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter was served")
        .unwrap();
    assert!(got.is_ok());
}

#[tokio::test]
async fn a_released_connection_is_reused_not_closed() {
    let (pool, _) = pool(1);
    let conn = pool.acquire().await.unwrap();
    let first = conn.transport().await.unwrap();
    assert!(conn.connected());
    conn.release();
    assert_eq!(pool.status().available, 1);

    let again = pool.acquire().await.unwrap();
    assert!(again.connected(), "released, not closed");
    let second = again.transport().await.unwrap();
    assert!(
        Arc::ptr_eq(&first, &second),
        "the same connection (same transport) is handed out again"
    );
    assert_eq!(pool.status().size, 1);
}

#[tokio::test]
async fn a_closed_connection_in_the_pool_is_usable_again() {
    let (pool, _) = pool(1);
    let conn = pool.acquire().await.unwrap();
    let first = conn.transport().await.unwrap();
    let q = Queue::new(kombu_testkit::unique("closed"));
    q.declare(conn.channel().await.unwrap().as_ref())
        .await
        .unwrap();
    // Its transport goes away behind the pool's back.
    first.close().await.unwrap();
    assert!(!conn.connected());
    conn.release();

    let conn = pool.acquire().await.unwrap();
    let channel = conn.channel().await.unwrap();
    let second = conn.transport().await.unwrap();
    assert!(!Arc::ptr_eq(&first, &second), "connected again");
    assert!(second.is_connected());
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);
}

#[tokio::test]
async fn a_pooled_producer_publishes_and_a_consumer_receives() {
    let (connections, url) = pool(2);
    let producers = ProducerPool::new(connections.clone(), 2).unwrap();
    let q = Queue::new(kombu_testkit::unique("produced"));

    let consumer_conn = Connection::with_registry(&url, registry()).unwrap();
    let mut consumer = Consumer::builder(&consumer_conn)
        .queue(q.clone())
        .build()
        .await
        .unwrap();

    let producer = producers.acquire().await.unwrap();
    producer
        .publish("hello", PublishOptions::new().routing_key(&q.name))
        .await
        .unwrap();
    let first_transport = producer.connection().transport().await.unwrap();
    producer.release();
    assert_eq!(
        connections.status().in_use(),
        1,
        "the producer keeps its connection"
    );

    let producer = producers.try_acquire().await.unwrap();
    let again = producer.connection().transport().await.unwrap();
    assert!(
        Arc::ptr_eq(&first_transport, &again),
        "same producer, same connection"
    );
    producer
        .publish("again", PublishOptions::new().routing_key(&q.name))
        .await
        .unwrap();

    for expected in ["hello", "again"] {
        let message = kombu_testkit::recv(&mut consumer).await.unwrap();
        assert_eq!(message.body(), expected.as_bytes());
        message.ack().await.unwrap();
    }
    drop(producer);

    // Two producers at once take two connections; a third waits and gives up.
    let a = producers.acquire().await.unwrap();
    let b = producers.acquire().await.unwrap();
    let err = producers
        .acquire_timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    assert_eq!(connections.status().in_use(), 2);
    drop((a, b));
}

#[tokio::test]
async fn a_producer_whose_connection_died_is_replaced() {
    let (connections, url) = pool(1);
    let producers = ProducerPool::new(connections, 1).unwrap();
    let q = Queue::new(kombu_testkit::unique("revived"));
    let producer = producers.acquire().await.unwrap();
    producer
        .publish(
            "one",
            PublishOptions::new()
                .routing_key(&q.name)
                .declare(q.clone()),
        )
        .await
        .unwrap();
    producer
        .connection()
        .transport()
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    producer.release();

    let producer = producers.acquire().await.unwrap();
    producer
        .publish("two", PublishOptions::new().routing_key(&q.name))
        .await
        .unwrap();
    let check = Connection::with_registry(&url, registry()).unwrap();
    let size = check
        .channel()
        .await
        .unwrap()
        .queue_size(&q.name)
        .await
        .unwrap();
    assert_eq!(size, 2);
}

#[tokio::test]
async fn force_close_all_closes_in_use_and_idle_connections() {
    let (pool, _) = pool(3);
    let idle = pool.acquire().await.unwrap();
    idle.connect().await.unwrap();
    idle.release();
    let busy = pool.acquire().await.unwrap();
    let other = pool.acquire().await.unwrap();
    other.connect().await.unwrap();
    assert!(other.connected());

    pool.force_close_all().await;
    assert!(pool.is_closed());
    assert!(!other.connected(), "closed under the holder's feet");
    let err = pool.try_acquire().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    drop((busy, other));
}

#[tokio::test]
async fn from_template_copies_urls_and_options() {
    let url = format!("memory://{}", kombu_testkit::unique("template"));
    let template = Connection::with_registry_options(
        &url,
        ConnectionOptions::new().transport_option("polling_interval", 0.05),
        registry(),
    )
    .unwrap();
    let pool = ConnectionPool::from_template(&template, 2).unwrap();
    let conn = pool.acquire().await.unwrap();
    assert_eq!(conn.as_uri(), template.as_uri());
    assert_eq!(conn.options(), template.options());
    let detached = conn.detach();
    assert_eq!(
        pool.status().size,
        0,
        "a detached connection leaves the pool"
    );
    drop(detached);
}
