//! The compiled-in transports, installed into the core's global registry
//! (sqlx's `install_default_drivers` idea): one `register` call per enabled
//! transport feature, and the schemes of the others, so an error can name
//! the feature to enable.

use std::sync::{Arc, Once};

use kombu_core::spi::TransportFactory;
use kombu_core::Registry;

/// Every transport feature of this crate and the URL schemes its transport
/// serves (a test keeps this equal to the transport crates' own lists).
pub const TRANSPORT_FEATURES: &[(&str, &[&str])] = &[
    ("memory", &["memory"]),
    ("amqp", &["amqp", "amqps", "pyamqp", "amqplib", "pika"]),
    (
        "redis",
        &[
            "redis",
            "rediss",
            "redis+socket",
            "sentinel",
            "rediscluster",
        ],
    ),
    ("sqs", &["sqs"]),
    ("mongodb", &["mongodb", "mongodb+srv"]),
    ("beanstalk", &["beanstalk"]),
    ("couchdb", &["couchdb"]),
    ("nats", &["nats", "nats+tls", "tls"]),
];

/// The transport features compiled in.
const ENABLED: &[&str] = &[
    #[cfg(feature = "memory")]
    "memory",
    #[cfg(feature = "amqp")]
    "amqp",
    #[cfg(feature = "redis")]
    "redis",
    #[cfg(feature = "sqs")]
    "sqs",
    #[cfg(feature = "mongodb")]
    "mongodb",
    #[cfg(feature = "beanstalk")]
    "beanstalk",
    #[cfg(feature = "couchdb")]
    "couchdb",
    #[cfg(feature = "nats")]
    "nats",
];

/// The compiled-in transports, and the schemes of those that are not.
fn builtin() -> Registry {
    let mut registry = Registry::new();
    #[cfg(feature = "memory")]
    kombu_memory::register(&mut registry);
    #[cfg(feature = "amqp")]
    kombu_amqp::register(&mut registry);
    #[cfg(feature = "redis")]
    kombu_redis::register(&mut registry);
    #[cfg(feature = "sqs")]
    kombu_sqs::register(&mut registry);
    #[cfg(feature = "mongodb")]
    kombu_mongo::register(&mut registry);
    #[cfg(feature = "beanstalk")]
    kombu_beanstalk::register(&mut registry);
    #[cfg(feature = "couchdb")]
    kombu_couchdb::register(&mut registry);
    #[cfg(feature = "nats")]
    kombu_nats::register(&mut registry);
    for (feature, schemes) in TRANSPORT_FEATURES {
        if !ENABLED.contains(feature) {
            registry.register_disabled(schemes, feature);
        }
    }
    registry
}

/// Install every compiled-in transport into the global registry that
/// [`Connection::new`](crate::Connection::new),
/// [`ConnectionPool::new`](crate::ConnectionPool::new) and the CLI use.
/// Call it once at start (later calls do nothing); transports installed
/// before it keep their schemes.
///
/// ```
/// kombu::install_default_transports();
/// let conn = kombu::Connection::new("memory://")?;
/// assert_eq!(conn.transport_name(), "memory");
/// # Ok::<(), kombu::Error>(())
/// ```
pub fn install_default_transports() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        Registry::update_global(|global| {
            global.extend_fallback(builtin());
        })
    });
}

/// The global registry, with the compiled-in transports installed.
///
/// ```
/// assert!(kombu::default_registry().schemes().contains(&"memory"));
/// ```
pub fn default_registry() -> Arc<Registry> {
    install_default_transports();
    Registry::global()
}

/// Add a transport to the global registry (after installing the
/// compiled-in ones), for every later [`Connection::new`](crate::Connection::new)
/// in the process. A scheme registered here wins over a built-in one.
///
/// ```
/// # use std::sync::Arc;
/// # use kombu::spi::{async_trait, Transport, TransportFactory};
/// # use kombu::{BrokerUrl, ConnectionOptions, Result, TransportInfo, TransportKind};
/// struct Mine;
/// const MINE: TransportInfo = TransportInfo::new("mine", &["mine"], TransportKind::Virtual);
/// #[async_trait]
/// impl TransportFactory for Mine {
///     fn info(&self) -> &'static TransportInfo { &MINE }
///     async fn connect(&self, _: &BrokerUrl, _: &ConnectionOptions) -> Result<Arc<dyn Transport>> {
///         Err(kombu::Error::unsupported("demo"))
///     }
/// }
/// kombu::register(Arc::new(Mine));
/// assert_eq!(kombu::Connection::new("mine://")?.transport_name(), "mine");
/// # Ok::<(), kombu::Error>(())
/// ```
pub fn register(factory: Arc<dyn TransportFactory>) {
    install_default_transports();
    Registry::install(factory);
}
