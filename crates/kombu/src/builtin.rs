//! The default registry: one `register` call per enabled transport feature.

use std::sync::{Arc, LazyLock, RwLock};

use kombu_core::{Registry, TransportFactory};

static DEFAULT: LazyLock<RwLock<Arc<Registry>>> =
    LazyLock::new(|| RwLock::new(Arc::new(builtin())));

/// The transports compiled in, and the schemes of those that are not (so an
/// error can name the feature to enable).
fn builtin() -> Registry {
    let mut registry = Registry::new();
    #[cfg(feature = "memory")]
    kombu_memory::register(&mut registry);
    #[cfg(not(feature = "memory"))]
    registry.register_disabled(&["memory"], "memory");
    #[cfg(feature = "amqp")]
    kombu_amqp::register(&mut registry);
    #[cfg(not(feature = "amqp"))]
    registry.register_disabled(&["amqp", "amqps", "pyamqp", "amqplib", "pika"], "amqp");
    #[cfg(feature = "redis")]
    kombu_redis::register(&mut registry);
    #[cfg(not(feature = "redis"))]
    registry.register_disabled(&["redis", "rediss", "redis+socket"], "redis");
    #[cfg(feature = "sqs")]
    kombu_sqs::register(&mut registry);
    #[cfg(not(feature = "sqs"))]
    registry.register_disabled(&["sqs"], "sqs");
    #[cfg(feature = "mongodb")]
    kombu_mongo::register(&mut registry);
    #[cfg(not(feature = "mongodb"))]
    registry.register_disabled(&["mongodb", "mongodb+srv"], "mongodb");
    #[cfg(feature = "beanstalk")]
    kombu_beanstalk::register(&mut registry);
    #[cfg(not(feature = "beanstalk"))]
    registry.register_disabled(&["beanstalk"], "beanstalk");
    #[cfg(feature = "couchdb")]
    kombu_couchdb::register(&mut registry);
    #[cfg(not(feature = "couchdb"))]
    registry.register_disabled(&["couchdb"], "couchdb");
    registry
}

/// The registry [`crate::Connection::new`] uses.
///
/// ```
/// assert!(kombu::default_registry().schemes().contains(&"memory"));
/// ```
pub fn default_registry() -> Arc<Registry> {
    DEFAULT.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Add a transport to the default registry, for every later
/// [`crate::Connection::new`] in the process. A scheme registered here wins
/// over a built-in one.
///
/// ```
/// # use std::sync::Arc;
/// # use kombu::{async_trait, BrokerUrl, Capabilities, ConnectionOptions, Result, Transport, TransportFactory, TransportKind};
/// struct Mine;
/// #[async_trait]
/// impl TransportFactory for Mine {
///     fn name(&self) -> &'static str { "mine" }
///     fn schemes(&self) -> &'static [&'static str] { &["mine"] }
///     fn capabilities(&self) -> Capabilities { Capabilities::new(TransportKind::Virtual) }
///     async fn connect(&self, _: &BrokerUrl, _: &ConnectionOptions) -> Result<Arc<dyn Transport>> {
///         Err(kombu::Error::unsupported("demo"))
///     }
/// }
/// kombu::register(Arc::new(Mine));
/// assert_eq!(kombu::Connection::new("mine://")?.transport_name(), "mine");
/// # Ok::<(), kombu::Error>(())
/// ```
pub fn register(factory: Arc<dyn TransportFactory>) {
    let mut slot = DEFAULT.write().unwrap_or_else(|e| e.into_inner());
    let mut next = (**slot).clone();
    next.register(factory);
    *slot = Arc::new(next);
}
