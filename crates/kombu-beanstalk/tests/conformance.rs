//! The conformance suite on `beanstalk://` (KOMBU_TEST_BEANSTALK_URL).

use std::time::Duration;

use kombu_testkit::{GarbagePath, HookError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("beanstalk", kombu_beanstalk::register)
}

/// The lease check's connection: jobs put with a 2 s ttr (beanstalkd
/// releases a job whose ttr ran out by itself).
fn short_lease() -> Option<kombu_core::Connection> {
    let url = kombu_testkit::test_url("beanstalk")?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}ttr=2");
    let mut registry = kombu_core::Registry::new();
    kombu_beanstalk::register(&mut registry);
    Some(
        kombu_core::Connection::with_registry(&url, std::sync::Arc::new(registry))
            .expect("KOMBU_TEST_BEANSTALK_URL"),
    )
}

/// The garbage check's raw write: `use <queue>` then `put` of the bytes,
/// on a plain TCP connection (the beanstalkd protocol), so the tube holds
/// a job that is not a kombu envelope.
async fn write_garbage(
    _conn: &kombu_core::Connection,
    queue: &str,
    bytes: &[u8],
) -> Result<GarbagePath, HookError> {
    let url = kombu_testkit::test_url("beanstalk").ok_or("KOMBU_TEST_BEANSTALK_URL")?;
    let address = url
        .split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .to_owned();
    let put = async {
        let mut stream = TcpStream::connect(&address).await?;
        let mut request = format!("use {queue}\r\nput 1024 0 60 {}\r\n", bytes.len()).into_bytes();
        request.extend_from_slice(bytes);
        request.extend_from_slice(b"\r\n");
        stream.write_all(&request).await?;
        let mut lines = BufReader::new(stream).lines();
        let used = lines.next_line().await?.unwrap_or_default();
        let inserted = lines.next_line().await?.unwrap_or_default();
        Ok::<_, std::io::Error>((used, inserted))
    };
    let (used, inserted) = tokio::time::timeout(Duration::from_secs(5), put).await??;
    if !used.starts_with("USING") || !inserted.starts_with("INSERTED") {
        return Err(format!("beanstalkd answered {used:?}, {inserted:?}").into());
    }
    Ok(GarbagePath::Unreadable)
}

kombu_testkit::conformance_tests!(connect, lease: short_lease, garbage: write_garbage);
