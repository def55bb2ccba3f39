//! Connecting: URL forms, options, and how failures are reported.

mod common;

use common::Vhost;

use std::time::{Duration, Instant};

use kombu_amqp::AmqpTransport;
use kombu_core::{
    BrokerUrl, ConnectionOptions, ErrorKind, Exchange, Producer, PublishOptions, Queue,
    TransportOptions,
};
use kombu_testkit::unique;

#[tokio::test]
async fn virtual_host_forms_reach_the_right_vhost() {
    let Some(base) = common::url() else { return };
    let creds = common::credentials(&base);
    let user = creds.split(':').next().unwrap().to_owned();
    let hp = common::host_port(&base);
    let suffix = unique("kombu-amqp-vh");
    // `//name` is the vhost `/name`; `/name` is the vhost `name`.
    let Some(slashed) = Vhost::create(&format!("/{suffix}"), &user) else {
        return;
    };
    let Some(plain) = Vhost::create(&suffix, &user) else {
        return;
    };
    let mut made: Vec<(String, String)> = Vec::new();
    for (url, vhost) in [
        (format!("amqp://{creds}@{hp}//{suffix}"), &slashed.0),
        (format!("amqp://{creds}@{hp}/{suffix}"), &plain.0),
        (format!("pyamqp://{creds}@{hp}/%2F{suffix}"), &slashed.0),
    ] {
        let conn = common::connection(&url, ConnectionOptions::new());
        let q = Queue::new(unique("vhost-q"));
        let channel = conn
            .channel()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        q.declare(channel.as_ref()).await.unwrap();
        made.push((q.name.clone(), vhost.clone()));
        conn.close().await.unwrap();
    }
    // One listing per vhost (rabbitmqctl takes seconds per call).
    for vhost in [&slashed.0, &plain.0] {
        let listed = common::rabbitmqctl(&["list_queues", "-p", vhost, "name"]).unwrap();
        for (queue, expected) in &made {
            assert_eq!(
                listed.contains(queue.as_str()),
                expected == vhost,
                "queue {queue} in vhost {vhost:?}, expected in {expected:?}"
            );
        }
    }
    // The default vhost `/`: `amqp://host//`, `amqp://host/` and
    // `amqp://host` reach the vhost of the test URL (`/`).
    let reference = common::connection(&base, ConnectionOptions::new());
    let check = reference.channel().await.unwrap();
    for url in [
        format!("amqp://{creds}@{hp}//"),
        format!("amqp://{creds}@{hp}/"),
        format!("amqp://{creds}@{hp}"),
    ] {
        let conn = common::connection(&url, ConnectionOptions::new());
        let q = Queue::new(unique("vhost-default-q"));
        let channel = conn.channel().await.unwrap();
        q.declare(channel.as_ref()).await.unwrap();
        assert_eq!(check.queue_size(&q.name).await.unwrap(), 0, "{url}");
        channel.queue_delete(&q.name).await.unwrap();
    }
}

#[tokio::test]
async fn a_missing_vhost_is_reported() {
    let Some(base) = common::url() else { return };
    let url = format!(
        "amqp://{}@{}//{}",
        common::credentials(&base),
        common::host_port(&base),
        unique("no-such-vhost")
    );
    let err = common::connection(&url, ConnectionOptions::new())
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::NotFound | ErrorKind::Auth),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_password_is_auth_and_never_shown() {
    let Some(base) = common::url() else { return };
    let secret = "Sup3r-s3cret-pw";
    let url = format!("amqp://guest:{secret}@{}//", common::host_port(&base));
    let conn = common::connection(&url, ConnectionOptions::new());
    let err = conn.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err:?}");
    for shown in [
        err.to_string(),
        format!("{err:?}"),
        format!("{conn:?}"),
        conn.as_uri(),
    ] {
        assert!(!shown.contains(secret), "password shown: {shown}");
    }
    assert!(!err.is_recoverable());
}

#[tokio::test]
async fn refused_port_is_connection_refused_quickly() {
    // Port 1 on loopback: nothing listens, the kernel refuses at once.
    let conn = common::connection("amqp://guest:guest@127.0.0.1:1//", ConnectionOptions::new());
    let started = Instant::now();
    let err = conn.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err:?}");
    assert!(err.is_connection_error());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connect_timeout_bounds_a_silent_server() {
    // A listener that accepts and never answers the AMQP handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let url = format!("amqp://guest:guest@127.0.0.1:{port}//?connect_timeout=0.5");
    let started = Instant::now();
    let err = common::connection(&url, ConnectionOptions::new())
        .connect()
        .await
        .unwrap_err();
    let took = started.elapsed();
    held.abort();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn precondition_failed_leaves_the_connection_usable() {
    let Some(base) = common::url() else { return };
    let conn = common::connection(&base, ConnectionOptions::new());
    let name = unique("redeclare-q");
    let channel = conn.channel().await.unwrap();
    Queue::new(&name).declare(channel.as_ref()).await.unwrap();
    let err = Queue::new(&name)
        .max_length(5)
        .declare(channel.as_ref())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed, "{err:?}");
    assert!(err.is_channel_error());
    assert!(!channel.is_open(), "RabbitMQ closes the channel on 406");
    // The closed channel says so...
    let closed = channel.queue_size(&name).await.unwrap_err();
    assert_eq!(closed.kind(), ErrorKind::ChannelClosed, "{closed:?}");
    // ...and the connection goes on: a new channel works.
    let again = conn.channel().await.unwrap();
    Producer::new(&conn)
        .publish("still here", PublishOptions::new().routing_key(&name))
        .await
        .unwrap();
    assert_eq!(again.queue_size(&name).await.unwrap(), 1);
    again.queue_delete(&name).await.unwrap();
}

#[tokio::test]
async fn missing_entities_are_not_found() {
    let Some(base) = common::url() else { return };
    let conn = common::connection(&base, ConnectionOptions::new());
    let channel = conn.channel().await.unwrap();
    // queue_size uses a side channel: this one stays open.
    let err = channel.queue_size(&unique("missing-q")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert!(channel.is_open());
    let err = Queue::new(unique("missing-q"))
        .passive(true)
        .declare(channel.as_ref())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    let channel = conn.channel().await.unwrap();
    let err = channel
        .exchange_declare(&Exchange::direct(unique("missing-ex")).passive(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
}

#[tokio::test]
async fn a_closed_channel_is_channel_closed() {
    let Some(base) = common::url() else { return };
    let conn = common::connection(&base, ConnectionOptions::new());
    let channel = conn.channel().await.unwrap();
    channel.close().await.unwrap();
    assert!(!channel.is_open());
    channel.close().await.unwrap(); // idempotent
    let err = channel
        .queue_declare(&Queue::new(unique("after-close")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ChannelClosed, "{err:?}");
}

#[tokio::test]
async fn options_reach_the_connection() {
    let Some(base) = common::url() else { return };
    let url = BrokerUrl::parse(&format!("{base}?heartbeat=2&frame_max=65536&insist=1")).unwrap();
    let options = ConnectionOptions::new().transport_options(
        TransportOptions::new()
            .set("client_properties", serde_json::json!({"team": "kombu-rs"}))
            .set("connection_name", "kombu-amqp-test"),
    );
    let transport = AmqpTransport::open(&url, &options).await.unwrap();
    assert_eq!(transport.heartbeat_secs(), 2);
    assert_eq!(transport.frame_max(), 65536);
    let channel = transport.open_channel().await.unwrap();
    assert!(!channel.confirms_enabled());
    drop(channel);
    // Unknown transport options are refused by name.
    let bad = ConnectionOptions::new().transport_option("visibility_timeout", 10);
    let err = common::connection(&base, bad).connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidOption);
    assert!(err.to_string().contains("\"visibility_timeout\""), "{err}");
}

#[tokio::test]
async fn tls_is_attempted_for_amqps() {
    let Some(base) = common::url() else { return };
    // The plain listener does not speak TLS: the handshake must fail
    // (not silently fall back to plain AMQP).
    let url = format!(
        "amqps://{}@{}//?connect_timeout=3",
        common::credentials(&base),
        common::host_port(&base)
    );
    let err = common::connection(&url, ConnectionOptions::new())
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionRefused | ErrorKind::Protocol | ErrorKind::Timeout
        ),
        "{err:?}"
    );
    // Without a port, amqps:// and ?ssl=1 use 5671.
    let conn = common::connection("amqps://h//", ConnectionOptions::new());
    assert_eq!(conn.url().port(), Some(5671));
    let conn = common::connection("amqp://h//?ssl=1", ConnectionOptions::new());
    assert_eq!(conn.url().port(), Some(5671));
    let conn = common::connection("pika://h//", ConnectionOptions::new());
    assert_eq!(conn.url().port(), Some(5672));
}
