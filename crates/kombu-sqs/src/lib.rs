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

use std::sync::Arc;

use kombu_core::virtual_channel::{VirtualOptions, VirtualTransport};
use kombu_core::{
    async_trait, BrokerUrl, Capabilities, ConnectionOptions, Registry, Result, Transport,
    TransportFactory,
};

pub use backend::SqsBackend;
pub use clients::DEFAULT_REGION;
pub use codec::{decode_body, encode_body, MAX_DELAY_SECONDS};
pub use errors::error_kind_for_code;
pub use lease::{extend_visibility, Lease};
pub use names::{entity_name, FIFO_SUFFIX, MAX_NAME_LEN};
pub use settings::{DEFAULT_MAX_MESSAGE_SIZE, KNOWN_OPTIONS};

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

/// Connect without the registry, keeping the concrete type (for
/// [`VirtualTransport::backend`]). No request is sent until the first
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
pub async fn connect(
    url: &BrokerUrl,
    options: &ConnectionOptions,
) -> Result<VirtualTransport<SqsBackend>> {
    let transport_options = &options.transport_options;
    let settings = settings::SqsSettings::new(url, transport_options)?;
    let clients = clients::AwsClients::new(&settings).await;
    let backend = SqsBackend::new(settings, clients);
    let virtual_options = VirtualOptions::from_transport_options(transport_options)?;
    Ok(VirtualTransport::new(backend, virtual_options))
}
