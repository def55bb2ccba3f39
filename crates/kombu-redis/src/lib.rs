#![doc = include_str!("../README.md")]

mod backend;
pub mod config;
mod conn;
mod connect;
mod error;
mod fanout;
pub mod keys;
mod maintenance;
mod scripts;
#[cfg(feature = "tls")]
mod tls;

use kombu_core::spi::VirtualFactory;
use kombu_core::{
    BrokerUrl, Capabilities, ConnectionOptions, ExchangeType, Registry, Result, TransportInfo,
    TransportKind,
};

pub use backend::RedisBackend;
pub use config::{FanoutMode, RedisConfig, KNOWN_OPTIONS};
pub use error::map_redis;

/// The URL schemes this transport serves.
pub const SCHEMES: &[&str] = &["redis", "rediss", "redis+socket"];

/// Redis's port.
pub const DEFAULT_PORT: u16 = 6379;

/// What `redis://` is: port 6379 (also for `rediss://`), no default login
/// (a URL without one sends none; `redis://user:pw@...` is an ACL login).
///
/// ```
/// assert_eq!(kombu_redis::INFO.port_for(true), Some(6379));
/// assert!(kombu_redis::INFO.is_tls_scheme("rediss"));
/// assert!(kombu_redis::INFO.default_login.is_none());
/// assert_eq!(kombu_redis::INFO.feature, "redis");
/// ```
pub const INFO: TransportInfo = TransportInfo::new("redis", SCHEMES, TransportKind::Virtual)
    .feature("redis")
    .port(DEFAULT_PORT)
    .tls_schemes(&["rediss"])
    .capabilities(capabilities);

/// Add the Redis transport to `registry`.
///
/// ```
/// let mut registry = kombu_core::Registry::new();
/// kombu_redis::register(&mut registry);
/// assert!(registry.resolve("redis").is_ok());
/// assert!(registry.resolve("redis+socket").is_ok());
/// ```
pub fn register(registry: &mut Registry) {
    registry.register(VirtualFactory::shared(&INFO, open));
    registry.register(VirtualFactory::shared(&SENTINEL_INFO, open));
    registry.register(VirtualFactory::shared(&CLUSTER_INFO, open));
}

/// Redis behind Sentinel, kombu's `sentinel://` transport:
/// `sentinel://[:password@]host:26379[;sentinel://host2:26380...]` with the
/// transport option (or query value) `master_name`. Each connect asks a
/// sentinel for the master's address and connects to the master with the
/// URL's password and database; a failover list of sentinels is tried in
/// order, and a reconnect after a failover asks again, so it reaches the
/// promoted replica. Same key layout as `redis://` (Python kombu's
/// `sentinel://` clients share the queues).
///
/// ```
/// assert_eq!(kombu_redis::SENTINEL_INFO.port_for(false), Some(26379));
/// assert_eq!(kombu_redis::SENTINEL_INFO.feature, "redis");
/// let mut registry = kombu_core::Registry::new();
/// kombu_redis::register(&mut registry);
/// assert!(registry.resolve("sentinel").is_ok());
/// ```
pub const SENTINEL_INFO: TransportInfo =
    TransportInfo::new("sentinel", &["sentinel"], TransportKind::Virtual)
        .feature("redis")
        .port(config::SENTINEL_PORT)
        .capabilities(capabilities);

/// Redis Cluster, `rediscluster://host:7000[;rediscluster://host:7001...]`
/// (the scheme of kombu's open Redis Cluster pull request): each URL is a
/// seed node (a failover list tries them in turn); the client learns the
/// cluster's nodes from it and routes each command to its slot's master,
/// following MOVED/ASK and failovers. Every key of one queue carries the
/// queue's hash tag, so its lists and unacked bookkeeping share one slot
/// and fetch, ack and restore stay atomic; kombu's own names are kept
/// where a key stands alone (the queue's first list, binding tables,
/// PUB/SUB channels). Database 0 only.
///
/// ```
/// assert_eq!(kombu_redis::CLUSTER_INFO.port_for(false), Some(6379));
/// assert_eq!(kombu_redis::CLUSTER_INFO.feature, "redis");
/// let mut registry = kombu_core::Registry::new();
/// kombu_redis::register(&mut registry);
/// assert!(registry.resolve("rediscluster").is_ok());
/// ```
pub const CLUSTER_INFO: TransportInfo =
    TransportInfo::new("rediscluster", &["rediscluster"], TransportKind::Virtual)
        .feature("redis")
        .port(DEFAULT_PORT)
        .capabilities(capabilities);

/// What the Redis transport can do (the same in both fanout modes).
///
/// ```
/// let caps = kombu_redis::capabilities();
/// assert!(caps.priority && caps.shared_declarations && caps.persistent);
/// assert!(caps.supports(kombu_core::ExchangeType::Fanout));
/// ```
pub fn capabilities() -> Capabilities {
    Capabilities::new(TransportKind::Virtual)
        .with_exchange_types(&[
            ExchangeType::Direct,
            ExchangeType::Topic,
            ExchangeType::Fanout,
            ExchangeType::Headers,
        ])
        .with_fanout_note("PUB/SUB")
        .with_priority(true)
        .with_ttl(true)
        .with_dead_letter(true)
        .with_max_length(true)
        .with_shared_declarations(true)
        .with_persistent(true)
        .with_redelivers_unacked(true)
        .with_delayed_delivery(true)
        .with_lease_extension(true)
        .with_delivery_limit(true)
}

/// Open a `redis://`, `rediss://` or `redis+socket://` backend (what
/// [`register`] serves through kombu-core's `VirtualFactory`): the URL's
/// login is sent as written, once (none when it gives none); commands
/// answer within the response timeout (`socket_timeout`), which is also the
/// backend's operation timeout; the heartbeat is a PING. A connection's
/// backend (for `restore_visible`) is `conn.extension::<RedisBackend>()`.
///
/// ```no_run
/// # async fn demo() -> kombu_core::Result<()> {
/// let url = kombu_core::BrokerUrl::parse("redis://localhost:6379/0")?;
/// let backend = kombu_redis::open(url, Default::default()).await?;
/// backend.ping().await?;
/// # Ok(()) }
/// ```
pub async fn open(url: BrokerUrl, options: ConnectionOptions) -> Result<RedisBackend> {
    let (url, options) = (&url, &options);
    let config = RedisConfig::new(url, options)?;
    let (conn, subscribers) = connect::open(&config).await?;
    Ok(RedisBackend::new(config, conn, subscribers))
}
