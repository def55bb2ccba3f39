//! Consumers killed with SIGKILL between fetch and ack lose nothing.
//!
//! The test binary re-runs itself as the consumer (`child_consumer` with
//! `KOMBU_REDIS_CHILD` set): it consumes, prints `acked <n>` after each
//! ack, and is killed at random moments, many times. Afterwards a consumer
//! with a short visibility_timeout restores what the dead ones held; every
//! message is then delivered (acked by a child or received at the end).

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{base_url, connect, prefix};
use futures::StreamExt;
use kombu_core::{Consumer, Producer, PublishOptions, Queue};
use kombu_testkit::{unique, ChildLines};
use serde_json::json;

const CHILD_ENV: &str = "KOMBU_REDIS_CHILD";

/// The consumer process. Without `KOMBU_REDIS_CHILD` it is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_consumer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(4, '|');
    let (mode, url, prefix, queue) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    );
    let conn = connect(&url, &prefix, &[]);
    let declared = if mode == "hold-limited" {
        limited(&queue)
    } else {
        Queue::new(&queue)
    };
    let mut c = Consumer::builder(&conn)
        .queue(declared)
        .prefetch_count(5)
        .build()
        .await
        .unwrap();
    println!("ready");
    while let Some(m) = c.next().await {
        let m = m.unwrap();
        let n: u64 = m.decode().unwrap();
        if mode.starts_with("hold") {
            println!("holding {n}");
            std::mem::forget(m);
            continue;
        }
        println!("got {n}");
        tokio::time::sleep(Duration::from_millis(n % 3)).await;
        m.ack().await.unwrap();
        println!("acked {n}");
    }
}

/// `queue` with a delivery limit of 1, dead-lettering to `<queue>.dead`.
fn limited(queue: &str) -> Queue {
    Queue::new(queue)
        .delivery_limit(1)
        .dead_letter_exchange("")
        .dead_letter_routing_key(format!("{queue}.dead"))
}

fn spawn_child(mode: &str, url: &str, prefix: &str, queue: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_consumer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{mode}|{url}|{prefix}|{queue}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("re-run the test binary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_fetch_and_ack_loses_nothing() {
    let Some(url) = base_url() else { return };
    let prefix = prefix("sigkill");
    let queue = unique("sigkill");
    const N: u64 = 400;
    const KILLS: usize = 25;
    let conn = connect(&url, &prefix, &[]);
    let p = Producer::new(&conn);
    for n in 0..N {
        p.publish(json!(n), PublishOptions::new().routing_key(&queue))
            .await
            .unwrap();
    }
    let mut acked = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut held_at_kill = Vec::new();
    let probe = redis::Client::open(url.as_str()).unwrap();
    let mut probe = probe.get_multiplexed_async_connection().await.unwrap();
    for round in 0..KILLS {
        let mut child = spawn_child("ack", &url, &prefix, &queue);
        let mut lines = ChildLines::new(child.stdout.take().unwrap());
        // Let it get going, then kill it mid-stream.
        let wait = 150 + (round as u64 * 37) % 250;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (mut got, mut done) = (Vec::new(), Vec::new());
        for line in lines.rest_within(Duration::from_secs(10)) {
            if let Some(n) = line
                .strip_prefix("got ")
                .and_then(|n| n.parse::<u64>().ok())
            {
                got.push(n);
            }
            if let Some(n) = line
                .strip_prefix("acked ")
                .and_then(|n| n.parse::<u64>().ok())
            {
                done.push(n);
            }
        }
        seen.extend(got);
        acked.extend(done);
        let held: u64 = redis::cmd("HLEN")
            .arg(format!("{prefix}unacked"))
            .query_async(&mut probe)
            .await
            .unwrap();
        held_at_kill.push(held);
    }
    // A survivor restores what the dead held (visibility_timeout 1 s).
    let survivor = connect(
        &url,
        &prefix,
        &[
            ("visibility_timeout", json!(1)),
            ("unacked_restore_interval", json!(0.2)),
        ],
    );
    let mut c = Consumer::builder(&survivor)
        .queue(Queue::new(&queue))
        .prefetch_count(50)
        .build()
        .await
        .unwrap();
    let mut received = BTreeSet::new();
    let mut duplicates = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let all: BTreeSet<u64> = (0..N).collect();
    loop {
        let left: u64 = redis::cmd("HLEN")
            .arg(format!("{prefix}unacked"))
            .query_async(&mut probe)
            .await
            .unwrap();
        let size = survivor
            .channel()
            .await
            .unwrap()
            .queue_size(&queue)
            .await
            .unwrap();
        let settled = acked.union(&received).count() == N as usize || (left == 0 && size == 0);
        if settled || tokio::time::Instant::now() > deadline {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(2), c.next()).await {
            Ok(Some(Ok(m))) => {
                let n: u64 = m.decode().unwrap();
                if acked.contains(&n) || !received.insert(n) {
                    duplicates += 1;
                }
                m.ack().await.unwrap();
            }
            Ok(Some(Err(e))) => panic!("{e}"),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    // A child killed after its ack but before printing `acked n`: the
    // message was taken ("got n") and its unacked entry is gone, so acked.
    let acked_unprinted: BTreeSet<u64> = seen
        .difference(&acked)
        .copied()
        .filter(|n| !received.contains(n))
        .collect();
    let delivered = acked.union(&received).count() + acked_unprinted.len();
    let lost: Vec<u64> = all
        .iter()
        .filter(|n| !seen.contains(n) && !received.contains(n) && !acked.contains(n))
        .copied()
        .collect();
    let killed_holding = held_at_kill.iter().filter(|h| **h > 0).count();
    println!(
        "SIGKILL test: {N} published, {KILLS} kills ({killed_holding} while holding unacked \
         messages, {} held in total), {} acked by children, {} received after, {duplicates} \
         redelivered twice (at-least-once), {} acked just before a kill, {delivered} delivered, {} lost",
        held_at_kill.iter().sum::<u64>(),
        acked.len(),
        received.len(),
        acked_unprinted.len(),
        lost.len()
    );
    assert!(
        killed_holding > 0,
        "no child died holding messages: the test proved nothing"
    );
    assert!(lost.is_empty(), "messages lost: {lost:?}");
    assert_eq!(delivered, N as usize, "messages unaccounted for");
    assert!(
        acked_unprinted.len() <= KILLS,
        "at most one ack per kill can go unprinted: {acked_unprinted:?}"
    );
    // Closing sends the survivor's coalesced acks still queued (an ack
    // returns once queued: docs/consumers.md), then nothing may be left.
    survivor.close().await.unwrap();
    let left: u64 = redis::cmd("HLEN")
        .arg(format!("{prefix}unacked"))
        .query_async(&mut probe)
        .await
        .unwrap();
    assert_eq!(left, 0, "unacked entries left behind");
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_consumer_dies_python_restores_after_visibility_timeout() {
    let Some(url) = base_url() else { return };
    let Some(py) = kombu_testkit::python_peer() else {
        return;
    };
    let prefix = prefix("rs-dies");
    let queue = unique("rs-dies");
    let conn = connect(&url, &prefix, &[]);
    let p = Producer::new(&conn);
    for n in 0..5u64 {
        p.publish(json!(n), PublishOptions::new().routing_key(&queue))
            .await
            .unwrap();
    }
    // A Rust child takes them all, acks none, and is killed.
    let mut child = spawn_child("hold", &url, &prefix, &queue);
    let mut lines = ChildLines::new(child.stdout.take().unwrap());
    lines.wait_for("ready", Duration::from_secs(30));
    for i in 0..5 {
        let line = lines.expect_within(Duration::from_secs(30), &format!("holding message {i}"));
        assert!(line.starts_with("holding "), "{line}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let acked: BTreeSet<u64> = BTreeSet::new();
    let script = format!(
        "{}\n{}",
        common::PY_PRELUDE,
        r#"
time.sleep(1.2)
with conn() as c:
    c.default_channel.qos.restore_visible(num=100)
got = drain([Queue(os.environ['Q'])], int(os.environ['N']), timeout=10)
print(json.dumps([[m['body'], m['redelivered']] for m in got]))
"#
    );
    let n_left = (5 - acked.len()).to_string();
    let out = kombu_testkit::run_python(
        &py,
        &script,
        &[
            ("URL", &url),
            ("PREFIX", &prefix),
            ("VT", "1"),
            ("Q", &queue),
            ("N", &n_left),
        ],
    )
    .await
    .unwrap();
    let got: Vec<(u64, bool)> = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let mut all: BTreeSet<u64> = got.iter().map(|(n, _)| *n).collect();
    all.extend(&acked);
    assert_eq!(
        all,
        (0..5).collect(),
        "python got {got:?}, rust acked {acked:?}"
    );
    assert!(
        got.iter().all(|(_, redelivered)| *redelivered),
        "restored from the dead consumer's unacked, flagged redelivered: {got:?}"
    );
    conn.close().await.unwrap();
}

/// Deliveries cut short by a crash count towards a queue's delivery
/// limit: a consumer process SIGKILLed holding the message, twice, and
/// the restored message is then over its limit of 1 and dead-lettered
/// (with `x-delivery-count` 2) instead of delivered a third time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_count_towards_the_delivery_limit() {
    let Some(url) = base_url() else { return };
    let prefix = prefix("limit");
    let queue = unique("crash-limit");
    let conn = connect(
        &url,
        &prefix,
        &[
            ("visibility_timeout", json!(1)),
            ("unacked_restore_interval", json!(0.2)),
        ],
    );
    let channel = conn.channel().await.unwrap();
    let dead = Queue::new(format!("{queue}.dead"));
    dead.declare(channel.as_ref()).await.unwrap();
    limited(&queue).declare(channel.as_ref()).await.unwrap();
    Producer::new(&conn)
        .publish(json!(7u64), PublishOptions::new().routing_key(&queue))
        .await
        .unwrap();
    for round in 0..2 {
        let mut child = spawn_child("hold-limited", &url, &prefix, &queue);
        let mut lines = ChildLines::new(child.stdout.take().unwrap());
        lines.wait_for("holding 7", Duration::from_secs(20));
        child.kill().unwrap(); // SIGKILL, the message unacked
        child.wait().unwrap();
        // Restored by `conn` once its 1 s lease is over.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while channel.queue_size(&queue).await.unwrap() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: the crashed consumer's message was not restored"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
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
    assert_eq!(m.headers().get("x-delivery-count"), Some(&json!(2)));
    m.ack().await.unwrap();
    for name in [queue.as_str(), dead.name.as_str()] {
        channel.queue_delete(name).await.unwrap();
    }
    conn.close().await.unwrap();
}
