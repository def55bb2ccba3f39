//! The kombu-rs conformance suite on `sqs://` (moto in CI:
//! `KOMBU_TEST_SQS_URL=sqs://test:test@127.0.0.1:4566`).

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("sqs", kombu_sqs::register)
}

/// The lease check's connection: queues made with a 2 s visibility
/// timeout (moto makes a message visible again once it ends).
fn short_lease() -> Option<kombu_core::Connection> {
    let url = kombu_testkit::test_url("sqs")?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}visibility_timeout=2");
    let mut registry = kombu_core::Registry::new();
    kombu_sqs::register(&mut registry);
    Some(
        kombu_core::Connection::with_registry(&url, std::sync::Arc::new(registry))
            .expect("KOMBU_TEST_SQS_URL"),
    )
}

kombu_testkit::conformance_tests!(connect, lease: short_lease);
