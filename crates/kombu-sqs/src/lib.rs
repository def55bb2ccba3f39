#![doc = include_str!("../README.md")]

mod backend;
mod batch;
mod bulk;
mod catalog;
mod clients;
mod codec;
mod delay;
mod errors;
mod fanout;
mod lease;
mod names;
mod pace;
mod settings;

use kombu_core::spi::VirtualFactory;
use kombu_core::{
    BrokerUrl, Capabilities, ConnectionOptions, Registry, Result, TransportInfo, TransportKind,
};

pub use backend::SqsBackend;
pub use clients::DEFAULT_REGION;
pub use codec::{decode_body, encode_body, MAX_DELAY_SECONDS};
pub use delay::{delay_step, NOT_BEFORE_ATTRIBUTE};
pub use errors::error_kind_for_code;
pub use lease::{extend_visibility, Lease};
pub use names::{entity_name, FIFO_SUFFIX, MAX_NAME_LEN};
pub use settings::{DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_SOCKET_TIMEOUT, KNOWN_OPTIONS};

/// The URL schemes this transport serves (kombu also accepts `SQS`; URL
/// schemes are case-insensitive).
pub const SCHEMES: &[&str] = &["sqs"];

/// What `sqs://` is: no default port (a URL without a host means AWS
/// itself), no default login (a URL without keys means the AWS default
/// credential chain). Its static capabilities are those of the defaults
/// (fanout over SNS on); a connection reports what its options allow.
///
/// ```
/// use kombu_core::ExchangeType;
/// assert_eq!(kombu_sqs::INFO.schemes, &["sqs"]);
/// assert!(kombu_sqs::INFO.default_port.is_none() && kombu_sqs::INFO.default_login.is_none());
/// let caps = kombu_sqs::INFO.static_capabilities();
/// assert!(!caps.priority && caps.supports(ExchangeType::Fanout));
/// ```
pub const INFO: TransportInfo = TransportInfo::new("sqs", SCHEMES, TransportKind::Virtual)
    .feature("sqs")
    .capabilities(static_capabilities);

fn static_capabilities() -> Capabilities {
    backend::capabilities(
        true,
        backend::max_body_size(settings::DEFAULT_MAX_MESSAGE_SIZE, true),
    )
}

/// Add the SQS transport to `registry`.
///
/// ```
/// let mut registry = kombu_core::Registry::new();
/// kombu_sqs::register(&mut registry);
/// assert!(registry.resolve("sqs").is_ok());
/// ```
pub fn register(registry: &mut Registry) {
    registry.register(VirtualFactory::shared(&INFO, open));
}

/// Opens `sqs://` backends: resolves the region and credentials (the URL's
/// keys as given, else the AWS default chain) and makes the SDK clients; no
/// request is sent until the first declaration or publish. Each attempt at
/// a request is bounded by `socket_timeout` (a long poll: plus its wait);
/// the heartbeat is `ListQueues` for one queue. The backend:
/// `conn.extension::<SqsBackend>()`.
pub async fn open(url: BrokerUrl, options: ConnectionOptions) -> Result<SqsBackend> {
    let (url, options) = (&url, &options);
    let mut settings = settings::SqsSettings::new(url, &options.transport_options)?;
    settings.connect_timeout = options.connect_timeout;
    let clients = clients::AwsClients::new(&settings).await;
    Ok(SqsBackend::new(settings, clients))
}
