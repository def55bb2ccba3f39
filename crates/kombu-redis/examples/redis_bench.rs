//! Publish and consume+ack rates of N messages of 100 B on Redis, for
//! kombu-rs and (when `KOMBU_TEST_PYTHON` is set) Python kombu 5.7 in the
//! same run, same workload.
//!
//! ```text
//! cargo run --release -p kombu-redis --example redis_bench -- [N] [URL]
//! ```

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kombu_core::{Consumer, Payload, Producer, PublishOptions, Queue, Registry};

const PY: &str = r#"
import os, time, socket
from kombu import Connection, Queue, Producer, Consumer
n = int(os.environ['N']); q = os.environ['Q']; body = b'x' * 100
with Connection(os.environ['URL']) as c:
    p = Producer(c)
    t = time.perf_counter()
    for _ in range(n):
        p.publish(body, routing_key=q, content_type='application/data', content_encoding='binary')
    pub = n / (time.perf_counter() - t)
    got = [0]
    def cb(b, m):
        m.ack(); got[0] += 1
    t = time.perf_counter()
    with Consumer(c, [Queue(q)], callbacks=[cb], accept=['application/data'], prefetch_count=100):
        while got[0] < n:
            try: c.drain_events(timeout=2)
            except socket.timeout: break
    con = got[0] / (time.perf_counter() - t)
    c.default_channel.queue_delete(q)
print(f"{pub:.0f} {con:.0f}")
"#;

#[tokio::main]
async fn main() -> kombu_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(20_000, |a| a.parse().expect("N"));
    let url = args
        .next()
        .or_else(|| std::env::var("KOMBU_TEST_REDIS_URL").ok())
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    let mut registry = Registry::new();
    kombu_redis::register(&mut registry);
    let conn = kombu_core::Connection::with_registry(&url, Arc::new(registry))?;
    let body = Payload::Bytes(vec![b'x'; 100].into());

    // Publish, one await after another (as Python does).
    let q = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let p = Producer::new(&conn);
    let t = Instant::now();
    for _ in 0..n {
        p.publish(body.clone(), PublishOptions::new().routing_key(&q))
            .await?;
    }
    let publish = n as f64 / t.elapsed().as_secs_f64();

    // Publish from 16 concurrent tasks (pipelined on the one connection).
    let q2 = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let t = Instant::now();
    let tasks: Vec<tokio::task::JoinHandle<kombu_core::Result<()>>> = (0..16)
        .map(|_| {
            let (p, q2, body) = (Producer::new(&conn), q2.clone(), body.clone());
            tokio::spawn(async move {
                for _ in 0..n / 16 {
                    p.publish(body.clone(), PublishOptions::new().routing_key(&q2))
                        .await?;
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task")?;
    }
    let publish_concurrent = (n / 16 * 16) as f64 / t.elapsed().as_secs_f64();

    // Consume and ack, prefetch 100.
    let t = Instant::now();
    let mut c = Consumer::builder(&conn)
        .queue(Queue::new(&q))
        .prefetch_count(100)
        .accept(kombu_core::Accept::all())
        .build()
        .await?;
    for _ in 0..n {
        let m = c.next().await.expect("stream")?;
        m.ack().await?;
    }
    let consume = n as f64 / t.elapsed().as_secs_f64();
    let channel = conn.channel().await?;
    channel.queue_delete(&q).await?;
    channel.queue_delete(&q2).await?;
    conn.close().await?;

    println!("messages: {n} x 100 B, {url}");
    println!("kombu-rs publish (sequential):      {publish:>10.0} msg/s");
    println!("kombu-rs publish (16 tasks):        {publish_concurrent:>10.0} msg/s");
    println!("kombu-rs consume+ack (prefetch 100): {consume:>9.0} msg/s");
    if let Ok(py) = std::env::var("KOMBU_TEST_PYTHON") {
        let q = format!("bench-py-{}", uuid::Uuid::new_v4().simple());
        let out = std::process::Command::new(py)
            .arg("-c")
            .arg(PY)
            .env("N", n.to_string())
            .env("Q", &q)
            .env("URL", &url)
            .output()
            .expect("python");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text
            .split_whitespace()
            .map(|x| x.parse::<f64>().unwrap_or(0.0));
        let (py_pub, py_con) = (parts.next().unwrap_or(0.0), parts.next().unwrap_or(0.0));
        println!("python kombu 5.7 publish:           {py_pub:>10.0} msg/s");
        println!("python kombu 5.7 consume+ack:       {py_con:>10.0} msg/s");
        if py_pub > 0.0 && py_con > 0.0 {
            println!(
                "ratio: publish {:.1}x (16 tasks {:.1}x), consume+ack {:.1}x",
                publish / py_pub,
                publish_concurrent / py_pub,
                consume / py_con
            );
        }
    }
    Ok(())
}
