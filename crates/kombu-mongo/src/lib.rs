#![doc = include_str!("../README.md")]

mod backend;
mod broadcast;
mod config;
mod connect;
mod documents;
mod error;
mod lease;
mod transport;

use std::sync::Arc;

use kombu_core::virtual_channel::VirtualOptions;
use kombu_core::{
    async_trait, BrokerUrl, Capabilities, ConnectionOptions, ExchangeType, Registry, Result,
    Transport, TransportFactory, TransportKind,
};

pub use backend::MongoBackend;
pub use config::{CORE_QUERY_KEYS, DEFAULT_DATABASE};
pub use transport::MongoTransport;

/// The URL schemes this transport serves.
pub const SCHEMES: &[&str] = &["mongodb", "mongodb+srv"];

/// MongoDB's port.
pub const DEFAULT_PORT: u16 = 27017;

/// Transport options `mongodb://` understands: kombu 5.7's names (`ttl`,
/// `capped_queue_size`, `calc_queue_size`, `default_database` and the
/// collection names), kombu-rs's lease settings, the extra
/// `exchanges_collection`, and the virtual channel's options.
///
/// Any other key in the URL's query goes to the MongoDB driver.
pub const KNOWN_OPTIONS: &[&str] = &[
    "ttl",
    "capped_queue_size",
    "calc_queue_size",
    "default_database",
    "messages_collection",
    "routing_collection",
    "broadcast_collection",
    "queues_collection",
    "exchanges_collection",
    "lease_timeout",
    "lease_renew_interval",
    "polling_interval",
    "unroutable_queue",
    "socket_timeout",
];

/// Add the MongoDB transport (`mongodb://`, `mongodb+srv://`) to `registry`.
///
/// ```
/// let mut registry = kombu_core::Registry::new();
/// kombu_mongo::register(&mut registry);
/// assert!(registry.resolve("mongodb").is_ok());
/// assert!(registry.resolve("mongodb+srv").is_ok());
/// ```
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(MongoTransportFactory));
}

/// Makes `mongodb://` transports.
///
/// ```no_run
/// # async fn demo() -> kombu_core::Result<()> {
/// use std::sync::Arc;
/// use kombu_core::{Connection, Registry};
///
/// let mut registry = Registry::new();
/// kombu_mongo::register(&mut registry);
/// let conn = Connection::with_registry(
///     "mongodb://127.0.0.1:27017/jobs?retryWrites=false",
///     Arc::new(registry),
/// )?;
/// conn.connect().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MongoTransportFactory;

/// What the MongoDB transport can do.
///
/// ```
/// let caps = kombu_mongo::capabilities();
/// assert!(caps.priority && caps.shared_declarations && caps.redelivers_unacked);
/// ```
pub fn capabilities() -> Capabilities {
    Capabilities::new(TransportKind::Virtual)
        .with_exchange_types(&[
            ExchangeType::Direct,
            ExchangeType::Topic,
            ExchangeType::Fanout,
            ExchangeType::Headers,
        ])
        .with_fanout_note("capped collection, at-most-once")
        .with_shared_declarations(true)
        .with_persistent(true)
        .with_redelivers_unacked(true)
}

#[async_trait]
impl TransportFactory for MongoTransportFactory {
    fn name(&self) -> &'static str {
        "mongodb"
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
        let config = Arc::new(config::MongoConfig::new(url, options)?);
        let (client, database) = connect::open(&config).await?;
        let collections = backend::Collections::new(&database, &config);
        connect::prepare(&database, &config, &collections).await?;
        let backend = MongoBackend::new(config, client, collections);
        let virtual_options = VirtualOptions::from_transport_options(&options.transport_options)?;
        Ok(Arc::new(MongoTransport::new(backend, virtual_options)))
    }
}
