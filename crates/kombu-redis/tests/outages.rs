//! Redis-specific outages, beyond the shared liveness suite
//! (tests/liveness.rs): an ack sent to a server that stopped answering
//! fails in bounded time and its message is not lost (a new connection's
//! backend, `conn.extension::<RedisBackend>()`, restores it), and messages
//! held unacked by a connection whose server was killed come back after the
//! restart (a private `redis-server` on a free port, as a child process,
//! AOF with fsync always).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{base_url, connect, prefix};
use kombu_core::{BrokerUrl, Channel, RawMessage};
use kombu_redis::RedisBackend;
use kombu_testkit::liveness::FROZEN_BOUND;
use kombu_testkit::{unique, FrozenProxy};
use serde_json::json;

/// How long closing a connection to a dead server may take (the
/// connections below use `socket_timeout` 1 s).
const BOUND: Duration = Duration::from_secs(10);

/// A private redis-server; killed when dropped.
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
async fn an_ack_to_a_silent_server_fails_in_bounded_time_and_the_message_comes_back() {
    ack_to_a_silent_server(false).await;
}

/// The same with the ack queued for a flush (a prefetch window: acks are
/// coalesced): `ack()` returns `Ok` at once, the flush fails in the
/// background, the connection is marked lost, and the message comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_ack_lost_to_a_silent_server_means_a_redelivery() {
    ack_to_a_silent_server(true).await;
}

async fn ack_to_a_silent_server(coalesced: bool) {
    let Some(url) = base_url() else { return };
    let parsed = BrokerUrl::parse(&url).unwrap();
    let proxy = FrozenProxy::start(
        parsed.hostname().unwrap_or("127.0.0.1"),
        parsed.port().unwrap_or(6379),
    )
    .await
    .expect("a local port for the proxy");
    let prefix = prefix("frozen-ack");
    let queue = unique("frozen-ack");
    // Only the explicit restore below puts the message back.
    let options = [
        ("socket_timeout", json!(1)),
        ("visibility_timeout", json!(1)),
        ("unacked_restore_interval", json!(3600)),
        ("health_check_interval", json!(0)),
    ];
    let conn = connect(&proxy.proxied(&url), &prefix, &options);
    let transport = conn.transport().await.unwrap();
    let channel = transport.create_channel().await.unwrap();
    if coalesced {
        // A prefetch window: acks are coalesced (a batch is half of it).
        channel.basic_qos(10).await.unwrap();
    }
    publish(channel.as_ref(), &queue, "held").await.unwrap();
    let delivery = channel
        .basic_get(&queue, false)
        .await
        .unwrap()
        .expect("the message just published");
    let fetched = Instant::now();

    // The server stops answering (the proxy holds every byte from now on,
    // the ack's included: it never reaches the server).
    proxy.freeze(true);
    let started = Instant::now();
    let ack = tokio::time::timeout(
        FROZEN_BOUND * 2,
        channel.basic_ack(delivery.delivery_tag, false),
    )
    .await
    .expect("an ack to a silent server must not hang");
    let took = started.elapsed();
    if coalesced {
        ack.expect("a coalesced ack returns once queued");
        let lost = tokio::time::timeout(FROZEN_BOUND, async {
            while transport.is_connected() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(lost.is_ok(), "the failed flush marks the connection lost");
        println!("flush failed within {:?}", started.elapsed());
    } else {
        let err = ack.expect_err("an ack to a silent server fails");
        println!("ack failed after {took:?}: {err}");
        assert!(err.is_connection_error(), "not a connection error: {err:?}");
        assert!(took < FROZEN_BOUND, "the ack failed after {took:?}");
        assert!(!transport.is_connected(), "the failed ack marks it lost");
    }

    let started = Instant::now();
    tokio::time::timeout(BOUND, conn.close())
        .await
        .expect("closing a connection to a silent server must not hang")
        .ok();
    println!("close took {:?}", started.elapsed());

    // A new connection (straight to the server) restores the message once
    // visibility_timeout is over: it was fetched into kombu's unacked
    // structures and never acked.
    let fresh = connect(&url, &prefix, &options);
    let backend = fresh.extension::<RedisBackend>().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut restored = 0;
    while restored == 0 {
        assert!(
            Instant::now() < deadline,
            "the unacked message was never restored"
        );
        tokio::time::sleep(
            Duration::from_secs(1)
                .saturating_sub(fetched.elapsed())
                .max(Duration::from_millis(100)),
        )
        .await;
        restored = backend.restore_visible().await.unwrap();
    }
    assert_eq!(restored, 1);
    let channel = fresh.channel().await.unwrap();
    let back = channel
        .basic_get(&queue, true)
        .await
        .unwrap()
        .expect("the restored message");
    assert_eq!(&back.message.body[..], b"held");
    assert!(back.info.redelivered, "a restored message is redelivered");
    channel.queue_delete(&queue).await.unwrap();
    fresh.close().await.unwrap();
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
