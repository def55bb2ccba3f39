//! The conformance suite on `redis://` (KOMBU_TEST_REDIS_URL), in both
//! fanout modes, on `sentinel://` through the redis-sentinel service, and on
//! `rediscluster://` through the redis-cluster service.

use std::time::Duration;

use kombu_testkit::{GarbagePath, HookError};

kombu_testkit::conformance_tests!(connect, lease: short_lease, garbage: write_garbage);

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

/// How long a raw write may take (connecting included).
const RAW_DEADLINE: Duration = Duration::from_secs(5);

/// LPUSH `bytes` to the queue's list (no key prefix: these connections
/// have none) on the server at `url`.
async fn lpush(url: &str, queue: &str, bytes: &[u8]) -> Result<GarbagePath, HookError> {
    let client = redis::Client::open(url)?;
    let push = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("LPUSH")
            .arg(queue)
            .arg(bytes)
            .query_async::<i64>(&mut conn)
            .await
    };
    tokio::time::timeout(RAW_DEADLINE, push).await??;
    Ok(GarbagePath::Unreadable)
}

/// `host:port` of each server in the failover list of service `service`'s
/// test URL.
fn hosts_of(service: &str) -> Result<Vec<String>, HookError> {
    let url = kombu_testkit::test_url(service).ok_or(format!("no URL for {service}"))?;
    Ok(url
        .split(';')
        .filter_map(|one| one.split_once("://"))
        .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or_default().to_owned())
        .collect())
}

/// The garbage check's raw write: a value that is not a kombu envelope,
/// pushed where the queue's messages are.
async fn write_garbage(
    _conn: &kombu_core::Connection,
    queue: &str,
    bytes: &[u8],
) -> Result<GarbagePath, HookError> {
    let url = kombu_testkit::test_url("redis").ok_or("KOMBU_TEST_REDIS_URL")?;
    lpush(&url, queue, bytes).await
}

mod durable_fanout {
    kombu_testkit::conformance_tests!(
        connect,
        lease: super::short_lease,
        garbage: super::write_garbage
    );

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
    use kombu_testkit::{GarbagePath, HookError};

    kombu_testkit::conformance_tests!(connect, lease: short_lease, garbage: write_garbage);

    /// LPUSH on the master the first sentinel names (`master_name=kombu`).
    async fn write_garbage(
        _conn: &kombu_core::Connection,
        queue: &str,
        bytes: &[u8],
    ) -> Result<GarbagePath, HookError> {
        let first = super::hosts_of("redis-sentinel")?.remove(0);
        let ask = async {
            let sentinel = redis::Client::open(format!("redis://{first}/"))?;
            let mut conn = sentinel.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("kombu")
                .query_async::<(String, u16)>(&mut conn)
                .await
        };
        let (host, port) = tokio::time::timeout(super::RAW_DEADLINE, ask)
            .await?
            .map_err(|e| e.to_string())?;
        super::lpush(&format!("redis://{host}:{port}/0"), queue, bytes).await
    }

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
    use kombu_testkit::{GarbagePath, HookError};

    kombu_testkit::conformance_tests!(connect, lease: short_lease, garbage: write_garbage);

    /// LPUSH through a cluster client (the list's slot is its name's).
    async fn write_garbage(
        _conn: &kombu_core::Connection,
        queue: &str,
        bytes: &[u8],
    ) -> Result<GarbagePath, HookError> {
        let nodes = super::hosts_of("redis-cluster")?;
        let client = redis::cluster::ClusterClient::new(
            nodes
                .iter()
                .map(|node| format!("redis://{node}/"))
                .collect::<Vec<_>>(),
        )?;
        let push = async {
            let mut conn = client.get_async_connection().await?;
            redis::cmd("LPUSH")
                .arg(queue)
                .arg(bytes)
                .query_async::<i64>(&mut conn)
                .await
        };
        tokio::time::timeout(super::RAW_DEADLINE, push).await??;
        Ok(GarbagePath::Unreadable)
    }

    fn short_lease() -> Option<kombu_core::Connection> {
        super::short_lease_for("redis-cluster")
    }

    fn connect() -> Option<kombu_core::Connection> {
        let conn = kombu_testkit::connection_for("redis-cluster", kombu_redis::register)?;
        assert_eq!(conn.transport_name(), "rediscluster");
        Some(conn)
    }
}
