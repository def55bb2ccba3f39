//! A transport registered by a user works end to end (own test binary:
//! registering changes the process-wide default registry).

use std::sync::Arc;
use std::time::Duration;

use kombu::spi::{async_trait, Transport, TransportFactory};
use kombu::{BrokerUrl, Connection, ConnectionOptions, Result, TransportInfo, TransportKind};

const ECHO: TransportInfo = TransportInfo::new("echo", &["echo"], TransportKind::Virtual);

/// A tiny custom transport: the memory backend under another scheme.
struct Echo;

#[async_trait]
impl TransportFactory for Echo {
    fn info(&self) -> &'static TransportInfo {
        &ECHO
    }
    async fn connect(
        &self,
        url: &BrokerUrl,
        options: &ConnectionOptions,
    ) -> Result<Arc<dyn Transport>> {
        kombu_memory_factory().connect(url, options).await
    }
}

fn kombu_memory_factory() -> Arc<dyn TransportFactory> {
    kombu::default_registry().resolve("memory").unwrap()
}

#[tokio::test]
async fn a_registered_custom_transport_works_end_to_end() {
    kombu::install_default_transports();
    kombu::register(Arc::new(Echo));
    let conn = Connection::new("echo://custom").unwrap();
    assert_eq!(conn.transport_name(), "echo");
    let queue = conn.simple_queue("echo-queue");
    queue.put(serde_json::json!({"via": "echo"})).await.unwrap();
    let message = queue
        .get(Some(Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        message.decode::<serde_json::Value>().unwrap(),
        serde_json::json!({"via": "echo"})
    );
    message.ack().await.unwrap();
}
