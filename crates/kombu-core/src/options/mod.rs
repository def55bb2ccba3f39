//! Connection options: the keyword arguments of kombu's `Connection`
//! ([`ConnectionOptions`]) and the free-form options of one transport
//! ([`TransportOptions`]).
//!
//! Options may come from code, from a URL's query (`amqp://h//?ssl=1`) or from
//! the command line (`--option K=V`); the last two are strings, so the typed
//! getters accept `"10"` as well as `10`.

mod connection;
mod failover;
mod query;
mod ssl;
mod transport;
mod value;

pub use connection::ConnectionOptions;
pub use failover::{CustomFailover, FailoverOrderFn, FailoverStrategy};
pub use ssl::SslOptions;
pub use transport::TransportOptions;
