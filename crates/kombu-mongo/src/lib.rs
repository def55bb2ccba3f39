#![doc = include_str!("../README.md")]

mod backend;
mod broadcast;
mod config;
mod connect;
mod delayed;
mod documents;
mod error;
mod handoff;
mod lease;
mod wakeup;
mod watch;

use std::sync::Arc;

use kombu_core::spi::VirtualFactory;
use kombu_core::{
    BrokerUrl, Capabilities, ConnectionOptions, ExchangeType, Registry, Result, TransportInfo,
    TransportKind,
};

pub use backend::MongoBackend;
pub use config::{CORE_QUERY_KEYS, DEFAULT_DATABASE};
pub use delayed::{parked_name, PARKED_PREFIX};

/// The URL schemes this transport serves.
pub const SCHEMES: &[&str] = &["mongodb", "mongodb+srv"];

/// MongoDB's port.
pub const DEFAULT_PORT: u16 = 27017;

/// Transport options `mongodb://` understands: kombu 5.7's names (`ttl`,
/// `capped_queue_size`, `calc_queue_size`, `default_database` and the
/// collection names), kombu-rs's lease settings, the extra
/// `exchanges_collection` and `socket_timeout`. The virtual channel's
/// options (`unroutable_queue`, `operation_timeout`:
/// [`kombu_core::spi::VIRTUAL_OPTIONS`]) are accepted too.
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
    registry.register(VirtualFactory::shared(&INFO, open));
}

/// What `mongodb://` is.
///
/// ```
/// assert_eq!(kombu_mongo::INFO.port_for(false), Some(27017));
/// assert_eq!(kombu_mongo::INFO.feature, "mongodb");
/// assert!(kombu_mongo::INFO.default_login.is_none());
/// ```
pub const INFO: TransportInfo = TransportInfo::new("mongodb", SCHEMES, TransportKind::Virtual)
    .feature("mongodb")
    .port(DEFAULT_PORT)
    .capabilities(capabilities);

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
        .with_delayed_delivery(true)
        .with_lease_extension(true)
        .with_delivery_limit(true)
}

/// Opens `mongodb://` backends. Every operation is bounded by the
/// `socket_timeout` transport option (default 10 s; the Rust driver has no
/// socket timeout of its own): the backend reports it as its operation
/// timeout, which the core's virtual transport applies. The heartbeat runs
/// `ping`. The backend: `conn.extension::<MongoBackend>()`.
pub async fn open(url: BrokerUrl, options: ConnectionOptions) -> Result<MongoBackend> {
    let (url, options) = (&url, &options);
    let config = Arc::new(config::MongoConfig::new(url, options)?);
    let (client, database) = connect::open(&config).await?;
    let collections = backend::Collections::new(&database, &config);
    connect::prepare(&database, &config).await?;
    Ok(MongoBackend::new(config, client, collections))
}
