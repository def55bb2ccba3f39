//! A confirmed persistent message in a durable queue survives a RabbitMQ
//! restart (`rabbitmqctl stop_app` / `start_app`: a few seconds; the broker
//! is shared, so this is the only test that restarts it, and it always
//! starts it again).

mod common;

use std::time::{Duration, Instant};

use kombu_core::{ConnectionOptions, ErrorKind, Producer, PublishOptions, Queue};
use kombu_testkit::unique;
use serde_json::json;

/// Starts the RabbitMQ app again however the test ends.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_persistent_message_survives_a_broker_restart() {
    let Some(url) = common::url() else { return };
    if std::process::Command::new("rabbitmqctl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: rabbitmqctl is not available to restart RabbitMQ");
        return;
    }
    let options = ConnectionOptions::new().transport_option("confirm_publish", true);
    let conn = common::connection(&url, options.clone());
    let q = Queue::new(unique("durable-q")).durable(true);
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    Producer::new(&conn)
        .publish(
            json!({"kept": true}),
            PublishOptions::new().routing_key(&q.name),
        )
        .await
        .unwrap(); // returns once RabbitMQ has it on disk
    conn.close().await.unwrap();

    let restart = tokio::task::spawn_blocking(|| {
        let _guard = StartAppOnDrop;
        for step in ["stop_app", "start_app"] {
            let out = std::process::Command::new("rabbitmqctl")
                .arg(step)
                .output()
                .expect("rabbitmqctl runs");
            assert!(out.status.success(), "rabbitmqctl {step} failed");
        }
    });
    tokio::time::timeout(Duration::from_secs(120), restart)
        .await
        .expect("restart within 120 s")
        .unwrap();

    // Reconnect (the broker takes a moment to accept again).
    let deadline = Instant::now() + Duration::from_secs(60);
    let conn = loop {
        let conn = common::connection(&url, ConnectionOptions::new());
        match conn.connect().await {
            Ok(()) => break conn,
            Err(err) if Instant::now() < deadline => {
                assert!(
                    err.is_connection_error() || err.kind() == ErrorKind::Other,
                    "{err:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => panic!("RabbitMQ did not come back: {err}"),
        }
    };
    let channel = conn.channel().await.unwrap();
    let got = channel
        .basic_get(&q.name, true)
        .await
        .unwrap()
        .expect("the persistent message survived the restart");
    assert_eq!(&got.message.body[..], br#"{"kept": true}"#);
    channel.queue_delete(&q.name).await.unwrap();
}
