#![doc = include_str!("../README.md")]

mod backend;
mod chunks;
mod pool;
pub mod protocol;
mod reserver;
mod settings;
mod table;

use kombu_core::spi::VirtualFactory;
use kombu_core::{BrokerUrl, ConnectionOptions, Registry, Result, TransportInfo, TransportKind};

pub use backend::{
    job_id, job_id_of, BeanstalkBackend, DELAY_HEADER, JOB_ID_HEADER, RESERVED_PREFIX,
};
pub use settings::{PriorityMapping, KNOWN_OPTIONS};

/// The URL schemes this transport serves.
pub const SCHEMES: &[&str] = &["beanstalk"];

/// beanstalkd's port.
pub const DEFAULT_PORT: u16 = 11300;

/// What `beanstalk://` is.
///
/// ```
/// assert_eq!(kombu_beanstalk::INFO.port_for(false), Some(11300));
/// assert_eq!(kombu_beanstalk::INFO.schemes, &["beanstalk"]);
/// ```
pub const INFO: TransportInfo = TransportInfo::new("beanstalk", SCHEMES, TransportKind::Virtual)
    .port(DEFAULT_PORT)
    .capabilities(backend::capabilities);

/// Add the beanstalk transport to `registry`.
///
/// ```
/// let mut registry = kombu_core::Registry::new();
/// kombu_beanstalk::register(&mut registry);
/// assert!(registry.resolve("beanstalk").is_ok());
/// ```
pub fn register(registry: &mut Registry) {
    registry.register(VirtualFactory::shared(&INFO, open));
}

/// Opens `beanstalk://host:port` backends (port 11300 by default). Every
/// command waits at most the `socket_timeout` transport option (default
/// 10 s) for its answer, and a backend call at most that plus the
/// `connect_timeout` (unless the `operation_timeout` option says
/// otherwise); the heartbeat sends `list-tube-used` on a connection of its
/// own. For beanstalk's own operations (kick, touch,
/// buried jobs) take the backend from the connection:
///
/// ```no_run
/// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
/// let backend = conn.extension::<kombu_beanstalk::BeanstalkBackend>().await?;
/// let kicked = backend.kick("tasks", 100).await?; // buried jobs back to ready
/// # let _ = kicked; Ok(()) }
/// ```
pub async fn open(url: BrokerUrl, options: ConnectionOptions) -> Result<BeanstalkBackend> {
    let (url, options) = (&url, &options);
    let settings = settings::Settings::from_options(&options.transport_options)?;
    let server = pool::Server {
        host: url.hostname().unwrap_or("localhost").to_owned(),
        port: url.port().unwrap_or(DEFAULT_PORT),
        connect_timeout: options.connect_timeout,
        io_timeout: settings.socket_timeout,
    };
    BeanstalkBackend::connect(server, settings).await
}
