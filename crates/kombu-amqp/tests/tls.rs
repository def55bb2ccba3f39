//! `amqps://` end to end against the rabbitmq-tls service (`cargo xtask
//! services up rabbitmq-tls`): three private RabbitMQ nodes with a throwaway
//! CA's certificates (see xtask/src/tls.rs), through the TLS suite of
//! kombu-testkit (`kombu_testkit::tls`: good CA, wrong CA, expired, wrong
//! hostname, CERT_NONE with a warning, mutual TLS with and without a client
//! certificate, no password or key material in trace logs, `Debug` or
//! errors). The conformance suite runs once over the TLS URL.

/// KOMBU_TEST_AMQPS_URL and its -mtls, -expired siblings.
const SERVICE: &str = "amqps";

use std::sync::Arc;

use kombu_core::{Connection, Registry};
use kombu_testkit::tls::{Borrowed, TlsSuite};

mod common;

fn connection(url: &str) -> Connection {
    let mut registry = Registry::new();
    kombu_amqp::register(&mut registry);
    Connection::with_registry(url, Arc::new(registry)).expect("a usable TLS URL")
}

/// The `Debug` of the transport a connection to `url` opens (lapin's
/// settings, the TLS configuration).
fn describe<'a>(url: &'a str, conn: &'a Connection) -> Borrowed<'a, String> {
    Box::pin(async move {
        let parsed = kombu_core::BrokerUrl::parse(url).unwrap();
        let mut options = conn.options().clone();
        options.apply_query(&parsed).unwrap();
        let transport = kombu_amqp::AmqpTransport::open(&parsed, &options)
            .await
            .expect("a transport of its own");
        format!("{transport:?}")
    })
}

fn suite() -> TlsSuite {
    TlsSuite {
        service: SERVICE,
        connect: connection,
        describe,
    }
}

kombu_testkit::tls_tests!(suite);

/// The conformance suite over `amqps://` (KOMBU_TEST_AMQPS_URL).
mod conformance {
    use kombu_testkit::{GarbagePath, HookError};

    kombu_testkit::conformance_tests!(connect, garbage: write_garbage);

    fn connect() -> Option<kombu_core::Connection> {
        let url = kombu_testkit::test_url("amqps")?;
        Some(super::connection(&url))
    }

    /// A confirmed lapin publish over TLS (the CA from the URL's query)
    /// of a body that claims to be JSON and is not.
    async fn write_garbage(
        _conn: &kombu_core::Connection,
        queue: &str,
        bytes: &[u8],
    ) -> Result<GarbagePath, HookError> {
        let url = kombu_testkit::test_url("amqps").ok_or("KOMBU_TEST_AMQPS_URL")?;
        super::common::publish_garbage(&url, queue, bytes).await
    }
}
