//! Python kombu 5.7's SQS transport and kombu-rs share queues on one SQS
//! API (moto in CI): each consumes what the other publishes, json and raw
//! bodies, headers intact. Needs `KOMBU_TEST_SQS_URL` and
//! `KOMBU_TEST_PYTHON` (`cargo xtask test` sets both).

use std::sync::Arc;

use base64::Engine as _;
use kombu_core::{
    Connection, ConnectionOptions, Consumer, Exchange, Producer, PublishOptions, Queue, Registry,
    TransportOptions,
};
use kombu_testkit::{python_peer, recv, run_python, test_url, unique, Cleanup};
use serde_json::{json, Value};

const OPTIONS: &str = "{'region': 'us-east-1', 'wait_time_seconds': 1, 'polling_interval': 0}";

fn connection(url: &str) -> Connection {
    let mut registry = Registry::new();
    kombu_sqs::register(&mut registry);
    let options = ConnectionOptions::new().transport_options(
        TransportOptions::new()
            .set("region", "us-east-1")
            .set("wait_time_seconds", 1),
    );
    Connection::with_registry_options(url, options, Arc::new(registry)).expect("a usable URL")
}

fn python_publish(queue: &str) -> String {
    format!(
        r#"
import os, kombu
with kombu.Connection(os.environ['SQS_URL'], transport_options={OPTIONS}) as conn:
    with conn.Producer() as p:
        p.publish({{'from': 'python', 'n': 1}}, routing_key={queue:?},
                  headers={{'x-origin': 'python', 'x-list': [1, 2]}}, serializer='json')
        p.publish(b'\x00\x01raw\xff', routing_key={queue:?}, content_type='application/data',
                  content_encoding='binary', headers={{'x-origin': 'python-raw'}})
print('ok')
"#
    )
}

fn python_consume(queue: &str, count: usize) -> String {
    format!(
        r#"
import os, json, base64, time, kombu
out = []
with kombu.Connection(os.environ['SQS_URL'], transport_options={OPTIONS}) as conn:
    q = kombu.Queue({queue:?})(conn.default_channel)
    deadline = time.time() + 30
    while len(out) < {count} and time.time() < deadline:
        m = q.get(no_ack=False)
        if m is None:
            time.sleep(0.2)
            continue
        out.append({{'body': base64.b64encode(m.body if isinstance(m.body, bytes) else m.body.encode()).decode(),
                    'content_type': m.content_type, 'headers': m.headers,
                    'payload': m.decode() if m.content_type == 'application/json' else None}})
        m.ack()
print(json.dumps(out))
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publishes_rust_consumes() {
    let Some(url) = test_url("sqs") else { return };
    let Some(python) = python_peer() else { return };
    let conn = connection(&url);
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&format!("{}.py2rs", unique("interop"))));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let out = run_python(&python, &python_publish(&q.name), &[("SQS_URL", &url)])
        .await
        .unwrap();
    assert_eq!(out.trim(), "ok");
    let mut c = Consumer::builder(&conn)
        .queue(q.clone())
        .accept(kombu_core::Accept::all())
        .build()
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let m = recv(&mut c).await.unwrap();
        seen.push((
            m.content_type().map(str::to_owned),
            m.body().to_vec(),
            m.headers().clone(),
        ));
        m.ack().await.unwrap();
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let (ct, body, headers) = &seen[0];
    assert_eq!(ct.as_deref(), Some("application/data"));
    assert_eq!(body, b"\x00\x01raw\xff");
    assert_eq!(headers["x-origin"], "python-raw");
    let (ct, body, headers) = &seen[1];
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<Value>(body).unwrap(),
        json!({"from": "python", "n": 1})
    );
    assert_eq!(headers["x-origin"], "python");
    assert_eq!(headers["x-list"], json!([1, 2]));
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_publishes_python_consumes() {
    let Some(url) = test_url("sqs") else { return };
    let Some(python) = python_peer() else { return };
    let conn = connection(&url);
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&format!("{}.rs2py", unique("interop"))));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let p = Producer::new(&conn);
    p.publish(
        json!({"from": "rust", "n": 2}),
        PublishOptions::new()
            .routing_key(&q.name)
            .header("x-origin", "rust")
            .header("x-map", json!({"a": 1})),
    )
    .await
    .unwrap();
    p.publish(
        vec![0u8, 1, 2, 255],
        PublishOptions::new()
            .routing_key(&q.name)
            .header("x-origin", "rust-raw"),
    )
    .await
    .unwrap();
    let out = run_python(&python, &python_consume(&q.name, 2), &[("SQS_URL", &url)])
        .await
        .unwrap();
    let got: Vec<Value> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got.len(), 2, "{out}");
    let json_msg = got
        .iter()
        .find(|m| m["content_type"] == "application/json")
        .expect("json message");
    assert_eq!(json_msg["payload"], json!({"from": "rust", "n": 2}));
    assert_eq!(json_msg["headers"]["x-origin"], "rust");
    assert_eq!(json_msg["headers"]["x-map"], json!({"a": 1}));
    let raw = got
        .iter()
        .find(|m| m["content_type"] == "application/data")
        .expect("raw message");
    let body = base64::engine::general_purpose::STANDARD
        .decode(raw["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(body, [0u8, 1, 2, 255]);
    assert_eq!(raw["headers"]["x-origin"], "rust-raw");
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fanout_over_sns_reaches_rust_queues() {
    let Some(url) = test_url("sqs") else { return };
    let Some(python) = python_peer() else { return };
    let conn = connection(&url);
    let mut clean = Cleanup::new();
    let ex = Exchange::fanout(clean.exchange(&unique("interop-fan")));
    let q1 = Queue::new(clean.queue(&unique("interop-fq1"))).bind(&ex, "");
    let q2 = Queue::new(clean.queue(&unique("interop-fq2"))).bind(&ex, "");
    let mut consumers = Vec::new();
    for q in [&q1, &q2] {
        consumers.push(
            Consumer::builder(&conn)
                .queue(q.clone())
                .build()
                .await
                .unwrap(),
        );
    }
    let script = format!(
        r#"
import os, kombu
opts = dict({OPTIONS}, supports_fanout=True)
with kombu.Connection(os.environ['SQS_URL'], transport_options=opts) as conn:
    ex = kombu.Exchange({name:?}, 'fanout')
    with conn.Producer(exchange=ex) as p:
        p.publish({{'fan': 'out'}}, headers={{'x-origin': 'python-fanout'}})
print('ok')
"#,
        name = ex.name
    );
    let out = run_python(&python, &script, &[("SQS_URL", &url)])
        .await
        .unwrap();
    assert_eq!(out.trim(), "ok");
    for c in &mut consumers {
        let m = recv(c).await.unwrap();
        assert_eq!(m.decode::<Value>().unwrap(), json!({"fan": "out"}));
        assert_eq!(m.headers()["x-origin"], "python-fanout");
        m.ack().await.unwrap();
    }
    clean.run(consumers[0].channel().as_ref()).await;
    conn.close().await.unwrap();
}

/// What a Python kombu 5.7 consumer sees of kombu-rs delayed messages: a
/// delay within one `DelaySeconds` step on time (SQS hides it); a longer
/// one (here `max_delay_seconds=1`, so a 4 s delay goes in steps) as soon
/// as its first step ends, early, because Python kombu does not read the
/// due-time attribute and so does not re-delay. Both decode as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sees_short_delays_on_time_and_long_ones_early() {
    let Some(url) = test_url("sqs") else { return };
    let Some(python) = python_peer() else { return };
    let mut registry = Registry::new();
    kombu_sqs::register(&mut registry);
    let options = ConnectionOptions::new().transport_options(
        TransportOptions::new()
            .set("region", "us-east-1")
            .set("wait_time_seconds", 1)
            .set("max_delay_seconds", 1),
    );
    let conn = Connection::with_registry_options(&url, options, Arc::new(registry)).unwrap();
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&format!("{}.delay", unique("interop"))));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let p = Producer::new(&conn);
    for (body, ms) in [("short", 900), ("long", 4000)] {
        p.publish(
            json!(body),
            PublishOptions::new()
                .routing_key(&q.name)
                .delay(std::time::Duration::from_millis(ms)),
        )
        .await
        .unwrap();
    }
    let script = format!(
        r#"
import os, json, time, kombu
out = {{}}
started = float(os.environ['STARTED'])
with kombu.Connection(os.environ['SQS_URL'], transport_options={OPTIONS}) as conn:
    q = kombu.Queue({queue:?})(conn.default_channel)
    deadline = time.time() + 30
    while len(out) < 2 and time.time() < deadline:
        m = q.get(no_ack=False)
        if m is None:
            time.sleep(0.05)
            continue
        out[m.decode()] = time.time() - started
        m.ack()
print(json.dumps(out))
"#,
        queue = q.name
    );
    let out = run_python(
        &python,
        &script,
        &[("SQS_URL", &url), ("STARTED", &started.to_string())],
    )
    .await
    .unwrap();
    let seen: Value = serde_json::from_str(out.trim()).unwrap();
    println!("Python kombu saw (seconds after the publish): {seen}");
    let short = seen["short"].as_f64().expect("short delivered");
    let long = seen["long"].as_f64().expect("long delivered");
    assert!(short >= 0.9, "short delay seen early: {short}");
    assert!(
        long < 4.0,
        "the long delay was expected early for Python: {long}"
    );
    assert!(long >= 1.0, "seen before its first step ended: {long}");
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}
