//! Publish and consume+ack rates of N 100-byte messages through kombu-amqp,
//! raw lapin doing the same work, and Python kombu 5.7 + py-amqp, in one run.
//!
//! ```text
//! cargo run --release -p kombu-amqp --example bench -- [N] [URL] [PYTHON]
//! ```
//! Defaults: N=20000, URL=$KOMBU_TEST_AMQP_URL or amqp://guest:guest@127.0.0.1:5672//,
//! PYTHON=$KOMBU_TEST_PYTHON (the Python rows are left out without it).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kombu_core::{
    Connection, ConnectionOptions, Consumer, Payload, Producer, PublishOptions, Queue, Registry,
};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;

const PREFETCH: u16 = 100;

fn rate(n: usize, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64()
}

async fn kombu_run(url: &str, n: usize, confirms: bool) -> (f64, f64) {
    let mut registry = Registry::new();
    kombu_amqp::register(&mut registry);
    let options = ConnectionOptions::new().transport_option("confirm_publish", confirms);
    let conn = Connection::with_options(url, options, Arc::new(registry)).unwrap();
    let queue = Queue::new(format!("bench-kombu-{}", std::process::id())).durable(false);
    let channel = conn.channel().await.unwrap();
    queue.declare(channel.as_ref()).await.unwrap();
    let producer = Producer::new(&conn);
    let body = vec![b'x'; 100];
    let started = Instant::now();
    for _ in 0..n {
        producer
            .publish(
                Payload::Bytes(body.clone().into()),
                PublishOptions::new().routing_key(&queue.name),
            )
            .await
            .unwrap();
    }
    let publish = rate(n, started);
    let mut consumer = Consumer::builder(&conn)
        .queue(queue.clone())
        .declare(false)
        .prefetch_count(PREFETCH)
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..n {
        let m = consumer.next().await.unwrap().unwrap();
        m.ack().await.unwrap();
    }
    let consume = rate(n, started);
    channel.queue_delete(&queue.name).await.unwrap();
    conn.close().await.unwrap();
    (publish, consume)
}

async fn lapin_run(url: &str, n: usize, confirms: bool) -> (f64, f64) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
    }
    let name = format!("bench-lapin-{}", std::process::id());
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let body = vec![b'x'; 100];
    let started = Instant::now();
    for _ in 0..n {
        // The same properties kombu sends.
        let props = BasicProperties::default()
            .with_content_type("application/data".into())
            .with_content_encoding("binary".into())
            .with_headers(FieldTable::default())
            .with_delivery_mode(2)
            .with_priority(0);
        let confirm = channel
            .basic_publish(
                "".into(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .unwrap();
        if confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
    }
    let publish = rate(n, started);
    let consumer_channel = conn.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            name.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..n {
        let d = consumer.next().await.unwrap().unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let consume = rate(n, started);
    channel
        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close(200, "OK".into()).await.unwrap();
    (publish, consume)
}

const PYTHON: &str = r#"
import os, sys, time
from kombu import Connection, Queue, Producer, Consumer
N = int(os.environ['N']); confirms = os.environ['CONFIRMS'] == '1'
conn = Connection(os.environ['URL'], transport_options={'confirm_publish': confirms})
ch = conn.channel()
q = Queue('bench-py-%d' % os.getpid(), durable=False)
q(ch).declare()
p = Producer(ch)
body = b'x' * 100
t = time.perf_counter()
for _ in range(N):
    p.publish(body, routing_key=q.name, content_type='application/data', content_encoding='binary')
pub = N / (time.perf_counter() - t)
got = [0]
def on(body, m):
    m.ack(); got[0] += 1
c = Consumer(conn.channel(), [q], callbacks=[on], prefetch_count=100, accept=['application/data'])
t = time.perf_counter()
with c:
    while got[0] < N:
        conn.drain_events(timeout=10)
con = N / (time.perf_counter() - t)
q(ch).delete()
print('%.0f %.0f' % (pub, con))
"#;

fn python_run(python: &str, url: &str, n: usize, confirms: bool) -> Option<(f64, f64)> {
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(PYTHON)
        .env("URL", url)
        .env("N", n.to_string())
        .env("CONFIRMS", if confirms { "1" } else { "0" })
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("python failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace().map(|s| s.parse::<f64>().unwrap());
    Some((parts.next()?, parts.next()?))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let url = args
        .next()
        .or_else(|| std::env::var("KOMBU_TEST_AMQP_URL").ok())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672//".into());
    let python = args
        .next()
        .or_else(|| std::env::var("KOMBU_TEST_PYTHON").ok());
    // lapin wants vhost `/` as %2f.
    let lapin_url = url.trim_end_matches("//").to_owned() + "/%2f";
    println!("{n} messages of 100 bytes, prefetch {PREFETCH}, one publisher awaiting each publish");
    println!(
        "{:<28} {:>14} {:>18}",
        "client", "publish msg/s", "consume+ack msg/s"
    );
    for confirms in [false, true] {
        let label = if confirms { " (confirms)" } else { "" };
        let (p, c) = kombu_run(&url, n, confirms).await;
        println!(
            "{:<28} {:>14.0} {:>18.0}",
            format!("kombu-amqp{label}"),
            p,
            c
        );
        let (lp, lc) = lapin_run(&lapin_url, n, confirms).await;
        println!(
            "{:<28} {:>14.0} {:>18.0}",
            format!("raw lapin{label}"),
            lp,
            lc
        );
        println!(
            "{:<28} {:>13.0}% {:>17.0}%",
            "  kombu-amqp / lapin",
            100.0 * p / lp,
            100.0 * c / lc
        );
        if let Some(python) = &python {
            if let Some((pp, pc)) = python_run(python, &url, n, confirms) {
                println!(
                    "{:<28} {:>14.0} {:>18.0}",
                    format!("python kombu+py-amqp{label}"),
                    pp,
                    pc
                );
            }
        }
    }
}
