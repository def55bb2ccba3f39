//! Lease extension on `redis://`: a `Worker` whose handler runs three
//! times past `visibility_timeout` keeps its message (the worker extends
//! the lease by itself), so no other consumer gets it and it is handled
//! once. A restore sweep holds kombu's `unacked_mutex` for seconds at a
//! time, not kombu's 300 s, so a sweep cut short blocks nobody for long.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, Consumer, Producer, PublishOptions, Queue, Registry, Worker};
use kombu_redis::RedisBackend;
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

/// A sweep restoring a thousand messages takes the `unacked_mutex` for at
/// most 10 s at a time (renewed between batches), so a sweep whose task is
/// aborted as its connection closes, or whose process is killed, leaves
/// the other consumers of the database without restores for seconds, not
/// for kombu's `unacked_mutex_expire` (300 s); an aborted sweep releases
/// it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_sweep_holds_the_mutex_for_seconds_at_a_time() {
    let Some(url) = common::base_url() else {
        return;
    };
    const N: usize = 1000;
    let prefix = common::prefix("mutex-hold");
    let short = [
        ("visibility_timeout", json!(1)),
        ("unacked_restore_interval", json!(3600)),
    ];
    let holder = common::connect(&url, &prefix, &short);
    let queue = kombu_testkit::unique("mutex-hold");
    let channel = holder.channel().await.unwrap();
    Queue::new(&queue).declare(channel.as_ref()).await.unwrap();
    let producer = Producer::new(&holder);
    for i in 0..N {
        producer
            .publish(json!(i), PublishOptions::new().routing_key(&queue))
            .await
            .unwrap();
    }
    // Fetched, never acked: N entries in the unacked index.
    let mut consumer = Consumer::builder(&holder)
        .queue(Queue::new(&queue))
        .prefetch_count(N as u16)
        .build()
        .await
        .unwrap();
    let mut held = Vec::new();
    while held.len() < N {
        let m = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("fetching the messages within 10 s")
            .expect("consumer open")
            .unwrap();
        held.push(m);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await; // past the 1 s lease

    let sweeper = common::connect(&url, &prefix, &short);
    let backend = sweeper.extension::<RedisBackend>().await.unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut probe = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("probe connects within 5 s")
    .unwrap();
    let mutex = format!("{prefix}unacked_mutex");
    let ttl = |probe: &mut redis::aio::MultiplexedConnection| {
        let mut probe = probe.clone();
        let mutex = mutex.clone();
        async move {
            redis::cmd("PTTL")
                .arg(&mutex)
                .query_async::<i64>(&mut probe)
                .await
                .unwrap()
        }
    };

    // A sweep aborted mid-way (as when its connection closes) releases
    // the mutex at once rather than when its hold runs out.
    let aborted = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.restore_visible().await })
    };
    while ttl(&mut probe).await <= 0 {
        assert!(!aborted.is_finished(), "the sweep ended before it was seen");
    }
    aborted.abort();
    let released_by = tokio::time::Instant::now() + Duration::from_secs(2);
    while ttl(&mut probe).await > 0 {
        assert!(
            tokio::time::Instant::now() < released_by,
            "an aborted sweep left the mutex held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let sweep = tokio::spawn(async move { backend.restore_visible().await });
    let mut longest_ttl_ms = -2i64;
    while !sweep.is_finished() {
        longest_ttl_ms = longest_ttl_ms.max(ttl(&mut probe).await);
    }
    tokio::time::timeout(Duration::from_secs(30), sweep)
        .await
        .expect("the sweep ends within 30 s")
        .unwrap()
        .unwrap();
    let left: i64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}unacked_index"))
        .query_async(&mut probe)
        .await
        .unwrap();
    assert_eq!(left, 0, "every held message restored by the two sweeps");
    assert!(
        longest_ttl_ms > 0,
        "the probe never saw the sweep hold the mutex (PTTL {longest_ttl_ms})"
    );
    assert!(
        longest_ttl_ms <= 10_000,
        "the sweep took the mutex for {longest_ttl_ms} ms at a time"
    );
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&mutex)
        .query_async(&mut probe)
        .await
        .unwrap();
    assert_eq!(exists, 0, "the mutex is released after the sweep");
    drop(held);
    let _ = consumer.close().await;
    channel.queue_delete(&queue).await.unwrap();
    let _ = sweeper.close().await;
    let _ = holder.close().await;
}
