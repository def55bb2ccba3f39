//! Messaging for Rust in the spirit of Python's kombu: one API for many
//! brokers, chosen by URL, speaking kombu's wire format.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu::Result<()> {
//! use kombu::{Connection, Exchange, Queue, Producer, PublishOptions};
//! use futures::StreamExt;
//!
//! let conn = Connection::new("memory://doc-example")?; // lazy: no I/O yet
//! let exchange = Exchange::direct("greetings");
//! let queue = Queue::new("hello").bind(&exchange, "hello");
//!
//! let producer = Producer::new(&conn).exchange(exchange);
//! producer
//!     .publish(serde_json::json!({"hello": "world"}), PublishOptions::new().routing_key("hello").declare(queue.clone()))
//!     .await?;
//!
//! let mut consumer = kombu::Consumer::builder(&conn).queue(queue).build().await?;
//! let message = consumer.next().await.unwrap()?;
//! assert_eq!(message.decode::<serde_json::Value>()?["hello"], "world");
//! message.ack().await?;
//! # Ok(()) }
//! ```
//!
//! Transports are cargo features: `memory` (default), and the others as
//! they land (see the README's table). [`register`] adds your own.

mod builtin;
mod table;

use std::ops::Deref;

pub use builtin::{default_registry, register};
pub use kombu_core::*;
pub use table::transport_table;

/// A connection to a broker chosen by URL scheme through the default
/// registry (every transport compiled in, plus those added with
/// [`register`]). It dereferences to [`kombu_core::Connection`], which has
/// every method.
///
/// ```
/// let conn = kombu::Connection::new("memory://")?;
/// assert!(!conn.connected()); // lazy
/// assert_eq!(conn.transport_name(), "memory");
/// # Ok::<(), kombu::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Connection(kombu_core::Connection);

impl Connection {
    /// A lazy connection for `url`. An empty `url` means kombu's default,
    /// `amqp://guest:guest@localhost:5672//`.
    pub fn new(url: &str) -> Result<Self> {
        Self::with_options(url, ConnectionOptions::default())
    }

    /// A lazy connection for `url` with keyword options (URL values win).
    ///
    /// ```
    /// use kombu::{Connection, ConnectionOptions};
    /// let opts = ConnectionOptions::new().transport("memory");
    /// let conn = Connection::with_options("", opts)?;
    /// assert_eq!(conn.transport_name(), "memory");
    /// # Ok::<(), kombu::Error>(())
    /// ```
    pub fn with_options(url: &str, options: ConnectionOptions) -> Result<Self> {
        kombu_core::Connection::with_options(url, options, default_registry()).map(Connection)
    }

    /// A lazy connection for `url` resolved through your own `registry`.
    pub fn with_registry(url: &str, registry: std::sync::Arc<Registry>) -> Result<Self> {
        kombu_core::Connection::with_registry(url, registry).map(Connection)
    }

    /// Release the connection: back to its pool when it came from one, else
    /// closed (kombu's `release`).
    pub async fn release(self) -> Result<()> {
        self.0.release().await
    }

    /// The core connection (what producers and consumers take).
    pub fn into_inner(self) -> kombu_core::Connection {
        self.0
    }
}

/// The user guide's examples, compiled and run as doctests.
#[cfg(doctest)]
mod user_guide {
    #[doc = include_str!("../../../docs/connections.md")]
    struct Connections;
    #[doc = include_str!("../../../docs/producers.md")]
    struct Producers;
    #[doc = include_str!("../../../docs/consumers.md")]
    struct Consumers;
    #[doc = include_str!("../../../docs/simple.md")]
    struct Simple;
    #[doc = include_str!("../../../docs/serialization.md")]
    struct Serialization;
    #[doc = include_str!("../../../docs/writing-a-transport.md")]
    struct WritingATransport;
    #[doc = include_str!("../../../docs/wire-format.md")]
    struct WireFormat;
    #[doc = include_str!("../../../docs/staying-up.md")]
    struct StayingUp;
    #[doc = include_str!("../../../docs/pools.md")]
    struct Pools;
}

impl Deref for Connection {
    type Target = kombu_core::Connection;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl From<Connection> for kombu_core::Connection {
    fn from(conn: Connection) -> Self {
        conn.0
    }
}

impl AsRef<kombu_core::Connection> for Connection {
    fn as_ref(&self) -> &kombu_core::Connection {
        &self.0
    }
}
