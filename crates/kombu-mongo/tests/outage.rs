//! A server that dies, beyond the shared liveness suite's frozen proxy
//! (tests/liveness.rs): a private SecantusDB is killed (SIGKILL) under a
//! connection, which must fail its heartbeat and its publish with a
//! connection error within a bound, and reconnect once a server is back on
//! the port.
//!
//! The server is `.services/secantus/bin/secantusd-py` of the workspace
//! (installed by `cargo xtask services up`), or `KOMBU_TEST_SECANTUSD`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::{Connection, ConnectionOptions, Producer, PublishOptions, Queue, Registry};
use tokio::process::{Child, Command};

/// The longest a failing call may take: the 1 s socket timeout and the 2 s
/// connect timeout, plus slack for a loaded CI machine.
const BOUND: Duration = Duration::from_secs(10);

/// The SecantusDB launcher, or `None` after a skip line.
fn secantusd() -> Option<PathBuf> {
    let path = std::env::var_os("KOMBU_TEST_SECANTUSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.services/secantus/bin/secantusd-py")
        });
    if path.exists() {
        return Some(path);
    }
    let missing = format!(
        "{} is missing: run `cargo xtask services up` (native) or set KOMBU_TEST_SECANTUSD",
        path.display()
    );
    let required = matches!(
        std::env::var("KOMBU_TEST_REQUIRE").as_deref(),
        Ok("1" | "true" | "yes")
    );
    if required {
        panic!("{missing}");
    }
    eprintln!("skipped: {missing}");
    None
}

/// A SecantusDB of our own (in memory) on `port`, killed when dropped.
struct Server(Child);

impl Server {
    async fn start(launcher: &PathBuf, port: u16) -> Server {
        let child = Command::new(launcher)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--storage-path", ":memory:", "--log-level", "ERROR"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start secantusd-py");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "secantusd-py did not listen on {port} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Server(child)
    }

    /// SIGKILL, and wait until it is gone.
    async fn kill(mut self) {
        self.0.kill().await.expect("kill secantusd-py");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn connection(port: u16) -> Connection {
    let mut registry = Registry::new();
    kombu_mongo::register(&mut registry);
    let options = ConnectionOptions::new()
        .connect_timeout(Duration::from_secs(2))
        .transport_option("socket_timeout", 1);
    let url = format!("mongodb://127.0.0.1:{port}/kombu_outage?directConnection=true");
    Connection::with_registry_options(&url, options, Arc::new(registry)).expect("mongodb URL")
}

async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(BOUND * 3, work).await {
        Ok(value) => (value, started.elapsed()),
        Err(_) => panic!("{what} hung for more than {:?}", BOUND * 3),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_a_connection_error_and_a_new_one_is_used() {
    let Some(launcher) = secantusd() else { return };
    let port = free_port();
    let server = Server::start(&launcher, port).await;
    let conn = connection(port);
    let queue = Queue::new("outage");
    let producer = Producer::new(&conn);
    let publish = |body: &'static str| {
        producer.publish(
            body,
            PublishOptions::new()
                .routing_key(&queue.name)
                .declare(queue.clone()),
        )
    };
    publish("before").await.expect("publish to a live server");
    let transport = conn.transport().await.expect("transport");
    transport.heartbeat_check().await.expect("heartbeat");

    server.kill().await;
    let (outcome, took) = within("heartbeat_check", transport.heartbeat_check()).await;
    let err = outcome.expect_err("a dead server fails the heartbeat");
    assert!(err.is_connection_error(), "{err}");
    assert!(took < BOUND, "the heartbeat failed after {took:?}");
    assert!(
        !transport.is_connected(),
        "a failed heartbeat marks it lost"
    );
    eprintln!("heartbeat failed after {took:?}: {err}");

    let (outcome, took) = within("publish", publish("during")).await;
    let err = outcome.expect_err("a dead server fails the publish");
    assert!(err.is_connection_error(), "{err}");
    assert!(took < BOUND, "the publish failed after {took:?}");
    eprintln!("publish failed after {took:?}: {err}");

    // A server back on the port (empty: it kept nothing in memory): the
    // connection replaces the lost transport on next use.
    let _server = Server::start(&launcher, port).await;
    let (outcome, took) = within("publish after the restart", publish("after")).await;
    outcome.expect("publish once a server is back");
    eprintln!("reconnected and published after {took:?}");
    let fresh = conn.transport().await.expect("transport");
    assert!(!Arc::ptr_eq(&fresh, &transport), "a new transport");
    let channel = conn.channel().await.expect("channel");
    assert_eq!(channel.queue_size(&queue.name).await.expect("size"), 1);
    conn.close().await.expect("close");
}
