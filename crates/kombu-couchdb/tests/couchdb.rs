//! CouchDB-specific behaviour, on the server of `KOMBU_TEST_COUCHDB_URL`:
//! consumers on separate connections racing on one queue, consumers of one
//! connection racing with quick acks, claims past leased messages, a late
//! lease write, a consumer killed with SIGKILL, declarations seen from
//! another connection, logins.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{
    Connection, ConnectionOptions, Consumer, ErrorKind, Exchange, Producer, PublishOptions, Queue,
    Registry, TransportOptions,
};
use kombu_testkit::{recv, test_url, unique};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Environment variable that turns [`child_consumer`] into a consumer.
const CHILD_QUEUE: &str = "KOMBU_COUCHDB_CHILD_QUEUE";
/// How long the child's leases last.
const CHILD_LEASE_SECS: f64 = 3.0;

fn registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    kombu_couchdb::register(&mut registry);
    Arc::new(registry)
}

/// A new connection (its own transport and HTTP client) to the test server.
fn connect_with(options: TransportOptions) -> Option<Connection> {
    let url = test_url("couchdb")?;
    let options = ConnectionOptions::new().transport_options(options);
    Some(Connection::with_registry_options(&url, options, registry()).expect("couchdb URL"))
}

fn connect() -> Option<Connection> {
    connect_with(TransportOptions::new())
}

async fn consumer(conn: &Connection, queue: &Queue, prefetch: u16) -> Consumer {
    Consumer::builder(conn)
        .queue(queue.clone())
        .prefetch_count(prefetch)
        .build()
        .await
        .expect("consumer")
}

async fn publish(conn: &Connection, queue: &str, body: serde_json::Value) {
    Producer::new(conn)
        .publish(body, PublishOptions::new().routing_key(queue))
        .await
        .expect("publish");
}

async fn delete_queue(conn: &Connection, queue: &str) {
    if let Ok(channel) = conn.channel().await {
        let _ = channel.queue_delete(queue).await;
    }
}

/// Four consumers on four connections race on one queue: each of 40
/// messages is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_consumers_get_each_message_once() {
    const CONSUMERS: usize = 4;
    const MESSAGES: usize = 40;
    let Some(producer) = connect() else { return };
    let q = Queue::new(unique("race-q"));
    let channel = producer.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    for i in 0..MESSAGES {
        publish(&producer, &q.name, json!(i)).await;
    }
    let seen = Arc::new(tokio::sync::Mutex::new(Vec::<usize>::new()));
    let mut tasks = Vec::new();
    for _ in 0..CONSUMERS {
        let conn = connect().unwrap();
        let q = q.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = consumer(&conn, &q, 3).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while seen.lock().await.len() < MESSAGES && tokio::time::Instant::now() < deadline {
                if let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(300), c.next()).await
                {
                    let m = m.expect("delivery");
                    let n: usize = m.decode().unwrap();
                    seen.lock().await.push(n);
                    m.ack().await.unwrap();
                }
            }
            drop(c);
            conn.close().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seen = seen.lock().await;
    let mut counts: HashMap<usize, usize> = HashMap::new();
    for n in seen.iter() {
        *counts.entry(*n).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(counts.len(), MESSAGES, "distinct messages received");
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);
    delete_queue(&producer, &q.name).await;
}

/// Eight consumers of one connection (one lease owner) race on one queue
/// and ack at once: each of 120 messages is delivered exactly once, and
/// the server is still up. This is the pattern that crashed pouchdb-server
/// 4.2 before leases carried a `lease_id`: two claims of the same message
/// in the same millisecond wrote the same document, and the late one,
/// arriving after the winner's ack, repeated a revision of a deleted
/// document (see `a_late_lease_write_after_an_ack_is_a_conflict`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_of_one_connection_race_with_quick_acks() {
    const CONSUMERS: usize = 8;
    const MESSAGES: usize = 120;
    let Some(conn) = connect() else { return };
    let q = Queue::new(unique("one-conn-race-q"));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    for i in 0..MESSAGES {
        publish(&conn, &q.name, json!(i)).await;
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let count = |seen: &std::sync::Mutex<Vec<usize>>| seen.lock().unwrap().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut tasks = Vec::new();
    for _ in 0..CONSUMERS {
        let (conn, q, seen) = (conn.clone(), q.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = consumer(&conn, &q, 2).await;
            while count(&seen) < MESSAGES && tokio::time::Instant::now() < deadline {
                if let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(300), c.next()).await
                {
                    let m = m.expect("delivery");
                    m.ack().await.expect("ack");
                    seen.lock().unwrap().push(m.decode().unwrap());
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let distinct: HashSet<usize> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), MESSAGES, "distinct messages received");
    assert_eq!(seen.len(), MESSAGES, "a message was delivered twice");
    // Still up: a new connection works.
    let after = connect().unwrap();
    after.channel().await.expect("the server is still up");
    delete_queue(&conn, &q.name).await;
}

/// A lease write that lost the race and arrives after the winner acked:
/// a conflict, which the claim takes as "someone else has it". The two
/// lease writes come from the same read by the same owner in the same
/// millisecond; they differ by their `lease_id`. (Without it they are the
/// same document, and pouchdb-server 4.2, whose revisions are a hash of
/// the content, crashes on the late one: it finds the new revision
/// already stored, on a document deleted since, and leaves a hole in its
/// bulkDocs results, `TypeError: Cannot read properties of undefined
/// (reading 'id')`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_lease_write_after_an_ack_is_a_conflict() {
    use kombu_couchdb::layout;
    let Some(url) = test_url("couchdb") else {
        return;
    };
    // The database the transport uses (made on connect).
    let conn = connect().unwrap();
    conn.channel().await.unwrap();
    let db = url::Url::parse(&url.replacen("couchdb://", "http://", 1)).unwrap();
    let http = reqwest::Client::new();
    let doc_url = |id: &str| {
        let mut u = db.clone();
        u.path_segments_mut().unwrap().push(id);
        u
    };
    let queue = unique("late-lease-q");
    let message = layout::message_doc(&queue, "0001-000000-test", &Default::default(), 0, 1);
    let id = message["_id"].as_str().unwrap().to_owned();
    let put = |doc: serde_json::Value| {
        let request = http
            .put(doc_url(&id))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&doc).unwrap());
        async move {
            let reply = request.send().await.expect("the server answers");
            let status = reply.status().as_u16();
            let bytes = reply.bytes().await.unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            (status, body)
        }
    };
    let (status, stored) = put(message.clone()).await;
    assert_eq!(status, 201, "{stored}");
    let mut read = message;
    read["_rev"] = stored["rev"].clone();
    let (mut winner, mut loser) = (read.clone(), read);
    layout::lease(&mut winner, "owner", 1, 1000, 2000);
    layout::lease(&mut loser, "owner", 2, 1000, 2000);
    let (status, leased) = put(winner).await;
    assert_eq!(status, 201, "{leased}");
    let rev = leased["rev"].as_str().unwrap().to_owned();
    let acked = http
        .delete(doc_url(&id))
        .query(&[("rev", rev)])
        .send()
        .await
        .unwrap();
    assert!(acked.status().is_success(), "{}", acked.status());
    let (status, late) = put(loser).await;
    assert_eq!(status, 409, "{late}");
    // And the server is still up.
    assert!(http
        .get(db.clone())
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
}

/// Claims page past messages leased by others: with `claim_batch=1` and
/// 12 of 20 messages held by a first connection, a second one gets the
/// other 8, in order, while the 12 stay leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_skip_leased_messages_page_by_page() {
    const MESSAGES: u64 = 20;
    const HELD: u64 = 12;
    let small_pages = || TransportOptions::new().set("claim_batch", 1);
    let Some(holder) = connect_with(small_pages()) else {
        return;
    };
    let q = Queue::new(unique("paging-q"));
    let channel = holder.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    for n in 0..MESSAGES {
        publish(&holder, &q.name, json!(n)).await;
    }
    let mut held = consumer(&holder, &q, HELD as u16).await;
    let mut holding = Vec::new();
    for _ in 0..HELD {
        holding.push(recv(&mut held).await.expect("a message to hold"));
    }
    let taken: Vec<u64> = holding.iter().map(|m| m.decode().unwrap()).collect();
    assert_eq!(taken, (0..HELD).collect::<Vec<_>>());
    // The holder's prefetch is full: nothing more goes to it.
    let wait = tokio::time::Instant::now() + Duration::from_secs(10);
    while channel.queue_size(&q.name).await.unwrap() != MESSAGES - HELD {
        assert!(tokio::time::Instant::now() < wait, "the holder took more");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let other = connect_with(small_pages()).unwrap();
    let mut c = consumer(&other, &q, 1).await;
    let mut got = Vec::new();
    for _ in HELD..MESSAGES {
        let m = recv(&mut c).await.expect("a message past the leased ones");
        got.push(m.decode::<u64>().unwrap());
        m.ack().await.unwrap();
    }
    assert_eq!(got, (HELD..MESSAGES).collect::<Vec<_>>());
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);
    for m in holding {
        m.ack().await.unwrap();
    }
    drop(c);
    drop(held);
    delete_queue(&holder, &q.name).await;
}

/// Not a test of its own: with `KOMBU_COUCHDB_CHILD_QUEUE` set (by
/// [`sigkilled_consumer_loses_nothing`]) it consumes that queue with short
/// leases, acks the even messages, holds the odd ones, reports each on
/// stdout and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_consumer() {
    let Ok(queue) = std::env::var(CHILD_QUEUE) else {
        return;
    };
    let conn =
        connect_with(TransportOptions::new().set("visibility_timeout", CHILD_LEASE_SECS)).unwrap();
    let mut c = consumer(&conn, &Queue::new(queue), 10).await;
    let mut held = Vec::new();
    loop {
        let m = recv(&mut c).await.expect("child delivery");
        let n: u64 = m.decode().unwrap();
        if n.is_multiple_of(2) {
            m.ack().await.unwrap();
            println!("CHILD ACKED {n}");
        } else {
            println!("CHILD HOLDS {n}");
            held.push(m);
        }
    }
}

/// A consumer killed with SIGKILL while holding messages: they come back
/// (flagged redelivered) once its leases run out; what it acked does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_consumer_loses_nothing() {
    const MESSAGES: u64 = 6;
    let Some(conn) = connect() else { return };
    let q = Queue::new(unique("sigkill-q"));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    for n in 0..MESSAGES {
        publish(&conn, &q.name, json!(n)).await;
    }
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_consumer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_QUEUE, &q.name)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("re-run the test binary as a consumer");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut acked, mut held) = (HashSet::new(), HashSet::new());
    let reading = async {
        while acked.len() + held.len() < MESSAGES as usize {
            let Some(line) = lines.next_line().await.unwrap() else {
                panic!("the child consumer exited early (acked {acked:?}, held {held:?})");
            };
            // The harness may print "test child_consumer ... " before.
            if let Some((_, n)) = line.split_once("CHILD ACKED ") {
                acked.insert(n.parse::<u64>().unwrap());
            } else if let Some((_, n)) = line.split_once("CHILD HOLDS ") {
                held.insert(n.parse::<u64>().unwrap());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the child consumer got every message");
    child.start_kill().unwrap(); // SIGKILL: no chance to release anything.
    child.wait().await.unwrap();
    assert_eq!(held, (0..MESSAGES).filter(|n| n % 2 == 1).collect());
    // Leased by a dead consumer: not ready, until the leases run out.
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);

    let mut c = consumer(&conn, &q, 10).await;
    let mut back = HashSet::new();
    while back.len() < held.len() {
        let m = recv(&mut c).await.expect("a held message comes back");
        let n: u64 = m.decode().unwrap();
        assert!(m.redelivered(), "message {n} not flagged redelivered");
        assert!(back.insert(n), "message {n} came back twice");
        m.ack().await.unwrap();
    }
    assert_eq!(back, held);
    // Nothing the child acked comes back.
    let extra = tokio::time::timeout(Duration::from_millis(1500), c.next()).await;
    assert!(extra.is_err(), "an acked message came back: {extra:?}");
    drop(c);
    delete_queue(&conn, &q.name).await;
}

/// Exchanges and bindings live in the database: a second connection routes
/// with them (topic and fanout), and sees an unbind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_are_shared_between_connections() {
    let Some(first) = connect() else { return };
    let second = connect().unwrap();
    let topic = Exchange::topic(unique("shared-topic"));
    let fanout = Exchange::fanout(unique("shared-fanout"));
    let logs = Queue::new(unique("shared-logs")).bind(&topic, "logs.#");
    let fan_a = Queue::new(unique("shared-fan-a")).bind(&fanout, "");
    let fan_b = Queue::new(unique("shared-fan-b")).bind(&fanout, "");
    let channel = first.channel().await.unwrap();
    for q in [&logs, &fan_a, &fan_b] {
        q.declare(channel.as_ref()).await.unwrap();
    }

    let p = Producer::new(&second);
    p.publish(
        json!("to logs"),
        PublishOptions::new()
            .exchange(topic.clone())
            .routing_key("logs.app.error"),
    )
    .await
    .unwrap();
    p.publish(
        json!("to all"),
        PublishOptions::new().exchange(fanout.clone()),
    )
    .await
    .unwrap();
    let other = second.channel().await.unwrap();
    assert_eq!(other.queue_size(&logs.name).await.unwrap(), 1);
    assert_eq!(other.queue_size(&fan_a.name).await.unwrap(), 1);
    assert_eq!(other.queue_size(&fan_b.name).await.unwrap(), 1);
    for q in [&fan_a, &fan_b] {
        let mut c = consumer(&first, q, 1).await;
        let m = recv(&mut c).await.unwrap();
        assert_eq!(m.decode::<String>().unwrap(), "to all");
        m.ack().await.unwrap();
    }

    // The exchange's type is shared too: redeclaring it as direct fails.
    let clash = other.exchange_declare(&Exchange::direct(&topic.name)).await;
    assert_eq!(clash.unwrap_err().kind(), ErrorKind::PreconditionFailed);

    // An unbind on the first connection stops routing on the second.
    channel
        .queue_unbind(&fan_b.name, &fan_b.bindings[0])
        .await
        .unwrap();
    p.publish(
        json!("to a only"),
        PublishOptions::new().exchange(fanout.clone()),
    )
    .await
    .unwrap();
    assert_eq!(other.queue_size(&fan_a.name).await.unwrap(), 1);
    assert_eq!(other.queue_size(&fan_b.name).await.unwrap(), 0);

    for q in [&logs, &fan_a, &fan_b] {
        delete_queue(&first, &q.name).await;
    }
    let _ = channel.exchange_delete(&topic.name).await;
    let _ = channel.exchange_delete(&fanout.name).await;
}

/// A login the server does not know is an authentication error that does
/// not show the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_login_is_an_auth_error() {
    let Some(url) = test_url("couchdb") else {
        return;
    };
    let url = url.replacen("couchdb://", "couchdb://nosuchuser:Sup3rS3cret@", 1);
    let conn = Connection::with_registry(&url, registry()).unwrap();
    let err = conn.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(!err.to_string().contains("Sup3rS3cret"), "{err}");
    assert!(!format!("{err:?}").contains("Sup3rS3cret"), "{err:?}");
}

/// A virtual host that is no CouchDB database name is refused, saying why.
#[tokio::test]
async fn bad_database_name_is_refused() {
    let conn = Connection::with_registry("couchdb://127.0.0.1:1/Not_Valid", registry()).unwrap();
    let err = conn.connect().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{err}");
    assert!(err.to_string().contains("Not_Valid"), "{err}");
}

/// Nothing listening: a connection error, not a hang.
#[tokio::test]
async fn no_server_is_a_connection_error() {
    let conn = Connection::with_registry("couchdb://127.0.0.1:1/kombu_test", registry()).unwrap();
    let err = conn.connect().await.unwrap_err();
    assert!(err.is_connection_error(), "{err}");
}

/// The core bounds each backend call by the request timeout (the
/// `operation_timeout` option wins over it).
#[tokio::test]
async fn operation_timeout_is_the_request_timeout() {
    use kombu_core::spi::VirtualBackend;
    let Some(conn) = connect_with(TransportOptions::new().set("request_timeout", 7)) else {
        return;
    };
    let backend = conn
        .extension::<kombu_couchdb::CouchBackend>()
        .await
        .unwrap();
    assert_eq!(backend.operation_timeout(), Some(Duration::from_secs(7)));
    conn.close().await.unwrap();
}

/// An extended lease makes a new revision of the message document: an ack
/// and a requeue of the delivery still work (they find the current
/// revision after the `409` on the receipt's), so the acked message never
/// comes back and the requeued one comes back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_lease_is_acked_and_requeued_at_its_new_revision() {
    let Some(conn) = connect_with(TransportOptions::new().set("visibility_timeout", 2)) else {
        return;
    };
    let queue = Queue::new(unique("extended"));
    let channel = conn.channel().await.unwrap();
    queue.declare(channel.as_ref()).await.unwrap();
    publish(&conn, &queue.name, json!("acked")).await;
    publish(&conn, &queue.name, json!("requeued")).await;
    let mut c = consumer(&conn, &queue, 2).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(recv(&mut c).await.unwrap());
    }
    got.sort_by_key(|m| m.decode::<String>().unwrap());
    let (acked, requeued) = (got.remove(0), got.remove(0));
    assert_eq!(acked.lease_duration(), Some(Duration::from_secs(2)));
    for m in [&acked, &requeued] {
        m.extend_lease(Duration::from_secs(4)).await.unwrap();
        m.extend_lease(Duration::from_secs(4)).await.unwrap();
    }
    acked.ack().await.unwrap();
    requeued.requeue().await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(2), c.next())
        .await
        .expect("the requeued message back before its extended lease ends")
        .unwrap()
        .unwrap();
    assert_eq!(back.decode::<String>().unwrap(), "requeued");
    back.ack().await.unwrap();
    // Past the extended lease: an ack that failed would show it again.
    let again = tokio::time::timeout(Duration::from_secs(6), c.next()).await;
    assert!(
        again.is_err(),
        "an acked message came back: {:?}",
        again.map(|m| m.map(|m| m.map(|m| m.decode::<String>())))
    );
    drop(c);
    delete_queue(&conn, &queue.name).await;
}
