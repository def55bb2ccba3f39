//! How long each receive waits follows what the last one brought: no wait
//! after a full batch (a backlog; and a consumer that closes after taking
//! what it wanted then waits for a round trip, not for a long poll), 1 s
//! when unknown, the full `wait_time_seconds` once the queue is quiet.
//! Against moto (`KOMBU_TEST_SQS_URL`); skipped without it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::spi::{Fetched, VirtualBackend};
use kombu_core::{Connection, ConnectionOptions, Envelope, Queue, Registry, TransportOptions};
use kombu_sqs::SqsBackend;
use kombu_testkit::{test_url, unique};
use serde_json::Map;

/// A bound on every wait of this test.
const DEADLINE: Duration = Duration::from_secs(60);

/// The long poll of a quiet queue in this test.
const WAIT_TIME_SECONDS: u64 = 3;

/// One receive as the consume loop asks for it (a wait, up to 10), timed.
async fn timed_fetch(backend: &SqsBackend, queue: &str) -> (Vec<Fetched>, Duration) {
    let queues = [queue.to_owned()];
    let started = Instant::now();
    let fetched = tokio::time::timeout(
        DEADLINE,
        backend.fetch_batch(&queues, Duration::from_secs(1), 10),
    )
    .await
    .expect("a fetch within the deadline")
    .expect("fetch");
    (fetched, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_is_followed_by_a_receive_that_does_not_wait() {
    let Some(url) = test_url("sqs") else { return };
    let mut registry = Registry::new();
    kombu_sqs::register(&mut registry);
    let options = ConnectionOptions::new().transport_options(
        TransportOptions::new().set("wait_time_seconds", WAIT_TIME_SECONDS as i64),
    );
    let conn =
        Connection::with_registry_options(&url, options, Arc::new(registry)).expect("a usable URL");
    let queue = unique("pace");
    let channel = conn.channel().await.expect("channel");
    Queue::new(&queue)
        .declare(channel.as_ref())
        .await
        .expect("declare");
    let backend = conn.extension::<SqsBackend>().await.expect("the backend");
    let messages = (0..10)
        .map(|i| {
            let envelope = Envelope::new(
                format!("m{i}").into_bytes(),
                Some("text/plain".into()),
                Some("utf-8".into()),
                Map::new(),
                Map::new(),
            );
            (envelope, 0)
        })
        .collect();
    backend.put_many(&queue, messages).await.expect("put_many");

    let (full, _) = timed_fetch(&backend, &queue).await;
    assert_eq!(full.len(), 10, "the backlog, in one receive");
    // Everything is in flight now: each receive below comes back empty.
    let (none, took) = timed_fetch(&backend, &queue).await;
    assert!(none.is_empty());
    assert!(
        took < Duration::from_millis(800),
        "after a full batch the next receive does not wait: {took:?}"
    );
    let (none, took) = timed_fetch(&backend, &queue).await;
    assert!(none.is_empty());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(WAIT_TIME_SECONDS),
        "then a 1 s receive: {took:?}"
    );
    let (none, took) = timed_fetch(&backend, &queue).await;
    assert!(none.is_empty());
    assert!(
        took >= Duration::from_millis(WAIT_TIME_SECONDS * 1000 - 100),
        "then, quiet, the full wait_time_seconds: {took:?}"
    );

    let acks: Vec<(String, String)> = full
        .iter()
        .map(|f| (f.queue.clone(), f.receipt.clone()))
        .collect();
    backend.ack_many(&acks).await.expect("ack_many");
    backend.delete_queue(&queue).await.expect("delete");
    conn.close().await.expect("close");
}
