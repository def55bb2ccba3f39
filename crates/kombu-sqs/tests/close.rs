//! A consumer that closes while its long poll is open on the server must
//! not strand the next message: SQS hands a message to a pending
//! `ReceiveMessage` even when the client that sent it has gone (a dropped
//! HTTP request does not un-receive anything), and that message then stays
//! invisible for the visibility timeout. So closing waits for the poll to
//! end and puts back whatever it took.
//!
//! Consumer A runs in a runtime of its own, shut down as soon as `close`
//! returns: what a process that exits after closing leaves behind.
//! Against moto (`KOMBU_TEST_SQS_URL`); skipped without it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::{
    Connection, ConnectionOptions, Consumer, Producer, PublishOptions, Queue, Registry,
    TransportOptions,
};
use kombu_testkit::{recv_within, test_url, unique};
use serde_json::json;

/// How long consumer B may take for the message: well under any
/// visibility timeout, well over a moto round trip.
const B_WAITS: Duration = Duration::from_secs(5);

/// A bound on anything else the test waits for.
const DEADLINE: Duration = Duration::from_secs(60);

fn connection(url: &str) -> Connection {
    let mut registry = Registry::new();
    kombu_sqs::register(&mut registry);
    // kombu's defaults: a 10 s long poll; the default 1800 s visibility
    // timeout is what a stranded message would wait.
    let options = ConnectionOptions::new().transport_options(TransportOptions::new());
    Connection::with_registry_options(url, options, Arc::new(registry)).expect("a usable URL")
}

async fn consumer(conn: &Connection, queue: &Queue) -> Consumer {
    tokio::time::timeout(
        DEADLINE,
        Consumer::builder(conn)
            .queue(queue.clone())
            .prefetch_count(10)
            .build(),
    )
    .await
    .expect("the consumer starts within the deadline")
    .expect("consumer")
}

async fn publish(conn: &Connection, queue: &Queue, body: &str) {
    tokio::time::timeout(
        DEADLINE,
        Producer::new(conn).publish(json!(body), PublishOptions::new().routing_key(&queue.name)),
    )
    .await
    .expect("publish within the deadline")
    .expect("publish");
}

/// Consumer A, in a runtime (a "process") of its own: consume `queue`
/// (first taking and acking `first` when given), stay idle for `idle`,
/// close, and end the runtime at once. Returns how long `close` took.
fn consumer_a(url: &str, queue: &Queue, first: Option<&str>, idle: Duration) -> Duration {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let took = runtime.block_on(async {
        let conn = connection(url);
        let mut a = consumer(&conn, queue).await;
        if let Some(body) = first {
            publish(&conn, queue, body).await;
            let m = recv_within(&mut a, B_WAITS, "the first message (consumer A)")
                .await
                .expect("consumer A gets the first message");
            assert_eq!(m.decode::<String>().unwrap(), body);
            m.ack().await.expect("ack");
        }
        // A's long poll is now open on the server.
        tokio::time::sleep(idle).await;
        let started = Instant::now();
        tokio::time::timeout(DEADLINE, a.close())
            .await
            .expect("close ends within the deadline")
            .expect("close");
        started.elapsed()
    });
    // What a process exit does: every task (a poll still running) is gone.
    runtime.shutdown_timeout(Duration::ZERO);
    took
}

/// Deletes the test's queue when the test ends, pass or fail.
struct Scratch {
    url: String,
    queue: Queue,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Runtime::new() else {
            return;
        };
        runtime.block_on(async {
            let conn = connection(&self.url);
            let _ = tokio::time::timeout(DEADLINE, async {
                let channel = conn.channel().await?;
                channel.queue_delete(&self.queue.name).await
            })
            .await;
            let _ = conn.close().await;
        });
    }
}

/// Publish right after A went, then B must get the message at once.
async fn b_gets_the_next_message(url: &str, queue: &Queue, body: &str) {
    let conn = connection(url);
    publish(&conn, queue, body).await;
    let started = Instant::now();
    let mut b = consumer(&conn, queue).await;
    let got = recv_within(&mut b, B_WAITS, "the message published after A closed")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: consumer A's long poll, left open when it closed, took it \
                 (it is invisible for the visibility timeout)"
            )
        });
    assert_eq!(got.decode::<String>().unwrap(), body);
    eprintln!("B got it in {:.2} s", started.elapsed().as_secs_f64());
    got.ack().await.expect("ack");
    tokio::time::timeout(DEADLINE, b.close())
        .await
        .expect("B closes within the deadline")
        .expect("close B");
    let _ = conn.close().await;
}

/// Declare the queue (so A's consumer polls an existing, empty queue).
async fn declared(url: &str, prefix: &str) -> Scratch {
    let conn = connection(url);
    let queue = Queue::new(unique(prefix));
    let scratch = Scratch {
        url: url.to_owned(),
        queue: queue.clone(),
    };
    let channel = conn.channel().await.expect("channel");
    tokio::time::timeout(DEADLINE, queue.declare(channel.as_ref()))
        .await
        .expect("declare within the deadline")
        .expect("declare");
    let _ = channel.close().await;
    let _ = conn.close().await;
    scratch
}

/// A consumer that starts and closes at once (`kombu consume --timeout
/// 0.1`): its first poll is open when it closes.
#[test]
fn a_consumer_closed_at_once_leaves_no_long_poll_behind() {
    let Some(url) = test_url("sqs") else { return };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let scratch = runtime.block_on(declared(&url, "close-fresh"));
    let took = consumer_a(&url, &scratch.queue, None, Duration::from_millis(500));
    eprintln!("A's close took {:.2} s", took.as_secs_f64());
    runtime.block_on(b_gets_the_next_message(&url, &scratch.queue, "next"));
    // A consumer's first poll is a short one, so closing it is quick.
    assert!(
        took < Duration::from_secs(4),
        "closing a consumer that had just started took {took:?}"
    );
}

/// A consumer that took a message and then sat idle into a full long poll
/// (`wait_time_seconds`, 10 s) before closing: close outlasts the
/// polling interval + 5 s the virtual channel waits by default.
#[test]
fn an_idle_consumer_closing_mid_poll_leaves_no_long_poll_behind() {
    let Some(url) = test_url("sqs") else { return };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let scratch = runtime.block_on(declared(&url, "close-idle"));
    let took = consumer_a(&url, &scratch.queue, Some("first"), Duration::from_secs(2));
    eprintln!("A's close took {:.2} s", took.as_secs_f64());
    runtime.block_on(b_gets_the_next_message(&url, &scratch.queue, "second"));
}
