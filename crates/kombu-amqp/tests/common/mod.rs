//! Shared helpers of the AMQP integration tests.
#![allow(dead_code)]

use std::process::Command;
use std::sync::Arc;

use kombu_core::{BrokerUrl, Connection, ConnectionOptions, Registry};

/// The test broker's URL, or `None` (skip) when `KOMBU_TEST_AMQP_URL` is unset.
pub fn url() -> Option<String> {
    kombu_testkit::test_url("amqp")
}

/// The registry with the AMQP transport.
pub fn registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    kombu_amqp::register(&mut registry);
    Arc::new(registry)
}

/// A connection to `url` with `options`.
pub fn connection(url: &str, options: ConnectionOptions) -> Connection {
    Connection::with_registry_options(url, options, registry()).expect("valid URL")
}

/// The test URL parsed, with another virtual host / password / port.
pub fn variant(base: &str, edit: impl FnOnce(&BrokerUrl) -> String) -> String {
    edit(&BrokerUrl::parse(base).expect("valid test URL"))
}

/// Run `rabbitmqctl` with `args`; `None` when it is not available here.
pub fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let output = Command::new("rabbitmqctl").args(args).output().ok()?;
    if !output.status.success() {
        panic!(
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `host:port` of a test URL.
pub fn host_port(base: &str) -> String {
    let url = BrokerUrl::parse(base).expect("valid test URL");
    format!(
        "{}:{}",
        url.hostname().unwrap_or("localhost"),
        url.port().unwrap_or(5672)
    )
}

/// `user:password` of a test URL.
pub fn credentials(base: &str) -> String {
    let url = BrokerUrl::parse(base).expect("valid test URL");
    format!(
        "{}:{}",
        url.userid().unwrap_or("guest"),
        url.password().unwrap_or("guest")
    )
}

/// The garbage check's raw write (`conformance_tests!(.., garbage: ..)`): a
/// message published with lapin to `queue` (default exchange, confirmed)
/// on the broker of the kombu URL `url` (over TLS with the CA of its
/// `ssl_ca_certs` where it has one), whose body claims to be JSON and is
/// not. RabbitMQ delivers it like any other; the consumer cannot decode it
/// and rejects it, and the reject puts it in the quarantine.
pub async fn publish_garbage(
    url: &str,
    queue: &str,
    bytes: &[u8],
) -> Result<kombu_testkit::GarbagePath, kombu_testkit::HookError> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::tcp::OwnedTLSConfig;
    use lapin::{BasicProperties, ConnectionProperties};

    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let ca = query
        .split('&')
        .find_map(|p| p.strip_prefix("ssl_ca_certs="));
    let tls = match ca {
        Some(ca) => OwnedTLSConfig {
            cert_chain: Some(std::fs::read_to_string(ca)?),
            ..OwnedTLSConfig::default()
        },
        None => OwnedTLSConfig::default(),
    };
    // lapin reads the vhost from the path: kombu's `//` is `/`, `%2f` to lapin.
    let base = base
        .strip_suffix("//")
        .map_or(base.to_owned(), |u| format!("{u}/%2f"));
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
            return Err::<(), kombu_testkit::HookError>(
                "RabbitMQ did not confirm the publish".into(),
            );
        }
        Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), publish).await??;
    Ok(kombu_testkit::GarbagePath::DeliveredAsBody)
}

/// A virtual host made for one test (by rabbitmqctl), deleted when dropped.
pub struct Vhost(pub String);

impl Vhost {
    /// The vhost `name`, every permission in it for `user`; `None` after a
    /// skip line where rabbitmqctl is not installed (a panic under
    /// `KOMBU_TEST_REQUIRE=1`).
    pub fn create(name: &str, user: &str) -> Option<Self> {
        let made = rabbitmqctl(&["add_vhost", name])
            .and_then(|_| rabbitmqctl(&["set_permissions", "-p", name, user, ".*", ".*", ".*"]));
        if made.is_none() {
            let required = matches!(
                std::env::var("KOMBU_TEST_REQUIRE").as_deref(),
                Ok("1") | Ok("true") | Ok("yes")
            );
            assert!(
                !required,
                "rabbitmqctl is not available and KOMBU_TEST_REQUIRE=1: it makes the test's vhost"
            );
            eprintln!("SKIP: rabbitmqctl is not available");
            return None;
        }
        Some(Vhost(name.to_owned()))
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_vhost", &self.0]);
    }
}
