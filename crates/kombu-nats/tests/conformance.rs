//! The conformance suite on `nats://` (KOMBU_TEST_NATS_URL).

use std::time::Duration;

use kombu_testkit::{GarbagePath, HookError};

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("nats", kombu_nats::register)
}

kombu_testkit::conformance_tests!(connect, lease: short_lease, garbage: write_garbage);

/// The garbage check's raw write: a JetStream publish (a request, so the
/// stream's ack says it is stored) of the bytes to the queue's subject,
/// `kombu.q.<queue>` (the check's queue names need no escaping).
async fn write_garbage(
    _conn: &kombu_core::Connection,
    queue: &str,
    bytes: &[u8],
) -> Result<GarbagePath, HookError> {
    let url = kombu_testkit::test_url("nats").ok_or("KOMBU_TEST_NATS_URL")?;
    let publish = async {
        let client = async_nats::connect(url.as_str()).await?;
        let ack = client
            .request(format!("kombu.q.{queue}"), bytes.to_vec().into())
            .await?;
        let answer = String::from_utf8_lossy(&ack.payload).into_owned();
        if answer.contains("\"error\"") {
            return Err(format!("JetStream refused the publish: {answer}").into());
        }
        Ok::<_, HookError>(())
    };
    tokio::time::timeout(Duration::from_secs(5), publish).await??;
    Ok(GarbagePath::Unreadable)
}

/// A 2 s ack wait (`visibility_timeout`), for the lease check (its queues
/// are new, so their consumers get it).
fn short_lease() -> Option<kombu_core::Connection> {
    let url = kombu_testkit::test_url("nats")?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut registry = kombu_core::Registry::new();
    kombu_nats::register(&mut registry);
    Some(
        kombu_core::Connection::with_registry(
            &format!("{url}{sep}visibility_timeout=2"),
            std::sync::Arc::new(registry),
        )
        .expect("nats URL"),
    )
}
