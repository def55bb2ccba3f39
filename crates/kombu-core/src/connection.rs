//! [`Connection`]: a lazy handle on a broker chosen by URL, which fails
//! over between URLs, retries, watches the connection with heartbeats and
//! declares again what was declared when it has to reconnect.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use backon::Retryable;

use crate::compression::CompressionRegistry;
use crate::entity::{Exchange, Queue};
use crate::error::{Error, ErrorKind, Result};
use crate::options::ConnectionOptions;
use crate::registry::Registry;
use crate::retry::RetryPolicy;
use crate::serialization::SerializerRegistry;
use crate::topology::Topology;
use crate::transport::{Capabilities, Channel, Transport, TransportFactory};
use crate::transport_info::TransportInfo;
use crate::url::{BrokerUrl, UrlDefaults};

/// The URL used when none is given: AMQP on localhost, as in kombu.
pub const DEFAULT_URL: &str = "amqp://guest:guest@localhost:5672//";

/// How long closing a transport that was given up on may take before it
/// is left to itself (a hung broker must not hang the caller).
const RETIRE_CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// A connection to a broker, chosen by the URL's scheme.
///
/// Creating one does no I/O: it connects on [`Connection::connect`] or on
/// first use. Clones share the same underlying connection. It closes when
/// [`Connection::close`]d, [`Connection::release`]d, or when the last clone
/// is dropped.
///
/// Values in the URL win over the keyword [`ConnectionOptions`]; missing
/// parts default to `localhost` and the transport's port, login and
/// virtual host (AMQP: `guest`/`guest` and `/`; most transports have no
/// default login, so a URL without one logs in without one). Several URLs separated by `;` form a failover list,
/// tried in the order of the `failover_strategy` option.
///
/// Staying up: with the `heartbeat` option set, the connection is checked
/// every half interval and a broker that does not answer within the
/// interval counts as lost. A lost connection is reconnected on next use
/// (to the next URL of a failover list when the first fails), and every
/// exchange and queue declared through it is declared again.
/// [`Connection::ensure_connection`] and [`Connection::ensure`] retry with
/// a [`RetryPolicy`]; consumers reconnect by themselves.
///
/// Connections resolve their scheme through the global [`Registry`]
/// (the `kombu` crate's `install_default_transports()` fills it) or a
/// registry of your own ([`Connection::with_registry`]):
///
/// ```
/// # use std::sync::Arc;
/// use kombu_core::{Connection, Registry};
/// let registry = Arc::new(Registry::new());
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

/// A connected transport and the epoch it belongs to.
struct Live {
    transport: Arc<dyn Transport>,
    epoch: u64,
    monitor: Option<tokio::task::AbortHandle>,
}

/// Which connection is current: bumped each time one is lost or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EpochState {
    /// Counts connections given up on (lost or closed).
    pub(crate) epoch: u64,
    /// The last bump was a [`Connection::close`], not a loss.
    pub(crate) closed: bool,
}

struct Shared {
    targets: Vec<Target>,
    options: ConnectionOptions,
    live: tokio::sync::Mutex<Option<Live>>,
    active: AtomicUsize,
    epoch: tokio::sync::watch::Sender<EpochState>,
    epoch_now: AtomicU64,
    topology: Topology,
    serializers: Arc<SerializerRegistry>,
    compressors: Arc<CompressionRegistry>,
    registry: Arc<Registry>,
}

impl Connection {
    /// A lazy connection for `url` (or, when `url` is empty, the transport
    /// named by no option: AMQP), resolved through the global
    /// [`Registry`].
    ///
    /// ```
    /// let err = kombu_core::Connection::new("nope://").err().unwrap();
    /// assert_eq!(err.kind(), kombu_core::ErrorKind::UnknownScheme);
    /// ```
    pub fn new(url: &str) -> Result<Self> {
        Self::with_options(url, ConnectionOptions::default())
    }

    /// A lazy connection for `url` with keyword options (URL values win),
    /// resolved through the global [`Registry`].
    ///
    /// An empty `url` means `<options.transport or amqp>://` with every
    /// part taken from the options or the transport's defaults.
    pub fn with_options(url: &str, options: ConnectionOptions) -> Result<Self> {
        Self::with_registry_options(url, options, Registry::global())
    }

    /// A connection for `url` resolved through `registry`.
    pub fn with_registry(url: &str, registry: Arc<Registry>) -> Result<Self> {
        Self::with_registry_options(url, ConnectionOptions::default(), registry)
    }

    /// A connection for `url` with keyword options, resolved through `registry`.
    pub fn with_registry_options(
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
                let url = complete_url(&url, &options, factory.info());
                Ok(Target { url, factory })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Connection {
            shared: Arc::new(Shared {
                targets,
                options,
                live: tokio::sync::Mutex::new(None),
                active: AtomicUsize::new(0),
                epoch: tokio::sync::watch::Sender::new(EpochState {
                    epoch: 0,
                    closed: false,
                }),
                epoch_now: AtomicU64::new(0),
                topology: Topology::default(),
                serializers: Arc::new(SerializerRegistry::default()),
                compressors: Arc::new(CompressionRegistry::default()),
                registry,
            }),
        })
    }

    /// A new connection (not a clone: a connection of its own) to the same
    /// URLs with the same options and registry, as a pool makes them.
    pub fn new_like(&self) -> Result<Connection> {
        let urls = self
            .urls()
            .iter()
            .map(|u| u.as_uri(true))
            .collect::<Vec<_>>()
            .join(";");
        Self::with_registry_options(&urls, self.options().clone(), self.shared.registry.clone())
    }

    /// Connect now (a no-op when connected). Tries each URL of a failover
    /// list once, in the order of the `failover_strategy` option, each
    /// bounded by `connect_timeout`.
    pub async fn connect(&self) -> Result<()> {
        self.transport().await.map(|_| ())
    }

    /// Connect, retrying connection errors as `policy` says (kombu's
    /// `ensure_connection`). Other errors (bad credentials, say) fail at once.
    ///
    /// ```
    /// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
    /// use std::time::Duration;
    /// use kombu_core::RetryPolicy;
    /// conn.ensure_connection(&RetryPolicy::new().max_retries(5).interval_max(Duration::from_secs(5)))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn ensure_connection(&self, policy: &RetryPolicy) -> Result<()> {
        self.ensure_connection_with(policy, |_, _| {}).await
    }

    /// [`Connection::ensure_connection`], calling `on_error` with each
    /// error and the wait before the next attempt (kombu's `errback`).
    pub async fn ensure_connection_with(
        &self,
        policy: &RetryPolicy,
        mut on_error: impl FnMut(&Error, Duration),
    ) -> Result<()> {
        (|| self.connect())
            .retry(policy.clone())
            .sleep(tokio::time::sleep)
            .when(Error::is_connection_error)
            .notify(|err: &Error, wait: Duration| {
                tracing::warn!(url = %self.as_uri(), error = %err, "cannot connect; retrying in {:.1} s", wait.as_secs_f64());
                on_error(err, wait);
            })
            .await
    }

    /// Run `operation` and, when it fails with a recoverable error (a lost
    /// connection or channel), reconnect and run it again as `policy` says
    /// (kombu's `Connection.ensure` / autoretry). Other errors are returned
    /// at once; when the policy gives up, the last error is returned.
    ///
    /// An attempt that is still running when the connection is found lost
    /// (by a heartbeat, or by another user of the connection) is abandoned
    /// and counts as failed with [`ErrorKind::ConnectionLost`].
    ///
    /// ```
    /// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
    /// use kombu_core::RetryPolicy;
    /// let size = conn
    ///     .ensure(&RetryPolicy::new().max_retries(3), || async {
    ///         conn.channel().await?.queue_size("tasks").await
    ///     })
    ///     .await?;
    /// # let _ = size; Ok(()) }
    /// ```
    pub async fn ensure<T, F, Fut>(&self, policy: &RetryPolicy, operation: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.ensure_with(policy, operation, |_, _| {}).await
    }

    /// [`Connection::ensure`], calling `on_error` with each recoverable
    /// error and the wait before the next attempt.
    pub async fn ensure_with<T, F, Fut>(
        &self,
        policy: &RetryPolicy,
        mut operation: F,
        mut on_error: impl FnMut(&Error, Duration),
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let attempt = || {
            let epoch = self.epoch();
            let lost = self.lost_since(epoch);
            let running = operation();
            async move {
                let result = tokio::select! {
                    biased;
                    result = running => result,
                    _ = lost => Err(Error::new(
                        ErrorKind::ConnectionLost,
                        "the connection was lost while the operation ran",
                    )),
                };
                if let Err(err) = &result {
                    if err.is_connection_error() {
                        self.mark_lost(epoch, err).await;
                    }
                }
                result
            }
        };
        attempt
            .retry(policy.clone())
            .sleep(tokio::time::sleep)
            .when(Error::is_recoverable)
            .notify(|err: &Error, wait: Duration| {
                tracing::warn!(error = %err, "operation failed; retrying in {:.1} s", wait.as_secs_f64());
                on_error(err, wait);
            })
            .await
    }

    /// The connected transport, connecting first if needed.
    pub async fn transport(&self) -> Result<Arc<dyn Transport>> {
        self.transport_at().await.map(|(transport, _)| transport)
    }

    /// The connected transport and its epoch.
    pub(crate) async fn transport_at(&self) -> Result<(Arc<dyn Transport>, u64)> {
        let mut live = self.shared.live.lock().await;
        if let Some(current) = live.as_ref() {
            if current.transport.is_connected() {
                return Ok((current.transport.clone(), current.epoch));
            }
        }
        if let Some(dead) = live.take() {
            tracing::warn!(url = %self.as_uri(), "the connection was lost; reconnecting");
            retire(&self.shared, dead, false);
        }
        let fresh = self.establish().await?;
        let after = *self.shared.epoch.borrow();
        if after.epoch > 0 && !after.closed {
            // The last connection was lost, not closed: a reconnect.
            crate::metrics::reconnected(self.transport_name());
        }
        let handle = (fresh.transport.clone(), fresh.epoch);
        *live = Some(fresh);
        Ok(handle)
    }

    async fn establish(&self) -> Result<Live> {
        let urls: Vec<BrokerUrl> = self.shared.targets.iter().map(|t| t.url.clone()).collect();
        let last = self.shared.active.load(Ordering::Relaxed);
        let order = self.shared.options.failover_strategy.order(&urls, last);
        let many = self.shared.targets.len() > 1;
        let mut last_error = None;
        for index in order {
            let target = &self.shared.targets[index];
            let attempt = async {
                let transport = self.connect_one(target).await?;
                if let Err(err) = self.shared.topology.recover(transport.as_ref()).await {
                    let _ = tokio::time::timeout(RETIRE_CLOSE_LIMIT, transport.close()).await;
                    return Err(err);
                }
                Ok(transport)
            };
            match attempt.await {
                Ok(transport) => {
                    self.shared.active.store(index, Ordering::Relaxed);
                    let epoch = self.epoch();
                    let monitor = self
                        .shared
                        .options
                        .heartbeat
                        .filter(|every| !every.is_zero())
                        .map(|every| {
                            spawn_monitor(
                                Arc::downgrade(&self.shared),
                                transport.clone(),
                                epoch,
                                every,
                            )
                        });
                    tracing::debug!(url = %target.url, epoch, "connected");
                    return Ok(Live {
                        transport,
                        epoch,
                        monitor,
                    });
                }
                Err(err) => {
                    if many {
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
        match self.shared.live.try_lock() {
            Ok(live) => live.as_ref().is_some_and(|l| l.transport.is_connected()),
            Err(_) => false,
        }
    }

    /// A new channel (connecting first if needed).
    pub async fn channel(&self) -> Result<Arc<dyn Channel>> {
        self.channel_at().await.map(|(channel, _)| channel)
    }

    /// A new channel and the epoch of the connection it is on. A
    /// connection error marks the connection lost, so that the next call
    /// reconnects.
    pub(crate) async fn channel_at(&self) -> Result<(Arc<dyn Channel>, u64)> {
        let (transport, epoch) = self.transport_at().await?;
        match transport.create_channel().await {
            Ok(channel) => Ok((channel, epoch)),
            Err(err) => {
                if err.is_connection_error() {
                    self.mark_lost(epoch, &err).await;
                }
                Err(err)
            }
        }
    }

    /// Give up on the connection of `epoch` (if it is still the current
    /// one) because of `reason`: it is closed in the background, every
    /// consumer reconnects, and the next use connects again.
    pub(crate) async fn mark_lost(&self, epoch: u64, reason: &Error) {
        mark_lost(&self.shared, epoch, reason).await;
    }

    /// The current epoch: it changes each time the connection is lost or
    /// closed, so a message or channel from an older epoch is stale.
    pub(crate) fn epoch(&self) -> u64 {
        self.shared.epoch_now.load(Ordering::Acquire)
    }

    /// Resolves (with the new state) once the epoch is no longer `epoch`.
    pub(crate) fn lost_since(
        &self,
        epoch: u64,
    ) -> impl Future<Output = EpochState> + Send + 'static {
        let mut watch = self.shared.epoch.subscribe();
        async move {
            match watch.wait_for(|state| state.epoch != epoch).await {
                Ok(state) => *state,
                Err(_) => EpochState {
                    epoch: epoch + 1,
                    closed: true,
                },
            }
        }
    }

    /// Declare `exchange` on `channel` unless this connection declared it
    /// already (kombu's `maybe_declare`), and remember it for reconnects.
    pub async fn maybe_declare(&self, channel: &dyn Channel, exchange: &Exchange) -> Result<()> {
        if exchange.is_default() || self.shared.topology.has_exchange(&exchange.name) {
            return Ok(());
        }
        exchange.declare(channel).await?;
        self.shared.topology.remember_exchange(exchange);
        Ok(())
    }

    /// Declare `queue` (its exchanges, itself and its bindings) on
    /// `channel`, and remember it, so that a reconnect declares it again.
    pub async fn declare_queue(
        &self,
        channel: &dyn Channel,
        queue: &Queue,
    ) -> Result<crate::transport::QueueInfo> {
        let info = queue.declare(channel).await?;
        for exchange in &queue.exchanges {
            self.shared.topology.remember_exchange(exchange);
        }
        self.shared.topology.remember_queue(queue);
        Ok(info)
    }

    /// Stop declaring the exchange or queue `name` again on reconnects
    /// (after you delete it, say). True if it was remembered.
    pub fn forget(&self, name: &str) -> bool {
        self.shared.topology.forget(name)
    }

    /// The names of the exchanges and queues declared through this
    /// connection, which a reconnect declares again.
    pub fn declared(&self) -> (Vec<String>, Vec<String>) {
        self.shared.topology.names()
    }

    /// Close the connection. Later use connects again. Consumers of this
    /// connection end.
    pub async fn close(&self) -> Result<()> {
        let live = self.shared.live.lock().await.take();
        match live {
            Some(live) => {
                if let Some(monitor) = &live.monitor {
                    monitor.abort();
                }
                bump_epoch(&self.shared, true);
                live.transport.close().await
            }
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

    /// The transport's static description (known without connecting).
    pub fn transport_info(&self) -> &'static TransportInfo {
        self.active_target().factory.info()
    }

    /// What the connected transport can do, connecting first if needed: the
    /// transport's static capabilities less what its options turn off
    /// (`sqs://...?supports_fanout=false` routes no fanout).
    ///
    /// ```
    /// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
    /// if conn.capabilities().await?.priority { /* publish with priorities */ }
    /// # Ok(()) }
    /// ```
    pub async fn capabilities(&self) -> Result<Capabilities> {
        Ok(self.transport().await?.capabilities())
    }

    /// The transport's own API (a virtual transport's backend: Redis's
    /// `RedisBackend`, CouchDB's `CouchDbBackend`, ...), connecting first if
    /// needed. An error of kind [`Unsupported`](ErrorKind::Unsupported) when
    /// the transport has no extension of type `T`.
    ///
    /// ```
    /// # async fn demo(conn: kombu_core::Connection) -> kombu_core::Result<()> {
    /// struct NotAnExtension;
    /// assert!(conn.extension::<NotAnExtension>().await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn extension<T: Send + Sync + 'static>(&self) -> Result<Arc<T>> {
        let transport = self.transport().await?;
        transport
            .extension()
            .and_then(|any| any.downcast::<T>().ok())
            .ok_or_else(|| {
                Error::unsupported(format!(
                    "the {} transport has no extension of type {}",
                    self.transport_name(),
                    std::any::type_name::<T>()
                ))
            })
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

/// The URL with what it leaves out filled in: the keyword options first,
/// then the transport's defaults (only AMQP invents a login).
fn complete_url(url: &BrokerUrl, options: &ConnectionOptions, info: &TransportInfo) -> BrokerUrl {
    let tls = options.ssl.is_enabled() || info.is_tls_scheme(url.scheme());
    fn keyword(value: &Option<String>) -> Option<&str> {
        value.as_deref().filter(|v| !v.is_empty())
    }
    let login = info.default_login;
    let defaults = UrlDefaults {
        hostname: keyword(&options.hostname).or(Some("localhost")),
        port: options.port.or(info.port_for(tls)),
        userid: keyword(&options.userid).or(login.map(|(user, _)| user)),
        password: keyword(&options.password).or(login.map(|(_, password)| password)),
        virtual_host: keyword(&options.virtual_host).or(info.default_virtual_host),
    };
    url.completed(&defaults)
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
        let Some(live) = self.live.get_mut().take() else {
            return;
        };
        if let Some(monitor) = &live.monitor {
            monitor.abort();
        }
        let transport = live.transport;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(err) = transport.close().await {
                    tracing::debug!(error = %err, "closing a dropped connection failed");
                }
            });
        }
    }
}

fn bump_epoch(shared: &Shared, closed: bool) {
    shared.epoch.send_modify(|state| {
        state.epoch += 1;
        state.closed = closed;
        shared.epoch_now.store(state.epoch, Ordering::Release);
    });
}

/// Give up on a transport: stop its monitor, move to a new epoch (which
/// wakes every consumer) and close it in the background, bounded in time.
fn retire(shared: &Shared, dead: Live, closed: bool) {
    if let Some(monitor) = &dead.monitor {
        monitor.abort();
    }
    bump_epoch(shared, closed);
    let transport = dead.transport;
    tokio::spawn(async move {
        match tokio::time::timeout(RETIRE_CLOSE_LIMIT, transport.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "closing a lost connection failed"),
            Err(_) => tracing::debug!("closing a lost connection did not finish in time; dropped"),
        }
    });
}

async fn mark_lost(shared: &Shared, epoch: u64, reason: &Error) {
    let mut live = shared.live.lock().await;
    if live.as_ref().is_some_and(|l| l.epoch == epoch) {
        if let Some(dead) = live.take() {
            tracing::warn!(error = %reason, "connection lost; it will be re-established on next use");
            retire(shared, dead, false);
        }
    }
}

/// Check the transport every half `every`; a check that fails or takes
/// longer than `every`, or a transport that says it is disconnected, marks
/// the connection of `epoch` lost. Detects a silent broker within 1.5
/// intervals.
fn spawn_monitor(
    shared: Weak<Shared>,
    transport: Arc<dyn Transport>,
    epoch: u64,
    every: Duration,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every / 2).await;
            let failure = if !transport.is_connected() {
                Some(Error::new(
                    ErrorKind::ConnectionLost,
                    "the transport reports the connection closed",
                ))
            } else {
                match tokio::time::timeout(every, transport.heartbeat_check()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(err)) => Some(err),
                    Err(_) => Some(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "the broker did not answer a heartbeat within {:.1} s",
                            every.as_secs_f64()
                        ),
                    )),
                }
            };
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if let Some(err) = failure {
                mark_lost(&shared, epoch, &err).await;
                return;
            }
            if shared.epoch_now.load(Ordering::Acquire) != epoch {
                return;
            }
        }
    })
    .abort_handle()
}
