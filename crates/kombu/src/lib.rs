//! Messaging for Rust in the spirit of Python's kombu: one API for many
//! brokers, chosen by URL, speaking kombu's wire format.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu::Result<()> {
//! use kombu::prelude::*;
//!
//! kombu::install_default_transports(); // once, at start: every compiled-in transport
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
//! Transports are cargo features: `memory` (default), `amqp`, `redis`,
//! `sqs`, `mongodb`, `beanstalk`, `couchdb`, `nats` (`full`: all). There is one
//! [`Connection`] type: [`install_default_transports`] puts the compiled-in
//! transports into the core's global registry that [`Connection::new`] and
//! [`ConnectionPool::new`] resolve schemes through; [`register`] adds your
//! own; [`spi`] is what a transport crate implements.

mod builtin;
mod table;

pub use builtin::{default_registry, install_default_transports, register, TRANSPORT_FEATURES};
/// The user API: [`Connection`] (the one connection type: a pooled
/// connection dereferences to it), entities, producers, consumers,
/// options, errors.
pub use kombu_core::*;
pub use table::transport_table;

/// The implementer's API (what a transport crate uses); see
/// docs/writing-a-transport.md.
pub mod spi {
    pub use kombu_core::spi::*;
}

/// What most users need, in one import (`StreamExt` for consumers).
///
/// ```
/// use kombu::prelude::*;
/// # async fn demo(conn: &Connection) -> Result<()> {
/// let mut consumer = Consumer::builder(conn).queue(Queue::new("q")).build().await?;
/// if let Some(message) = consumer.next().await { message?.ack().await?; }
/// # Ok(()) }
/// ```
pub mod prelude {
    pub use crate::{
        install_default_transports, Connection, ConnectionOptions, ConnectionPool, Consumer, Error,
        ErrorKind, Exchange, Message, Producer, PublishOptions, Queue, Result,
    };
    pub use futures::StreamExt;
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
    #[doc = include_str!("../../../docs/tls.md")]
    struct Tls;
    #[doc = include_str!("../../../docs/metrics.md")]
    struct Metrics;
}
