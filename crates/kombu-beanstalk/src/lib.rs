#![doc = include_str!("../README.md")]

mod backend;
mod chunks;
mod pool;
pub mod protocol;
mod reserver;
mod settings;
mod table;

use std::sync::{Arc, LazyLock, Mutex, Weak};

use kombu_core::virtual_channel::{VirtualOptions, VirtualTransport};
use kombu_core::{
    async_trait, BrokerUrl, Capabilities, Channel, Connection, ConnectionOptions, Error, ErrorKind,
    Registry, Result, Transport, TransportFactory,
};

pub use backend::{
    job_id, job_id_of, BeanstalkBackend, DELAY_HEADER, JOB_ID_HEADER, RESERVED_PREFIX,
};
pub use settings::{PriorityMapping, KNOWN_OPTIONS};

/// The URL schemes this transport serves.
pub const SCHEMES: &[&str] = &["beanstalk"];

/// beanstalkd's port.
pub const DEFAULT_PORT: u16 = 11300;

/// The transport `beanstalk://` connections get: the virtual channel over
/// a [`BeanstalkBackend`], with a heartbeat.
///
/// [`Transport::heartbeat_check`] sends `list-tube-used` on a connection of
/// its own (the consumers' connections may be blocked in
/// `reserve-with-timeout`), bounded by the `socket_timeout` transport option
/// (default 10 s). When it fails, [`Transport::is_connected`] turns false
/// and the [`Connection`] connects afresh on its next use. Every command
/// waits at most `socket_timeout` for its answer, so nothing hangs on a
/// stopped server.
pub struct BeanstalkTransport {
    inner: VirtualTransport<BeanstalkBackend>,
}

impl BeanstalkTransport {
    /// The backend, for beanstalk's own operations.
    pub fn backend(&self) -> &Arc<BeanstalkBackend> {
        self.inner.backend()
    }

    /// Messages dropped (or diverted) because no binding matched them.
    pub fn unroutable_count(&self) -> u64 {
        self.inner.unroutable_count()
    }
}

#[async_trait]
impl Transport for BeanstalkTransport {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn create_channel(&self) -> Result<Arc<dyn Channel>> {
        self.inner.create_channel().await
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected() && self.backend().is_alive()
    }

    async fn heartbeat_check(&self) -> Result<()> {
        self.backend().heartbeat_check().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// Every live beanstalk transport of the process, to find the backend of a
/// [`Connection`] ([`backend`]).
static TRANSPORTS: LazyLock<Mutex<Vec<Weak<BeanstalkTransport>>>> = LazyLock::new(Default::default);

/// Add the beanstalk transport to `registry`.
///
/// ```
/// let mut registry = kombu_core::Registry::new();
/// kombu_beanstalk::register(&mut registry);
/// assert!(registry.resolve("beanstalk").is_ok());
/// ```
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(BeanstalkTransportFactory));
}

/// The [`BeanstalkBackend`] behind a `beanstalk://` connection (connecting
/// first if needed), for beanstalk's own operations: kick, touch, buried
/// jobs.
///
/// ```no_run
/// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
/// let backend = kombu_beanstalk::backend(&conn).await?;
/// let kicked = backend.kick("tasks", 100).await?; // buried jobs back to ready
/// # let _ = kicked; Ok(()) }
/// ```
pub async fn backend(conn: &Connection) -> Result<Arc<BeanstalkBackend>> {
    let transport = conn.transport().await?;
    let wanted = Arc::as_ptr(&transport) as *const ();
    let mut list = TRANSPORTS.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|w| w.strong_count() > 0);
    list.iter()
        .filter_map(Weak::upgrade)
        .find(|t| Arc::as_ptr(t) as *const () == wanted)
        .map(|t| t.backend().clone())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the connection uses the {} transport, not beanstalk",
                    conn.transport_name()
                ),
            )
        })
}

/// Makes `beanstalk://host:port` transports (port 11300 by default).
///
/// ```
/// use kombu_core::TransportFactory;
/// let factory = kombu_beanstalk::BeanstalkTransportFactory;
/// assert_eq!(factory.schemes(), &["beanstalk"]);
/// assert_eq!(factory.default_port(), Some(11300));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct BeanstalkTransportFactory;

#[async_trait]
impl TransportFactory for BeanstalkTransportFactory {
    fn name(&self) -> &'static str {
        "beanstalk"
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
        let transport = connect(url, options).await?;
        Ok(transport)
    }
}

/// Connect a beanstalk transport (what the factory does), typed.
pub async fn connect(
    url: &BrokerUrl,
    options: &ConnectionOptions,
) -> Result<Arc<BeanstalkTransport>> {
    let transport_options = &options.transport_options;
    let settings = settings::Settings::from_options(transport_options)?;
    let server = pool::Server {
        host: url.hostname().unwrap_or("localhost").to_owned(),
        port: url.port().unwrap_or(DEFAULT_PORT),
        connect_timeout: options.connect_timeout,
        io_timeout: settings.socket_timeout,
    };
    let backend = BeanstalkBackend::connect(server, settings).await?;
    let virtual_options = VirtualOptions::from_transport_options(transport_options)?;
    let transport = Arc::new(BeanstalkTransport {
        inner: VirtualTransport::new(backend, virtual_options),
    });
    TRANSPORTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::downgrade(&transport));
    Ok(transport)
}
