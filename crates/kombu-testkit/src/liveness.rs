//! The liveness suite every networked transport runs with one line,
//! [`liveness_tests!`](crate::liveness_tests): a heartbeat reaches the
//! server, a heartbeat on a closed connection is
//! [`Closed`](kombu_core::ErrorKind::Closed), and a server that stops
//! answering (a [`FrozenProxy`] in front of it holds every byte, as a
//! SIGSTOPped server would) fails the heartbeat and the next publish with a
//! connection error within a bound, after which the connection is replaced
//! and works again when the server answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::{
    BrokerUrl, Connection, ErrorKind, Producer, PublishOptions, Queue, Registry, Result,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{test_url, unique};

/// How long a failing heartbeat or publish may take against a frozen
/// server: the transport's bound (set small by the test's query) plus slack
/// for a loaded machine.
pub const FROZEN_BOUND: Duration = Duration::from_secs(15);

/// A TCP proxy to a server that stops forwarding while frozen (the
/// connections stay open: nothing is refused, nothing answers).
pub struct FrozenProxy {
    port: u16,
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FrozenProxy {
    /// A proxy on a free local port to `host:port`.
    pub async fn start(host: &str, port: u16) -> std::io::Result<FrozenProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local = listener.local_addr()?.port();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        let upstream = (host.to_owned(), port);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect((upstream.0.as_str(), upstream.1)).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, flag.clone()));
                tokio::spawn(forward(server_read, client_write, flag.clone()));
            }
        });
        Ok(FrozenProxy {
            port: local,
            frozen,
            task,
        })
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop (or resume) forwarding.
    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn proxied(&self, url: &str) -> String {
        let parsed = BrokerUrl::parse(url).expect("test URL parses");
        let mut text = parsed.as_uri(true);
        let host = parsed.hostname().unwrap_or("localhost");
        let host_port = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        text = text.replacen(
            &format!("@{host_port}"),
            &format!("@127.0.0.1:{}", self.port),
            1,
        );
        text.replacen(
            &format!("://{host_port}"),
            &format!("://127.0.0.1:{}", self.port),
            1,
        )
    }
}

impl Drop for FrozenProxy {
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

/// `url` with `query` (`a=1&b=2`) appended.
pub fn with_query(url: &str, query: &str) -> String {
    if query.is_empty() {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

fn connection(url: &str, register: fn(&mut Registry)) -> Connection {
    let mut registry = Registry::new();
    register(&mut registry);
    Connection::with_registry(url, Arc::new(registry)).expect("test URL is usable")
}

async fn bounded<T>(what: &str, work: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(FROZEN_BOUND * 2, work).await {
        Ok(value) => (value, started.elapsed()),
        Err(_) => panic!("{what} hung for more than {:?}", FROZEN_BOUND * 2),
    }
}

/// A heartbeat reaches the server; on a closed connection it is `Closed`.
pub async fn heartbeat_answers(name: &str, register: fn(&mut Registry)) -> Result<()> {
    let Some(url) = test_url(name) else {
        return Ok(());
    };
    let conn = connection(&url, register);
    let transport = conn.transport().await?;
    for _ in 0..3 {
        transport.heartbeat_check().await?;
    }
    assert!(transport.is_connected());
    conn.close().await?;
    let err = transport
        .heartbeat_check()
        .await
        .expect_err("a heartbeat on a closed connection fails");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert!(!transport.is_connected());
    Ok(())
}

/// A server that stops answering fails the heartbeat and a publish with a
/// connection error within [`FROZEN_BOUND`]; the connection is then
/// replaced, and works again once the server answers. `query` sets the
/// transport's small bounds (`operation_timeout=2`, ...).
pub async fn silent_server_is_found_and_left(
    name: &str,
    register: fn(&mut Registry),
    query: &str,
) -> Result<()> {
    let Some(url) = test_url(name) else {
        return Ok(());
    };
    let parsed = BrokerUrl::parse(&url)?;
    let host = parsed.hostname().unwrap_or("127.0.0.1").to_owned();
    let port = parsed
        .port()
        .expect("the test URL names its port (the proxy needs it)");
    let proxy = FrozenProxy::start(&host, port)
        .await
        .expect("a local port for the proxy");
    let proxied = with_query(&proxy.proxied(&url), query);
    assert!(
        proxied.contains(&format!(":{}", proxy.port())),
        "the URL goes through the proxy: {proxied}"
    );
    // One connection watches (heartbeats), another publishes: both find
    // the silent server on their own.
    let watcher = connection(&proxied, register);
    let conn = connection(&proxied, register);
    let queue = Queue::new(unique("liveness"));
    let producer = Producer::new(&conn);
    producer
        .publish(
            "before",
            PublishOptions::new()
                .routing_key(&queue.name)
                .declare(queue.clone()),
        )
        .await?;
    let transport = watcher.transport().await?;
    transport.heartbeat_check().await?;

    proxy.freeze(true);
    let (outcome, took) = bounded("heartbeat_check", transport.heartbeat_check()).await;
    let err = outcome.expect_err("a silent server fails the heartbeat");
    assert!(err.is_connection_error(), "{err}");
    assert!(took < FROZEN_BOUND, "the heartbeat failed after {took:?}");
    assert!(
        !transport.is_connected(),
        "a failed heartbeat marks it lost"
    );
    eprintln!("{name}: heartbeat failed after {took:?}: {err}");

    let (outcome, took) = bounded(
        "publish",
        producer.publish("during", PublishOptions::new().routing_key(&queue.name)),
    )
    .await;
    let err = outcome.expect_err("a silent server fails the publish");
    assert!(err.is_connection_error(), "{err}");
    assert!(took < FROZEN_BOUND, "the publish failed after {took:?}");
    eprintln!("{name}: publish failed after {took:?}: {err}");

    proxy.freeze(false);
    // The lost transport is replaced on next use.
    let fresh = watcher.transport().await?;
    assert!(!Arc::ptr_eq(&fresh, &transport), "a new transport");
    fresh.heartbeat_check().await?;
    let channel = watcher.channel().await?;
    assert!(channel.queue_size(&queue.name).await? >= 1);
    channel.queue_delete(&queue.name).await?;
    let _ = conn.close().await;
    let _ = watcher.close().await;
    Ok(())
}

/// Expand the liveness suite into two `#[tokio::test]`s for transport
/// `$name` (its test URL is `KOMBU_TEST_<NAME>_URL`), registered by
/// `$register`; `query` gives the URL options that make its bounds small.
///
/// ```
/// // In crates/kombu-foo/tests/liveness.rs:
/// // kombu_testkit::liveness_tests!("foo", kombu_foo::register, query = "operation_timeout=2");
/// ```
#[macro_export]
macro_rules! liveness_tests {
    ($name:literal, $register:path) => {
        $crate::liveness_tests!($name, $register, query = "");
    };
    ($name:literal, $register:path, query = $query:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn heartbeat_answers() {
            $crate::liveness::heartbeat_answers($name, $register)
                .await
                .expect("heartbeat_answers");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn silent_server_is_found_and_left() {
            $crate::liveness::silent_server_is_found_and_left($name, $register, $query)
                .await
                .expect("silent_server_is_found_and_left");
        }
    };
}
