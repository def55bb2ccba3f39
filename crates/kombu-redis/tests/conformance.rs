//! The conformance suite on `redis://` (KOMBU_TEST_REDIS_URL), in both
//! fanout modes, and on `sentinel://` through the redis-sentinel service.

kombu_testkit::conformance_tests!(connect);

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("redis", kombu_redis::register)
}

mod durable_fanout {
    kombu_testkit::conformance_tests!(connect);

    fn connect() -> Option<kombu_core::Connection> {
        let url = kombu_testkit::test_url("redis")?;
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}fanout_mode=durable");
        let mut registry = kombu_core::Registry::new();
        kombu_redis::register(&mut registry);
        Some(
            kombu_core::Connection::with_registry(&url, std::sync::Arc::new(registry))
                .expect("redis URL"),
        )
    }
}

/// The suite over `sentinel://` (KOMBU_TEST_REDIS_SENTINEL_URL: the
/// redis-sentinel service, a sentinel watching the redis service).
mod sentinel {
    kombu_testkit::conformance_tests!(connect);

    fn connect() -> Option<kombu_core::Connection> {
        let conn = kombu_testkit::connection_for("redis-sentinel", kombu_redis::register)?;
        assert_eq!(conn.transport_name(), "sentinel");
        Some(conn)
    }
}
