//! The conformance suite on `amqp://` (RabbitMQ at `KOMBU_TEST_AMQP_URL`).

use std::time::Duration;

use kombu_testkit::{GarbagePath, HookError};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, ConnectionProperties};

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("amqp", kombu_amqp::register)
}

/// The garbage check's raw write: a message published with lapin to the
/// queue (default exchange, confirmed) whose body claims to be JSON and is
/// not. RabbitMQ delivers it like any other; the consumer cannot decode
/// it and rejects it, and the reject puts it in the quarantine.
async fn write_garbage(
    _conn: &kombu_core::Connection,
    queue: &str,
    bytes: &[u8],
) -> Result<GarbagePath, HookError> {
    let url = kombu_testkit::test_url("amqp").ok_or("KOMBU_TEST_AMQP_URL")?;
    // lapin reads the vhost from the path: kombu's `//` is `/`, `%2f` to lapin.
    let url = url
        .strip_suffix("//")
        .map_or(url.clone(), |u| format!("{u}/%2f"));
    let publish = async {
        let conn = lapin::Connection::connect(&url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                bytes,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_content_encoding("utf-8".into()),
            )
            .await?
            .await?;
        let _ = conn.close(200, "".into()).await;
        if !confirm.is_ack() {
            return Err::<(), HookError>("RabbitMQ did not confirm the publish".into());
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), publish).await??;
    Ok(GarbagePath::DeliveredAsBody)
}

kombu_testkit::conformance_tests!(connect, garbage: write_garbage);
