//! The conformance suite on `amqp://` (RabbitMQ at `KOMBU_TEST_AMQP_URL`).

mod common;

use kombu_testkit::{GarbagePath, HookError};

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("amqp", kombu_amqp::register)
}

/// The garbage check's raw write: a confirmed lapin publish of a body that
/// claims to be JSON and is not ([`common::publish_garbage`]).
async fn write_garbage(
    _conn: &kombu_core::Connection,
    queue: &str,
    bytes: &[u8],
) -> Result<GarbagePath, HookError> {
    let url = kombu_testkit::test_url("amqp").ok_or("KOMBU_TEST_AMQP_URL")?;
    common::publish_garbage(&url, queue, bytes).await
}

kombu_testkit::conformance_tests!(connect, garbage: write_garbage);
