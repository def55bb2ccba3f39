//! Pools of connections and producers (kombu's `kombu.pools`), on
//! [`deadpool`].
//!
//! A [`ConnectionPool`] hands out up to `limit` [`Connection`]s; a
//! [`ProducerPool`] hands out up to `limit` [`Producer`]s, each on a
//! connection of a connection pool. [`acquire`](ConnectionPool::acquire)
//! waits for a free one, [`acquire_timeout`](ConnectionPool::acquire_timeout)
//! waits a bounded time and [`try_acquire`](ConnectionPool::try_acquire) does
//! not wait: both fail with [`ErrorKind::LimitExceeded`] (kombu's
//! `LimitExceeded`) when the pool stays full.
//!
//! What you acquire dereferences to the [`Connection`] (or [`Producer`]).
//! [`release`](PooledConnection::release) gives it back to the pool, *not
//! closed*, for the next acquire to reuse; dropping it does the same. A
//! connection is made lazily: it connects on first use, and a connection
//! found closed or dead when it is acquired again is closed and connects
//! again on its next use.
//!
//! ```
//! use kombu_core::{ConnectionOptions, ConnectionPool, ErrorKind};
//!
//! # fn main() -> kombu_core::Result<()> {
//! // The global registry knows the installed transports (the `kombu`
//! // crate's `install_default_transports()`); this URL is refused when the
//! // pool is made.
//! let err = ConnectionPool::new("nope://", ConnectionOptions::new(), 10).unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::UnknownScheme);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleResult, Timeouts};

use crate::connection::Connection;
use crate::error::{Error, ErrorKind, Result};
use crate::options::ConnectionOptions;
use crate::producer::Producer;
use crate::registry::Registry;

/// How long recycling may take (closing a dead connection, checking a
/// producer's channel) before the object is dropped and a new one made.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);

type MakeConnection = dyn Fn() -> Result<Connection> + Send + Sync;

/// A snapshot of a pool's counters.
///
/// ```
/// use kombu_core::PoolStatus;
/// let status = PoolStatus::default();
/// assert_eq!(status.in_use(), 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The most objects the pool holds (its `limit`).
    pub limit: usize,
    /// Objects made so far and not dropped (idle and in use).
    pub size: usize,
    /// Idle objects, ready to be acquired without making a new one.
    pub available: usize,
    /// Callers waiting for an object.
    pub waiting: usize,
}

impl PoolStatus {
    /// Objects acquired and not yet released.
    pub fn in_use(&self) -> usize {
        self.size.saturating_sub(self.available)
    }

    fn from_deadpool(status: deadpool::Status) -> Self {
        PoolStatus {
            limit: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        }
    }
}

/// How an acquire waits for a free object.
#[derive(Debug, Clone, Copy)]
enum Wait {
    Forever,
    For(Duration),
    No,
}

impl Wait {
    fn timeouts(self) -> Timeouts {
        let wait = match self {
            Wait::Forever => None,
            Wait::For(limit) => Some(limit),
            // deadpool treats a zero wait as "do not wait".
            Wait::No => Some(Duration::ZERO),
        };
        Timeouts {
            wait,
            create: None,
            recycle: Some(RECYCLE_TIMEOUT),
        }
    }
}

fn pool_error(what: &str, limit: usize, wait: Wait, err: PoolError<Error>) -> Error {
    match err {
        PoolError::Timeout(_) => {
            let how = match wait {
                Wait::No => "none is free".to_owned(),
                Wait::For(d) => format!("none was released within {:.1} s", d.as_secs_f64()),
                Wait::Forever => "none was released in time".to_owned(),
            };
            Error::new(
                ErrorKind::LimitExceeded,
                format!("all {limit} {what} of the pool are in use and {how}"),
            )
        }
        PoolError::Backend(err) => err,
        PoolError::Closed => Error::new(ErrorKind::Closed, format!("the {what} pool is closed")),
        PoolError::NoRuntimeSpecified => {
            Error::new(ErrorKind::Other, "the pool was built without a runtime")
        }
        PoolError::PostCreateHook(err) => {
            Error::new(ErrorKind::Other, format!("{what} pool hook failed: {err}"))
        }
    }
}

fn build_error(err: managed::BuildError) -> Error {
    Error::new(ErrorKind::Other, format!("cannot build the pool: {err}"))
}

/// A pooled connection with the number the pool knows it by.
struct Entry {
    id: u64,
    connection: Connection,
}

/// Makes the pool's connections and tracks them (in use or idle) for
/// [`ConnectionPool::force_close_all`].
struct ConnectionManager {
    make: Box<MakeConnection>,
    next_id: AtomicU64,
    made: Mutex<HashMap<u64, Connection>>,
}

impl ConnectionManager {
    fn made(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Connection>> {
        self.made.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Close `connection` if it has a transport that is no longer connected
/// (a no-op when it never connected): its next use connects again.
async fn close_if_dead(connection: &Connection) {
    if !connection.connected() {
        if let Err(err) = connection.close().await {
            tracing::debug!(error = %err, "closing a dead pooled connection failed");
        }
    }
}

impl managed::Manager for ConnectionManager {
    type Type = Entry;
    type Error = Error;

    async fn create(&self) -> Result<Entry> {
        let connection = (self.make)()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.made().insert(id, connection.clone());
        Ok(Entry { id, connection })
    }

    async fn recycle(&self, entry: &mut Entry, _: &Metrics) -> RecycleResult<Error> {
        close_if_dead(&entry.connection).await;
        Ok(())
    }

    fn detach(&self, entry: &mut Entry) {
        self.made().remove(&entry.id);
    }
}

/// A pool of [`Connection`]s to one broker (or failover list), at most
/// `limit` of them (kombu's `ConnectionPool`, `Connection.Pool(limit)`).
///
/// Connections are made on demand and connect on first use. Clones of the
/// pool share it.
///
/// ```
/// use std::time::Duration;
/// use kombu_core::{ConnectionOptions, ConnectionPool};
///
/// # async fn demo() -> kombu_core::Result<()> {
/// // The scheme is resolved through the global registry.
/// let pool = ConnectionPool::new("redis://localhost:6379/0", ConnectionOptions::new(), 10)?;
/// let conn = pool.acquire_timeout(Duration::from_secs(5)).await?;
/// let channel = conn.channel().await?; // connects on first use
/// # drop(channel);
/// conn.release(); // back to the pool, still connected
/// assert_eq!(pool.status().available, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConnectionPool {
    pool: managed::Pool<ConnectionManager>,
    limit: usize,
}

impl ConnectionPool {
    /// A pool of up to `limit` connections to `url` with `options`, as
    /// [`Connection::with_options`] makes them (the global registry). The
    /// URL is checked now (scheme known, options valid); nothing connects
    /// until used.
    ///
    /// A `limit` of 0 is taken as 1.
    pub fn new(url: &str, options: ConnectionOptions, limit: usize) -> Result<Self> {
        Self::with_registry(url, options, Registry::global(), limit)
    }

    /// A pool like [`ConnectionPool::new`] whose connections resolve their
    /// scheme through `registry`.
    pub fn with_registry(
        url: &str,
        options: ConnectionOptions,
        registry: Arc<Registry>,
        limit: usize,
    ) -> Result<Self> {
        let template = Connection::with_registry_options(url, options, registry)?;
        Self::from_template(&template, limit)
    }

    /// A pool of connections like `template`: the same URLs (failover list
    /// included), options and registry, each a connection of its own.
    pub fn from_template(template: &Connection, limit: usize) -> Result<Self> {
        let template = template.new_like()?;
        Self::from_fn(limit, move || template.new_like())
    }

    /// A pool whose connections `make` creates (it is called when the pool
    /// needs a new one; it should not connect).
    pub fn from_fn(
        limit: usize,
        make: impl Fn() -> Result<Connection> + Send + Sync + 'static,
    ) -> Result<Self> {
        let limit = limit.max(1);
        let manager = ConnectionManager {
            make: Box::new(make),
            next_id: AtomicU64::new(0),
            made: Mutex::new(HashMap::new()),
        };
        let pool = managed::Pool::builder(manager)
            .max_size(limit)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(build_error)?;
        Ok(ConnectionPool { pool, limit })
    }

    async fn get(&self, wait: Wait) -> Result<PooledConnection> {
        let object = self
            .pool
            .timeout_get(&wait.timeouts())
            .await
            .map_err(|e| pool_error("connections", self.limit, wait, e))?;
        Ok(PooledConnection { object })
    }

    /// A connection, waiting as long as it takes for one to be released
    /// when all `limit` are in use.
    pub async fn acquire(&self) -> Result<PooledConnection> {
        self.get(Wait::Forever).await
    }

    /// A connection, waiting up to `timeout` for one to be released;
    /// [`ErrorKind::LimitExceeded`] when none is.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<PooledConnection> {
        self.get(Wait::For(timeout)).await
    }

    /// A connection if one is free now (or can be made), else
    /// [`ErrorKind::LimitExceeded`] at once (kombu's `acquire(block=False)`).
    pub async fn try_acquire(&self) -> Result<PooledConnection> {
        self.get(Wait::No).await
    }

    /// The most connections the pool holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many connections exist, are idle, and how many callers wait.
    pub fn status(&self) -> PoolStatus {
        let mut status = PoolStatus::from_deadpool(self.pool.status());
        status.limit = self.limit;
        status
    }

    /// Close every connection of the pool, in use or idle, and close the
    /// pool: later acquires fail with [`ErrorKind::Closed`] (kombu's
    /// `force_close_all`, for example after a fork). A connection still
    /// held by someone is closed under their feet: their next use of it
    /// connects again, outside any pool.
    pub async fn force_close_all(&self) {
        self.pool.close();
        let connections = std::mem::take(&mut *self.pool.manager().made());
        for connection in connections.into_values() {
            if let Err(err) = connection.close().await {
                tracing::debug!(error = %err, "closing a pooled connection failed");
            }
        }
    }

    /// True after [`force_close_all`](Self::force_close_all).
    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }
}

impl fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("status", &self.status())
            .finish()
    }
}

/// A [`Connection`] acquired from a [`ConnectionPool`]; dereferences to it.
/// [`release`](Self::release) it (or drop it) to give it back.
pub struct PooledConnection {
    object: Object<ConnectionManager>,
}

impl PooledConnection {
    /// Give the connection back to its pool, open, for the next acquire
    /// (kombu's `release`: released, not closed). Dropping it does the same.
    pub fn release(self) {
        drop(self);
    }

    /// Take the connection out of the pool for good: the pool makes a new
    /// one in its place, and this one closes when its last clone is dropped.
    pub fn detach(self) -> Connection {
        Object::take(self.object).connection
    }
}

impl std::ops::Deref for PooledConnection {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.object.connection
    }
}

impl AsRef<Connection> for PooledConnection {
    fn as_ref(&self) -> &Connection {
        &self.object.connection
    }
}

impl fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PooledConnection")
            .field(&self.object.connection)
            .finish()
    }
}

/// A producer slot of the producer pool: empty until first acquired, and
/// emptied when its connection was found dead.
struct ProducerSlot {
    inner: Option<(Producer, PooledConnection)>,
}

type MakeProducer = dyn Fn(&Connection) -> Producer + Send + Sync;

struct ProducerManager {
    make: Box<MakeProducer>,
}

impl managed::Manager for ProducerManager {
    type Type = ProducerSlot;
    type Error = Error;

    async fn create(&self) -> Result<ProducerSlot> {
        Ok(ProducerSlot { inner: None })
    }

    async fn recycle(&self, slot: &mut ProducerSlot, _: &Metrics) -> RecycleResult<Error> {
        let Some((producer, connection)) = &mut slot.inner else {
            return Ok(());
        };
        // Connected: the producer's channel must be open. Not connected
        // (never used, or its transport died): close what is left, and a
        // new producer (no I/O) starts afresh on the connection, which
        // connects again on first use.
        let usable = if connection.connected() {
            producer.channel().await.is_ok_and(|ch| ch.is_open())
        } else {
            close_if_dead(connection).await;
            false
        };
        if !usable {
            *producer = (self.make)(connection);
        }
        Ok(())
    }
}

/// A pool of up to `limit` [`Producer`]s, each holding a connection of a
/// [`ConnectionPool`] while it lives (kombu's `ProducerPool`).
///
/// A producer is made on first acquire of its slot (waiting for a
/// connection of the connection pool), and kept with its connection and
/// channel for the next acquire. A producer whose connection was found dead
/// is replaced by a new one on the same (reconnecting) connection.
///
/// ```
/// use kombu_core::{ConnectionOptions, ConnectionPool, Exchange, Producer, ProducerPool, PublishOptions};
///
/// # async fn demo() -> kombu_core::Result<()> {
/// let connections = ConnectionPool::new("amqp://localhost//", ConnectionOptions::new(), 4)?;
/// let producers = ProducerPool::with_producer(connections, 4, |conn| {
///     Producer::new(conn).exchange(Exchange::topic("logs"))
/// })?;
/// let producer = producers.acquire().await?;
/// producer.publish("disk full", PublishOptions::new().routing_key("app.error")).await?;
/// producer.release();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ProducerPool {
    pool: managed::Pool<ProducerManager>,
    connections: ConnectionPool,
    limit: usize,
}

impl ProducerPool {
    /// A pool of up to `limit` default producers (the default exchange) on
    /// connections of `connections`. A `limit` of 0 is taken as 1.
    pub fn new(connections: ConnectionPool, limit: usize) -> Result<Self> {
        Self::with_producer(connections, limit, Producer::new)
    }

    /// A pool whose producers `make` builds on a pooled connection (to set
    /// their exchange, routing key, serializer, compression).
    pub fn with_producer(
        connections: ConnectionPool,
        limit: usize,
        make: impl Fn(&Connection) -> Producer + Send + Sync + 'static,
    ) -> Result<Self> {
        let limit = limit.max(1);
        let manager = ProducerManager {
            make: Box::new(make),
        };
        let pool = managed::Pool::builder(manager)
            .max_size(limit)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(build_error)?;
        Ok(ProducerPool {
            pool,
            connections,
            limit,
        })
    }

    async fn get(&self, wait: Wait) -> Result<PooledProducer> {
        let started = tokio::time::Instant::now();
        let mut object = self
            .pool
            .timeout_get(&wait.timeouts())
            .await
            .map_err(|e| pool_error("producers", self.limit, wait, e))?;
        if object.inner.is_none() {
            let connection = match wait {
                Wait::Forever => self.connections.acquire().await?,
                Wait::For(limit) => {
                    let left = limit.saturating_sub(started.elapsed());
                    self.connections.acquire_timeout(left).await?
                }
                Wait::No => self.connections.try_acquire().await?,
            };
            let producer = (self.pool.manager().make)(&connection);
            object.inner = Some((producer, connection));
        }
        Ok(PooledProducer { object })
    }

    /// A producer, waiting as long as it takes for a producer (and, for a
    /// new one, a connection) to be free.
    pub async fn acquire(&self) -> Result<PooledProducer> {
        self.get(Wait::Forever).await
    }

    /// A producer, waiting up to `timeout` in all;
    /// [`ErrorKind::LimitExceeded`] when none is free in time.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<PooledProducer> {
        self.get(Wait::For(timeout)).await
    }

    /// A producer if one is free now, else [`ErrorKind::LimitExceeded`].
    pub async fn try_acquire(&self) -> Result<PooledProducer> {
        self.get(Wait::No).await
    }

    /// The most producers the pool holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The connection pool the producers take their connections from.
    pub fn connections(&self) -> &ConnectionPool {
        &self.connections
    }

    /// How many producers exist, are idle, and how many callers wait.
    pub fn status(&self) -> PoolStatus {
        let mut status = PoolStatus::from_deadpool(self.pool.status());
        status.limit = self.limit;
        status
    }

    /// Close the pool and every connection of its connection pool (see
    /// [`ConnectionPool::force_close_all`]).
    pub async fn force_close_all(&self) {
        self.pool.close();
        self.connections.force_close_all().await;
    }
}

impl fmt::Debug for ProducerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProducerPool")
            .field("status", &self.status())
            .field("connections", &self.connections)
            .finish()
    }
}

/// A [`Producer`] acquired from a [`ProducerPool`]; dereferences to it.
/// [`release`](Self::release) it (or drop it) to give it back, with its
/// connection and channel, for the next acquire.
pub struct PooledProducer {
    object: Object<ProducerManager>,
}

impl PooledProducer {
    /// Give the producer back to its pool (kombu's `release`).
    pub fn release(self) {
        drop(self);
    }

    /// The connection the producer publishes on.
    pub fn connection(&self) -> &Connection {
        &self.slot().1
    }

    fn slot(&self) -> &(Producer, PooledConnection) {
        self.object
            .inner
            .as_ref()
            .expect("an acquired producer slot holds a producer")
    }
}

impl std::ops::Deref for PooledProducer {
    type Target = Producer;
    fn deref(&self) -> &Producer {
        &self.slot().0
    }
}

impl fmt::Debug for PooledProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledProducer")
            .field("connection", self.connection())
            .finish()
    }
}
