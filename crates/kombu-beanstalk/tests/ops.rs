//! beanstalk's own operations through the transport: bury on reject, kick,
//! touch (lease), delays, priorities on the wire, tube names.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::{
    Connection, ConnectionOptions, Consumer, ErrorKind, Producer, PublishOptions, Queue, Registry,
};
use kombu_testkit::{recv, unique};
use serde_json::json;

fn connect_with(options: ConnectionOptions) -> Option<Connection> {
    let url = kombu_testkit::test_url("beanstalk")?;
    let mut registry = Registry::new();
    kombu_beanstalk::register(&mut registry);
    Some(
        Connection::with_registry_options(&url, options, Arc::new(registry))
            .expect("beanstalk URL"),
    )
}

fn connect() -> Option<Connection> {
    connect_with(ConnectionOptions::new())
}

async fn consumer(conn: &Connection, q: &Queue) -> Consumer {
    Consumer::builder(conn)
        .queue(q.clone())
        .prefetch_count(10)
        .build()
        .await
        .expect("consumer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_buries_and_kick_brings_back() {
    let Some(conn) = connect() else { return };
    let q = Queue::new(unique("bury-q"));
    let mut c = consumer(&conn, &q).await;
    Producer::new(&conn)
        .publish(json!("poison"), PublishOptions::new().routing_key(&q.name))
        .await
        .unwrap();
    let m = recv(&mut c).await.unwrap();
    assert!(!m.redelivered());
    let id = kombu_beanstalk::job_id(&m).expect("job id header");
    m.reject().await.unwrap();
    let backend = conn
        .extension::<kombu_beanstalk::BeanstalkBackend>()
        .await
        .unwrap();
    assert_eq!(backend.buried(&q.name).await.unwrap(), 1);
    assert_eq!(c.channel().queue_size(&q.name).await.unwrap(), 0);
    let (buried_id, envelope) = backend.peek_buried(&q.name).await.unwrap().unwrap();
    assert_eq!(buried_id, id);
    assert_eq!(envelope.body, br#""poison""#);
    assert_eq!(backend.kick(&q.name, 10).await.unwrap(), 1);
    let again = recv(&mut c).await.unwrap();
    assert_eq!(again.decode::<String>().unwrap(), "poison");
    assert!(again.redelivered(), "a kicked job was delivered before");
    assert_eq!(kombu_beanstalk::job_id(&again), Some(id));
    again.reject().await.unwrap();
    assert!(backend.kick_job(id).await.unwrap());
    let third = recv(&mut c).await.unwrap();
    third.ack().await.unwrap();
    assert_eq!(backend.buried(&q.name).await.unwrap(), 0);
    assert!(!backend.kick_job(id).await.unwrap(), "deleted job kicked");
    c.channel().queue_delete(&q.name).await.unwrap();
    conn.close().await.unwrap();
}

/// With ttr 2 s, a consumer touching its job keeps it past the ttr; one that
/// does not loses it to another consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_extends_the_lease() {
    let options = ConnectionOptions::new().transport_option("ttr", 2);
    let (Some(a), Some(b)) = (connect_with(options.clone()), connect_with(options)) else {
        return;
    };
    let q = Queue::new(unique("touch-q"));
    // Prefetch 1: each ack is sent as it is made and returns how it went
    // (with a larger window acks are coalesced, and a late ack's failure
    // is logged, not returned).
    let mut ca = Consumer::builder(&a)
        .queue(q.clone())
        .prefetch_count(1)
        .build()
        .await
        .expect("consumer");
    Producer::new(&a)
        .publish(json!("lease"), PublishOptions::new().routing_key(&q.name))
        .await
        .unwrap();
    let m = recv(&mut ca).await.unwrap();
    let backend = a
        .extension::<kombu_beanstalk::BeanstalkBackend>()
        .await
        .unwrap();
    let mut cb = consumer(&b, &q).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        backend.touch_message(&m).await.unwrap();
    }
    // 3.2 s held with ttr 2 s: nobody else got it.
    assert!(
        tokio::time::timeout(
            Duration::from_millis(300),
            futures::StreamExt::next(&mut cb)
        )
        .await
        .is_err(),
        "a touched job went to another consumer"
    );
    // Stop touching: after the ttr the job goes to the other consumer.
    let started = Instant::now();
    let stolen = recv(&mut cb).await.unwrap();
    assert!(stolen.redelivered());
    println!("job came back {:?} after the last touch", started.elapsed());
    stolen.ack().await.unwrap();
    let err = m.ack().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    ca.channel().queue_delete(&q.name).await.unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// `PublishOptions::delay` is beanstalkd's job delay, rounded up to whole
/// seconds: a delayed job on the server, never ready early, ready at most a
/// second late (a 1.2 s delay is a 2 s job delay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_delay_is_a_delayed_job_rounded_up() {
    let Some(conn) = connect() else { return };
    let q = Queue::new(unique("delay-opt-q"));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let backend = conn
        .extension::<kombu_beanstalk::BeanstalkBackend>()
        .await
        .unwrap();
    let mut c = consumer(&conn, &q).await;
    for delay in [Duration::from_millis(1200), Duration::from_secs(2)] {
        let started = Instant::now();
        Producer::new(&conn)
            .publish(
                json!("later"),
                PublishOptions::new().routing_key(&q.name).delay(delay),
            )
            .await
            .unwrap();
        assert_eq!(backend.delayed(&q.name).await.unwrap(), 1);
        assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);
        let m =
            kombu_testkit::recv_within(&mut c, delay + Duration::from_secs(5), "the delayed job")
                .await
                .unwrap();
        let waited = started.elapsed();
        let whole = Duration::from_secs(delay.as_millis().div_ceil(1000) as u64);
        println!("delay {delay:?}: delivered after {waited:?} (job delay {whole:?})");
        assert!(
            waited >= delay,
            "delivered after {waited:?}, before {delay:?}"
        );
        assert!(
            waited < whole + Duration::from_millis(500),
            "delivered after {waited:?}: job delay {whole:?}"
        );
        m.ack().await.unwrap();
    }
    drop(c);
    // A purge takes delayed jobs too.
    Producer::new(&conn)
        .publish(
            json!("in a minute"),
            PublishOptions::new()
                .routing_key(&q.name)
                .delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(backend.delayed(&q.name).await.unwrap(), 1);
    assert_eq!(channel.queue_purge(&q.name).await.unwrap(), 1);
    assert_eq!(backend.delayed(&q.name).await.unwrap(), 0);
    channel.queue_delete(&q.name).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_header_uses_the_put_delay() {
    let Some(conn) = connect() else { return };
    let q = Queue::new(unique("delay-q"));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let started = Instant::now();
    Producer::new(&conn)
        .publish(
            json!("later"),
            PublishOptions::new()
                .routing_key(&q.name)
                .header(kombu_beanstalk::DELAY_HEADER, 1500),
        )
        .await
        .unwrap();
    let backend = conn
        .extension::<kombu_beanstalk::BeanstalkBackend>()
        .await
        .unwrap();
    assert_eq!(backend.delayed(&q.name).await.unwrap(), 1);
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);
    let mut c = consumer(&conn, &q).await;
    let m = recv(&mut c).await.unwrap();
    let waited = started.elapsed();
    println!(
        "delayed message arrived after {waited:?} (asked 1500 ms, beanstalk rounds up to 2 s)"
    );
    assert!(
        waited >= Duration::from_millis(1500),
        "arrived after {waited:?}"
    );
    m.ack().await.unwrap();
    channel.queue_delete(&q.name).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_on_the_wire_and_kept_on_requeue() {
    let Some(conn) = connect() else { return };
    let q = Queue::new(unique("pri-q"));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    Producer::new(&conn)
        .publish(
            json!(7),
            PublishOptions::new().routing_key(&q.name).priority(7),
        )
        .await
        .unwrap();
    let mut c = consumer(&conn, &q).await;
    let m = recv(&mut c).await.unwrap();
    let id = kombu_beanstalk::job_id(&m).unwrap();
    let url = kombu_core::BrokerUrl::parse(&kombu_testkit::test_url("beanstalk").unwrap()).unwrap();
    let mut raw = kombu_beanstalk::protocol::Conn::connect(
        url.hostname().unwrap(),
        url.port().unwrap_or(11300),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        raw.stats_job(id).await.unwrap().unwrap().number("pri"),
        1024 - 7
    );
    m.requeue().await.unwrap();
    let again = recv(&mut c).await.unwrap();
    assert!(again.redelivered());
    assert_eq!(
        raw.stats_job(id).await.unwrap().unwrap().number("pri"),
        1024 - 7
    );
    again.ack().await.unwrap();
    channel.queue_delete(&q.name).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tube_names_are_errors() {
    let Some(conn) = connect() else { return };
    let channel = conn.channel().await.unwrap();
    for name in ["has space", "-dash", "_kombu.meta", "ünïcode"] {
        let err = channel.queue_declare(&Queue::new(name)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{name}: {err}");
    }
    let err = Producer::new(&conn)
        .publish(json!(1), PublishOptions::new().routing_key("a b"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn unknown_option_is_refused() {
    let Some(conn) = connect_with(ConnectionOptions::new().transport_option("nosuch", 1)) else {
        return;
    };
    let err = conn.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidOption, "{err}");
}

/// Binds from several connections at once all land in the shared table
/// (the reserve-as-lock protocol loses no update).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_binds_all_land_in_the_table() {
    use kombu_core::spi::VirtualBackend;
    let Some(first) = connect() else { return };
    let exchange = kombu_core::Exchange::direct(unique("concurrent-ex"));
    let mut tasks = Vec::new();
    for worker in 0..3 {
        let conn = connect().unwrap();
        let exchange = exchange.clone();
        tasks.push(tokio::spawn(async move {
            let channel = conn.channel().await.unwrap();
            let mut names = Vec::new();
            for i in 0..8 {
                let name = format!("{}-w{worker}-{i}", exchange.name);
                let q = Queue::new(&name).bind(&exchange, &name);
                q.declare(channel.as_ref()).await.unwrap();
                channel.queue_bind(&name, &q.bindings[0]).await.unwrap();
                names.push(name);
            }
            conn.close().await.unwrap();
            names
        }));
    }
    let mut expected = Vec::new();
    for t in tasks {
        expected.extend(t.await.unwrap());
    }
    let backend = first
        .extension::<kombu_beanstalk::BeanstalkBackend>()
        .await
        .unwrap();
    let mut bound: Vec<String> = backend
        .bindings(&exchange.name)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.queue)
        .collect();
    bound.sort();
    expected.sort();
    assert_eq!(bound, expected, "a concurrent table update was lost");
    let channel = first.channel().await.unwrap();
    for name in &expected {
        assert!(backend.queue_declaration(name).await.unwrap().is_some());
        channel.queue_delete(name).await.unwrap();
    }
    channel.exchange_delete(&exchange.name).await.unwrap();
    assert!(backend.bindings(&exchange.name).await.unwrap().is_empty());
    first.close().await.unwrap();
}

/// The core bounds each backend call by the socket timeout plus the
/// connect timeout; with `socket_timeout=0` (wait forever) by its default.
#[tokio::test]
async fn operation_timeout_follows_the_socket_timeout() {
    use kombu_core::spi::VirtualBackend;
    for (socket, expected) in [(3, Some(Duration::from_secs(5))), (0, None)] {
        let options = ConnectionOptions::new()
            .connect_timeout(Duration::from_secs(2))
            .transport_option("socket_timeout", socket);
        let Some(conn) = connect_with(options) else {
            return;
        };
        let backend = conn
            .extension::<kombu_beanstalk::BeanstalkBackend>()
            .await
            .unwrap();
        assert_eq!(
            backend.operation_timeout(),
            expected,
            "socket_timeout={socket}"
        );
        conn.close().await.unwrap();
    }
}
