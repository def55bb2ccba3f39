#![doc = include_str!("../README.md")]

mod acks;
mod channel;
mod config;
mod errors;
mod field_table;
mod properties;
mod publish_sync;
mod transport;

use std::sync::Arc;

use kombu_core::{
    async_trait, BrokerUrl, Capabilities, ConnectionOptions, Registry, Result, Transport,
    TransportFactory, TransportKind,
};

pub use channel::AmqpChannel;
pub use config::KNOWN_OPTIONS;
pub use transport::AmqpTransport;

/// The URL schemes this transport serves (kombu's `amqp`, `amqps` and the
/// aliases `pyamqp`, `amqplib`, `pika`).
pub const SCHEMES: &[&str] = &["amqp", "amqps", "pyamqp", "amqplib", "pika"];

/// The port when a URL gives none.
pub const DEFAULT_PORT: u16 = 5672;

/// The port when a URL gives none and TLS is on (`amqps://`, `?ssl=1`).
pub const DEFAULT_SSL_PORT: u16 = 5671;

/// Add the AMQP transport to `registry`.
///
/// ```
/// let mut registry = kombu_core::Registry::new();
/// kombu_amqp::register(&mut registry);
/// assert_eq!(registry.resolve("pyamqp").unwrap().name(), "amqp");
/// ```
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(AmqpTransportFactory));
}

/// What AMQP (RabbitMQ) does: it routes every exchange type, honours
/// priorities, TTL, dead-lettering and max length, shares declarations
/// between clients and keeps durable queues' persistent messages on disk.
///
/// ```
/// let caps = kombu_amqp::capabilities();
/// assert!(caps.shared_declarations && caps.persistent && caps.priority);
/// ```
pub fn capabilities() -> Capabilities {
    Capabilities::new(TransportKind::Native)
        .with_priority(true)
        .with_ttl(true)
        .with_dead_letter(true)
        .with_max_length(true)
        .with_shared_declarations(true)
        .with_persistent(true)
        .with_redelivers_unacked(true)
}

/// Makes AMQP transports: one lapin connection each.
///
/// ```
/// use kombu_core::TransportFactory;
/// let factory = kombu_amqp::AmqpTransportFactory;
/// assert_eq!(factory.default_port(), Some(5672));
/// assert_eq!(factory.default_port_for("amqps", false), Some(5671));
/// assert_eq!(factory.default_port_for("amqp", true), Some(5671));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AmqpTransportFactory;

#[async_trait]
impl TransportFactory for AmqpTransportFactory {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn schemes(&self) -> &'static [&'static str] {
        SCHEMES
    }

    fn default_port(&self) -> Option<u16> {
        Some(DEFAULT_PORT)
    }

    fn default_port_for(&self, scheme: &str, ssl: bool) -> Option<u16> {
        Some(if ssl || scheme.eq_ignore_ascii_case("amqps") {
            DEFAULT_SSL_PORT
        } else {
            DEFAULT_PORT
        })
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn connect(
        &self,
        url: &BrokerUrl,
        options: &ConnectionOptions,
    ) -> Result<Arc<dyn Transport>> {
        let tls = url.scheme().eq_ignore_ascii_case("amqps");
        let config = config::ConnectConfig::new(url, options, tls)?;
        Ok(Arc::new(AmqpTransport::connect(config).await?))
    }
}
