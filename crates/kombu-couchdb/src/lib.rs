#![doc = include_str!("../README.md")]

mod backend;
mod bulk;
mod changes;
mod client;
mod config;
pub mod layout;

use kombu_core::spi::VirtualFactory;
use kombu_core::{BrokerUrl, ConnectionOptions, Registry, Result, TransportInfo, TransportKind};

pub use backend::CouchBackend;
pub use config::{
    database_name, CouchConfig, Credentials, DEFAULT_DATABASE, DEFAULT_PORT, KNOWN_OPTIONS,
};

/// The URL schemes this transport serves.
pub const SCHEMES: &[&str] = &["couchdb"];

/// What `couchdb://` is.
///
/// ```
/// assert_eq!(kombu_couchdb::INFO.port_for(false), Some(5984));
/// assert!(kombu_couchdb::INFO.static_capabilities().shared_declarations);
/// assert!(kombu_couchdb::INFO.default_login.is_none());
/// ```
pub const INFO: TransportInfo = TransportInfo::new("couchdb", SCHEMES, TransportKind::Virtual)
    .port(DEFAULT_PORT)
    .capabilities(backend::capabilities);

/// Add the CouchDB transport to `registry`.
///
/// ```
/// let mut registry = kombu_core::Registry::new();
/// kombu_couchdb::register(&mut registry);
/// assert!(registry.resolve("couchdb").is_ok());
/// ```
pub fn register(registry: &mut Registry) {
    registry.register(VirtualFactory::shared(&INFO, open));
}

/// Opens `couchdb://` backends: one HTTP client per connection, the
/// database (the URL's virtual host) created on first use. Every request
/// is bounded by the `request_timeout` transport option (default 30 s; a
/// changes-feed wait by its own wait plus that), and so is each backend
/// call unless the `operation_timeout` option says otherwise; the
/// heartbeat is `GET /`.
/// The backend is reachable as `conn.extension::<CouchBackend>()`.
pub async fn open(url: BrokerUrl, options: ConnectionOptions) -> Result<CouchBackend> {
    let (url, options) = (&url, &options);
    let config = CouchConfig::new(url, options)?;
    let client = client::CouchClient::open(&config).await?;
    let backend = CouchBackend::new(client, &config);
    // Consumers wait on the changes feed from here, which saves their
    // first fetch a request.
    backend.read_feed_position().await?;
    Ok(backend)
}
