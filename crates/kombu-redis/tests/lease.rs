//! Lease extension on `redis://`: a `Worker` whose handler runs three
//! times past `visibility_timeout` keeps its message (the worker extends
//! the lease by itself), so no other consumer gets it and it is handled
//! once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, Consumer, Producer, PublishOptions, Queue, Registry, Worker};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_extends_a_long_jobs_lease() {
    let Some(url) = kombu_testkit::test_url("redis") else {
        return;
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}visibility_timeout=2&unacked_restore_interval=0.5");
    let mut registry = Registry::new();
    kombu_redis::register(&mut registry);
    let conn = Connection::with_registry(&url, Arc::new(registry)).unwrap();
    let queue = kombu_testkit::unique("lease-worker");
    let channel = conn.channel().await.unwrap();
    Queue::new(&queue).declare(channel.as_ref()).await.unwrap();
    Producer::new(&conn)
        .publish(json!("long job"), PublishOptions::new().routing_key(&queue))
        .await
        .unwrap();

    let handled = Arc::new(AtomicUsize::new(0));
    let worker = Worker::new(&conn).queue(Queue::new(&queue)).concurrency(1);
    let run = {
        let handled = handled.clone();
        tokio::spawn(worker.run(
            move |_message| {
                let handled = handled.clone();
                async move {
                    handled.fetch_add(1, Ordering::SeqCst);
                    // Three leases long.
                    tokio::time::sleep(Duration::from_secs(6)).await;
                    Ok(())
                }
            },
            tokio::time::sleep(Duration::from_secs(8)),
        ))
    };
    // Another connection's consumer, restoring every half second: it
    // would get the message 2 s after the worker took it, were the lease
    // not extended.
    let other = conn.new_like().unwrap();
    let mut consumer = Consumer::builder(&other)
        .queue(Queue::new(&queue))
        .prefetch_count(1)
        .build()
        .await
        .unwrap();
    let stolen = tokio::time::timeout(Duration::from_secs(7), consumer.next()).await;
    assert!(
        stolen.is_err(),
        "the running job's message went to another consumer: {:?}",
        stolen.map(|m| m.map(|m| m.map(|m| m.body().to_vec())))
    );
    let stats = run.await.unwrap().unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 1, "handled once");
    assert_eq!(stats.acked, 1, "acked once: {stats:?}");
    let _ = consumer.close().await;
    let _ = other.close().await;
    channel.queue_delete(&queue).await.unwrap();
    let _ = conn.close().await;
}
