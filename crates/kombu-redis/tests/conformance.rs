//! The conformance suite on `redis://` (KOMBU_TEST_REDIS_URL), in both
//! fanout modes, on `sentinel://` through the redis-sentinel service, and on
//! `rediscluster://` through the redis-cluster service.

kombu_testkit::conformance_tests!(connect, lease: short_lease);

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("redis", kombu_redis::register)
}

/// The query of the lease check's connections: a 2 s lease, restored
/// within half a second of its end.
const SHORT_LEASE: &str = "visibility_timeout=2&unacked_restore_interval=0.5";

/// `url` with [`SHORT_LEASE`] (on the first URL of a failover list, whose
/// query the core applies to the whole list).
fn with_short_lease(url: &str) -> String {
    let (first, rest) = url
        .split_once(';')
        .map_or((url, None), |(a, b)| (a, Some(b)));
    let sep = if first.contains('?') { '&' } else { '?' };
    let first = format!("{first}{sep}{SHORT_LEASE}");
    match rest {
        Some(rest) => format!("{first};{rest}"),
        None => first,
    }
}

fn short_lease_for(service: &str) -> Option<kombu_core::Connection> {
    let url = with_short_lease(&kombu_testkit::test_url(service)?);
    let mut registry = kombu_core::Registry::new();
    kombu_redis::register(&mut registry);
    Some(
        kombu_core::Connection::with_registry(&url, std::sync::Arc::new(registry))
            .expect("redis URL"),
    )
}

fn short_lease() -> Option<kombu_core::Connection> {
    short_lease_for("redis")
}

mod durable_fanout {
    kombu_testkit::conformance_tests!(connect, lease: super::short_lease);

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
    kombu_testkit::conformance_tests!(connect, lease: short_lease);

    fn short_lease() -> Option<kombu_core::Connection> {
        super::short_lease_for("redis-sentinel")
    }

    fn connect() -> Option<kombu_core::Connection> {
        let conn = kombu_testkit::connection_for("redis-sentinel", kombu_redis::register)?;
        assert_eq!(conn.transport_name(), "sentinel");
        Some(conn)
    }
}

/// The suite over `rediscluster://` (KOMBU_TEST_REDIS_CLUSTER_URL: the
/// redis-cluster service, three masters and three replicas).
mod cluster {
    kombu_testkit::conformance_tests!(connect, lease: short_lease);

    fn short_lease() -> Option<kombu_core::Connection> {
        super::short_lease_for("redis-cluster")
    }

    fn connect() -> Option<kombu_core::Connection> {
        let conn = kombu_testkit::connection_for("redis-cluster", kombu_redis::register)?;
        assert_eq!(conn.transport_name(), "rediscluster");
        Some(conn)
    }
}
