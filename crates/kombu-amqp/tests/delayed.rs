//! Native delayed delivery (Celery 5.5+'s): the topology is the one Python
//! kombu declares, argument for argument; delays through a topic exchange;
//! what is refused.

mod common;

use common::Vhost;

use std::time::{Duration, Instant};

use kombu_amqp::delayed::{self, DelayQueueType};
use kombu_core::{
    Accept, ConnectionOptions, Consumer, ErrorKind, Exchange, Producer, PublishOptions, Queue,
};
use kombu_testkit::{python_peer, recv, recv_within, run_python, unique, Cleanup};
use serde_json::json;

/// Every queue, exchange and binding of the delay topology in `vhost`, as
/// `rabbitmqctl` lists them (sorted lines), leaving out what binds
/// destinations under `celery_delayed_delivery`.
fn topology_listing(vhost: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for args in [
        &[
            "list_queues",
            "name",
            "type",
            "durable",
            "auto_delete",
            "exclusive",
            "arguments",
        ][..],
        &[
            "list_exchanges",
            "name",
            "type",
            "durable",
            "auto_delete",
            "internal",
            "arguments",
        ],
        &[
            "list_bindings",
            "source_name",
            "source_kind",
            "destination_name",
            "destination_kind",
            "routing_key",
            "arguments",
        ],
    ] {
        let mut full = vec![args[0], "-p", vhost, "--no-table-headers", "--quiet"];
        full.extend_from_slice(&args[1..]);
        let out = common::rabbitmqctl(&full).expect("rabbitmqctl");
        lines.extend(
            out.lines()
                .filter(|l| l.starts_with("celery_delayed_"))
                .filter(|l| !l.starts_with("celery_delayed_delivery\texchange\t"))
                .filter(|l| !l.starts_with("celery_delayed_delivery\tqueue\t"))
                .map(|l| format!("{}: {}", args[0], sorted_arguments(l))),
        );
    }
    lines.sort();
    lines
}

/// A listing line with its last column (an argument list such as
/// `[{"x-b",1},{"x-a","v"}]`) in name order: lapin sends field tables in
/// name order, py-amqp in insertion order, and RabbitMQ lists them as
/// received (the order means nothing to it).
fn sorted_arguments(line: &str) -> String {
    let (head, last) = line.rsplit_once('\t').unwrap_or(("", line));
    let Some(inner) = last.strip_prefix("[{").and_then(|l| l.strip_suffix("}]")) else {
        return line.to_owned();
    };
    let mut items: Vec<&str> = inner.split("},{").collect();
    items.sort_unstable();
    format!("{head}\t[{{{}}}]", items.join("},{"))
}

const PY_DECLARE: &str = r#"
import os
from kombu import Connection
from kombu.transport.native_delayed_delivery import declare_native_delayed_delivery_exchanges_and_queues
with Connection(os.environ['URL']) as conn:
    declare_native_delayed_delivery_exchanges_and_queues(conn, os.environ['QTYPE'])
print('ok')
"#;

/// kombu 5.7's `declare_native_delayed_delivery_exchanges_and_queues` in
/// one fresh vhost and a Rust delayed publish in another make the same
/// queues (type, arguments), exchanges and bindings; each side then
/// redeclares over the other's without a `PRECONDITION_FAILED`; a
/// connection set for classic delay queues is told what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_the_one_kombu_declares() {
    let (Some(base), Some(python)) = (common::url(), python_peer()) else {
        return;
    };
    let creds = common::credentials(&base);
    let user = creds.split(':').next().unwrap().to_owned();
    let hp = common::host_port(&base);
    let tag = unique("kombu-delay");
    let Some(py_vhost) = Vhost::create(&format!("{tag}-py"), &user) else {
        return;
    };
    let rs_vhost = Vhost::create(&format!("{tag}-rs"), &user).unwrap();
    let py_url = format!("amqp://{creds}@{hp}/{}", py_vhost.0);
    let rs_url = format!("amqp://{creds}@{hp}/{}", rs_vhost.0);

    run_python(
        &python,
        PY_DECLARE,
        &[("URL", py_url.as_str()), ("QTYPE", "quorum")],
    )
    .await
    .unwrap();

    // Rust: the first delayed publish declares the topology.
    let conn = common::connection(&rs_url, ConnectionOptions::new());
    let channel = conn.channel().await.unwrap();
    let q = Queue::new("delay-topology-q");
    q.declare(channel.as_ref()).await.unwrap();
    let first = Instant::now();
    Producer::new(&conn)
        .publish(
            json!("later"),
            PublishOptions::new()
                .routing_key(&q.name)
                .delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    eprintln!(
        "first delayed publish in a fresh vhost (declares the 28 levels): {:?}",
        first.elapsed()
    );

    let from_python = topology_listing(&py_vhost.0);
    let from_rust = topology_listing(&rs_vhost.0);
    // 28 queues, 29 exchanges, 28 queue bindings + 28 exchange bindings.
    assert_eq!(from_python.len(), 28 + 29 + 56, "{from_python:#?}");
    let differ: Vec<_> = from_rust
        .iter()
        .zip(&from_python)
        .filter(|(r, p)| r != p)
        .collect();
    assert!(differ.is_empty(), "Rust vs Python: {differ:#?}");
    assert_eq!(from_rust.len(), from_python.len());
    let level = from_rust
        .iter()
        .find(|l| l.starts_with("list_queues: celery_delayed_27\t"))
        .unwrap();
    for part in [
        "quorum",
        r#"{"x-message-ttl",134217728000}"#,
        r#"{"x-dead-letter-exchange","celery_delayed_26"}"#,
        r#"{"x-dead-letter-strategy","at-least-once"}"#,
        r#"{"x-overflow","reject-publish"}"#,
    ] {
        assert!(level.contains(part), "{part} in {level}");
    }
    // The message waits in the level for 2048 s (the highest 1 of 3600).
    // RabbitMQ's queue counts are statistics, updated every few seconds:
    // look until it shows, for up to 20 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting = common::rabbitmqctl(&[
            "list_queues",
            "-p",
            &rs_vhost.0,
            "--no-table-headers",
            "--quiet",
            "name",
            "messages",
        ])
        .unwrap();
        if waiting.lines().any(|l| l == "celery_delayed_11\t1") {
            break;
        }
        assert!(Instant::now() < deadline, "{waiting}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The destination queue is bound under the delivery exchange.
    let bindings = common::rabbitmqctl(&[
        "list_bindings",
        "-p",
        &rs_vhost.0,
        "--no-table-headers",
        "--quiet",
        "source_name",
        "destination_name",
        "routing_key",
    ])
    .unwrap();
    assert!(
        bindings
            .lines()
            .any(|l| l == "celery_delayed_delivery\tdelay-topology-q\t#.delay-topology-q"),
        "{bindings}"
    );

    // Each side redeclares over the other's: equivalent, so no error.
    run_python(
        &python,
        PY_DECLARE,
        &[("URL", rs_url.as_str()), ("QTYPE", "quorum")],
    )
    .await
    .unwrap();
    let py_conn = common::connection(&py_url, ConnectionOptions::new());
    let py_channel = py_conn.channel().await.unwrap();
    delayed::declare_topology(py_channel.as_ref(), DelayQueueType::Quorum)
        .await
        .unwrap();

    // Classic delay queues over quorum ones: refused, and said why.
    let classic = common::connection(
        &format!("{py_url}?delayed_delivery_queue_type=classic"),
        ConnectionOptions::new(),
    );
    let err = Producer::new(&classic)
        .publish(
            json!("x"),
            PublishOptions::new()
                .routing_key("anything")
                .delay(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed, "{err}");
    assert!(
        err.to_string()
            .contains("delayed_delivery_queue_type=quorum"),
        "{err}"
    );
    for c in [classic, py_conn, conn] {
        c.close().await.unwrap();
    }
}

/// A message delayed 3 s (levels 1 and 0) to a topic exchange reaches a
/// queue bound with `delayed::bind_queue` no sooner than 3 s and within
/// 1.5 s after, with the delay digits in its routing key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_through_a_topic_exchange() {
    let Some(url) = common::url() else { return };
    let conn = common::connection(&url, ConnectionOptions::new());
    let channel = conn.channel().await.unwrap();
    let mut clean = Cleanup::new();
    let ex = Exchange::topic(clean.exchange(&unique("delay-topic")));
    let q = Queue::new(clean.queue(&unique("delay-topic-q"))).bind(&ex, "jobs.*");
    q.declare(channel.as_ref()).await.unwrap();
    delayed::bind_queue(channel.as_ref(), &q).await.unwrap();
    let sent = Instant::now();
    Producer::new(&conn)
        .publish(
            json!({"job": 1}),
            PublishOptions::new()
                .exchange(ex.clone())
                .routing_key("jobs.send")
                .delay(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    let mut consumer = Consumer::builder(&conn)
        .queue(q.clone())
        .declare(false)
        .accept(Accept::all())
        .build()
        .await
        .unwrap();
    let m = recv_within(
        &mut consumer,
        Duration::from_secs(15),
        "the delayed message",
    )
    .await
    .unwrap();
    let took = sent.elapsed();
    eprintln!("delayed 3 s through a topic exchange: delivered after {took:?}");
    m.ack().await.unwrap();
    assert_eq!(m.decode::<serde_json::Value>().unwrap(), json!({"job": 1}));
    assert!(took >= Duration::from_secs(3), "early: {took:?}");
    assert!(took <= Duration::from_millis(4500), "late: {took:?}");
    assert_eq!(
        m.delivery_info().routing_key,
        format!("{}1.1.jobs.send", "0.".repeat(26))
    );
    assert_eq!(m.delivery_info().exchange, delayed::DELIVERY_EXCHANGE);
    drop(consumer);
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

/// What a delayed publish refuses or drops: an expiration (it would leave
/// its delay queue early), a delay over 2^28 - 1 s, an empty routing key;
/// to the default exchange for a missing queue it is dropped like an
/// undelayed message, or `Rejected` when mandatory. The channel stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_publish_limits() {
    let Some(url) = common::url() else { return };
    let conn = common::connection(&url, ConnectionOptions::new());
    let p = Producer::new(&conn);
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("delay-limits-q")));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let delayed = || {
        PublishOptions::new()
            .routing_key(&q.name)
            .delay(Duration::from_secs(2))
    };
    let err = p
        .publish(json!(1), delayed().expiration(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let err = p
        .publish(json!(2), delayed().delay(Duration::from_secs(1 << 28)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    let err = p
        .publish(json!(3), delayed().routing_key(""))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let missing = unique("delay-missing-q");
    p.publish(json!(4), delayed().routing_key(&missing))
        .await
        .unwrap();
    let err = p
        .publish(json!(5), delayed().routing_key(&missing).mandatory(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    // The connection goes on: one delayed message arrives, after its time.
    let sent = Instant::now();
    p.publish(json!("ok"), delayed()).await.unwrap();
    let mut consumer = Consumer::builder(&conn)
        .queue(q.clone())
        .declare(false)
        .build()
        .await
        .unwrap();
    let m = recv(&mut consumer).await.unwrap();
    assert!(sent.elapsed() >= Duration::from_secs(2));
    assert_eq!(m.decode::<String>().unwrap(), "ok");
    m.ack().await.unwrap();
    drop(consumer);
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

/// With `delayed_delivery_queue_type=classic` (Celery's
/// `broker_native_delayed_delivery_queue_type='classic'`), the same
/// comparison: classic queues, no dead-letter strategy, as kombu declares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_topology_is_the_one_kombu_declares() {
    let (Some(base), Some(python)) = (common::url(), python_peer()) else {
        return;
    };
    let creds = common::credentials(&base);
    let user = creds.split(':').next().unwrap().to_owned();
    let hp = common::host_port(&base);
    let tag = unique("kombu-delay-classic");
    let Some(py_vhost) = Vhost::create(&format!("{tag}-py"), &user) else {
        return;
    };
    let rs_vhost = Vhost::create(&format!("{tag}-rs"), &user).unwrap();
    let py_url = format!("amqp://{creds}@{hp}/{}", py_vhost.0);
    let rs_url = format!(
        "amqp://{creds}@{hp}/{}?delayed_delivery_queue_type=classic",
        rs_vhost.0
    );
    run_python(
        &python,
        PY_DECLARE,
        &[("URL", py_url.as_str()), ("QTYPE", "classic")],
    )
    .await
    .unwrap();
    let conn = common::connection(&rs_url, ConnectionOptions::new());
    let channel = conn.channel().await.unwrap();
    let q = Queue::new("delay-classic-q");
    q.declare(channel.as_ref()).await.unwrap();
    Producer::new(&conn)
        .publish(
            json!("later"),
            PublishOptions::new()
                .routing_key(&q.name)
                .delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let from_python = topology_listing(&py_vhost.0);
    let from_rust = topology_listing(&rs_vhost.0);
    assert_eq!(from_python.len(), 28 + 29 + 56, "{from_python:#?}");
    let differ: Vec<_> = from_rust
        .iter()
        .zip(&from_python)
        .filter(|(r, p)| r != p)
        .collect();
    assert!(differ.is_empty(), "Rust vs Python: {differ:#?}");
    assert_eq!(from_rust.len(), from_python.len());
    let level = from_rust
        .iter()
        .find(|l| l.starts_with("list_queues: celery_delayed_0\t"))
        .unwrap();
    assert!(level.contains("\tclassic\t"), "{level}");
    assert!(!level.contains("x-dead-letter-strategy"), "{level}");
    conn.close().await.unwrap();
}
