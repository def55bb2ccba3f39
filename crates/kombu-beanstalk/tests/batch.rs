//! Batch publishing and batch acks on the server of
//! `KOMBU_TEST_BEANSTALK_URL`: `Producer::publish_many` stores each message
//! once, in order, a large one (stored in chunks) in its turn; coalesced
//! acks of several consumers delete every job.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_beanstalk::protocol::Conn;
use kombu_core::{
    Connection, Consumer, Message, Producer, PublishOptions, Queue, Registry, PUBLISH_MANY_WINDOW,
};
use kombu_testkit::unique;
use serde_json::{json, Value};

fn connect() -> Option<(Connection, String)> {
    let url = kombu_testkit::test_url("beanstalk")?;
    let mut registry = Registry::new();
    kombu_beanstalk::register(&mut registry);
    let conn = Connection::with_registry(&url, Arc::new(registry)).expect("beanstalk URL");
    Some((conn, url))
}

/// A protocol connection to the same server, to look at the tubes.
async fn raw(url: &str) -> Conn {
    let url = kombu_core::BrokerUrl::parse(url).expect("beanstalk URL");
    let host = url.hostname().unwrap_or("127.0.0.1").to_owned();
    Conn::connect(
        &host,
        url.port().unwrap_or(11300),
        Some(Duration::from_secs(5)),
    )
    .await
    .expect("connect")
}

async fn next(consumer: &mut Consumer) -> Message {
    tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("a message within 30 s")
        .expect("consumer open")
        .expect("a message")
}

/// 600 messages, one of them larger than beanstalkd's max-job-size: each
/// is stored once and delivered in publication order within its batch; the acks (coalesced
/// into pipelined deletes) leave no job behind, ready or reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_many_stores_each_message_once_in_order() {
    const COUNT: u64 = 600;
    const LARGE: u64 = 300;
    let Some((conn, url)) = connect() else { return };
    let q = Queue::new(unique("batch-q"));
    let producer = Producer::new(&conn);
    let pad = "x".repeat(100_000);
    let bodies = (0..COUNT).map(|n| {
        if n == LARGE {
            json!({"n": n, "pad": pad})
        } else {
            json!({ "n": n })
        }
    });
    let results = producer
        .publish_many(
            bodies,
            PublishOptions::new()
                .routing_key(&q.name)
                .declare(q.clone()),
        )
        .await;
    assert_eq!(results.len() as u64, COUNT);
    for result in results {
        result.unwrap();
    }
    let channel = conn.channel().await.unwrap();
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), COUNT);

    let mut consumer = Consumer::builder(&conn)
        .queue(q.clone())
        .prefetch_count(100)
        .build()
        .await
        .unwrap();
    let mut received = Vec::new();
    for _ in 0..COUNT {
        let message = next(&mut consumer).await;
        let body: Value = message.decode().unwrap();
        let n = body["n"].as_u64().unwrap();
        if n == LARGE {
            assert_eq!(body["pad"].as_str().map(str::len), Some(100_000));
        }
        received.push(n);
        message.ack().await.unwrap();
    }
    // In order within each batch the producer hands over (it has two
    // under way at once, on two connections: the batch behind the large
    // message may land before the end of the one holding it).
    let window = PUBLISH_MANY_WINDOW as u64;
    for batch in 0..COUNT.div_ceil(window) {
        let of_batch: Vec<u64> = received
            .iter()
            .copied()
            .filter(|n| n / window == batch)
            .collect();
        let expected: Vec<u64> = (batch * window..COUNT.min((batch + 1) * window)).collect();
        assert_eq!(of_batch, expected, "delivery order within batch {batch}");
    }

    // The acks go out in the background: wait until no job is left while
    // the connection (which would give reserved jobs back on closing) is
    // still open.
    let mut look = raw(&url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats = look.stats_tube(&q.name).await.unwrap().unwrap_or_default();
        let left = stats.number("current-jobs-ready") + stats.number("current-jobs-reserved");
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} acked jobs still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(consumer);
    channel.queue_delete(&q.name).await.unwrap();
    conn.close().await.unwrap();
}

/// Two consumers of one connection (two reserving connections) ack in
/// batches: each batch deletes on the connection that reserved its jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_acks_of_two_consumers_delete_every_job() {
    const COUNT: u64 = 200;
    let Some((conn, url)) = connect() else { return };
    let q = Queue::new(unique("batch-acks"));
    let producer = Producer::new(&conn);
    for result in producer
        .publish_many(
            (0..COUNT).map(|n| json!({ "n": n })),
            PublishOptions::new()
                .routing_key(&q.name)
                .declare(q.clone()),
        )
        .await
    {
        result.unwrap();
    }
    let consume = |conn: Connection, q: Queue| async move {
        let mut consumer = Consumer::builder(&conn)
            .queue(q)
            .prefetch_count(20)
            .build()
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
        {
            let message = message.unwrap();
            seen.push(message.decode::<Value>().unwrap()["n"].as_u64().unwrap());
            message.ack().await.unwrap();
        }
        seen
    };
    let (a, b) = tokio::join!(
        consume(conn.clone(), q.clone()),
        consume(conn.clone(), q.clone())
    );
    let mut all: Vec<u64> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..COUNT).collect::<Vec<_>>(), "each once");
    let stats = raw(&url)
        .await
        .stats_tube(&q.name)
        .await
        .unwrap()
        .unwrap_or_default();
    assert_eq!(stats.number("current-jobs-ready"), 0);
    assert_eq!(stats.number("current-jobs-reserved"), 0);
    let channel = conn.channel().await.unwrap();
    channel.queue_delete(&q.name).await.unwrap();
    conn.close().await.unwrap();
}
