#![doc = include_str!("../README.md")]

mod backend;
mod changes;
mod client;
mod config;
pub mod layout;

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use kombu_core::virtual_channel::{VirtualOptions, VirtualTransport};
use kombu_core::{
    async_trait, BrokerUrl, Capabilities, Channel, ConnectionOptions, Error, ErrorKind, Registry,
    Result, Transport, TransportFactory,
};

pub use backend::CouchBackend;
pub use config::{
    database_name, CouchConfig, Credentials, DEFAULT_DATABASE, DEFAULT_PORT, KNOWN_OPTIONS,
};

/// The URL schemes this transport serves.
pub const SCHEMES: &[&str] = &["couchdb"];

/// Add the CouchDB transport to `registry`.
///
/// ```
/// let mut registry = kombu_core::Registry::new();
/// kombu_couchdb::register(&mut registry);
/// assert!(registry.resolve("couchdb").is_ok());
/// ```
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(CouchDbTransportFactory));
}

/// Makes `couchdb://` transports: one HTTP client per connection, the
/// database (the URL's virtual host) created on first use.
///
/// ```
/// use kombu_core::TransportFactory;
/// let factory = kombu_couchdb::CouchDbTransportFactory;
/// assert_eq!(factory.schemes(), &["couchdb"]);
/// assert_eq!(factory.default_port(), Some(5984));
/// assert!(factory.capabilities().shared_declarations);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CouchDbTransportFactory;

#[async_trait]
impl TransportFactory for CouchDbTransportFactory {
    fn name(&self) -> &'static str {
        "couchdb"
    }

    fn schemes(&self) -> &'static [&'static str] {
        SCHEMES
    }

    fn default_port(&self) -> Option<u16> {
        Some(DEFAULT_PORT)
    }

    fn capabilities(&self) -> Capabilities {
        backend::capabilities()
    }

    async fn connect(
        &self,
        url: &BrokerUrl,
        options: &ConnectionOptions,
    ) -> Result<Arc<dyn Transport>> {
        let config = CouchConfig::new(url, options)?;
        let client = client::CouchClient::open(&config).await?;
        let backend = CouchBackend::new(client, &config);
        // Consumers wait on the changes feed from here, which saves their
        // first fetch a request.
        backend.read_feed_position().await?;
        let virtual_options = VirtualOptions::from_transport_options(&options.transport_options)?;
        Ok(Arc::new(CouchDbTransport {
            inner: VirtualTransport::new(backend, virtual_options),
            dead: AtomicBool::new(false),
        }))
    }
}

/// The transport `couchdb://` connections get: the virtual channel over a
/// [`CouchBackend`], with a heartbeat.
///
/// Every request is bounded by the `request_timeout` transport option
/// (default 30 s; a changes-feed wait by its own wait plus that), so
/// nothing waits forever on a hung server. [`Transport::heartbeat_check`]
/// sends `GET /` under the same bound; when it fails,
/// [`Transport::is_connected`] turns false and the
/// [`Connection`](kombu_core::Connection) connects afresh on its next use.
pub struct CouchDbTransport {
    inner: VirtualTransport<CouchBackend>,
    dead: AtomicBool,
}

impl CouchDbTransport {
    /// The backend.
    pub fn backend(&self) -> &Arc<CouchBackend> {
        self.inner.backend()
    }
}

#[async_trait]
impl Transport for CouchDbTransport {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn create_channel(&self) -> Result<Arc<dyn Channel>> {
        self.inner.create_channel().await
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected() && !self.dead.load(Ordering::Acquire)
    }

    async fn heartbeat_check(&self) -> Result<()> {
        if !self.inner.is_connected() {
            return Err(Error::new(
                ErrorKind::ConnectionLost,
                "the couchdb transport is closed",
            ));
        }
        let result = self.backend().ping().await.map_err(|err| {
            if err.is_connection_error() {
                err
            } else {
                Error::new(
                    ErrorKind::ConnectionLost,
                    format!("couchdb heartbeat failed: {err}"),
                )
            }
        });
        if let Err(err) = &result {
            tracing::warn!(error = %err, "couchdb heartbeat failed");
            self.dead.store(true, Ordering::Release);
        }
        result
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
