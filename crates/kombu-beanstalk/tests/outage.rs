//! Outages of a real server, beyond the shared liveness suite's frozen
//! proxy (tests/liveness.rs): a private beanstalkd that is stopped (SIGSTOP:
//! the socket stays open, nothing answers) and continued again, and one
//! that is killed.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::signal;
use kombu_core::{Connection, ConnectionOptions, Producer, PublishOptions, Queue, Registry};
use tokio::process::{Child, Command};

/// The longest a failing check may take: the 1 s socket timeout plus slack
/// for a loaded CI machine.
const BOUND: Duration = Duration::from_secs(8);

/// A beanstalkd of our own on a free port, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    async fn start() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("/usr/bin/beanstalkd")
            .args(["-l", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start /usr/bin/beanstalkd (installed by `cargo xtask services up`)");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "beanstalkd did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server { child, port }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("beanstalkd is running")
    }

    fn connection(&self) -> Connection {
        let mut registry = Registry::new();
        kombu_beanstalk::register(&mut registry);
        let options = ConnectionOptions::new()
            .connect_timeout(Duration::from_secs(2))
            .transport_option("socket_timeout", 1);
        let url = format!("beanstalk://127.0.0.1:{}", self.port);
        Connection::with_registry_options(&url, options, Arc::new(registry)).expect("beanstalk URL")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // Never leave it stopped: a stopped process ignores SIGKILL's
            // reaping until continued on some systems.
            signal(pid, "CONT");
        }
        let _ = self.child.start_kill();
    }
}

async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(BOUND * 2, work).await {
        Ok(value) => (value, started.elapsed()),
        Err(_) => panic!("{what} hung for more than {:?}", BOUND * 2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_fails_heartbeat_and_publish_within_a_bound() {
    // The shared server's URL says the beanstalk service (and binary) is there.
    if kombu_testkit::test_url("beanstalk").is_none() {
        return;
    }
    let server = Server::start().await;
    let conn = server.connection();
    let q = Queue::new(kombu_testkit::unique("hb"));
    let producer = Producer::new(&conn);
    producer
        .publish(
            "before",
            PublishOptions::new()
                .routing_key(&q.name)
                .declare(q.clone()),
        )
        .await
        .unwrap();
    let transport = conn.transport().await.unwrap();
    transport.heartbeat_check().await.unwrap();
    assert!(transport.is_connected());

    signal(server.pid(), "STOP");
    let (result, took) = within("heartbeat_check", transport.heartbeat_check()).await;
    let err = result.expect_err("a stopped server fails the heartbeat");
    assert!(err.is_connection_error(), "{err}");
    assert!(took < BOUND, "heartbeat failed after {took:?}");
    assert!(
        !transport.is_connected(),
        "known dead after a failed heartbeat"
    );
    println!("heartbeat failed after {took:?}: {err}");

    let (result, took) = within(
        "publish",
        producer.publish("during", PublishOptions::new().routing_key(&q.name)),
    )
    .await;
    let err = result.expect_err("a stopped server fails the publish");
    assert!(err.is_connection_error(), "{err}");
    assert!(took < BOUND, "publish failed after {took:?}");
    println!("publish failed after {took:?}: {err}");

    signal(server.pid(), "CONT");
    // The same Connection replaces its dead transport on next use...
    let channel = conn.channel().await.unwrap();
    assert!(!Arc::ptr_eq(&transport, &conn.transport().await.unwrap()));
    // The publish that timed out may still have landed once the server
    // went on (the command was sent, only its answer was missing).
    let size = channel.queue_size(&q.name).await.unwrap();
    assert!((1..=2).contains(&size), "{size} messages");
    // ...and a fresh connection works too.
    let fresh = server.connection();
    Producer::new(&fresh)
        .publish("after", PublishOptions::new().routing_key(&q.name))
        .await
        .unwrap();
    fresh
        .transport()
        .await
        .unwrap()
        .heartbeat_check()
        .await
        .unwrap();
    let channel = fresh.channel().await.unwrap();
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), size + 1);
    let first = channel.basic_get(&q.name, true).await.unwrap().unwrap();
    assert_eq!(&first.message.body[..], b"before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_heartbeat_with_a_connection_error() {
    if kombu_testkit::test_url("beanstalk").is_none() {
        return;
    }
    let mut server = Server::start().await;
    let conn = server.connection();
    let transport = conn.transport().await.unwrap();
    transport.heartbeat_check().await.unwrap();
    server.child.kill().await.unwrap();
    let (result, took) = within("heartbeat_check", transport.heartbeat_check()).await;
    let err = result.expect_err("a killed server fails the heartbeat");
    assert!(err.is_connection_error(), "{err}");
    assert!(took < BOUND, "heartbeat failed after {took:?}");
    assert!(!transport.is_connected());
}

/// A server that takes no new jobs (drain mode, SIGUSR1) answers every
/// put of a batch with `DRAINING`: every message of the batch fails, and
/// the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_fails_every_message_of_a_batch() {
    if kombu_testkit::test_url("beanstalk").is_none() {
        return;
    }
    let server = Server::start().await;
    let conn = server.connection();
    let q = Queue::new(kombu_testkit::unique("drain"));
    let producer = Producer::new(&conn);
    let options = PublishOptions::new().routing_key(&q.name);
    producer
        .publish("before", options.clone().declare(q.clone()))
        .await
        .unwrap();
    signal(server.pid(), "USR1");
    let results = producer
        .publish_many((0..10).map(|n| n.to_string()), options)
        .await;
    assert_eq!(results.len(), 10);
    for result in results {
        let err = result.expect_err("draining: nothing stored");
        assert_eq!(err.kind(), kombu_core::ErrorKind::LimitExceeded, "{err}");
        assert!(err.to_string().contains("10 of 10"), "{err}");
        assert!(err.to_string().contains("draining"), "{err}");
    }
    let channel = conn.channel().await.unwrap();
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 1);
    assert!(conn.transport().await.unwrap().is_connected());
}

/// A batch sent to a stopped server fails within the socket timeout, and
/// its connection is dropped (it is out of step with the server): once the
/// server runs again, the next batch is stored and reads back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_short_leaves_no_stale_answers() {
    if kombu_testkit::test_url("beanstalk").is_none() {
        return;
    }
    let server = Server::start().await;
    let conn = server.connection();
    let q = Queue::new(kombu_testkit::unique("cut"));
    let producer = Producer::new(&conn);
    let options = PublishOptions::new().routing_key(&q.name);
    producer
        .publish("before", options.clone().declare(q.clone()))
        .await
        .unwrap();

    signal(server.pid(), "STOP");
    let (results, took) = within(
        "publish_many",
        producer.publish_many((0..100).map(|n| format!("lost? {n}")), options.clone()),
    )
    .await;
    assert!(took < BOUND, "publish_many failed after {took:?}");
    for result in results {
        let err = result.expect_err("a stopped server fails the batch");
        assert!(err.is_connection_error(), "{err}");
    }
    signal(server.pid(), "CONT");

    let results = producer
        .publish_many((0..100).map(|n| format!("after {n}")), options)
        .await;
    for result in results {
        result.unwrap();
    }
    // The batch cut short may have been stored once the server went on
    // (at least once); every job is a whole message.
    let channel = conn.channel().await.unwrap();
    let size = channel.queue_size(&q.name).await.unwrap();
    assert!((101..=201).contains(&size), "{size} messages");
    let mut after = Vec::new();
    for _ in 0..size {
        let delivery = channel.basic_get(&q.name, true).await.unwrap().unwrap();
        let body = String::from_utf8(delivery.message.body.to_vec()).unwrap();
        assert!(
            body == "before" || body.starts_with("lost? ") || body.starts_with("after "),
            "{body:?}"
        );
        if let Some(n) = body.strip_prefix("after ") {
            after.push(n.parse::<u32>().unwrap());
        }
    }
    assert_eq!(
        after,
        (0..100).collect::<Vec<_>>(),
        "the next batch, in order"
    );
}
