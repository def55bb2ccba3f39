//! Interop with Python kombu 5.7 + py-amqp on the same RabbitMQ, both ways:
//! every exchange type and the default exchange, json/msgpack/yaml/raw,
//! each compression, priorities, headers and properties, requeue.

mod common;

use kombu_core::{
    Accept, Connection, ConnectionOptions, Consumer, DeliveryMode, Exchange, Message, Payload,
    Producer, PublishOptions, Queue,
};
use kombu_testkit::{python_peer, recv, run_python, unique, Cleanup};
use serde_json::{json, Value};

const COMPRESSIONS: [&str; 5] = ["zlib", "bzip2", "lzma", "brotli", "zstd"];

/// The entities both sides declare, named from `prefix` (as Python names them).
struct Names {
    direct: Exchange,
    topic: Exchange,
    fanout: Exchange,
    headers: Exchange,
    queues: Vec<Queue>,
}

fn names(prefix: &str) -> Names {
    let direct = Exchange::direct(format!("{prefix}-direct"));
    let topic = Exchange::topic(format!("{prefix}-topic"));
    let fanout = Exchange::fanout(format!("{prefix}-fanout"));
    let headers = Exchange::headers(format!("{prefix}-headers"));
    let queues = vec![
        Queue::new(format!("{prefix}-qd")).bind(&direct, "rk"),
        Queue::new(format!("{prefix}-qt")).bind(&topic, "a.*"),
        Queue::new(format!("{prefix}-qf")).bind(&fanout, ""),
        Queue::new(format!("{prefix}-qh")).binding(
            kombu_core::Binding::new(&headers.name, "")
                .argument("x-match", "all")
                .argument("kind", "report"),
        ),
        Queue::new(format!("{prefix}-qdef")),
        Queue::new(format!("{prefix}-qser")),
        Queue::new(format!("{prefix}-qprio")).max_priority(10),
        Queue::new(format!("{prefix}-qreq")),
    ];
    Names {
        direct,
        topic,
        fanout,
        headers,
        queues,
    }
}

const PY_DECLARE: &str = r#"
import os, json, base64
from kombu import Connection, Exchange, Queue, Producer
P = os.environ['PREFIX']
conn = Connection(os.environ['URL'])
ch = conn.channel()
ex = {t: Exchange(P + '-' + t, t) for t in ['direct', 'topic', 'fanout', 'headers']}
Q = {
    'qd': Queue(P + '-qd', ex['direct'], routing_key='rk'),
    'qt': Queue(P + '-qt', ex['topic'], routing_key='a.*'),
    'qf': Queue(P + '-qf', ex['fanout']),
    'qh': Queue(P + '-qh', ex['headers'], binding_arguments={'x-match': 'all', 'kind': 'report'}),
    'qdef': Queue(P + '-qdef'),
    'qser': Queue(P + '-qser'),
    'qprio': Queue(P + '-qprio', max_priority=10),
    'qreq': Queue(P + '-qreq'),
}
for q in Q.values():
    q(ch).declare()
"#;

const PY_PUBLISH: &str = r#"
p = Producer(ch)
p.publish({'via': 'direct'}, exchange=ex['direct'], routing_key='rk',
          headers={'x-origin': 'python', 'n': 7}, correlation_id='c1', reply_to='r1',
          message_id='m1', priority=3, expiration=60)
p.publish({'via': 'topic'}, exchange=ex['topic'], routing_key='a.b')
p.publish({'via': 'fanout'}, exchange=ex['fanout'], routing_key='whatever')
p.publish({'via': 'headers'}, exchange=ex['headers'], headers={'kind': 'report'})
p.publish({'via': 'headers-miss'}, exchange=ex['headers'], headers={'kind': 'other'})
p.publish({'via': 'default'}, exchange='', routing_key=P + '-qdef')
for s in ['json', 'msgpack', 'yaml']:
    p.publish({'s': 'h\u00e9llo', 'n': 42, 'l': [1, 2]}, routing_key=P + '-qser', serializer=s)
p.publish(b'\x00\xffraw', routing_key=P + '-qser', content_type='application/data',
          content_encoding='binary')
for c in ['zlib', 'bzip2', 'lzma', 'brotli', 'zstd']:
    p.publish({'c': c, 'pad': 'x' * 200}, routing_key=P + '-qser', compression=c)
for pr in [0, 9, 3, 6]:
    p.publish(pr, routing_key=P + '-qprio', priority=pr)
p.publish('again', routing_key=P + '-qreq')
m = None
while m is None:
    m = Q['qreq'](ch).get(no_ack=False)
m.requeue()
conn.release()
print('ok')
"#;

const PY_CONSUME: &str = r#"
import time
ACCEPT = ['json', 'msgpack', 'yaml', 'application/data']
def get(key, n):
    out = []
    deadline = time.time() + 20
    while len(out) < n and time.time() < deadline:
        m = Q[key](ch).get(no_ack=False, accept=ACCEPT)
        if m is None:
            time.sleep(0.02)
            continue
        if m.content_type == 'application/data':
            body = {'raw': base64.b64encode(m.body).decode()}
        else:
            body = m.decode()
        out.append({'body': body, 'headers': m.headers, 'content_type': m.content_type,
                    'content_encoding': m.content_encoding,
                    'properties': {k: v for k, v in m.properties.items() if k != 'application_headers'},
                    'exchange': m.delivery_info['exchange'],
                    'routing_key': m.delivery_info['routing_key'],
                    'redelivered': m.delivery_info['redelivered']})
        m.ack()
    return out
res = {k: get(k, n) for k, n in [('qd', 1), ('qt', 1), ('qf', 1), ('qh', 1), ('qdef', 1),
                                 ('qser', 9), ('qprio', 4), ('qreq', 1)]}
conn.release()
print(json.dumps(res))
"#;

fn env<'a>(url: &'a str, prefix: &'a str) -> [(&'static str, &'a str); 2] {
    [("URL", url), ("PREFIX", prefix)]
}

async fn cleanup(conn: &Connection, n: &Names) {
    let mut clean = Cleanup::new();
    for q in &n.queues {
        clean.queue(&q.name);
    }
    for ex in [&n.direct, &n.topic, &n.fanout, &n.headers] {
        clean.exchange(&ex.name);
    }
    clean.run(conn.channel().await.unwrap().as_ref()).await;
}

async fn consume(conn: &Connection, queue: &Queue, n: usize) -> Vec<Message> {
    let mut consumer = Consumer::builder(conn)
        .queue(queue.clone())
        .declare(false)
        .accept(Accept::all())
        .prefetch_count(1)
        .build()
        .await
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let m = recv(&mut consumer).await.unwrap();
        m.ack().await.unwrap();
        out.push(m);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publishes_rust_consumes() {
    let (Some(url), Some(python)) = (common::url(), python_peer()) else {
        return;
    };
    let prefix = unique("py2rs");
    let script = format!("{PY_DECLARE}{PY_PUBLISH}");
    run_python(&python, &script, &env(&url, &prefix))
        .await
        .unwrap();
    let conn = common::connection(&url, ConnectionOptions::new());
    let n = names(&prefix);
    let q = |suffix: &str| {
        n.queues
            .iter()
            .find(|q| q.name == format!("{prefix}-{suffix}"))
            .unwrap()
            .clone()
    };

    let m = &consume(&conn, &q("qd"), 1).await[0];
    assert_eq!(m.decode::<Value>().unwrap(), json!({"via": "direct"}));
    assert_eq!(m.content_type(), Some("application/json"));
    assert_eq!(m.content_encoding(), Some("utf-8"));
    assert_eq!(m.headers().get("x-origin"), Some(&json!("python")));
    assert_eq!(m.headers().get("n"), Some(&json!(7)));
    let props = m.properties();
    assert_eq!(props.correlation_id.as_deref(), Some("c1"));
    assert_eq!(props.reply_to.as_deref(), Some("r1"));
    assert_eq!(props.message_id.as_deref(), Some("m1"));
    assert_eq!(props.priority, Some(3));
    assert_eq!(props.expiration.as_deref(), Some("60000"));
    assert_eq!(props.delivery_mode, Some(DeliveryMode::Persistent));
    assert_eq!(m.delivery_info().exchange, n.direct.name);
    assert_eq!(m.delivery_info().routing_key, "rk");

    for (suffix, via) in [
        ("qt", "topic"),
        ("qf", "fanout"),
        ("qh", "headers"),
        ("qdef", "default"),
    ] {
        let got = consume(&conn, &q(suffix), 1).await;
        assert_eq!(
            got[0].decode::<Value>().unwrap(),
            json!({"via": via}),
            "{suffix}"
        );
    }

    let ser = consume(&conn, &q("qser"), 9).await;
    let value = json!({"s": "h\u{e9}llo", "n": 42, "l": [1, 2]});
    for (m, ct) in ser[..3].iter().zip([
        "application/json",
        "application/x-msgpack",
        "application/x-yaml",
    ]) {
        assert_eq!(m.content_type(), Some(ct));
        assert_eq!(m.decode::<Value>().unwrap(), value, "{ct}");
    }
    assert_eq!(ser[3].content_type(), Some("application/data"));
    match ser[3].payload().unwrap() {
        Payload::Bytes(b) => assert_eq!(&b[..], b"\x00\xffraw"),
        other => panic!("raw body decoded as {other:?}"),
    }
    for (m, name) in ser[4..].iter().zip(COMPRESSIONS) {
        assert!(m.headers().contains_key("compression"), "{name}");
        assert_eq!(
            m.decode::<Value>().unwrap(),
            json!({"c": name, "pad": "x".repeat(200)}),
            "{name}"
        );
    }

    let order: Vec<i64> = consume(&conn, &q("qprio"), 4)
        .await
        .iter()
        .map(|m| m.decode().unwrap())
        .collect();
    assert_eq!(order, [9, 6, 3, 0]);

    let requeued = &consume(&conn, &q("qreq"), 1).await[0];
    assert!(requeued.redelivered(), "requeued by Python, not flagged");
    assert_eq!(requeued.decode::<String>().unwrap(), "again");
    cleanup(&conn, &n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_publishes_python_consumes() {
    let (Some(url), Some(python)) = (common::url(), python_peer()) else {
        return;
    };
    let prefix = unique("rs2py");
    let conn = common::connection(&url, ConnectionOptions::new());
    let n = names(&prefix);
    let channel = conn.channel().await.unwrap();
    for ex in [&n.direct, &n.topic, &n.fanout, &n.headers] {
        ex.declare(channel.as_ref()).await.unwrap();
    }
    for q in &n.queues {
        q.declare(channel.as_ref()).await.unwrap();
    }
    let p = Producer::new(&conn);
    let send = |ex: &Exchange, opts: PublishOptions| opts.exchange(ex.clone());
    p.publish(
        json!({"via": "direct"}),
        send(&n.direct, PublishOptions::new())
            .routing_key("rk")
            .header("x-origin", "rust")
            .header("n", 7)
            .correlation_id("c1")
            .reply_to("r1")
            .message_id("m1")
            .priority(3)
            .expiration(std::time::Duration::from_secs(60)),
    )
    .await
    .unwrap();
    p.publish(
        json!({"via": "topic"}),
        send(&n.topic, PublishOptions::new()).routing_key("a.b"),
    )
    .await
    .unwrap();
    p.publish(
        json!({"via": "fanout"}),
        send(&n.fanout, PublishOptions::new()).routing_key("x"),
    )
    .await
    .unwrap();
    p.publish(
        json!({"via": "headers"}),
        send(&n.headers, PublishOptions::new()).header("kind", "report"),
    )
    .await
    .unwrap();
    p.publish(
        json!({"via": "default"}),
        PublishOptions::new().routing_key(format!("{prefix}-qdef")),
    )
    .await
    .unwrap();
    let qser = format!("{prefix}-qser");
    let value = json!({"s": "h\u{e9}llo", "n": 42, "l": [1, 2]});
    for s in ["json", "msgpack", "yaml"] {
        p.publish(
            value.clone(),
            PublishOptions::new().routing_key(&qser).serializer(s),
        )
        .await
        .unwrap();
    }
    p.publish(
        b"\x00\xffraw".to_vec(),
        PublishOptions::new()
            .routing_key(&qser)
            .content_type("application/data", "binary"),
    )
    .await
    .unwrap();
    for c in COMPRESSIONS {
        p.publish(
            json!({"c": c, "pad": "x".repeat(200)}),
            PublishOptions::new().routing_key(&qser).compression(c),
        )
        .await
        .unwrap();
    }
    for pr in [0u8, 9, 3, 6] {
        p.publish(
            json!(pr),
            PublishOptions::new()
                .routing_key(format!("{prefix}-qprio"))
                .priority(pr),
        )
        .await
        .unwrap();
    }
    // Rust takes the message and requeues it: Python must see redelivered.
    p.publish(
        json!("again"),
        PublishOptions::new().routing_key(format!("{prefix}-qreq")),
    )
    .await
    .unwrap();
    {
        let qreq = n.queues.last().unwrap().clone();
        let mut c = Consumer::builder(&conn)
            .queue(qreq)
            .declare(false)
            .prefetch_count(1)
            .build()
            .await
            .unwrap();
        let m = recv(&mut c).await.unwrap();
        m.requeue().await.unwrap();
        c.close().await.unwrap();
    }

    // Python redeclares everything (equivalence is checked by RabbitMQ) and reads.
    let script = format!("{PY_DECLARE}{PY_CONSUME}");
    let out = run_python(&python, &script, &env(&url, &prefix))
        .await
        .unwrap();
    let res: Value = serde_json::from_str(out.trim()).unwrap();

    let d = &res["qd"][0];
    assert_eq!(d["body"], json!({"via": "direct"}));
    assert_eq!(d["content_type"], "application/json");
    assert_eq!(d["content_encoding"], "utf-8");
    assert_eq!(d["headers"], json!({"x-origin": "rust", "n": 7}));
    assert_eq!(d["properties"]["correlation_id"], "c1");
    assert_eq!(d["properties"]["reply_to"], "r1");
    assert_eq!(d["properties"]["message_id"], "m1");
    assert_eq!(d["properties"]["priority"], 3);
    assert_eq!(d["properties"]["delivery_mode"], 2);
    assert_eq!(d["properties"]["expiration"], "60000");
    assert_eq!(d["exchange"], n.direct.name.as_str());
    assert_eq!(d["routing_key"], "rk");
    for (key, via) in [
        ("qt", "topic"),
        ("qf", "fanout"),
        ("qh", "headers"),
        ("qdef", "default"),
    ] {
        assert_eq!(res[key][0]["body"], json!({"via": via}), "{key}");
        // py-amqp's defaults: headers {} and priority 0 are always sent.
        assert_eq!(res[key][0]["properties"]["priority"], 0, "{key}");
    }
    assert_eq!(res["qh"][0]["headers"], json!({"kind": "report"}));
    assert_eq!(res["qt"][0]["headers"], json!({}));
    let ser = res["qser"].as_array().unwrap();
    assert_eq!(ser.len(), 9, "{ser:?}");
    for (m, ct) in ser[..3].iter().zip([
        "application/json",
        "application/x-msgpack",
        "application/x-yaml",
    ]) {
        assert_eq!(m["content_type"], ct);
        assert_eq!(m["body"], value, "{ct}");
    }
    assert_eq!(ser[3]["body"], json!({"raw": "AP9yYXc="}));
    for (m, c) in ser[4..].iter().zip(COMPRESSIONS) {
        assert_eq!(m["body"], json!({"c": c, "pad": "x".repeat(200)}), "{c}");
        assert!(m["headers"]["compression"].is_string(), "{c}");
    }
    let order: Vec<&Value> = res["qprio"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["body"])
        .collect();
    assert_eq!(order, [&json!(9), &json!(6), &json!(3), &json!(0)]);
    assert_eq!(res["qreq"][0]["body"], "again");
    assert_eq!(res["qreq"][0]["redelivered"], true);
    cleanup(&conn, &n).await;
}

/// The Celery 5.7 app of the delayed-task test: its default queue is a
/// quorum queue on a topic exchange of the same name (native delayed
/// delivery needs a topic or fanout exchange), publisher confirms on, and
/// one task that writes when it ran and how it got there.
const CELERY_APP: &str = r#"
import json, os, time
from celery import Celery

QUEUE = os.environ['KOMBU_RS_QUEUE']
app = Celery('kombu_rs_celery_delay', broker=os.environ['KOMBU_RS_URL'])
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_exchange_type='topic',
    task_default_routing_key=QUEUE,
    task_default_queue_type='quorum',
    worker_detect_quorum_queues=True,
    broker_transport_options={'confirm_publish': True},
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)

@app.task(name='kombu_rs.record_run', bind=True)
def record_run(self, path):
    info = self.request.delivery_info or {}
    with open(path + '.tmp', 'w') as f:
        json.dump({'ran_at': time.time(), 'id': self.request.id, 'eta': self.request.eta,
                   'exchange': info.get('exchange'), 'routing_key': info.get('routing_key')}, f)
    os.rename(path + '.tmp', path)
"#;

/// A worker process, killed (and reaped) when the test ends, even on a panic.
struct Worker(std::process::Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Seconds since the epoch as Python's `datetime.isoformat()` writes a UTC
/// time: `2026-12-05T06:39:07.763807+00:00` (what Celery puts in `eta`).
fn iso_utc(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    let (days, secs) = ((d.as_secs() / 86_400) as i64, d.as_secs() % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        d.subsec_micros()
    )
}

/// A Celery 5.7 worker with quorum queues (so native delayed delivery: it
/// declares the `celery_delayed_*` levels and binds its queue at startup)
/// runs a task Rust published with `delay(3 s)`, as Celery's own
/// `apply_async(countdown=3)` message (protocol 2 headers, `eta` included),
/// no sooner than 3 s after the publish and within 3 s after that; the
/// task saw the message come from `celery_delayed_delivery` with the delay
/// digits in its routing key, so the broker held it, not the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_worker_runs_a_task_rust_delayed() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    let (Some(url), Some(python)) = (common::url(), python_peer()) else {
        return;
    };
    let has_celery = Command::new(&python)
        .args([
            "-c",
            "import celery; assert celery.__version__.startswith('5.7')",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !has_celery {
        let why = "KOMBU_TEST_PYTHON has no Celery 5.7 (run `cargo xtask python`)";
        assert!(std::env::var("KOMBU_TEST_REQUIRE").is_err(), "{why}");
        eprintln!("SKIP: {why}");
        return;
    }
    let queue = unique("celery-delay");
    let dir = std::env::temp_dir().join(unique("kombu-rs-celery"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kombu_rs_celery_delay.py"), CELERY_APP).unwrap();
    let out = dir.join("ran.json");
    let mut child = Command::new(&python)
        .args(["-m", "celery", "-A", "kombu_rs_celery_delay", "worker"])
        .args(["--pool=solo", "--loglevel=INFO", "-Q", &queue])
        .args([
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ])
        .arg(format!("--hostname={queue}@localhost"))
        .current_dir(&dir)
        .env("PYTHONPATH", &dir)
        .env("KOMBU_RS_URL", &url)
        .env("KOMBU_RS_QUEUE", &queue)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Celery worker");
    let mut log = kombu_testkit::ChildLines::new(child.stderr.take().unwrap());
    let worker = Worker(child);
    // Ready comes after its DelayedDelivery step declared and bound.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.next_within(left) {
            Some(line) if line.ends_with(" ready.") => break,
            Some(line) => seen.push(line),
            None => panic!(
                "the Celery worker was not ready within 60 s:\n{}",
                seen.join("\n")
            ),
        }
    }

    let conn = common::connection(
        &url,
        ConnectionOptions::new().transport_option("confirm_publish", true),
    );
    let id = unique("task");
    let countdown = Duration::from_secs(3);
    let sent = SystemTime::now();
    let eta = sent + countdown;
    let path = out.to_str().unwrap();
    Producer::new(&conn)
        .publish(
            json!([[path], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]),
            PublishOptions::new()
                .exchange(Exchange::topic(&queue))
                .routing_key(&queue)
                .eta(eta)
                .header("lang", "py")
                .header("task", "kombu_rs.record_run")
                .header("id", id.as_str())
                .header("shadow", Value::Null)
                .header("eta", iso_utc(eta))
                .header("expires", Value::Null)
                .header("group", Value::Null)
                .header("group_index", Value::Null)
                .header("retries", 0)
                .header("timelimit", json!([null, null]))
                .header("root_id", id.as_str())
                .header("parent_id", Value::Null)
                .header("argsrepr", format!("[{path:?}]"))
                .header("kwargsrepr", "{}")
                .header("origin", "kombu-rs")
                .header("ignore_result", false)
                .header("replaced_task_nesting", 0)
                .header("stamped_headers", Value::Null)
                .header("stamps", json!({}))
                .correlation_id(id.as_str())
                .reply_to(""),
        )
        .await
        .unwrap();

    let wait_until = Instant::now() + countdown + Duration::from_secs(15);
    while !out.exists() {
        if Instant::now() > wait_until {
            let rest = log.rest_within(Duration::from_millis(200));
            panic!(
                "the Celery worker did not run the task within {:?}:\n{}",
                countdown + Duration::from_secs(15),
                seen.iter()
                    .chain(&rest)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(worker);
    let ran: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let sent_at = sent.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let after = ran["ran_at"].as_f64().unwrap() - sent_at;
    eprintln!("Celery ran the task {after:.3} s after the publish (countdown 3 s): {ran}");
    assert_eq!(ran["id"], id.as_str());
    assert!(after >= countdown.as_secs_f64(), "ran early: {after:.3} s");
    assert!(
        after <= countdown.as_secs_f64() + 3.0,
        "ran late: {after:.3} s"
    );
    assert_eq!(ran["exchange"], "celery_delayed_delivery");
    assert_eq!(
        ran["routing_key"],
        format!("{}1.1.{queue}", "0.".repeat(26)).as_str()
    );
    let mut clean = Cleanup::new();
    clean.queue(&queue);
    clean.exchange(&queue);
    clean.run(conn.channel().await.unwrap().as_ref()).await;
    conn.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The other way: Celery 5.7's `send_task(countdown=2)` with quorum queues
/// (native delayed delivery: to `celery_delayed_27`) reaches a Rust
/// consumer that declared the levels and bound its queue with
/// `kombu_amqp::delayed::bind_queue`, as a Celery worker does at startup:
/// no sooner than 2 s after the send, the task message intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_countdown_reaches_a_rust_consumer() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    let (Some(url), Some(python)) = (common::url(), python_peer()) else {
        return;
    };
    let has_celery = std::process::Command::new(&python)
        .args([
            "-c",
            "import celery; assert celery.__version__.startswith('5.7')",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !has_celery {
        let why = "KOMBU_TEST_PYTHON has no Celery 5.7 (run `cargo xtask python`)";
        assert!(std::env::var("KOMBU_TEST_REQUIRE").is_err(), "{why}");
        eprintln!("SKIP: {why}");
        return;
    }
    let queue_name = unique("celery-countdown");
    let dir = std::env::temp_dir().join(unique("kombu-rs-celery"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kombu_rs_celery_delay.py"), CELERY_APP).unwrap();

    // The queue as Celery's worker would declare it, and its delay bindings.
    let conn = common::connection(&url, ConnectionOptions::new());
    let channel = conn.channel().await.unwrap();
    let exchange = Exchange::topic(&queue_name);
    let queue = Queue::new(&queue_name)
        .quorum()
        .bind(&exchange, &queue_name);
    queue.declare(channel.as_ref()).await.unwrap();
    kombu_amqp::delayed::declare_topology(
        channel.as_ref(),
        kombu_amqp::delayed::DelayQueueType::Quorum,
    )
    .await
    .unwrap();
    kombu_amqp::delayed::bind_queue(channel.as_ref(), &queue)
        .await
        .unwrap();

    let script = r#"
import json, time
from kombu_rs_celery_delay import app
sent = time.time()
r = app.send_task('kombu_rs.record_run', args=['unused'], countdown=2)
print(json.dumps({'sent': sent, 'id': r.id}))
"#;
    let dir_text = dir.to_str().unwrap().to_owned();
    let out = run_python(
        &python,
        script,
        &[
            ("PYTHONPATH", dir_text.as_str()),
            ("KOMBU_RS_URL", url.as_str()),
            ("KOMBU_RS_QUEUE", queue_name.as_str()),
        ],
    )
    .await
    .unwrap();
    let sent: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let mut consumer = Consumer::builder(&conn)
        .queue(queue.clone())
        .declare(false)
        .accept(Accept::all())
        .prefetch_count(1)
        .build()
        .await
        .unwrap();
    let m = kombu_testkit::recv_within(&mut consumer, Duration::from_secs(15), "the task")
        .await
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let after = now - sent["sent"].as_f64().unwrap();
    eprintln!("Celery's countdown=2 task reached Rust {after:.3} s after the send");
    m.ack().await.unwrap();
    assert!(after >= 2.0, "early: {after:.3} s");
    assert!(after <= 5.0, "late: {after:.3} s");
    assert_eq!(m.headers().get("task"), Some(&json!("kombu_rs.record_run")));
    assert_eq!(m.headers().get("id"), Some(&sent["id"]));
    assert!(m.headers().get("eta").is_some_and(Value::is_string));
    assert_eq!(
        m.delivery_info().routing_key,
        format!("{}1.0.{queue_name}", "0.".repeat(26))
    );
    let body: Value = m.decode().unwrap();
    assert_eq!(body[0], json!(["unused"]));
    drop(consumer);
    let mut clean = Cleanup::new();
    clean.queue(&queue_name);
    clean.exchange(&queue_name);
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
