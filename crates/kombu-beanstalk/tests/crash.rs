//! A consumer killed with SIGKILL loses nothing: the server gives its
//! reserved jobs back when its connection closes. A consumer that hangs
//! (SIGSTOP: connection open, no answer) loses its jobs after their ttr.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{child_mode, connect_with, next_line, say, signal, spawn_child, wait_for};
use futures::StreamExt;
use kombu_core::{ConnectionOptions, Consumer, Producer, PublishOptions, Queue};
use serde_json::json;

const TOTAL: u64 = 300;
const KILL_AFTER: usize = 100;

/// `queue` with a delivery limit of 1, dead-lettered to `<queue>.dead`.
fn limited(queue: &str) -> Queue {
    Queue::new(queue)
        .delivery_limit(1)
        .dead_letter_exchange("")
        .dead_letter_routing_key(format!("{queue}.dead"))
}

/// Child side: consume, print `GOT n`, ack, print `ACK n` (or, in `hold`
/// mode, print `HELD n` and never ack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_consumer() {
    let Some(mode) = child_mode() else { return };
    let queue = std::env::var("KOMBU_BEANSTALK_QUEUE").expect("queue");
    let ttr = std::env::var("KOMBU_BEANSTALK_TTR").unwrap_or_else(|_| "120".into());
    let ttr: u64 = ttr.parse().unwrap();
    let conn = connect_with(ConnectionOptions::new().transport_option("ttr", ttr)).unwrap();
    let declared = if mode == "hold-limited" {
        limited(&queue)
    } else {
        Queue::new(&queue)
    };
    let mut c = Consumer::builder(&conn)
        .queue(declared)
        .prefetch_count(10)
        .build()
        .await
        .unwrap();
    say("READY");
    let mut held = Vec::new();
    while let Some(m) = c.next().await {
        let m = m.unwrap();
        let n: u64 = m.decode().unwrap();
        if mode.starts_with("hold") {
            say(&format!("HELD {n}"));
            held.push(m);
            continue;
        }
        say(&format!("GOT {n}"));
        tokio::time::sleep(Duration::from_millis(3)).await;
        m.ack().await.unwrap();
        say(&format!("ACK {n}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_consumer_loses_nothing() {
    if child_mode().is_some() {
        return;
    }
    let Some(conn) = connect_with(ConnectionOptions::new()) else {
        return;
    };
    let q = Queue::new(kombu_testkit::unique("crash-q"));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let producer = Producer::new(&conn);
    for n in 0..TOTAL {
        producer
            .publish(json!(n), PublishOptions::new().routing_key(&q.name))
            .await
            .unwrap();
    }
    let (mut child, mut lines) = spawn_child(
        "child_consumer",
        "ack",
        &[("KOMBU_BEANSTALK_QUEUE", &q.name)],
    );
    let mut got = BTreeSet::new();
    let mut acked = BTreeSet::new();
    while acked.len() < KILL_AFTER {
        let line = next_line(&mut lines, Duration::from_secs(30))
            .await
            .expect("child stopped talking");
        if let Some(n) = line.strip_prefix("GOT ") {
            got.insert(n.parse::<u64>().unwrap());
        } else if let Some(n) = line.strip_prefix("ACK ") {
            acked.insert(n.parse::<u64>().unwrap());
        }
    }
    signal(child.id().expect("child pid"), "KILL");
    // Whatever the child printed before it died.
    while let Some(line) = next_line(&mut lines, Duration::from_secs(5)).await {
        if let Some(n) = line.strip_prefix("GOT ") {
            got.insert(n.parse::<u64>().unwrap());
        } else if let Some(n) = line.strip_prefix("ACK ") {
            acked.insert(n.parse::<u64>().unwrap());
        }
    }
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "the child was killed");

    // The parent takes the rest.
    let mut c = Consumer::builder(&conn)
        .queue(q.clone())
        .prefetch_count(50)
        .build()
        .await
        .unwrap();
    let mut parent: HashMap<u64, bool> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = |parent: &HashMap<u64, bool>| acked.union(&parent.keys().copied().collect()).count();
    while seen(&parent) < TOTAL as usize && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(3), c.next()).await {
            Ok(Some(m)) => {
                let m = m.unwrap();
                let n: u64 = m.decode().unwrap();
                parent.insert(n, m.redelivered());
                m.ack().await.unwrap();
            }
            _ => {
                // Nothing more: the in-flight ack of the kill moment may
                // have completed without its ACK line.
                if seen(&parent) + 1 >= TOTAL as usize {
                    break;
                }
            }
        }
    }
    let in_flight: BTreeSet<u64> = got.difference(&acked).copied().collect();
    let missing: Vec<u64> = (0..TOTAL)
        .filter(|n| !acked.contains(n) && !parent.contains_key(n))
        .collect();
    let duplicates = parent.keys().filter(|n| acked.contains(n)).count();
    let redelivered = parent.values().filter(|r| **r).count();
    println!(
        "sigkill: published {TOTAL}, child acked {}, child had {} in flight (GOT without ACK), \
         parent received {} ({} flagged redelivered), acked twice {duplicates}, \
         missing {} {:?} (allowed: the one whose ack completed as the child died)",
        acked.len(),
        in_flight.len(),
        parent.len(),
        redelivered,
        missing.len(),
        missing
    );
    // Acks are coalesced: those the child made in its last flush interval
    // (at most one batch, half its prefetch) may not have reached
    // beanstalkd, and those jobs come again: a redelivery, never a loss.
    assert!(
        duplicates <= 64,
        "{duplicates} acked jobs were delivered again: more than one flush"
    );
    assert!(
        missing.len() <= 1 && missing.iter().all(|n| in_flight.contains(n)),
        "lost messages: {missing:?}"
    );
    for n in &in_flight {
        if let Some(redelivered) = parent.get(n) {
            assert!(
                redelivered,
                "message {n} came back without the redelivered flag"
            );
        }
    }
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);
    channel.queue_delete(&q.name).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_consumer_loses_its_jobs_after_ttr() {
    if child_mode().is_some() {
        return;
    }
    // The ttr is a property of the job, set by its publisher.
    let Some(conn) = connect_with(ConnectionOptions::new().transport_option("ttr", 2)) else {
        return;
    };
    let q = Queue::new(kombu_testkit::unique("hung-q"));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let (mut child, mut lines) = spawn_child(
        "child_consumer",
        "hold",
        &[
            ("KOMBU_BEANSTALK_QUEUE", &q.name),
            ("KOMBU_BEANSTALK_TTR", "2"),
        ],
    );
    wait_for(&mut lines, "READY").await;
    let producer = Producer::new(&conn);
    for n in 0..5u64 {
        producer
            .publish(json!(n), PublishOptions::new().routing_key(&q.name))
            .await
            .unwrap();
    }
    for _ in 0..5 {
        let line = next_line(&mut lines, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(line.starts_with("HELD "), "{line}");
    }
    let pid = child.id().unwrap();
    signal(pid, "STOP");
    let stopped = Instant::now();
    let mut c = Consumer::builder(&conn)
        .queue(q.clone())
        .prefetch_count(10)
        .build()
        .await
        .unwrap();
    // While the child hangs (connection open), its jobs come back once
    // their ttr (2 s) runs out -- but beanstalkd 1.12 stops timing out the
    // reservations of a connection that got DEADLINE_SOON while blocked in
    // a reserve (upstream issues 262 and 380), so some may stay reserved
    // until the connection closes. Count what came back, then kill it.
    let mut back = BTreeSet::new();
    let hung_wait = Instant::now() + Duration::from_secs(6);
    while back.len() < 5 && Instant::now() < hung_wait {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), c.next()).await {
            let m = m.unwrap();
            assert!(m.redelivered());
            back.insert(m.decode::<u64>().unwrap());
            m.ack().await.unwrap();
        }
    }
    let after_ttr = back.len();
    let hung_for = stopped.elapsed();
    signal(pid, "KILL");
    let _ = child.wait().await;
    while back.len() < 5 {
        let m = kombu_testkit::recv(&mut c).await.unwrap();
        assert!(m.redelivered());
        back.insert(m.decode::<u64>().unwrap());
        m.ack().await.unwrap();
    }
    println!(
        "hung consumer (SIGSTOP, ttr 2 s): {after_ttr} of 5 jobs came back within {hung_for:?} \
         while it hung, the other {} when it was killed; lost 0",
        5 - after_ttr
    );
    assert_eq!(back, (0..5).collect());
    channel.queue_delete(&q.name).await.unwrap();
    conn.close().await.unwrap();
}

/// A job whose consumers die holding it counts those deliveries
/// (beanstalkd's `reserves`): in a queue with `x-delivery-limit` 1, two
/// SIGKILLed consumers use the limit up and the message is dead-lettered
/// instead of delivered a third time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_count_towards_the_delivery_limit() {
    if child_mode().is_some() {
        return;
    }
    let Some(conn) = connect_with(ConnectionOptions::new()) else {
        return;
    };
    let queue = kombu_testkit::unique("crash-limit");
    let dead = Queue::new(format!("{queue}.dead"));
    let channel = conn.channel().await.unwrap();
    dead.declare(channel.as_ref()).await.unwrap();
    limited(&queue).declare(channel.as_ref()).await.unwrap();
    Producer::new(&conn)
        .publish(json!(7u64), PublishOptions::new().routing_key(&queue))
        .await
        .unwrap();
    for round in 1..=2 {
        let (mut child, mut lines) = spawn_child(
            "child_consumer",
            "hold-limited",
            &[("KOMBU_BEANSTALK_QUEUE", &queue)],
        );
        wait_for(&mut lines, "HELD 7").await;
        signal(child.id().unwrap(), "KILL");
        let _ = child.wait().await;
        println!("consumer {round} held the job and was killed");
    }
    // The killed connections gave the job back at once; a third delivery
    // would be its second return.
    let mut c = Consumer::builder(&conn)
        .queue(limited(&queue))
        .prefetch_count(1)
        .build()
        .await
        .unwrap();
    let third = tokio::time::timeout(Duration::from_secs(3), c.next()).await;
    assert!(third.is_err(), "delivered a third time past its limit of 1");
    let mut d = Consumer::builder(&conn)
        .queue(dead.clone())
        .prefetch_count(1)
        .build()
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), d.next())
        .await
        .expect("dead-lettered within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(m.decode::<u64>().unwrap(), 7);
    m.ack().await.unwrap();
    drop((c, d));
    for name in [queue.as_str(), dead.name.as_str()] {
        channel.queue_delete(name).await.unwrap();
    }
    conn.close().await.unwrap();
}
