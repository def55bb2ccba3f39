//! The kombu-rs conformance suite on `sqs://` (moto in CI:
//! `KOMBU_TEST_SQS_URL=sqs://test:test@127.0.0.1:4566`).

use kombu_testkit::{GarbagePath, HookError};

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("sqs", kombu_sqs::register)
}

/// The lease check's connection: queues made with a 2 s visibility
/// timeout (moto makes a message visible again once it ends).
fn short_lease() -> Option<kombu_core::Connection> {
    let url = kombu_testkit::test_url("sqs")?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}visibility_timeout=2");
    let mut registry = kombu_core::Registry::new();
    kombu_sqs::register(&mut registry);
    Some(
        kombu_core::Connection::with_registry(&url, std::sync::Arc::new(registry))
            .expect("KOMBU_TEST_SQS_URL"),
    )
}

/// The garbage check's raw write: SendMessage of the bytes as the body
/// (text no kombu wrote) to the queue's SQS queue. Python kombu reads any
/// such body as a message whose body is that text, and so does kombu-sqs:
/// it is delivered, and the check's consumer rejects it.
async fn write_garbage(
    conn: &kombu_core::Connection,
    queue: &str,
    bytes: &[u8],
) -> Result<GarbagePath, HookError> {
    let url = conn.url();
    let endpoint = format!(
        "http://{}:{}",
        url.hostname().ok_or("no host")?,
        url.port().ok_or("no port")?
    );
    let creds = aws_credential_types::Credentials::new(
        url.userid().ok_or("no access key")?,
        url.password().ok_or("no secret key")?,
        None,
        None,
        "test",
    );
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(endpoint)
        .http_client(http)
        .build();
    let sqs = aws_sdk_sqs::Client::from_conf(config);
    let body = String::from_utf8(bytes.to_vec())?;
    let send = async {
        let queue_url = sqs
            .get_queue_url()
            .queue_name(kombu_sqs::entity_name(queue))
            .send()
            .await?
            .queue_url
            .ok_or("no queue URL")?;
        sqs.send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await?;
        Ok::<_, HookError>(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), send).await??;
    Ok(GarbagePath::DeliveredAsBody)
}

kombu_testkit::conformance_tests!(connect, lease: short_lease, garbage: write_garbage);
