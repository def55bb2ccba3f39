#![doc = include_str!("../README.md")]

mod backend;
pub mod config;
mod connect;
mod error;
mod fanout;
pub mod keys;
mod maintenance;
mod scripts;

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
}

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
    let (conn, client) = connect::open(&config).await?;
    Ok(RedisBackend::new(config, conn, client))
}
