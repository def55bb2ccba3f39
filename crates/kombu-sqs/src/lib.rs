#![doc = include_str!("../README.md")]

mod backend;
mod batch;
mod catalog;
mod clients;
mod codec;
mod errors;
mod fanout;
mod lease;
mod names;
mod settings;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kombu_core::virtual_channel::{VirtualOptions, VirtualTransport};
use kombu_core::{
    async_trait, BrokerUrl, Capabilities, Channel, ConnectionOptions, Error, ErrorKind, Registry,
    Result, Transport, TransportFactory,
};

pub use backend::SqsBackend;
pub use clients::DEFAULT_REGION;
pub use codec::{decode_body, encode_body, MAX_DELAY_SECONDS};
pub use errors::error_kind_for_code;
pub use lease::{extend_visibility, Lease};
pub use names::{entity_name, FIFO_SUFFIX, MAX_NAME_LEN};
pub use settings::{DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_SOCKET_TIMEOUT, KNOWN_OPTIONS};

/// The URL schemes this transport serves (kombu also accepts `SQS`; URL
/// schemes are case-insensitive).
pub const SCHEMES: &[&str] = &["sqs"];

/// Add the SQS transport to `registry`.
///
/// ```
/// let mut registry = kombu_core::Registry::new();
/// kombu_sqs::register(&mut registry);
/// assert!(registry.resolve("sqs").is_ok());
/// ```
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(SqsTransportFactory));
}

/// Makes `sqs://` transports.
///
/// ```
/// use kombu_core::TransportFactory;
/// assert_eq!(kombu_sqs::SqsTransportFactory.schemes(), &["sqs"]);
/// assert!(!kombu_sqs::SqsTransportFactory.capabilities().priority);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SqsTransportFactory;

#[async_trait]
impl TransportFactory for SqsTransportFactory {
    fn name(&self) -> &'static str {
        "sqs"
    }

    fn schemes(&self) -> &'static [&'static str] {
        SCHEMES
    }

    fn capabilities(&self) -> Capabilities {
        backend::capabilities(
            true,
            backend::max_body_size(settings::DEFAULT_MAX_MESSAGE_SIZE, true),
        )
    }

    async fn connect(
        &self,
        url: &BrokerUrl,
        options: &ConnectionOptions,
    ) -> Result<Arc<dyn Transport>> {
        Ok(Arc::new(connect(url, options).await?))
    }
}

/// The transport `sqs://` connections get: the virtual channel over an
/// [`SqsBackend`], with a heartbeat.
///
/// SQS is HTTP: every request is its own health check, and each attempt
/// at one is bounded by the `socket_timeout` transport option (default
/// 10 s; a long poll gets its `wait_time_seconds` on top; the SDK makes up
/// to three attempts). [`Transport::heartbeat_check`] sends `ListQueues`
/// for one queue within `socket_timeout`; when it fails,
/// [`Transport::is_connected`] turns false and the
/// [`Connection`](kombu_core::Connection) connects afresh (new clients,
/// credentials resolved again) on its next use.
pub struct SqsTransport {
    inner: VirtualTransport<SqsBackend>,
    dead: AtomicBool,
}

impl SqsTransport {
    /// The backend.
    pub fn backend(&self) -> &Arc<SqsBackend> {
        self.inner.backend()
    }

    /// Messages dropped (or diverted) because no binding matched them.
    pub fn unroutable_count(&self) -> u64 {
        self.inner.unroutable_count()
    }
}

#[async_trait]
impl Transport for SqsTransport {
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
                "the sqs transport is closed",
            ));
        }
        let result = self.backend().ping().await.map_err(|err| {
            if err.is_connection_error() {
                err
            } else {
                Error::new(
                    ErrorKind::ConnectionLost,
                    format!("sqs heartbeat failed: {err}"),
                )
            }
        });
        if let Err(err) = &result {
            tracing::warn!(error = %err, "sqs heartbeat failed");
            self.dead.store(true, Ordering::Release);
        }
        result
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// Connect without the registry, keeping the concrete type (for
/// [`SqsTransport::backend`]). No request is sent until the first
/// declaration or publish.
///
/// ```no_run
/// # async fn run() -> kombu_core::Result<()> {
/// use kombu_core::{BrokerUrl, ConnectionOptions, Transport};
/// let url = BrokerUrl::parse("sqs://test:test@127.0.0.1:4566")?;
/// let transport = kombu_sqs::connect(&url, &ConnectionOptions::new()).await?;
/// let channel = transport.create_channel().await?;
/// # let _ = channel; Ok(()) }
/// ```
pub async fn connect(url: &BrokerUrl, options: &ConnectionOptions) -> Result<SqsTransport> {
    let transport_options = &options.transport_options;
    let mut settings = settings::SqsSettings::new(url, transport_options)?;
    settings.connect_timeout = options.connect_timeout;
    let clients = clients::AwsClients::new(&settings).await;
    let backend = SqsBackend::new(settings, clients);
    let virtual_options = VirtualOptions::from_transport_options(transport_options)?;
    Ok(SqsTransport {
        inner: VirtualTransport::new(backend, virtual_options),
        dead: AtomicBool::new(false),
    })
}
