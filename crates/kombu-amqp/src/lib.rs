#![doc = include_str!("../README.md")]

mod acks;
mod channel;
mod config;
pub mod delayed;
mod errors;
mod field_table;
#[doc(hidden)]
pub mod fuzzing;
mod properties;
mod publish_sync;
mod quarantine;
mod tls;
mod transport;

use std::sync::Arc;

use kombu_core::spi::{async_trait, Transport, TransportFactory};
use kombu_core::{
    BrokerUrl, Capabilities, ConnectionOptions, Registry, Result, TransportInfo, TransportKind,
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
/// between clients, keeps durable queues' persistent messages on disk and
/// delays messages (Celery's native delayed delivery, see [`delayed`]).
///
/// ```
/// let caps = kombu_amqp::capabilities();
/// assert!(caps.shared_declarations && caps.persistent && caps.priority);
/// assert!(caps.delayed_delivery);
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
        // RabbitMQ honours x-delivery-limit on quorum queues.
        .with_delivery_limit(true)
        // Deliveries stay with their channel: nothing to extend.
        .with_lease_extension(true)
        .with_delayed_delivery(true)
        // A reject without requeue from a queue this connection declared
        // without a dead-letter exchange goes to `<queue>.quarantine`.
        .with_quarantine(true)
}

/// What `amqp://` is: the one transport with a default login (kombu's
/// `guest`/`guest` on virtual host `/`), port 5672, or 5671 with TLS
/// (`amqps://` or the `ssl` option).
///
/// ```
/// let info = &kombu_amqp::INFO;
/// assert_eq!(info.port_for(false), Some(5672));
/// assert_eq!(info.port_for(true), Some(5671));
/// assert!(info.is_tls_scheme("amqps"));
/// assert_eq!(info.default_login, Some(("guest", "guest")));
/// ```
pub const INFO: TransportInfo = TransportInfo::new("amqp", SCHEMES, TransportKind::Native)
    .feature("amqp")
    .port(DEFAULT_PORT)
    .tls_port(DEFAULT_SSL_PORT)
    .tls_schemes(&["amqps"])
    .default_login("guest", "guest")
    .default_virtual_host("/")
    .capabilities(capabilities);

/// Makes AMQP transports: one lapin connection each.
///
/// ```
/// use kombu_core::spi::TransportFactory;
/// assert_eq!(kombu_amqp::AmqpTransportFactory.name(), "amqp");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AmqpTransportFactory;

#[async_trait]
impl TransportFactory for AmqpTransportFactory {
    fn info(&self) -> &'static TransportInfo {
        &INFO
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
