//! The conformance suite on `redis://` (KOMBU_TEST_REDIS_URL), in both
//! fanout modes, on `sentinel://` through the redis-sentinel service, and on
//! `rediscluster://` through the redis-cluster service.

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

/// The suite over `rediscluster://` (KOMBU_TEST_REDIS_CLUSTER_URL: the
/// redis-cluster service, three masters and three replicas).
mod cluster {
    kombu_testkit::conformance_tests!(connect);

    fn connect() -> Option<kombu_core::Connection> {
        let conn = kombu_testkit::connection_for("redis-cluster", kombu_redis::register)?;
        assert_eq!(conn.transport_name(), "rediscluster");
        Some(conn)
    }
}
