//! Heartbeats: `ListQueues` against the test server, and against a server that
//! stops answering (a proxy in front of it that holds every byte, as a
//! SIGSTOPped server would).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::{
    BrokerUrl, Connection, ConnectionOptions, Producer, PublishOptions, Queue, Registry,
    TransportOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest a failing call may take: three attempts of the 1 s socket
/// timeout, the SDK's back-off between them, and slack for a loaded CI
/// machine.
const BOUND: Duration = Duration::from_secs(12);

fn connection(url: &str, options: TransportOptions) -> Connection {
    let mut registry = Registry::new();
    kombu_sqs::register(&mut registry);
    let options = ConnectionOptions::new().transport_options(options);
    Connection::with_options(url, options, Arc::new(registry)).expect("sqs URL")
}

/// A TCP proxy to `upstream` that stops forwarding while frozen.
struct FreezingProxy {
    port: u16,
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(upstream: (String, u16)) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect((upstream.0.as_str(), upstream.1)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(forward(cr, sw, flag.clone()));
                tokio::spawn(forward(sr, cw, flag.clone()));
            }
        });
        FreezingProxy { port, frozen, task }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(BOUND * 2, work).await {
        Ok(value) => (value, started.elapsed()),
        Err(_) => panic!("{what} hung for more than {:?}", BOUND * 2),
    }
}

#[tokio::test]
async fn heartbeat_check_lists_queues() {
    let Some(url) = kombu_testkit::test_url("sqs") else {
        return;
    };
    let conn = connection(&url, TransportOptions::new());
    let transport = conn.transport().await.unwrap();
    transport.heartbeat_check().await.unwrap();
    assert!(transport.is_connected());
    conn.close().await.unwrap();
    let err = transport.heartbeat_check().await.unwrap_err();
    assert!(err.is_connection_error(), "{err}");
    assert!(!transport.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_fails_heartbeat_and_publish_within_a_bound() {
    let Some(url) = kombu_testkit::test_url("sqs") else {
        return;
    };
    let parsed = BrokerUrl::parse(&url).unwrap();
    let upstream = (
        parsed.hostname().unwrap_or("127.0.0.1").to_owned(),
        parsed.port().unwrap_or(4566),
    );
    let proxy = FreezingProxy::start(upstream).await;
    let host = format!(
        "{}:{}",
        upstream_host(&parsed),
        parsed.port().unwrap_or(4566)
    );
    let proxied = url.replacen(&host, &format!("127.0.0.1:{}", proxy.port), 1);
    assert_ne!(proxied, url, "the URL goes through the proxy");
    let options = || TransportOptions::new().set("socket_timeout", 1);
    let conn = connection(&proxied, options());
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

    proxy.freeze(true);
    let (result, took) = within("heartbeat_check", transport.heartbeat_check()).await;
    let err = result.expect_err("a silent server fails the heartbeat");
    assert!(err.is_connection_error(), "{err}");
    assert!(took < BOUND, "heartbeat failed after {took:?}");
    assert!(!transport.is_connected());
    println!("heartbeat failed after {took:?}: {err}");

    let (result, took) = within(
        "publish",
        producer.publish("during", PublishOptions::new().routing_key(&q.name)),
    )
    .await;
    let err = result.expect_err("a silent server fails the publish");
    assert!(err.is_connection_error(), "{err}");
    assert!(took < BOUND, "publish failed after {took:?}");
    println!("publish failed after {took:?}: {err}");

    proxy.freeze(false);
    let fresh = connection(&proxied, options());
    fresh
        .transport()
        .await
        .unwrap()
        .heartbeat_check()
        .await
        .unwrap();
    let channel = fresh.channel().await.unwrap();
    assert!(channel.queue_size(&q.name).await.unwrap() >= 1);
    channel.queue_delete(&q.name).await.unwrap();
}

fn upstream_host(url: &BrokerUrl) -> String {
    url.hostname().unwrap_or("127.0.0.1").to_owned()
}
