//! Heartbeats and lost connections: the heartbeat option is negotiated,
//! `heartbeat_check` asks the broker, and a dead connection shows as
//! `is_connected() == false` and errors of a connection kind.
//!
//! The shared broker is never stopped: a connection is closed from the
//! broker's side (`rabbitmqctl close_connection`, found by its
//! connection_name), and a broker that stops answering is played by a TCP
//! proxy in the test that stops forwarding.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_amqp::AmqpTransport;
use kombu_core::spi::Transport;
use kombu_core::{BrokerUrl, Channel, ConnectionOptions, Queue, RawMessage};
use kombu_testkit::unique;

const LIMIT: Duration = Duration::from_secs(40);

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

async fn open(url: &str) -> AmqpTransport {
    let url = BrokerUrl::parse(url).unwrap();
    AmqpTransport::open(&url, &ConnectionOptions::new())
        .await
        .unwrap()
}

#[tokio::test]
async fn heartbeat_option_is_negotiated_and_checked() {
    let Some(url) = common::url() else { return };
    tokio::time::timeout(LIMIT, async {
        let transport = open(&with_query(&url, "heartbeat=3")).await;
        assert_eq!(transport.heartbeat_secs(), 3);
        assert!(transport.is_connected());
        for _ in 0..3 {
            transport.heartbeat_check().await.unwrap();
        }
        transport.close().await.unwrap();
        assert!(!transport.is_connected());
        let err = transport.heartbeat_check().await.unwrap_err();
        assert_eq!(err.kind(), kombu_core::ErrorKind::Closed, "{err}");
    })
    .await
    .expect("bounded");
}

/// The pid of the broker's connection named `name` (as `close_connection`
/// takes it: `<rabbit@host.N.M>`), by rabbitmqctl.
fn connection_pid(name: &str) -> Option<String> {
    let listed = common::rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"])?;
    listed
        .lines()
        .find(|line| line.contains(name))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
}

#[tokio::test]
async fn a_connection_closed_by_the_broker_is_lost_everywhere() {
    let Some(url) = common::url() else { return };
    if common::rabbitmqctl(&["version"]).is_none() {
        eprintln!("SKIP: rabbitmqctl is not available");
        return;
    }
    tokio::time::timeout(LIMIT, async {
        let name = unique("kombu-amqp-lost");
        let transport = open(&with_query(&url, &format!("connection_name={name}"))).await;
        let channel = transport.open_channel().await.unwrap();
        let queue = Queue::new(unique("lost-q"))
            .durable(false)
            .auto_delete(true);
        channel.queue_declare(&queue).await.unwrap();
        channel
            .basic_publish(
                RawMessage::new(bytes::Bytes::from_static(b"m")),
                "",
                &queue.name,
                false,
            )
            .await
            .unwrap();
        let mut stream = channel
            .basic_consume(&queue.name, &unique("ctag"), false)
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();

        // rabbitmqctl lists a new connection after a moment.
        let mut pid = None;
        for _ in 0..10 {
            pid = connection_pid(&name);
            if pid.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let pid = pid.expect("the test's connection is listed by its connection_name");
        common::rabbitmqctl(&["close_connection", &pid, "kombu-amqp liveness test"]).unwrap();

        // The consumer's stream yields a connection error, then ends.
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream reports the loss within 10 s")
            .expect("an error item before the end");
        let err = item.expect_err("an error, not a delivery");
        assert!(err.is_connection_error(), "{err}");
        let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream ends within 10 s");
        assert!(end.is_none(), "the stream ends after the error");

        let started = Instant::now();
        while transport.is_connected() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "still connected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let err = transport.heartbeat_check().await.unwrap_err();
        assert!(err.is_connection_error(), "{err}");
        let err = channel
            .basic_publish(
                RawMessage::new(bytes::Bytes::from_static(b"x")),
                "",
                &queue.name,
                false,
            )
            .await
            .unwrap_err();
        assert!(err.is_connection_error(), "{err}");
        let err = channel
            .basic_ack(first.delivery_tag, false)
            .await
            .unwrap_err();
        assert!(err.is_connection_error(), "{err}");
        let err = transport.open_channel().await.unwrap_err();
        assert!(err.is_connection_error(), "{err}");
        tokio::time::timeout(Duration::from_secs(5), transport.close())
            .await
            .expect("closing a lost connection returns at once")
            .unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_broker_that_stops_answering_fails_the_heartbeat_check() {
    let Some(url) = common::url() else { return };
    tokio::time::timeout(LIMIT, async {
        let upstream = BrokerUrl::parse(&url).unwrap();
        let proxy = kombu_testkit::FrozenProxy::start(
            upstream.hostname().unwrap_or("localhost"),
            upstream.port().unwrap_or(5672),
        )
        .await
        .unwrap();
        let port = proxy.port();
        let creds = common::credentials(&url);
        let proxied = format!("amqp://{creds}@127.0.0.1:{port}//?heartbeat=2");
        let transport = open(&proxied).await;
        assert_eq!(transport.heartbeat_secs(), 2);
        transport.heartbeat_check().await.unwrap();
        let channel = transport.open_channel().await.unwrap();

        proxy.freeze(true);
        let started = Instant::now();
        let err = transport.heartbeat_check().await.unwrap_err();
        let took = started.elapsed();
        assert!(err.is_connection_error(), "{err}");
        // Bounded by the heartbeat interval (2 s), with room for a slow machine.
        assert!(took < Duration::from_secs(6), "the check took {took:?}");
        assert!(!transport.is_connected());
        let err = channel
            .basic_publish(
                RawMessage::new(bytes::Bytes::from_static(b"x")),
                "",
                "nowhere",
                false,
            )
            .await
            .unwrap_err();
        assert!(err.is_connection_error(), "{err}");
        let err = transport.open_channel().await.unwrap_err();
        assert!(err.is_connection_error(), "{err}");
        tokio::time::timeout(Duration::from_secs(5), transport.close())
            .await
            .expect("closing a lost connection does not wait for the broker")
            .unwrap();
    })
    .await
    .expect("bounded");
}

// The shared liveness suite (kombu-testkit), through the core's Connection:
// a frozen broker fails the heartbeat within the 2 s heartbeat interval,
// and a confirmed publish once a heartbeat finds the connection lost.
mod shared {
    kombu_testkit::liveness_tests!(
        "amqp",
        kombu_amqp::register,
        query = "heartbeat=2&confirm_publish=true"
    );
}
