#![doc = include_str!("../README.md")]

mod backend;
pub mod config;
mod connect;
mod error;
mod fanout;
pub mod keys;
mod maintenance;
mod scripts;

use std::sync::Arc;

use kombu_core::virtual_channel::{VirtualOptions, VirtualTransport};
use kombu_core::{
    async_trait, BrokerUrl, Capabilities, Channel, ConnectionOptions, Error, ErrorKind,
    ExchangeType, Registry, Result, Transport, TransportFactory, TransportKind,
};

pub use backend::RedisBackend;
pub use config::{FanoutMode, RedisConfig, KNOWN_OPTIONS};
pub use error::map_redis;

/// The URL schemes this transport serves.
pub const SCHEMES: &[&str] = &["redis", "rediss", "redis+socket"];

/// Redis's port.
pub const DEFAULT_PORT: u16 = 6379;

/// Add the Redis transport to `registry`.
///
/// ```
/// let mut registry = kombu_core::Registry::new();
/// kombu_redis::register(&mut registry);
/// assert!(registry.resolve("redis").is_ok());
/// assert!(registry.resolve("redis+socket").is_ok());
/// ```
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(RedisTransportFactory));
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

/// Makes `redis://`, `rediss://` and `redis+socket://` transports.
///
/// ```
/// use kombu_core::TransportFactory;
/// let factory = kombu_redis::RedisTransportFactory;
/// assert_eq!(factory.schemes(), kombu_redis::SCHEMES);
/// assert_eq!(factory.default_port(), Some(6379));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisTransportFactory;

#[async_trait]
impl TransportFactory for RedisTransportFactory {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn schemes(&self) -> &'static [&'static str] {
        SCHEMES
    }

    fn default_port(&self) -> Option<u16> {
        Some(DEFAULT_PORT)
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn connect(
        &self,
        url: &BrokerUrl,
        options: &ConnectionOptions,
    ) -> Result<Arc<dyn Transport>> {
        let config = RedisConfig::new(url, options)?;
        let virtual_options = VirtualOptions::from_transport_options(&options.transport_options)?;
        let (conn, client) = connect::open(&config).await?;
        let backend = RedisBackend::new(config, conn, client);
        Ok(Arc::new(RedisTransport {
            inner: VirtualTransport::new(backend, virtual_options),
        }))
    }
}

/// A `redis://` connection: the virtual transport over [`RedisBackend`],
/// with a real health check. [`Transport::heartbeat_check`] sends a PING
/// and waits for the answer (at most the response timeout, `socket_timeout`
/// or [`config::DEFAULT_RESPONSE_TIMEOUT`]); when it or any command fails
/// with a connection error, [`Transport::is_connected`] turns false for
/// good, so the connection is replaced rather than reused.
pub struct RedisTransport {
    inner: VirtualTransport<RedisBackend>,
}

impl RedisTransport {
    /// The backend (for `restore_visible` and the connection state).
    pub fn backend(&self) -> &Arc<RedisBackend> {
        self.inner.backend()
    }
}

#[async_trait]
impl Transport for RedisTransport {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn create_channel(&self) -> Result<Arc<dyn Channel>> {
        if self.inner.backend().is_dead() {
            return Err(Error::new(
                ErrorKind::ConnectionLost,
                "redis: the connection was lost (open a new one)",
            ));
        }
        self.inner.create_channel().await
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected() && !self.inner.backend().is_dead()
    }

    async fn heartbeat_check(&self) -> Result<()> {
        if !self.inner.is_connected() {
            return Err(Error::new(ErrorKind::Closed, "the connection is closed"));
        }
        self.inner.backend().ping().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
