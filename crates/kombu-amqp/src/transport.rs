//! [`AmqpTransport`]: one lapin connection.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kombu_core::spi::{async_trait, Transport};
use kombu_core::{BrokerUrl, Capabilities, Channel, ConnectionOptions, Error, ErrorKind, Result};
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};

use crate::channel::AmqpChannel;
use crate::config::{ConnectConfig, Settings, TlsSetup};
use crate::errors::{map_error, map_error_on, LinkState, Phase};
use crate::publish_sync::PublishSync;
use crate::quarantine::Quarantine;

/// How long `heartbeat_check` and `close` wait for the broker when no
/// heartbeat is negotiated (with one: the heartbeat interval).
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The lapin connection and what became of it, shared by the transport and
/// its channels (so that their errors say when the connection is gone).
pub(crate) struct Link {
    pub(crate) connection: Connection,
    /// Closed by us.
    closed: AtomicBool,
    /// Found dead by a heartbeat check (lapin may not know yet).
    lost: AtomicBool,
    /// The native delayed delivery topology was declared on this
    /// connection (held while declaring it).
    pub(crate) delay_topology: tokio::sync::Mutex<bool>,
    /// Where rejected messages of queues without a dead-letter exchange go.
    pub(crate) quarantine: Quarantine,
}

impl Link {
    /// Up, lost or closed by us.
    pub(crate) fn state(&self) -> LinkState {
        // Found lost first: closing a lost link (a connection retiring it)
        // does not make what failed on it a deliberate close.
        if self.lost.load(Ordering::Acquire) {
            LinkState::Lost
        } else if self.closed.load(Ordering::Acquire) {
            LinkState::Closed
        } else if !self.connection.status().connected() {
            LinkState::Lost
        } else {
            LinkState::Up
        }
    }

    /// Map a lapin error of `operation`, by the state of the connection.
    pub(crate) fn op(&self, operation: &'static str) -> impl Fn(lapin::Error) -> Error + '_ {
        move |err| self.error(err, operation)
    }

    /// The kombu error for `err` of `operation`, by the state of the connection.
    pub(crate) fn error(&self, err: lapin::Error, operation: &str) -> Error {
        map_error_on(err, operation, self.state())
    }
}

/// A connection to an AMQP 0-9-1 broker (RabbitMQ), made by
/// [`AmqpTransportFactory`](crate::AmqpTransportFactory).
pub struct AmqpTransport {
    link: Arc<Link>,
    settings: Settings,
    endpoint: String,
    sync: Arc<PublishSync>,
    /// The channel `heartbeat_check` asks the broker on.
    check_channel: tokio::sync::Mutex<Option<lapin::Channel>>,
}

impl fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("endpoint", &self.endpoint)
            .field("connected", &self.is_connected())
            .field("confirm_publish", &self.settings.confirm_publish)
            .finish()
    }
}

impl AmqpTransport {
    /// Connect with `config` (bounded by its connect timeout).
    pub(crate) async fn connect(config: ConnectConfig) -> Result<Self> {
        let ConnectConfig {
            uri,
            properties,
            tls,
            settings,
            endpoint,
            connect_timeout,
        } = config;
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| map_error(e, "starting the AMQP runtime", Phase::Connect))?;
        let tls_on = uri.scheme == lapin::uri::AMQPScheme::AMQPS;
        let host = uri.authority.host.clone();
        let client_certificate = match &tls {
            TlsSetup::Verified(tls) => tls.identity.is_some(),
            TlsSetup::Unverified(client) => client.client_auth_cert_resolver.has_certs(),
        };
        let connecting = async {
            match tls {
                TlsSetup::Verified(tls) => {
                    Connection::connect_uri_with_config(uri, properties, tls, runtime).await
                }
                TlsSetup::Unverified(client) => {
                    // CERT_NONE: lapin's connector with our TCP and TLS
                    // steps (every address the host resolves to, in turn;
                    // then the handshake with a client that verifies
                    // nothing).
                    crate::tls::warn_unverified(&endpoint);
                    let connector = lapin::tcp::RustlsConnector::from(client);
                    let connect = async move |uri: lapin::uri::AMQPUri, runtime| {
                        let host = uri.authority.host.clone();
                        let addresses: Vec<std::net::SocketAddr> =
                            tokio::net::lookup_host((host.as_str(), uri.authority.port))
                                .await?
                                .collect();
                        let stream =
                            lapin::tcp::AsyncTcpStream::connect(&runtime, addresses).await?;
                        Ok(stream.into_rustls(&connector, &host).await?)
                    };
                    Connection::connector(uri, runtime, connect, properties).await
                }
            }
        };
        let connected = match connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connecting).await.map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "connecting to {endpoint} timed out after {:.1} s",
                        limit.as_secs_f64()
                    ),
                )
            })?,
            None => connecting.await,
        };
        let connection = connected.map_err(|e| {
            let err = map_error(e, &format!("connecting to {endpoint}"), Phase::Connect);
            if tls_on {
                crate::tls::explain(err, &host, &endpoint, client_certificate)
            } else {
                err
            }
        })?;
        tracing::debug!(%endpoint, "AMQP connection open");
        Ok(AmqpTransport {
            link: Arc::new(Link {
                connection,
                closed: AtomicBool::new(false),
                lost: AtomicBool::new(false),
                delay_topology: tokio::sync::Mutex::new(false),
                quarantine: Quarantine::new(settings.quarantine),
            }),
            settings,
            endpoint,
            sync: Arc::default(),
            check_channel: tokio::sync::Mutex::new(None),
        })
    }

    /// Connect to the broker at `url` (defaults filled in as
    /// [`Connection`](kombu_core::Connection) does) with `options`, and get
    /// the concrete transport (for [`AmqpTransport::open_channel`] and the
    /// lapin connection).
    ///
    /// ```no_run
    /// # async fn demo() -> kombu_core::Result<()> {
    /// use kombu_core::{BrokerUrl, ConnectionOptions};
    /// let url = BrokerUrl::parse("amqp://guest:guest@localhost:5672//")?;
    /// let transport = kombu_amqp::AmqpTransport::open(&url, &ConnectionOptions::new()).await?;
    /// let channel = transport.open_channel().await?;
    /// channel.enable_confirms().await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &BrokerUrl, options: &ConnectionOptions) -> Result<Self> {
        let mut options = options.clone();
        options.apply_query(url)?;
        let tls = url.scheme().eq_ignore_ascii_case("amqps");
        Self::connect(ConnectConfig::new(url, &options, tls)?).await
    }

    /// The broker's `host:port`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The heartbeat interval in seconds negotiated with the broker (0: none).
    pub fn heartbeat_secs(&self) -> u16 {
        self.link.connection.configuration().heartbeat()
    }

    /// The largest frame negotiated with the broker, in bytes.
    pub fn frame_max(&self) -> u32 {
        self.link.connection.configuration().frame_max()
    }

    /// The lapin connection, for what kombu's API does not cover.
    pub fn lapin_connection(&self) -> &Connection {
        &self.link.connection
    }

    /// How long a check or a close waits for the broker.
    fn patience(&self) -> Duration {
        match self.heartbeat_secs() {
            0 => DEFAULT_CHECK_TIMEOUT,
            secs => Duration::from_secs(u64::from(secs)),
        }
    }

    fn lost_error(&self, what: &str) -> Error {
        match self.link.state() {
            LinkState::Closed => Error::new(
                ErrorKind::Closed,
                format!(
                    "{what}: the AMQP connection to {} was closed",
                    self.endpoint
                ),
            ),
            _ => Error::new(
                ErrorKind::ConnectionLost,
                format!("{what}: the AMQP connection to {} is lost", self.endpoint),
            ),
        }
    }

    /// One round trip on the check channel: a passive declare of `amq.direct`.
    async fn ask_broker(&self) -> Result<()> {
        let mut slot = self.check_channel.lock().await;
        let channel = match slot.as_ref() {
            Some(channel) if channel.status().connected() => channel.clone(),
            _ => {
                let channel = self
                    .link
                    .connection
                    .create_channel()
                    .await
                    .map_err(self.link.op("heartbeat check: opening a channel"))?;
                *slot = Some(channel.clone());
                channel
            }
        };
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                "amq.direct".into(),
                ExchangeKind::Direct,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(self.link.op("heartbeat check"))
    }

    /// A new channel of this connection, as the concrete type.
    pub async fn open_channel(&self) -> Result<AmqpChannel> {
        if self.link.state() != LinkState::Up {
            return Err(self.lost_error("opening a channel"));
        }
        let channel = self
            .link
            .connection
            .create_channel()
            .await
            .map_err(self.link.op("opening a channel"))?;
        AmqpChannel::new(channel, self.link.clone(), self.sync.clone(), self.settings).await
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    /// The transport's capabilities, without the quarantine when the
    /// `quarantine` option turned it off.
    fn capabilities(&self) -> Capabilities {
        crate::capabilities().with_quarantine(self.settings.quarantine)
    }

    async fn create_channel(&self) -> Result<Arc<dyn Channel>> {
        Ok(Arc::new(self.open_channel().await?))
    }

    /// False once the connection is closed, lapin reports it errored or
    /// closed (by the broker, a dead socket, a missed heartbeat), or a
    /// [`heartbeat_check`](Transport::heartbeat_check) went unanswered.
    fn is_connected(&self) -> bool {
        self.link.state() == LinkState::Up
    }

    /// A real round trip to the broker (a passive declare of `amq.direct`
    /// on a channel of its own), bounded by the heartbeat interval (10 s
    /// without one). A broker that does not answer in time (stopped, a
    /// dead network) marks the connection lost: the error is a
    /// [`ErrorKind::ConnectionLost`], and so are later operations' errors.
    async fn heartbeat_check(&self) -> Result<()> {
        if self.link.state() != LinkState::Up {
            return Err(self.lost_error("heartbeat check"));
        }
        let limit = self.patience();
        let result = match tokio::time::timeout(limit, self.ask_broker()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) => err,
            Err(_) => Error::new(
                ErrorKind::ConnectionLost,
                format!(
                    "heartbeat check: {} did not answer within {:.1} s",
                    self.endpoint,
                    limit.as_secs_f64()
                ),
            ),
        };
        // A failed check on an open connection: the channel failed, or the
        // broker is gone. Either way the connection is not to be trusted.
        self.link.lost.store(true, Ordering::Release);
        if result.is_connection_error() {
            Err(result)
        } else {
            Err(Error::new(
                ErrorKind::ConnectionLost,
                format!("heartbeat check failed: {}", result.message()),
            ))
        }
    }

    /// Send the deferred acks, then close the connection, waiting at most
    /// the heartbeat interval (10 s without one) for the broker: a lost
    /// connection is closed without waiting.
    async fn close(&self) -> Result<()> {
        let state = self.link.state();
        if state == LinkState::Closed {
            return Ok(());
        }
        let limit = self.patience();
        if state == LinkState::Up {
            let _ = tokio::time::timeout(limit, self.sync.flush_acks()).await;
        }
        self.link.closed.store(true, Ordering::Release);
        if !self.link.connection.status().connected() {
            return Ok(());
        }
        let closing = self.link.connection.close(200, "OK".into());
        let limit = if state == LinkState::Up {
            limit
        } else {
            Duration::from_millis(100)
        };
        match tokio::time::timeout(limit, closing).await {
            Ok(result) => {
                result.map_err(|e| map_error(e, "closing the connection", Phase::Operate))
            }
            // The broker does not answer: the connection is dropped anyway.
            Err(_) => Ok(()),
        }
    }
}
