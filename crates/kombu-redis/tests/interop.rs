//! Python kombu 5.7 and kombu-rs on the same Redis: each publishes, the
//! other consumes (direct, topic, fanout, default exchange; json, msgpack,
//! yaml, raw, text; every compression), priorities, requeue, and unacked
//! messages of a dead consumer restored by the other language.
//!
//! Needs KOMBU_TEST_REDIS_URL and KOMBU_TEST_PYTHON (`cargo xtask test`).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{base_url, connect, last_json, prefix, python};
use kombu_core::{Accept, Consumer, Exchange, Payload, Producer, PublishOptions, Queue};
use kombu_testkit::{recv, recv_n, unique};
use serde_json::{json, Value};

/// Both the server and the peer are configured (else print why and skip).
fn setup(name: &str) -> Option<(String, String)> {
    let url = base_url()?;
    kombu_testkit::python_peer()?;
    Some((url, prefix(name)))
}

async fn rust_consumer(conn: &kombu_core::Connection, queues: Vec<Queue>) -> Consumer {
    Consumer::builder(conn)
        .queues(queues)
        .accept(Accept::all())
        .prefetch_count(10)
        .build()
        .await
        .expect("consumer")
}

const COMPRESSIONS: &[&str] = &["zlib", "bzip2", "brotli", "lzma", "zstd"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publishes_every_format_rust_consumes() {
    let Some((url, prefix)) = setup("py2rs-formats") else {
        return;
    };
    let q = unique("interop-formats");
    let script = r#"
with conn() as c:
    ex = Exchange('ifx-' + os.environ['Q'], 'direct')
    q = Queue(os.environ['Q'], ex, 'rk')
    p = Producer(c, exchange=ex, routing_key='rk')
    q(c.default_channel).declare()
    p.publish({'kind': 'json', 'n': 1}, serializer='json', headers={'kind': 'json'})
    p.publish({'kind': 'msgpack', 'n': 2}, serializer='msgpack', headers={'kind': 'msgpack'})
    p.publish({'kind': 'yaml', 'n': 3}, serializer='yaml', headers={'kind': 'yaml'})
    p.publish(b'\x00\xffraw', content_type='application/data', content_encoding='binary', headers={'kind': 'raw'})
    p.publish('just text', content_type='text/plain', content_encoding='utf-8', headers={'kind': 'text'})
    for comp in ['zlib', 'bzip2', 'brotli', 'lzma', 'zstd']:
        p.publish({'kind': comp, 'data': 'x' * 200}, serializer='json', compression=comp, headers={'kind': comp})
print(json.dumps('ok'))
"#;
    python(script, &url, &prefix, &[("Q", &q)]).await.unwrap();
    let conn = connect(&url, &prefix, &[]);
    let ex = Exchange::direct(format!("ifx-{q}"));
    let mut c = rust_consumer(&conn, vec![Queue::new(&q).bind(&ex, "rk")]).await;
    let msgs = recv_n(&mut c, 5 + COMPRESSIONS.len())
        .await
        .expect("messages");
    for m in msgs {
        let kind = m.headers()["kind"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "json" | "msgpack" | "yaml" => {
                let v: Value = m.decode().unwrap_or_else(|e| panic!("{kind}: {e}"));
                assert_eq!(v["kind"], json!(kind));
            }
            "raw" => {
                assert_eq!(m.content_type(), Some("application/data"));
                assert_eq!(m.body(), b"\x00\xffraw");
            }
            "text" => assert_eq!(m.payload().unwrap(), Payload::Text("just text".into())),
            comp => {
                assert!(m.headers()["compression"].is_string(), "{comp}");
                let v: Value = m.decode().unwrap_or_else(|e| panic!("{comp}: {e}"));
                assert_eq!(v["data"], json!("x".repeat(200)), "{comp}");
            }
        }
        m.ack().await.unwrap();
    }
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_publishes_every_format_python_consumes() {
    let Some((url, prefix)) = setup("rs2py-formats") else {
        return;
    };
    let q = unique("interop-formats");
    let conn = connect(&url, &prefix, &[]);
    let ex = Exchange::direct(format!("ifx-{q}"));
    let queue = Queue::new(&q).bind(&ex, "rk");
    let p = Producer::new(&conn).exchange(ex.clone()).routing_key("rk");
    let opts = |kind: &str| {
        PublishOptions::new()
            .header("kind", kind)
            .declare(queue.clone())
    };
    for ser in ["json", "msgpack", "yaml"] {
        p.publish(json!({"kind": ser}), opts(ser).serializer(ser))
            .await
            .unwrap();
    }
    p.publish(
        Payload::Bytes(Bytes::from_static(b"\x00\xffraw")),
        opts("raw"),
    )
    .await
    .unwrap();
    p.publish(Payload::Text("just text".into()), opts("text"))
        .await
        .unwrap();
    for comp in COMPRESSIONS {
        p.publish(
            json!({"kind": comp, "data": "y".repeat(300)}),
            opts(comp).compression(*comp),
        )
        .await
        .unwrap();
    }
    let n = 5 + COMPRESSIONS.len();
    let out = python(
        "print(json.dumps(drain([Queue(os.environ['Q'])], int(os.environ['N']))))",
        &url,
        &prefix,
        &[("Q", &q), ("N", &n.to_string())],
    )
    .await
    .unwrap();
    let got = last_json(&out);
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), n, "{got:?}");
    for m in got {
        let kind = m["headers"]["kind"].as_str().unwrap();
        match kind {
            "json" | "msgpack" | "yaml" => assert_eq!(m["body"]["kind"], json!(kind)),
            "raw" => assert_eq!(m["body"]["hex"], json!("00ff726177")),
            "text" => assert_eq!(m["body"], json!("just text")),
            comp => {
                assert!(m["headers"]["compression"].is_string(), "{comp}");
                assert_eq!(m["body"]["data"], json!("y".repeat(300)), "{comp}");
            }
        }
    }
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_and_default_exchange_both_ways() {
    let Some((url, prefix)) = setup("topic") else {
        return;
    };
    let ex_name = unique("itopic");
    let (tq1, tq2, dq) = (unique("tq1"), unique("tq2"), unique("dq"));
    // Python declares the topic exchange and binds; Rust publishes without
    // declaring it (the type is read back from kombu's regex table).
    let declare = r#"
with conn() as c:
    ex = Exchange(os.environ['EX'], 'topic')
    Queue(os.environ['TQ1'], ex, 'a.*')(c.default_channel).declare()
    Queue(os.environ['TQ2'], ex, '#.err')(c.default_channel).declare()
print(json.dumps('ok'))
"#;
    let env = [
        ("EX", ex_name.as_str()),
        ("TQ1", &tq1),
        ("TQ2", &tq2),
        ("DQ", &dq),
    ];
    python(declare, &url, &prefix, &env).await.unwrap();
    let conn = connect(&url, &prefix, &[]);
    let channel = conn.channel().await.unwrap();
    let p = Producer::new(&conn).auto_declare(false);
    for rk in ["a.err", "b.c.err", "a.ok", "z"] {
        p.publish(
            json!(rk),
            PublishOptions::new()
                .exchange(Exchange::topic(&ex_name))
                .routing_key(rk),
        )
        .await
        .unwrap();
    }
    // Default exchange, Rust -> Python.
    p.publish(json!("default"), PublishOptions::new().routing_key(&dq))
        .await
        .unwrap();
    let out = python(
        r#"
a = drain([Queue(os.environ['TQ1'])], 2)
b = drain([Queue(os.environ['TQ2'])], 2)
d = drain([Queue(os.environ['DQ'])], 1)
print(json.dumps([sorted(m['body'] for m in a), sorted(m['body'] for m in b), [m['body'] for m in d]]))
"#,
        &url,
        &prefix,
        &env,
    )
    .await
    .unwrap();
    assert_eq!(
        last_json(&out),
        json!([["a.err", "a.ok"], ["a.err", "b.c.err"], ["default"]])
    );
    // Python -> Rust: topic and default exchange.
    python(
        r#"
with conn() as c:
    p = Producer(c)
    # kombu stores no exchange type: its publisher must declare it.
    ex = Exchange(os.environ['EX'], 'topic')
    ex(c.default_channel).declare()
    p.publish('py-topic', exchange=ex, routing_key='x.err')
    p.publish('py-default', routing_key=os.environ['DQ'])
print(json.dumps('ok'))
"#,
        &url,
        &prefix,
        &env,
    )
    .await
    .unwrap();
    let mut c2 = rust_consumer(&conn, vec![Queue::new(&tq2)]).await;
    let m = recv(&mut c2).await.unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "py-topic");
    m.ack().await.unwrap();
    let mut cd = rust_consumer(&conn, vec![Queue::new(&dq)]).await;
    let m = recv(&mut cd).await.unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "py-default");
    m.ack().await.unwrap();
    for q in [&tq1, &tq2, &dq] {
        let _ = channel.queue_delete(q).await;
    }
    let _ = channel.exchange_delete(&ex_name).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_pubsub_both_ways() {
    let Some((url, prefix)) = setup("fanout") else {
        return;
    };
    let ex = Exchange::fanout(unique("ifan"));
    let (rq, pq) = (unique("fan-rust"), unique("fan-py"));
    let conn = connect(&url, &prefix, &[]);
    // Python -> Rust: the Rust consumer is subscribed before Python publishes.
    let mut c = rust_consumer(&conn, vec![Queue::new(&rq).bind(&ex, "")]).await;
    let env = [("EX", ex.name.as_str()), ("PQ", pq.as_str())];
    python(
        r#"
with conn() as c:
    ex = Exchange(os.environ['EX'], 'fanout')
    Producer(c, exchange=ex).publish({'from': 'python'}, routing_key='')
print(json.dumps('ok'))
"#,
        &url,
        &prefix,
        &env,
    )
    .await
    .unwrap();
    let m = recv(&mut c).await.unwrap();
    assert_eq!(m.decode::<Value>().unwrap(), json!({"from": "python"}));
    m.ack().await.unwrap();
    // Rust -> Python: publish until the Python subscriber has one.
    let py = tokio::spawn({
        let (url, prefix, env) = (
            url.clone(),
            prefix.clone(),
            env.map(|(k, v)| (k, v.to_owned())),
        );
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            python(
                r#"
ex = Exchange(os.environ['EX'], 'fanout')
print(json.dumps(drain([Queue(os.environ['PQ'], ex)], 1)))
"#,
                &url,
                &prefix,
                &env,
            )
            .await
        }
    });
    let p = Producer::new(&conn).exchange(ex.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !py.is_finished() && tokio::time::Instant::now() < deadline {
        p.publish(json!({"from": "rust"}), PublishOptions::new())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = py.await.unwrap().unwrap();
    let got = last_json(&out);
    assert_eq!(got[0]["body"], json!({"from": "rust"}), "{got}");
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_keep_their_order_across_languages() {
    let Some((url, prefix)) = setup("prio") else {
        return;
    };
    let (q1, q2) = (unique("prio-rs2py"), unique("prio-py2rs"));
    let conn = connect(&url, &prefix, &[]);
    let p = Producer::new(&conn);
    // Rust (AMQP: higher first) -> Python.
    for prio in [0u8, 9, 3, 6] {
        p.publish(
            json!(prio),
            PublishOptions::new().routing_key(&q1).priority(prio),
        )
        .await
        .unwrap();
    }
    let env = [("Q1", q1.as_str()), ("Q2", q2.as_str())];
    let out = python(
        r#"
got = drain([Queue(os.environ['Q1'])], 4)
print(json.dumps([[m['body'], m['priority']] for m in got]))
"#,
        &url,
        &prefix,
        &env,
    )
    .await
    .unwrap();
    // Served most urgent first; Python sees kombu's numbers (9 - p).
    assert_eq!(last_json(&out), json!([[9, 0], [6, 3], [3, 6], [0, 9]]));
    // Python (kombu: lower first) -> Rust.
    python(
        r#"
with conn() as c:
    p = Producer(c)
    for prio in [9, 0, 6, 3]:
        p.publish(prio, routing_key=os.environ['Q2'], priority=prio)
print(json.dumps('ok'))
"#,
        &url,
        &prefix,
        &env,
    )
    .await
    .unwrap();
    let mut c = Consumer::builder(&conn)
        .queue(Queue::new(&q2))
        .prefetch_count(1)
        .build()
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        let m = recv(&mut c).await.unwrap();
        order.push((m.decode::<u8>().unwrap(), m.properties().priority));
        m.ack().await.unwrap();
    }
    assert_eq!(
        order,
        vec![(0, Some(9)), (3, Some(6)), (6, Some(3)), (9, Some(0))]
    );
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_is_redelivered_in_the_other_language() {
    let Some((url, prefix)) = setup("requeue") else {
        return;
    };
    let (q1, q2) = (unique("rq-rs2py"), unique("rq-py2rs"));
    let conn = connect(&url, &prefix, &[]);
    Producer::new(&conn)
        .publish(json!("again"), PublishOptions::new().routing_key(&q1))
        .await
        .unwrap();
    let mut c = rust_consumer(&conn, vec![Queue::new(&q1)]).await;
    let m = recv(&mut c).await.unwrap();
    assert!(!m.redelivered());
    m.requeue().await.unwrap();
    drop(c);
    let env = [("Q1", q1.as_str()), ("Q2", q2.as_str())];
    let out = python(
        r#"
got = drain([Queue(os.environ['Q1'])], 1)
with conn() as c:
    Producer(c).publish('from-python', routing_key=os.environ['Q2'])
# Python takes it, requeues it, and exits.
drain([Queue(os.environ['Q2'])], 1, requeue=True)
print(json.dumps(got))
"#,
        &url,
        &prefix,
        &env,
    )
    .await
    .unwrap();
    let got = last_json(&out);
    assert_eq!(got[0]["body"], json!("again"));
    assert_eq!(got[0]["redelivered"], json!(true), "{got}");
    assert_eq!(got[0]["headers"]["redelivered"], json!(true), "{got}");
    let mut c = rust_consumer(&conn, vec![Queue::new(&q2)]).await;
    let m = recv(&mut c).await.unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "from-python");
    assert!(m.redelivered(), "Python's requeue flag is seen by Rust");
    m.ack().await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_consumer_dies_rust_restores_after_visibility_timeout() {
    let Some((url, prefix)) = setup("py-dies") else {
        return;
    };
    let q = unique("py-dies");
    let env = [("Q", q.as_str())];
    // Python publishes 3, takes them without acking, and is killed.
    let py = kombu_testkit::python_peer().unwrap();
    let script = format!(
        "{}\n{}",
        common::PY_PRELUDE,
        r#"
import signal
with conn() as c:
    p = Producer(c)
    for i in range(3):
        p.publish(i, routing_key=os.environ['Q'])
c = conn()
taken = []
def cb(body, message):
    taken.append(body)
with Consumer(c, [Queue(os.environ['Q'])], callbacks=[cb], prefetch_count=10):
    deadline = time.time() + 10
    while len(taken) < 3 and time.time() < deadline:
        try:
            c.drain_events(timeout=0.5)
        except socket.timeout:
            pass
    r = c.default_channel.client
    print(json.dumps([len(taken), r.hlen('unacked')]), file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"#
    );
    let env = [("URL", url.as_str()), ("PREFIX", prefix.as_str()), env[0]];
    // The peer kills itself: run_python reports that as a failure.
    let err = kombu_testkit::run_python(&py, &script, &env)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("[3, 3]"),
        "the peer held 3 unacked: {err}"
    );
    let conn = connect(
        &url,
        &prefix,
        &[
            ("visibility_timeout", json!(1)),
            ("unacked_restore_interval", json!(0.3)),
        ],
    );
    let mut c = rust_consumer(&conn, vec![Queue::new(&q)]).await;
    let mut got = Vec::new();
    for m in recv_n(&mut c, 3).await.expect("restored messages") {
        assert!(m.redelivered());
        got.push(m.decode::<i64>().unwrap());
        m.ack().await.unwrap();
    }
    got.sort();
    assert_eq!(got, vec![0, 1, 2]);
    conn.close().await.unwrap();
}

/// Through Redis Sentinel (the redis-sentinel service): what kombu-rs
/// publishes via `sentinel://` Python kombu 5.7's sentinel transport
/// consumes, and the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_both_ways() {
    let Some(sentinel_url) = kombu_testkit::test_url("redis-sentinel") else {
        return;
    };
    let Some((_, prefix)) = setup("sentinel") else {
        return;
    };
    // Python kombu takes master_name as a transport option.
    let py_url = sentinel_url
        .split('?')
        .next()
        .unwrap_or(&sentinel_url)
        .to_owned();
    let q = unique("interop-sentinel");
    let conn = connect(&sentinel_url, &prefix, &[]);
    assert_eq!(conn.transport_name(), "sentinel");
    Producer::new(&conn)
        .publish(
            json!({"from": "rust"}),
            PublishOptions::new()
                .routing_key(q.as_str())
                .declare(Queue::new(&q)),
        )
        .await
        .unwrap();
    let script = "got = drain([Queue(os.environ['Q'])], 1)\n\
                  with conn() as c:\n    \
                      c.SimpleQueue(os.environ['Q']).put({'from': 'python'})\n\
                  print(json.dumps(got))";
    let out = python(
        script,
        &py_url,
        &prefix,
        &[("Q", &q), ("MASTER_NAME", "kombu")],
    )
    .await
    .unwrap();
    let got = last_json(&out);
    assert_eq!(got[0]["body"], json!({"from": "rust"}), "{got}");
    let mut consumer = rust_consumer(&conn, vec![Queue::new(&q)]).await;
    let message = recv(&mut consumer).await.expect("python's message");
    assert_eq!(
        message.decode::<Value>().unwrap(),
        json!({"from": "python"})
    );
    message.ack().await.unwrap();
    consumer.close().await.unwrap();
    conn.close().await.unwrap();
}
