//! [`Connection`]: a lazy handle on a broker chosen by URL.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::compression::CompressionRegistry;
use crate::error::{Error, ErrorKind, Result};
use crate::options::ConnectionOptions;
use crate::registry::Registry;
use crate::serialization::SerializerRegistry;
use crate::transport::{Capabilities, Channel, Transport, TransportFactory};
use crate::url::BrokerUrl;

/// The URL used when none is given: AMQP on localhost, as in kombu.
pub const DEFAULT_URL: &str = "amqp://guest:guest@localhost:5672//";

/// A connection to a broker, chosen by the URL's scheme.
///
/// Creating one does no I/O: it connects on [`Connection::connect`] or on
/// first use. Clones share the same underlying connection. It closes when
/// [`Connection::close`]d, [`Connection::release`]d, or when the last clone
/// is dropped.
///
/// Values in the URL win over the keyword [`ConnectionOptions`]; missing
/// parts default to `localhost`, `guest`/`guest`, virtual host `/` and the
/// transport's port. Several URLs separated by `;` form a failover list.
///
/// ```
/// # use std::sync::Arc;
/// use kombu_core::{Connection, Registry};
/// let registry = Arc::new(Registry::new()); // the `kombu` crate fills this for you
/// let err = Connection::with_registry("nope://", registry).err().unwrap();
/// assert_eq!(err.kind(), kombu_core::ErrorKind::UnknownScheme);
/// ```
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

struct Target {
    url: BrokerUrl,
    factory: Arc<dyn TransportFactory>,
}

struct Shared {
    targets: Vec<Target>,
    options: ConnectionOptions,
    transport: tokio::sync::Mutex<Option<Arc<dyn Transport>>>,
    active: AtomicUsize,
    serializers: Arc<SerializerRegistry>,
    compressors: Arc<CompressionRegistry>,
}

impl Connection {
    /// A connection for `url` (or, when `url` is empty, the transport named
    /// by no option: AMQP) using `registry`.
    pub fn with_registry(url: &str, registry: Arc<Registry>) -> Result<Self> {
        Self::with_options(url, ConnectionOptions::default(), registry)
    }

    /// A connection for `url` with keyword options, using `registry`.
    ///
    /// An empty `url` means `<options.transport or amqp>://` with every
    /// part taken from the options or the defaults.
    pub fn with_options(
        url: &str,
        options: ConnectionOptions,
        registry: Arc<Registry>,
    ) -> Result<Self> {
        let url = url.trim();
        let given = if url.is_empty() {
            let transport = options.transport.clone().unwrap_or_else(|| "amqp".into());
            if transport.contains("://") {
                transport
            } else {
                format!("{transport}://")
            }
        } else {
            url.to_owned()
        };
        let urls = BrokerUrl::parse_list(&given)?;
        let mut options = options;
        options.apply_query(&urls[0])?;
        let targets = urls
            .into_iter()
            .map(|url| {
                let factory = registry.resolve(url.scheme())?;
                let port = factory.default_port_for(url.scheme(), options.ssl.is_enabled());
                let url = url.with_defaults(&options, port);
                Ok(Target { url, factory })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Connection {
            shared: Arc::new(Shared {
                targets,
                options,
                transport: tokio::sync::Mutex::new(None),
                active: AtomicUsize::new(0),
                serializers: Arc::new(SerializerRegistry::default()),
                compressors: Arc::new(CompressionRegistry::default()),
            }),
        })
    }

    /// Connect now (a no-op when connected). Tries each URL of a failover
    /// list in turn, each bounded by `connect_timeout`.
    pub async fn connect(&self) -> Result<()> {
        self.transport().await.map(|_| ())
    }

    /// The connected transport, connecting first if needed.
    pub async fn transport(&self) -> Result<Arc<dyn Transport>> {
        let mut slot = self.shared.transport.lock().await;
        if let Some(transport) = slot.as_ref() {
            if transport.is_connected() {
                return Ok(transport.clone());
            }
        }
        let transport = self.establish().await?;
        *slot = Some(transport.clone());
        Ok(transport)
    }

    async fn establish(&self) -> Result<Arc<dyn Transport>> {
        let count = self.shared.targets.len();
        let start = self.shared.active.load(Ordering::Relaxed);
        let mut last_error = None;
        for step in 0..count {
            let index = (start + step) % count;
            let target = &self.shared.targets[index];
            match self.connect_one(target).await {
                Ok(transport) => {
                    self.shared.active.store(index, Ordering::Relaxed);
                    return Ok(transport);
                }
                Err(err) => {
                    if count > 1 {
                        tracing::warn!(url = %target.url, error = %err, "connect failed; trying the next URL");
                    }
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::new(ErrorKind::InvalidUrl, "no URL to connect to")))
    }

    async fn connect_one(&self, target: &Target) -> Result<Arc<dyn Transport>> {
        let connecting = target.factory.connect(&target.url, &self.shared.options);
        match self.shared.options.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connecting).await.map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "connecting to {} timed out after {:.1} s",
                        host_port(&target.url),
                        limit.as_secs_f64()
                    ),
                )
            })?,
            None => connecting.await,
        }
    }

    /// True while connected (false before the first use).
    pub fn connected(&self) -> bool {
        match self.shared.transport.try_lock() {
            Ok(slot) => slot.as_ref().is_some_and(|t| t.is_connected()),
            Err(_) => false,
        }
    }

    /// A new channel (connecting first if needed).
    pub async fn channel(&self) -> Result<Arc<dyn Channel>> {
        self.transport().await?.create_channel().await
    }

    /// Close the connection. Later use connects again.
    pub async fn close(&self) -> Result<()> {
        let transport = self.shared.transport.lock().await.take();
        match transport {
            Some(transport) => transport.close().await,
            None => Ok(()),
        }
    }

    /// Release the connection: back to its pool when it came from one,
    /// else closed (kombu's `release`).
    pub async fn release(self) -> Result<()> {
        self.close().await
    }

    /// The URL in use, password masked.
    pub fn as_uri(&self) -> String {
        self.url().as_uri(false)
    }

    /// The URL in use, with the password (for passing on; never log it).
    pub fn as_uri_with_password(&self) -> String {
        self.url().as_uri(true)
    }

    /// The URL in use (defaults filled in).
    pub fn url(&self) -> &BrokerUrl {
        &self.active_target().url
    }

    /// Every URL of the failover list, in order.
    pub fn urls(&self) -> Vec<&BrokerUrl> {
        self.shared.targets.iter().map(|t| &t.url).collect()
    }

    /// The keyword options in force (URL query applied).
    pub fn options(&self) -> &ConnectionOptions {
        &self.shared.options
    }

    /// The transport's name (`memory`, `amqp`, ...).
    pub fn transport_name(&self) -> &'static str {
        self.active_target().factory.name()
    }

    /// What the transport can do (known without connecting).
    pub fn capabilities(&self) -> Capabilities {
        self.active_target().factory.capabilities()
    }

    /// The serializers used by producers and consumers of this connection.
    pub fn serializers(&self) -> &Arc<SerializerRegistry> {
        &self.shared.serializers
    }

    /// The compression methods used by producers and consumers of this connection.
    pub fn compressors(&self) -> &Arc<CompressionRegistry> {
        &self.shared.compressors
    }

    fn active_target(&self) -> &Target {
        let index = self.shared.active.load(Ordering::Relaxed);
        &self.shared.targets[index % self.shared.targets.len()]
    }
}

fn host_port(url: &BrokerUrl) -> String {
    let host = url.hostname().unwrap_or("localhost");
    match url.port() {
        Some(port) if host.contains(':') => format!("[{host}]:{port}"),
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.as_uri())
            .field("transport", &self.transport_name())
            .field("connected", &self.connected())
            .finish()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let Some(transport) = self.transport.get_mut().take() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(err) = transport.close().await {
                    tracing::debug!(error = %err, "closing a dropped connection failed");
                }
            });
        }
    }
}
