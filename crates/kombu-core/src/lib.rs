#![doc = include_str!("../README.md")]

pub mod compression;
pub mod connection;
pub mod consumer;
mod declare;
pub mod entity;
pub mod envelope;
pub mod error;
pub mod message;
pub mod metrics;
pub mod options;
pub mod pool;
pub mod producer;
pub mod registry;
pub mod retry;
pub mod routing;
pub mod serialization;
pub mod simple;
#[cfg(feature = "rustls")]
pub mod tls_refusal;
mod topology;
pub mod trace;
#[cfg(feature = "opentelemetry")]
mod trace_spans;
mod transport;
mod transport_info;
pub mod url;
mod virtual_channel;
pub mod worker;

/// The implementer's API: what a transport crate uses (the traits it
/// implements, the virtual channel and its backend trait, routing helpers).
/// Users of kombu-rs need none of it.
pub mod spi {
    pub use crate::routing::{route, QueueBinding};
    pub use crate::transport::{Transport, TransportFactory};
    pub use crate::virtual_channel::{
        new_delivery_tag, Fetched, FetchedBody, Receipt, StopWaiting, StoredMessage,
        VirtualBackend, VirtualChannel, VirtualFactory, VirtualOptions, VirtualTransport,
        DEFAULT_OPERATION_TIMEOUT, VIRTUAL_OPTIONS,
    };
    pub use async_trait::async_trait;
}

pub use compression::{CompressionRegistry, Compressor};
pub use connection::{Connection, DEFAULT_URL};
pub use consumer::{Consumer, ConsumerBuilder, Message, StreamOffset};
pub use entity::{Arguments, Binding, Exchange, ExchangeType, Queue};
pub use envelope::Envelope;
pub use error::{Error, ErrorKind, Result};
pub use message::{Delivery, DeliveryInfo, DeliveryMode, Headers, Properties, RawMessage};
pub use options::{
    ConnectionOptions, CustomFailover, FailoverStrategy, SslOptions, TransportOptions,
};
pub use pool::{ConnectionPool, PoolStatus, PooledConnection, PooledProducer, ProducerPool};
pub use producer::{Producer, PublishOptions, PUBLISH_MANY_WINDOW};
pub use registry::Registry;
pub use retry::RetryPolicy;
pub use serialization::{Accept, Payload, Serializer, SerializerRegistry};
pub use simple::SimpleQueue;
pub use trace::TraceContext;
pub use transport::{Capabilities, Channel, DeliveryStream, QueueInfo, TransportKind};
pub use transport_info::TransportInfo;
pub use url::BrokerUrl;
pub use virtual_channel::{add_x_death, quarantine_of, QUARANTINE_SUFFIX};
pub use worker::{Worker, WorkerStats};
