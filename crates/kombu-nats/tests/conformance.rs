//! The conformance suite on `nats://` (KOMBU_TEST_NATS_URL).

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("nats", kombu_nats::register)
}

kombu_testkit::conformance_tests!(connect, lease: short_lease);

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
