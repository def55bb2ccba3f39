//! A server that stops answering is detected, in bounded time, and a new
//! connection works once it is back; messages held unacked by a connection
//! that died come back after a server restart. Each test runs a private
//! `redis-server` (on a free port, as a child process) and stops or kills
//! that one only.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{connect, prefix};
use kombu_core::{Channel, RawMessage};
use kombu_testkit::unique;
use serde_json::json;

/// How long a call on a stopped server may take before the test fails
/// (the connections below use `socket_timeout` 1 s).
const BOUND: Duration = Duration::from_secs(10);

/// A private redis-server; killed (after a SIGCONT) when dropped.
struct Server {
    child: Child,
    alive: bool,
    port: u16,
    dir: PathBuf,
}

impl Server {
    /// Start one on `port` (a free one when `None`), keeping its data in
    /// `dir` with an fsync'd append-only file when `durable`.
    async fn start(port: Option<u16>, dir: Option<PathBuf>, durable: bool) -> Option<Server> {
        let port = port.unwrap_or_else(free_port);
        let dir = dir.unwrap_or_else(|| {
            let dir = std::env::temp_dir().join(unique("kombu-redis-private"));
            std::fs::create_dir_all(&dir).expect("temp dir");
            dir
        });
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if durable {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(err) => {
                let required = std::env::var("KOMBU_TEST_REQUIRE").is_ok_and(|v| v == "1");
                assert!(!required, "redis-server could not be started: {err}");
                eprintln!("skipped: redis-server could not be started: {err}");
                return None;
            }
        };
        let server = Server {
            child,
            alive: true,
            port,
            dir,
        };
        server.wait_ready().await;
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn wait_ready(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "private redis-server not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    fn kill(&mut self) {
        if std::mem::replace(&mut self.alive, false) {
            let _ = self.child.kill(); // SIGKILL: also ends a stopped process
            let _ = self.child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

async fn publish(channel: &dyn Channel, queue: &str, body: &str) -> kombu_core::Result<()> {
    channel
        .basic_publish(RawMessage::new(body.to_owned()), "", queue, false)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_server_fails_calls_in_bounded_time_then_a_new_connection_works() {
    let Some(server) = Server::start(None, None, false).await else {
        return;
    };
    let url = server.url();
    let prefix = prefix("hb");
    let queue = unique("hb");
    let options = [
        ("socket_timeout", json!(1)),
        ("health_check_interval", json!(0)),
    ];
    let conn = connect(&url, &prefix, &options);
    let transport = conn.transport().await.unwrap();
    transport.heartbeat_check().await.unwrap();
    assert!(transport.is_connected());
    let channel = transport.create_channel().await.unwrap();
    publish(channel.as_ref(), &queue, "before").await.unwrap();

    server.signal("STOP");

    let started = Instant::now();
    let beat = tokio::time::timeout(BOUND, transport.heartbeat_check())
        .await
        .expect("heartbeat_check on a stopped server must not hang");
    let err = beat.expect_err("heartbeat_check on a stopped server must fail");
    println!(
        "heartbeat_check failed after {:?}: {err}",
        started.elapsed()
    );
    assert!(err.is_connection_error(), "not a connection error: {err:?}");
    assert!(
        !transport.is_connected(),
        "a failed heartbeat marks the connection lost"
    );

    let started = Instant::now();
    let put = tokio::time::timeout(BOUND, publish(channel.as_ref(), &queue, "during"))
        .await
        .expect("a publish to a stopped server must not hang");
    let err = put.expect_err("a publish to a stopped server must fail");
    println!("publish failed after {:?}: {err}", started.elapsed());
    assert!(err.is_connection_error(), "not a connection error: {err:?}");

    server.signal("CONT");
    let dir = server.dir.clone();

    let fresh = connect(&url, &prefix, &options);
    let transport2 = fresh.transport().await.unwrap();
    transport2.heartbeat_check().await.unwrap();
    assert!(transport2.is_connected());
    let channel2 = transport2.create_channel().await.unwrap();
    publish(channel2.as_ref(), &queue, "after").await.unwrap();
    let first = channel2
        .basic_get(&queue, true)
        .await
        .unwrap()
        .expect("the message published before the stop");
    assert_eq!(&first.message.body[..], b"before");
    let mut rest = Vec::new();
    while let Some(d) = channel2.basic_get(&queue, true).await.unwrap() {
        rest.push(String::from_utf8_lossy(&d.message.body).into_owned());
    }
    // "during" may have reached the server before it stopped answering.
    assert_eq!(rest.last().map(String::as_str), Some("after"), "{rest:?}");
    let _ = tokio::time::timeout(BOUND, conn.close()).await;
    fresh.close().await.unwrap();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_come_back_after_a_server_restart() {
    let Some(mut server) = Server::start(None, None, true).await else {
        return;
    };
    let (port, dir, url) = (server.port, server.dir.clone(), server.url());
    let prefix = prefix("restart");
    let queue = unique("restart");
    let options = [
        ("socket_timeout", json!(1)),
        ("visibility_timeout", json!(1)),
        ("unacked_restore_interval", json!(0.2)),
    ];
    let conn = connect(&url, &prefix, &options);
    let transport = conn.transport().await.unwrap();
    let channel = transport.create_channel().await.unwrap();
    for n in 0..3 {
        publish(channel.as_ref(), &queue, &format!("m{n}"))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        let taken = channel.basic_get(&queue, false).await.unwrap();
        assert!(taken.is_some(), "the message just published");
    }

    // The server dies with the three messages unacked, and comes back.
    server.kill();
    drop(server);
    let mut restarted = Server::start(Some(port), Some(dir.clone()), true)
        .await
        .expect("restarted");

    let fresh = connect(&url, &prefix, &options);
    let channel2 = fresh.channel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut back = Vec::new();
    while back.len() < 3 && Instant::now() < deadline {
        match channel2.basic_get(&queue, false).await {
            Ok(Some(d)) => {
                assert!(d.info.redelivered, "a restored message is redelivered");
                back.push(String::from_utf8_lossy(&d.message.body).into_owned());
                channel2.basic_ack(d.delivery_tag, false).await.unwrap();
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(err) => panic!("{err}"),
        }
    }
    back.sort();
    assert_eq!(back, ["m0", "m1", "m2"], "every unacked message came back");
    let _ = tokio::time::timeout(BOUND, conn.close()).await;
    fresh.close().await.unwrap();
    restarted.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
