#![doc = include_str!("../README.md")]

mod api;
mod backend;
mod bucket;
mod delayed;
mod error;
mod names;
mod pull;
mod settings;
mod topology;

use kombu_core::spi::VirtualFactory;
use kombu_core::{
    BrokerUrl, ConnectionOptions, Error, ErrorKind, Registry, Result, SslOptions, TransportInfo,
    TransportKind,
};

pub use backend::{NatsBackend, ACK_SUBJECT_HEADER};
pub use delayed::NOT_BEFORE_HEADER;
pub use settings::KNOWN_OPTIONS;

/// The URL schemes this transport serves: `nats://`, and TLS through
/// `nats+tls://` or `tls://` (async-nats's name).
pub const SCHEMES: &[&str] = &["nats", "nats+tls", "tls"];

/// The NATS client port.
pub const DEFAULT_PORT: u16 = 4222;

/// What `nats://` is.
///
/// ```
/// assert_eq!(kombu_nats::INFO.port_for(false), Some(4222));
/// assert!(kombu_nats::INFO.is_tls_scheme("tls"));
/// assert!(kombu_nats::INFO.default_login.is_none());
/// assert!(!kombu_nats::INFO.static_capabilities().priority);
/// ```
pub const INFO: TransportInfo = TransportInfo::new("nats", SCHEMES, TransportKind::Virtual)
    .port(DEFAULT_PORT)
    .tls_schemes(&["nats+tls", "tls"])
    .capabilities(backend::capabilities);

/// Add the NATS transport (`nats://`, `nats+tls://`, `tls://`) to `registry`.
///
/// ```
/// let mut registry = kombu_core::Registry::new();
/// kombu_nats::register(&mut registry);
/// assert!(registry.resolve("nats").is_ok());
/// assert!(registry.resolve("tls").is_ok());
/// ```
pub fn register(registry: &mut Registry) {
    registry.register(VirtualFactory::shared(&INFO, open));
}

/// Opens `nats://[user:password@]host:4222` backends (`nats://token@host`
/// logs in with a token). The server must run JetStream (`nats-server
/// -js`); the topology bucket is created on first use. Every request waits
/// at most the `request_timeout` transport option (default 10 s); the
/// heartbeat asks JetStream for its account info.
///
/// ```no_run
/// # async fn demo() -> kombu_core::Result<()> {
/// let mut registry = kombu_core::Registry::new();
/// kombu_nats::register(&mut registry);
/// let conn = kombu_core::Connection::with_registry(
///     "nats://localhost:4222?visibility_timeout=30",
///     std::sync::Arc::new(registry),
/// )?;
/// let backend = conn.extension::<kombu_nats::NatsBackend>().await?;
/// println!("{}", backend.stream_name("tasks")?);
/// # Ok(()) }
/// ```
pub async fn open(url: BrokerUrl, options: ConnectionOptions) -> Result<NatsBackend> {
    let settings = settings::Settings::from_options(&options.transport_options)?;
    let tls = INFO.is_tls_scheme(url.scheme()) || options.ssl.is_enabled();
    let host = url.hostname().unwrap_or("localhost");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let port = url.port().unwrap_or(DEFAULT_PORT);
    let server = format!("{}://{host}:{port}", if tls { "tls" } else { "nats" });
    let mut connect = async_nats::ConnectOptions::new()
        .name("kombu-rs")
        .request_timeout(Some(settings.request_timeout))
        .connection_timeout(
            options
                .connect_timeout
                .unwrap_or(std::time::Duration::from_secs(10)),
        );
    connect = match (url.userid(), url.password()) {
        (Some(user), Some(password)) => {
            connect.user_and_password(user.to_owned(), password.to_owned())
        }
        (Some(token), None) | (None, Some(token)) => connect.token(token.to_owned()),
        (None, None) => connect,
    };
    if tls {
        connect = connect.require_tls(true);
        if let SslOptions::Custom {
            ca_certs,
            certfile,
            keyfile,
            ..
        } = &options.ssl
        {
            if let Some(ca) = ca_certs {
                connect = connect.add_root_certificates(ca.clone());
            }
            match (certfile, keyfile) {
                (Some(cert), Some(key)) => {
                    connect = connect.add_client_certificate(cert.clone(), key.clone())
                }
                (None, None) => {}
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOption,
                        "nats: a client certificate needs both certfile and keyfile",
                    ))
                }
            }
        }
    }
    let client = async_nats::connect_with_options(server.as_str(), connect)
        .await
        .map_err(|e| error::connect(&server, e))?;
    let api = api::Api::new(client, settings.request_timeout);
    api.ping().await?;
    let topology = topology::Topology::open(api.clone(), &settings).await?;
    Ok(NatsBackend::new(settings, api, topology))
}
