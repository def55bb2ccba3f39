//! The core's contract with transports, tested on a fault-injecting
//! virtual backend (memory underneath): bounded calls, lost connections,
//! heartbeats, reconnection, capabilities from the connected transport,
//! the extension accessor and URL completion.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{
    Connection, ConnectionOptions, ErrorKind, ExchangeType, Producer, PublishOptions, Queue,
    Registry,
};
use support::{connection, registry, Faults, FaultyBackend};

/// Every wait in these tests ends by this.
const LIMIT: Duration = Duration::from_secs(20);

async fn bounded<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, work)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {LIMIT:?}"))
}

#[tokio::test]
async fn a_hanging_backend_call_ends_within_the_operation_timeout_and_marks_the_connection_lost() {
    let faults = Arc::new(Faults::default());
    let conn = connection(&faults, "operation_timeout=0.3");
    let channel = conn.channel().await.unwrap();
    let transport = conn.transport().await.unwrap();
    faults.hang.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let err = bounded("queue_size", channel.queue_size("q"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("faulty"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!transport.is_connected(), "a timeout marks it lost");
    let err = channel.queue_size("q").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err}");

    faults.hang.store(false, Ordering::SeqCst);
    let fresh = conn.transport().await.unwrap();
    assert!(!Arc::ptr_eq(&fresh, &transport), "replaced on next use");
    assert_eq!(faults.opened.load(Ordering::SeqCst), 2);
    conn.channel().await.unwrap().queue_size("q").await.unwrap();
}

#[tokio::test]
async fn connection_errors_mark_lost_and_other_errors_do_not() {
    let faults = Arc::new(Faults::default());
    let conn = connection(&faults, "");
    let channel = conn.channel().await.unwrap();
    let transport = conn.transport().await.unwrap();

    faults.fail_with(Some(ErrorKind::NotFound));
    assert_eq!(
        channel.queue_size("q").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(
        transport.is_connected(),
        "a NotFound says nothing of the link"
    );

    faults.fail_with(Some(ErrorKind::ConnectionLost));
    assert_eq!(
        channel.queue_size("q").await.unwrap_err().kind(),
        ErrorKind::ConnectionLost
    );
    assert!(!transport.is_connected());
    faults.fail_with(None);
    let err = transport.create_channel().await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err}");
}

#[tokio::test]
async fn heartbeats_ping_the_backend_and_tell_closed_from_lost() {
    let faults = Arc::new(Faults::default());
    let conn = connection(&faults, "");
    let transport = conn.transport().await.unwrap();
    transport.heartbeat_check().await.unwrap();

    faults.ping_fails.store(true, Ordering::SeqCst);
    let err = transport.heartbeat_check().await.unwrap_err();
    assert!(err.is_connection_error(), "{err}");
    assert!(!transport.is_connected());
    faults.ping_fails.store(false, Ordering::SeqCst);
    let err = transport.heartbeat_check().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "stays lost: {err}");

    let fresh = conn.transport().await.unwrap();
    fresh.heartbeat_check().await.unwrap();
    conn.close().await.unwrap();
    let err = fresh.heartbeat_check().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert!(!err.is_recoverable());
}

#[tokio::test]
async fn the_heartbeat_monitor_finds_a_dead_backend_and_the_connection_recovers() {
    let faults = Arc::new(Faults::default());
    let options = ConnectionOptions::new().heartbeat(Duration::from_millis(200));
    let url = format!("faulty://{}/", kombu_testkit::unique("hb"));
    let conn = Connection::with_registry_options(&url, options, registry(&faults)).unwrap();
    let first = conn.transport().await.unwrap();
    faults.ping_fails.store(true, Ordering::SeqCst);
    bounded("the monitor to notice", async {
        while first.is_connected() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    faults.ping_fails.store(false, Ordering::SeqCst);
    let second = bounded("reconnect", conn.transport()).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    assert!(second.is_connected());
}

#[tokio::test]
async fn a_consumer_keeps_going_across_a_lost_connection_and_loses_nothing() {
    let faults = Arc::new(Faults::default());
    let conn = connection(&faults, "operation_timeout=0.5");
    let queue = Queue::new(kombu_testkit::unique("survive"));
    let producer = Producer::new(&conn);
    let options = || {
        PublishOptions::new()
            .routing_key(&queue.name)
            .declare(queue.clone())
    };
    producer.publish("m1", options()).await.unwrap();
    let mut consumer = kombu_testkit::consumer_builder(&conn)
        .queue(queue.clone())
        .build()
        .await
        .unwrap();
    let first = bounded("m1", consumer.next()).await.unwrap().unwrap();
    assert_eq!(first.body(), b"m1");
    first.ack().await.unwrap();

    // The link dies for a while: the consume loop's fetches fail.
    faults.fail_with(Some(ErrorKind::ConnectionLost));
    tokio::time::sleep(Duration::from_millis(300)).await;
    faults.fail_with(None);
    producer.publish("m2", options()).await.unwrap();
    let second = bounded("m2 after the loss", async {
        loop {
            match consumer.next().await {
                Some(Ok(message)) => return message,
                Some(Err(err)) => eprintln!("consumer reported: {err}"),
                None => panic!("the consumer ended"),
            }
        }
    })
    .await;
    assert_eq!(second.body(), b"m2");
    second.ack().await.unwrap();
    assert!(faults.opened.load(Ordering::SeqCst) >= 2, "it reconnected");
}

#[tokio::test]
async fn a_refused_connect_is_retried_by_ensure_connection() {
    let faults = Arc::new(Faults::default());
    faults.refuse_connects.store(2, Ordering::SeqCst);
    let conn = connection(&faults, "");
    let err = conn.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let policy = kombu_core::RetryPolicy::new()
        .max_retries(5)
        .interval_start(Duration::from_millis(10))
        .interval_step(Duration::from_millis(10));
    bounded("ensure_connection", conn.ensure_connection(&policy))
        .await
        .unwrap();
    assert!(conn.connected());
}

#[tokio::test]
async fn capabilities_are_the_connected_transports() {
    let faults = Arc::new(Faults::default());
    faults.no_fanout.store(true, Ordering::SeqCst);
    let conn = connection(&faults, "");
    assert!(conn
        .transport_info()
        .static_capabilities()
        .supports(ExchangeType::Fanout));
    let caps = conn.capabilities().await.unwrap();
    assert!(!caps.supports(ExchangeType::Fanout));
    let channel = conn.channel().await.unwrap();
    let err = channel
        .exchange_declare(&kombu_core::Exchange::fanout("f"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    // The conformance suite skips fanout on it (and passes).
    kombu_testkit::checks::fanout_exchange(&conn).await.unwrap();
}

#[tokio::test]
async fn the_extension_accessor_reaches_the_backend() {
    let faults = Arc::new(Faults::default());
    let conn = connection(&faults, "");
    let backend = conn.extension::<FaultyBackend>().await.unwrap();
    assert!(Arc::ptr_eq(&backend.faults, &faults));
    let err = conn.extension::<String>().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("faulty"), "{err}");
}

#[test]
fn urls_keep_what_the_user_wrote() {
    let faults = Arc::new(Faults::default());
    let registry = registry(&faults);
    let conn = Connection::with_registry("faulty://", registry.clone()).unwrap();
    assert_eq!(conn.as_uri(), "faulty://localhost:4242");
    assert_eq!(conn.url().userid(), None, "no invented login");

    let conn = Connection::with_registry("faulty://alice:pw@h/vh", registry.clone()).unwrap();
    assert_eq!(conn.as_uri(), "faulty://alice:**@h:4242/vh");
    assert!(!format!("{conn:?}").contains("pw@"));

    let options = ConnectionOptions::new().userid("kw").password("kwpw");
    let conn = Connection::with_registry_options("faulty://h", options, registry).unwrap();
    assert_eq!(conn.url().userid(), Some("kw"));
    assert_eq!(conn.url().password(), Some("kwpw"));
}

#[tokio::test]
async fn the_global_registry_serves_connections_and_pools() {
    // The only test of this binary that touches the global registry.
    assert!(Registry::global().is_empty());
    let err = Connection::new("memory://").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownScheme);
    assert!(
        err.to_string().contains("install_default_transports"),
        "{err}"
    );
    let faults = Arc::new(Faults::default());
    Registry::install(support::factory(&faults));
    let url = format!("faulty://{}/", kombu_testkit::unique("global"));
    let conn = Connection::new(&url).unwrap();
    conn.connect().await.unwrap();
    let pool = kombu_core::ConnectionPool::new(&url, ConnectionOptions::new(), 2).unwrap();
    let pooled = pool.acquire().await.unwrap();
    fn takes(conn: &Connection) -> &'static str {
        conn.transport_name()
    }
    assert_eq!(takes(&pooled), takes(&conn));
}
