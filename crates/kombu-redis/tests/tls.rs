//! `rediss://` end to end against the redis-tls service (`cargo xtask
//! services up redis-tls`): three redis-servers with a throwaway CA's
//! certificates (see xtask/src/tls.rs), through the TLS suite of
//! kombu-testkit (`kombu_testkit::tls`: good CA, wrong CA, expired, wrong
//! hostname, CERT_NONE with a warning, mutual TLS with and without a client
//! certificate, no password or key material in trace logs, `Debug` or
//! errors). The conformance suite runs once over the TLS URL.

#![cfg(feature = "tls")]

/// KOMBU_TEST_REDISS_URL and its -mtls, -expired siblings.
const SERVICE: &str = "rediss";

use std::sync::Arc;

use kombu_core::{Connection, Registry};
use kombu_testkit::tls::{Borrowed, TlsSuite};

fn connection(url: &str) -> Connection {
    let mut registry = Registry::new();
    kombu_redis::register(&mut registry);
    Connection::with_registry(url, Arc::new(registry)).expect("a usable TLS URL")
}

/// The `Debug` of the settings a connection to `url` reads.
fn describe<'a>(url: &'a str, conn: &'a Connection) -> Borrowed<'a, String> {
    Box::pin(async move {
        let parsed = kombu_core::BrokerUrl::parse(url).unwrap();
        let mut options = conn.options().clone();
        options.apply_query(&parsed).unwrap();
        let config = kombu_redis::RedisConfig::new(&parsed, &options).unwrap();
        format!("{config:?}")
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

/// The conformance suite over `rediss://` (KOMBU_TEST_REDISS_URL).
mod conformance {
    use kombu_testkit::{GarbagePath, HookError};

    kombu_testkit::conformance_tests!(connect, lease: short_lease, garbage: write_garbage);

    fn connect() -> Option<kombu_core::Connection> {
        let url = kombu_testkit::test_url("rediss")?;
        Some(super::connection(&url))
    }

    /// A 2 s lease, restored within half a second of its end.
    fn short_lease() -> Option<kombu_core::Connection> {
        let url = kombu_testkit::test_url("rediss")?;
        Some(super::connection(&kombu_testkit::with_query(
            &url,
            "visibility_timeout=2&unacked_restore_interval=0.5",
        )))
    }

    /// LPUSH over TLS with redis-rs (the CA from the URL's query).
    async fn write_garbage(
        _conn: &kombu_core::Connection,
        queue: &str,
        bytes: &[u8],
    ) -> Result<GarbagePath, HookError> {
        let url = kombu_testkit::test_url("rediss").ok_or("KOMBU_TEST_REDISS_URL")?;
        let (base, query) = url.split_once('?').ok_or("a CA in the URL's query")?;
        let ca = query
            .split('&')
            .find_map(|p| p.strip_prefix("ssl_ca_certs="))
            .ok_or("ssl_ca_certs in the URL")?;
        let client = redis::Client::build_with_tls(
            base,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(ca)?),
            },
        )?;
        let push = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("LPUSH")
                .arg(queue)
                .arg(bytes)
                .query_async::<i64>(&mut conn)
                .await
        };
        tokio::time::timeout(kombu_testkit::tls::LIMIT, push).await??;
        Ok(GarbagePath::Unreadable)
    }
}
