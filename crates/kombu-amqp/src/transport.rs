//! [`AmqpTransport`]: one lapin connection.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kombu_core::{
    async_trait, BrokerUrl, Capabilities, Channel, ConnectionOptions, Error, ErrorKind, Result,
    Transport,
};
use lapin::Connection;

use crate::channel::AmqpChannel;
use crate::config::{ConnectConfig, Settings};
use crate::errors::{map_error, op, Phase};
use crate::publish_sync::PublishSync;

/// A connection to an AMQP 0-9-1 broker (RabbitMQ), made by
/// [`AmqpTransportFactory`](crate::AmqpTransportFactory).
pub struct AmqpTransport {
    connection: Arc<Connection>,
    settings: Settings,
    endpoint: String,
    closed: AtomicBool,
    sync: Arc<PublishSync>,
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
        let connecting = Connection::connect_uri_with_config(uri, properties, tls, runtime);
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
        let connection = connected
            .map_err(|e| map_error(e, &format!("connecting to {endpoint}"), Phase::Connect))?;
        tracing::debug!(%endpoint, "AMQP connection open");
        Ok(AmqpTransport {
            connection: Arc::new(connection),
            settings,
            endpoint,
            closed: AtomicBool::new(false),
            sync: Arc::default(),
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
        self.connection.configuration().heartbeat()
    }

    /// The largest frame negotiated with the broker, in bytes.
    pub fn frame_max(&self) -> u32 {
        self.connection.configuration().frame_max()
    }

    /// The lapin connection, for what kombu's API does not cover.
    pub fn lapin_connection(&self) -> &Connection {
        &self.connection
    }

    /// A new channel of this connection, as the concrete type.
    pub async fn open_channel(&self) -> Result<AmqpChannel> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Closed,
                "the AMQP connection was closed",
            ));
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(op("opening a channel"))?;
        AmqpChannel::new(
            channel,
            self.connection.clone(),
            self.sync.clone(),
            self.settings,
        )
        .await
    }
}

#[async_trait]
impl Transport for AmqpTransport {
    fn capabilities(&self) -> Capabilities {
        crate::capabilities()
    }

    async fn create_channel(&self) -> Result<Arc<dyn Channel>> {
        Ok(Arc::new(self.open_channel().await?))
    }

    fn is_connected(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.connection.status().connected()
    }

    async fn heartbeat_check(&self) -> Result<()> {
        if self.is_connected() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::ConnectionLost,
                format!("the AMQP connection to {} is closed", self.endpoint),
            ))
        }
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) || !self.connection.status().connected() {
            return Ok(());
        }
        self.connection
            .close(200, "OK".into())
            .await
            .map_err(op("closing the connection"))
    }
}
