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
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::tcp::OwnedTLSConfig;
    use lapin::{BasicProperties, ConnectionProperties};

    kombu_testkit::conformance_tests!(connect, garbage: write_garbage);

    fn connect() -> Option<kombu_core::Connection> {
        let url = kombu_testkit::test_url("amqps")?;
        Some(super::connection(&url))
    }

    /// A message published with lapin over TLS (the CA from the URL's
    /// query) whose body claims to be JSON and is not (as in
    /// tests/conformance.rs).
    async fn write_garbage(
        _conn: &kombu_core::Connection,
        queue: &str,
        bytes: &[u8],
    ) -> Result<GarbagePath, HookError> {
        let url = kombu_testkit::test_url("amqps").ok_or("KOMBU_TEST_AMQPS_URL")?;
        let (base, query) = url.split_once('?').ok_or("a CA in the URL's query")?;
        let ca = query
            .split('&')
            .find_map(|p| p.strip_prefix("ssl_ca_certs="))
            .ok_or("ssl_ca_certs in the URL")?;
        // lapin reads the vhost from the path: kombu's `//` is `/`, `%2f` to lapin.
        let base = base
            .strip_suffix("//")
            .map_or(base.to_owned(), |u| format!("{u}/%2f"));
        let tls = OwnedTLSConfig {
            cert_chain: Some(std::fs::read_to_string(ca)?),
            ..OwnedTLSConfig::default()
        };
        let publish = async {
            let conn = lapin::Connection::connect_with_config(
                &base,
                ConnectionProperties::default(),
                tls,
                lapin::runtime::default_runtime()?,
            )
            .await?;
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    bytes,
                    BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_content_encoding("utf-8".into()),
                )
                .await?
                .await?;
            let _ = conn.close(200, "".into()).await;
            if !confirm.is_ack() {
                return Err::<(), HookError>("RabbitMQ did not confirm the publish".into());
            }
            Ok(())
        };
        tokio::time::timeout(kombu_testkit::tls::LIMIT, publish).await??;
        Ok(GarbagePath::DeliveredAsBody)
    }
}
