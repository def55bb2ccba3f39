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
