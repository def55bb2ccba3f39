//! Python kombu 5.7 (the pinned peer, KOMBU_TEST_PYTHON) and kombu-rs on
//! the same MongoDB database: each consumes what the other publishes
//! (direct, topic, fanout; JSON and raw bodies; priorities), and both
//! write the same documents.
//!
//! Each test uses a database of its own: kombu's broadcast cursor skips as
//! many documents as the whole broadcast collection holds, so a Python
//! fanout consumer needs a collection without other exchanges' messages.

mod support;

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use kombu_core::{Channel, Exchange, Producer, PublishOptions, Queue, TransportOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use support::*;

/// The names both sides use.
const SETUP: &str = r#"
import base64, json, os, sys, time
from kombu import Connection, Exchange, Queue, Producer
url = os.environ["URL"]
ipd = Exchange("ipd", "direct")
ipt = Exchange("ipt", "topic")
ipf = Exchange("ipf", "fanout")
queues = {
    "qd": Queue("qd", ipd, "d"),
    "qt": Queue("qt", ipt, "a.*"),
    "qf": Queue("qf", ipf, ""),
    "qp": Queue("qp"),
}
"#;

/// The Rust side's declarations, matching `SETUP`.
fn rust_queues() -> Vec<Queue> {
    let ipd = Exchange::direct("ipd");
    let ipt = Exchange::topic("ipt");
    let ipf = Exchange::fanout("ipf");
    vec![
        Queue::new("qd").bind(&ipd, "d"),
        Queue::new("qt").bind(&ipt, "a.*"),
        Queue::new("qf").bind(&ipf, ""),
        Queue::new("qp"),
    ]
}

/// What one side received, comparable across languages.
fn summary(queue: &str, content_type: &str, body: &[u8], priority: Option<u8>) -> Value {
    let body = if content_type == "application/json" {
        serde_json::from_slice(body).expect("JSON body")
    } else {
        json!(base64::engine::general_purpose::STANDARD.encode(body))
    };
    json!({"queue": queue, "content_type": content_type, "body": body, "priority": priority})
}

/// What both tests publish, in order, as the consumer should see it.
fn expected() -> Vec<Value> {
    let raw = [0u8, 1, 2, 255, 254];
    vec![
        summary("qd", "application/json", br#"{"kind": "direct"}"#, Some(0)),
        summary("qd", "application/data", &raw, Some(0)),
        summary("qt", "application/json", br#"{"kind": "topic"}"#, Some(0)),
        summary("qf", "application/json", br#"{"kind": "fanout"}"#, Some(0)),
        summary("qp", "application/json", b"9", Some(9)),
        summary("qp", "application/json", b"6", Some(6)),
        summary("qp", "application/json", b"3", Some(3)),
        summary("qp", "application/json", b"0", Some(0)),
    ]
}

async fn get_with_deadline(channel: &dyn Channel, queue: &str) -> kombu_core::Delivery {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(delivery) = channel.basic_get(queue, false).await.unwrap() {
            return delivery;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message in {queue} within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publishes_rust_consumes() {
    let Some(base) = base_url() else { return };
    let Some(python) = kombu_testkit::python_peer() else {
        return;
    };
    let database = fresh_database("kipr");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let conn = connection(&url, TransportOptions::new());
    let channel = conn.channel().await.unwrap();
    // Bound first: fanout reaches only queues bound when it is published.
    for queue in rust_queues() {
        queue.declare(channel.as_ref()).await.unwrap();
    }
    let publish = format!(
        "{SETUP}{}",
        r#"
with Connection(url) as conn:
    ch = conn.channel()
    for q in queues.values():
        q(ch).declare()
    p = Producer(ch)
    p.publish({"kind": "direct"}, exchange=ipd, routing_key="d")
    p.publish(bytes([0, 1, 2, 255, 254]), exchange=ipd, routing_key="d",
              content_type="application/data", content_encoding="binary")
    p.publish({"kind": "topic"}, exchange=ipt, routing_key="a.x")
    p.publish({"kind": "not-matched"}, exchange=ipt, routing_key="b.x")
    p.publish({"kind": "fanout"}, exchange=ipf, routing_key="whatever")
    for prio in (0, 9, 3, 6):
        p.publish(prio, routing_key="qp", priority=prio)
print("published")
"#
    );
    let out = kombu_testkit::run_python(&python, &publish, &[("URL", &url)])
        .await
        .unwrap();
    assert!(out.contains("published"), "{out}");

    let mut got = Vec::new();
    for (queue, count) in [("qd", 2), ("qt", 1), ("qf", 1), ("qp", 4)] {
        for _ in 0..count {
            let d = get_with_deadline(channel.as_ref(), queue).await;
            got.push(summary(
                queue,
                d.message.content_type.as_deref().unwrap_or(""),
                &d.message.body,
                Some(d.message.properties.priority.unwrap_or(0)),
            ));
            channel.basic_ack(d.delivery_tag, false).await.unwrap();
        }
        assert!(
            channel.basic_get(queue, false).await.unwrap().is_none(),
            "{queue}: nothing more (b.x must not match a.*)"
        );
    }
    println!("python -> rust: {} messages received", got.len());
    assert_eq!(got, expected());
    let _ = conn.close().await;
    drop_database(&raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_publishes_python_consumes() {
    let Some(base) = base_url() else { return };
    let Some(python) = kombu_testkit::python_peer() else {
        return;
    };
    let database = fresh_database("kirp");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let conn = connection(&url, TransportOptions::new());
    let channel = conn.channel().await.unwrap();
    for exchange in [
        Exchange::direct("ipd"),
        Exchange::topic("ipt"),
        Exchange::fanout("ipf"),
    ] {
        channel.exchange_declare(&exchange).await.unwrap();
    }
    // Python binds (and opens its broadcast cursor), says READY, waits for
    // GO, then drains every queue.
    let consume = format!(
        "{SETUP}{}",
        r#"
with Connection(url) as conn:
    ch = conn.channel()
    bound = {name: q(ch) for name, q in queues.items()}
    for q in bound.values():
        q.declare()
    print("READY", flush=True)
    sys.stdin.readline()
    out = []
    for name, count in (("qd", 2), ("qt", 1), ("qf", 1), ("qp", 4)):
        deadline = time.time() + 15
        while count and time.time() < deadline:
            m = bound[name].get(no_ack=False)
            if m is None:
                time.sleep(0.1)
                continue
            count -= 1
            body = m.body if isinstance(m.body, bytes) else m.body.encode()
            if m.content_type == "application/json":
                body = json.loads(body)
            else:
                body = base64.b64encode(body).decode()
            out.append({"queue": name, "content_type": m.content_type, "body": body,
                        "priority": m.properties.get("priority")})
            m.ack()
        extra = bound[name].get(no_ack=True)
        if extra is not None:
            out.append({"queue": name, "unexpected": repr(extra.body)})
    print(json.dumps(out), flush=True)
"#
    );
    let mut child = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(&consume)
        .env("URL", &url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python peer");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
        .await
        .expect("python READY within 30 s")
        .unwrap();
    assert_eq!(ready.as_deref(), Some("READY"));

    Producer::new(&conn)
        .exchange(Exchange::direct("ipd"))
        .publish(
            json!({"kind": "direct"}),
            PublishOptions::new().routing_key("d"),
        )
        .await
        .unwrap();
    Producer::new(&conn)
        .exchange(Exchange::direct("ipd"))
        .publish(
            vec![0u8, 1, 2, 255, 254],
            PublishOptions::new().routing_key("d"),
        )
        .await
        .unwrap();
    for key in ["a.x", "b.x"] {
        let kind = if key == "a.x" { "topic" } else { "not-matched" };
        Producer::new(&conn)
            .exchange(Exchange::topic("ipt"))
            .publish(
                json!({ "kind": kind }),
                PublishOptions::new().routing_key(key),
            )
            .await
            .unwrap();
    }
    Producer::new(&conn)
        .exchange(Exchange::fanout("ipf"))
        .publish(
            json!({"kind": "fanout"}),
            PublishOptions::new().routing_key("x"),
        )
        .await
        .unwrap();
    for prio in [0u8, 9, 3, 6] {
        Producer::new(&conn)
            .publish(
                json!(prio),
                PublishOptions::new().routing_key("qp").priority(prio),
            )
            .await
            .unwrap();
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"GO\n").await.unwrap();
    stdin.flush().await.unwrap();
    let line = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
        .await
        .expect("python result within 60 s")
        .unwrap();
    let status = child.wait().await.unwrap();
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = err.read_to_string(&mut stderr).await;
    }
    assert!(status.success(), "python failed: {stderr}");
    let got: Value = serde_json::from_str(&line.expect("a result line")).unwrap();
    println!(
        "rust -> python: {} messages received",
        got.as_array().map_or(0, Vec::len)
    );
    assert_eq!(got, Value::Array(expected()));
    let _ = conn.close().await;
    drop_database(&raw).await;
}

/// The same publishes from both languages write the same documents
/// (payloads byte for byte, delivery tags aside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_write_the_same_documents() {
    let Some(base) = base_url() else { return };
    let Some(python) = kombu_testkit::python_peer() else {
        return;
    };
    let py_db = fresh_database("kcmp_py");
    let rs_db = fresh_database("kcmp_rs");
    let script = r#"
import os
from kombu import Connection, Exchange, Queue, Producer
ex = Exchange("cmpex", "direct"); tex = Exchange("cmptex", "topic"); fex = Exchange("cmpfex", "fanout")
with Connection(os.environ["URL"], transport_options={"ttl": True}) as conn:
    ch = conn.channel()
    Queue("cmpq", ex, "rk", queue_arguments={"x-expires": 120000})(ch).declare()
    Queue("cmptq", tex, "a.#")(ch).declare()
    Queue("cmpfq", fex, "")(ch).declare()
    p = Producer(ch)
    p.publish({"hello": "world"}, exchange=ex, routing_key="rk", priority=3)
    p.publish("text", exchange=tex, routing_key="a.b.c", serializer="json")
    p.publish({"to": "all"}, exchange=fex, routing_key="")
print("ok")
"#;
    let py_url = with_database(&base, &py_db);
    kombu_testkit::run_python(&python, script, &[("URL", &py_url)])
        .await
        .unwrap();

    let rs_url = with_database(&base, &rs_db);
    let conn = connection(&rs_url, TransportOptions::new().set("ttl", true));
    let channel = conn.channel().await.unwrap();
    let ex = Exchange::direct("cmpex");
    let tex = Exchange::topic("cmptex");
    let fex = Exchange::fanout("cmpfex");
    Queue::new("cmpq")
        .bind(&ex, "rk")
        .expires(Duration::from_secs(120))
        .declare(channel.as_ref())
        .await
        .unwrap();
    Queue::new("cmptq")
        .bind(&tex, "a.#")
        .declare(channel.as_ref())
        .await
        .unwrap();
    Queue::new("cmpfq")
        .bind(&fex, "")
        .declare(channel.as_ref())
        .await
        .unwrap();
    Producer::new(&conn)
        .exchange(ex)
        .publish(
            json!({"hello": "world"}),
            PublishOptions::new().routing_key("rk").priority(3),
        )
        .await
        .unwrap();
    Producer::new(&conn)
        .exchange(tex)
        .publish(json!("text"), PublishOptions::new().routing_key("a.b.c"))
        .await
        .unwrap();
    Producer::new(&conn)
        .exchange(fex)
        .publish(json!({"to": "all"}), PublishOptions::new())
        .await
        .unwrap();
    let _ = conn.close().await;

    let py = raw_database(&base, &py_db).await;
    let rs = raw_database(&base, &rs_db).await;
    // Tags and ids differ by nature; expiry times by the clock.
    let normalise = |mut d: mongodb::bson::Document| {
        d.remove("_id");
        if let Ok(payload) = d.get_str("payload") {
            let envelope: Value = serde_json::from_str(payload).unwrap();
            let tag = envelope["properties"]["delivery_tag"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            let text = payload.replace(&tag, "TAG");
            d.insert("payload", text);
        }
        if let Some(mongodb::bson::Bson::DateTime(_)) = d.get("expire_at") {
            d.insert("expire_at", "<date>");
        }
        let mut pairs: Vec<(String, String)> = d
            .iter()
            .map(|(k, v)| (k.clone(), format!("{v:?}")))
            .collect();
        pairs.sort();
        pairs
    };
    for collection in [
        "messages",
        "messages.routing",
        "messages.broadcast",
        "messages.queues",
    ] {
        let mut from_py: Vec<_> = documents(&py, collection)
            .await
            .into_iter()
            .map(normalise)
            .collect();
        let mut from_rs: Vec<_> = documents(&rs, collection)
            .await
            .into_iter()
            .map(normalise)
            .collect();
        from_py.sort();
        from_rs.sort();
        assert!(!from_py.is_empty(), "python wrote no {collection}");
        assert_eq!(from_rs, from_py, "{collection}: kombu-rs vs kombu 5.7");
        println!("{collection}: {} documents identical", from_py.len());
    }
    // kombu's indexes, with the same specifications (a server may refuse
    // a same-named index with other options when the other side connects).
    for collection in [
        "messages",
        "messages.routing",
        "messages.broadcast",
        "messages.queues",
    ] {
        let specs = |db: mongodb::Database| async move {
            use futures::TryStreamExt;
            let indexes: Vec<mongodb::IndexModel> = db
                .collection::<mongodb::bson::Document>(collection)
                .list_indexes()
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            indexes
                .into_iter()
                .map(|i| format!("{:?} {:?}", i.keys, i.options))
                .collect::<Vec<_>>()
        };
        let from_rs = specs(rs.clone()).await;
        for index in specs(py.clone()).await {
            assert!(
                from_rs.contains(&index),
                "{collection}: {index} missing in {from_rs:?}"
            );
        }
    }
    drop_database(&py).await;
    drop_database(&rs).await;
}
