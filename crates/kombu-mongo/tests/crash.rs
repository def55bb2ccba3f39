//! A consumer killed with SIGKILL loses nothing: the messages it held come
//! back when their leases lapse.
//!
//! The consumer is this test binary run again with `KOMBU_MONGO_CRASH_CHILD`
//! set: `crash_child` then consumes, acks a few messages, holds the rest
//! unacked and waits to be killed. Without the variable `crash_child`
//! returns at once.

mod support;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Consumer, Producer, PublishOptions, Queue, TransportOptions};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use support::*;

const CHILD_ENV: &str = "KOMBU_MONGO_CRASH_CHILD";
/// Set for a child that publishes its own messages while its consumer
/// waits (each handed over, stored leased to it).
const HANDOFF_ENV: &str = "KOMBU_MONGO_CRASH_HANDOFF";
/// Set for a child that holds the first message it gets and waits.
const HOLD_ONE_ENV: &str = "KOMBU_MONGO_CRASH_HOLD_ONE";
const PUBLISHED: usize = 30;
const CHILD_ACKS: usize = 5;
const CHILD_HOLDS: usize = 10;
/// Short leases so the test does not wait a minute.
const LEASE_SECS: f64 = 2.0;

fn lease_options() -> TransportOptions {
    TransportOptions::new().set("lease_timeout", LEASE_SECS)
}

/// The consumer process (does nothing unless run by `sigkilled_consumer_loses_nothing`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (url, queue) = spec.split_once('|').expect("url|queue");
    let conn = connection(url, lease_options());
    let hold_one = std::env::var(HOLD_ONE_ENV).is_ok();
    let mut consumer = Consumer::builder(&conn)
        .queue(if hold_one {
            limited(queue)
        } else {
            Queue::new(queue)
        })
        .prefetch_count(CHILD_HOLDS as u16)
        .build()
        .await
        .expect("consumer");
    let mut held = Vec::new();
    if hold_one {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a message within 30 s")
            .expect("stream open")
            .expect("message");
        let id: String = message.decode().expect("body");
        println!("HELD {id}");
        println!("WAITING");
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(message);
        return;
    }
    if std::env::var(HANDOFF_ENV).is_ok() {
        // Publish each message itself while its consumer waits: handed over.
        let producer = Producer::new(&conn);
        for i in 0..CHILD_HOLDS {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let id = format!("h{i}");
            producer
                .publish(json!(id), PublishOptions::new().routing_key(queue))
                .await
                .expect("publish");
            let message = tokio::time::timeout(Duration::from_secs(30), consumer.next())
                .await
                .expect("a message within 30 s")
                .expect("stream open")
                .expect("message");
            let id: String = message.decode().expect("body");
            println!("HELD {id}");
            held.push(message);
        }
        let backend = conn
            .extension::<kombu_mongo::MongoBackend>()
            .await
            .expect("backend");
        println!("HANDED {}", backend.handed_over());
        println!("WAITING");
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(held);
        return;
    }
    for i in 0..CHILD_ACKS + CHILD_HOLDS {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a message within 30 s")
            .expect("stream open")
            .expect("message");
        let id: String = message.decode().expect("body");
        if i < CHILD_ACKS {
            message.ack().await.expect("ack");
            println!("ACKED {id}");
        } else {
            println!("HELD {id}");
            held.push(message);
        }
    }
    println!("WAITING");
    // Hold everything until SIGKILL.
    tokio::time::sleep(Duration::from_secs(120)).await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_consumer_loses_nothing() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let Some(base) = base_url() else { return };
    let database = fresh_database("kcrash");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let queue = "crashq";
    let conn = connection(&url, lease_options());
    let channel = conn.channel().await.unwrap();
    Queue::new(queue).declare(channel.as_ref()).await.unwrap();
    for i in 0..PUBLISHED {
        Producer::new(&conn)
            .publish(
                json!(format!("m{i}")),
                PublishOptions::new().routing_key(queue),
            )
            .await
            .unwrap();
    }

    let killed = run_and_kill_child(&url, queue, false).await;
    let (acked, held) = (killed.acked, killed.held);
    let stored = documents(&raw, "messages").await.len();

    // Everything not acked comes back: the held ones once their leases lapse.
    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(queue))
        .prefetch_count(10)
        .build()
        .await
        .unwrap();
    let mut recovered = HashSet::new();
    let mut redelivered = 0;
    let expected = PUBLISHED - acked.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while recovered.len() < expected && tokio::time::Instant::now() < deadline {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        else {
            continue;
        };
        let message = message.unwrap();
        let id: String = message.decode().unwrap();
        if message.redelivered() {
            redelivered += 1;
        }
        assert!(
            !acked.contains(&id),
            "{id} was acked by the child, yet delivered again"
        );
        recovered.insert(id);
        message.ack().await.unwrap();
    }
    let lost = PUBLISHED - acked.len() - recovered.len();
    println!(
        "published {PUBLISHED}, acked by the child {}, held by the child at SIGKILL {}, \
         stored after the kill {stored}, recovered {} ({redelivered} flagged redelivered), lost {lost}",
        acked.len(),
        held.len(),
        recovered.len(),
    );
    assert_eq!(acked.len(), CHILD_ACKS);
    assert_eq!(held.len(), CHILD_HOLDS);
    assert_eq!(
        stored,
        PUBLISHED - CHILD_ACKS,
        "nothing deleted before its ack"
    );
    assert_eq!(lost, 0, "messages lost");
    assert!(
        held.iter().all(|id| recovered.contains(id)),
        "every held message recovered"
    );
    assert_eq!(
        redelivered, CHILD_HOLDS,
        "held messages come back flagged redelivered"
    );
    let _ = conn.close().await;
    drop_database(&raw).await;
}

/// What a killed child reported.
struct Killed {
    acked: HashSet<String>,
    held: HashSet<String>,
    handed: Option<u64>,
}

/// `queue` with a delivery limit of 1, dead-lettered to `<queue>.dead`.
fn limited(queue: &str) -> Queue {
    Queue::new(queue)
        .delivery_limit(1)
        .dead_letter_exchange("")
        .dead_letter_routing_key(format!("{queue}.dead"))
}

/// Run `crash_child` on `queue` (handing over its own publishes when
/// `handoff`), wait until it holds its messages, SIGKILL it.
async fn run_and_kill_child(url: &str, queue: &str, handoff: bool) -> Killed {
    run_and_kill(url, queue, if handoff { Some(HANDOFF_ENV) } else { None }).await
}

/// Run `crash_child` on `queue` in the mode `mode` names (an env var set
/// to 1), wait until it holds its messages, SIGKILL it.
async fn run_and_kill(url: &str, queue: &str, mode: Option<&str>) -> Killed {
    let exe = std::env::current_exe().unwrap();
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{url}|{queue}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(mode) = mode {
        command.env(mode, "1");
    }
    let mut child = command.spawn().expect("child consumer");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = HashSet::new();
    let mut held = HashSet::new();
    let mut handed = None;
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest may print "test crash_child ... " before the first line.
            let after = |tag: &str| line.find(tag).map(|at| line[at + tag.len()..].to_owned());
            if let Some(id) = after("ACKED ") {
                acked.insert(id);
            } else if let Some(id) = after("HELD ") {
                held.insert(id);
            } else if let Some(n) = after("HANDED ") {
                handed = n.trim().parse().ok();
            } else if line.ends_with("WAITING") {
                return;
            }
        }
        panic!("the child consumer ended before holding its messages");
    })
    .await;
    assert!(waited.is_ok(), "child consumer not ready within 60 s");
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "the child was killed");
    Killed {
        acked,
        held,
        handed,
    }
}

/// Messages a killed consumer's transport published and had handed over
/// to its own waiting consumer come back too (they were stored leased).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_consumer_loses_no_handed_over_message() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let Some(base) = base_url() else { return };
    let database = fresh_database("kcrashho");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let queue = "crashhq";
    let conn = connection(&url, lease_options());
    let channel = conn.channel().await.unwrap();
    Queue::new(queue).declare(channel.as_ref()).await.unwrap();
    let killed = run_and_kill_child(&url, queue, true).await;
    let handed = killed.handed.expect("the child reported its handovers");
    assert!(handed >= 1, "no publish was handed over (handed {handed})");
    assert_eq!(killed.held.len(), CHILD_HOLDS);
    assert_eq!(
        documents(&raw, "messages").await.len(),
        CHILD_HOLDS,
        "every held message is stored"
    );
    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(queue))
        .prefetch_count(10)
        .build()
        .await
        .unwrap();
    let mut recovered = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while recovered.len() < CHILD_HOLDS && tokio::time::Instant::now() < deadline {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        else {
            continue;
        };
        let message = message.unwrap();
        assert!(
            message.redelivered(),
            "a held message comes back redelivered"
        );
        recovered.insert(message.decode::<String>().unwrap());
        message.ack().await.unwrap();
    }
    println!(
        "child held {} ({handed} handed over), recovered {}",
        killed.held.len(),
        recovered.len()
    );
    assert_eq!(
        recovered, killed.held,
        "every handed-over message recovered"
    );
    consumer.close().await.unwrap();
    let _ = conn.close().await;
    drop_database(&raw).await;
}

/// A message whose consumers die holding it counts those deliveries: in a
/// queue with `x-delivery-limit` 1, two SIGKILLed consumers (each
/// delivery's lease lapsed) use the limit up, and the message is
/// dead-lettered instead of delivered a third time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_count_towards_the_delivery_limit() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let Some(base) = base_url() else { return };
    let database = fresh_database("kcrashdl");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let queue = "crashlq";
    let dead = format!("{queue}.dead");
    let conn = connection(&url, lease_options());
    let channel = conn.channel().await.unwrap();
    Queue::new(&dead).declare(channel.as_ref()).await.unwrap();
    limited(queue).declare(channel.as_ref()).await.unwrap();
    Producer::new(&conn)
        .publish(json!("poison"), PublishOptions::new().routing_key(queue))
        .await
        .unwrap();
    for round in 1..=2 {
        let killed = run_and_kill(&url, queue, Some(HOLD_ONE_ENV)).await;
        let held: Vec<_> = killed.held.into_iter().collect();
        assert_eq!(held, ["poison"], "consumer {round} held the message");
    }
    // The third delivery would be its second return: over the limit.
    let mut consumer = Consumer::builder(&conn)
        .queue(limited(queue))
        .build()
        .await
        .unwrap();
    let third =
        tokio::time::timeout(Duration::from_secs_f64(LEASE_SECS * 3.0), consumer.next()).await;
    assert!(
        third.is_err(),
        "delivered a third time: {:?}",
        third.map(|m| m.map(|m| m.map(|m| m.decode::<String>())))
    );
    consumer.close().await.unwrap();
    let mut dead_consumer = Consumer::builder(&conn)
        .queue(Queue::new(&dead))
        .build()
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), dead_consumer.next())
        .await
        .expect("dead-lettered within 10 s")
        .expect("stream open")
        .expect("message");
    assert_eq!(message.decode::<String>().unwrap(), "poison");
    message.ack().await.unwrap();
    dead_consumer.close().await.unwrap();
    let _ = conn.close().await;
    drop_database(&raw).await;
}
