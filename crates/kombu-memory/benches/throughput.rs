//! `memory://` throughput through the user API, the same workload as
//! `kombu bench --url memory://` (one producer publishes N messages of 100
//! bytes to one queue, then one consumer with prefetch 100 receives and
//! acks them all), without the CLI around it: quick to build, and small
//! enough to run under `valgrind --tool=callgrind`.
//!
//! ```sh
//! cargo bench -p kombu-memory --bench throughput -- 200000
//! ```
//!
//! Arguments (all optional): messages (default 200000), prefetch (100),
//! body size in bytes (100). Prints msgs/s and CPU µs per message for each
//! phase.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kombu_core::{Connection, Consumer, Payload, Producer, PublishOptions, Queue, Registry};

/// Process CPU time (user + system), from `/proc/self/stat` on Linux.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// Peak resident set size, from `/proc/self/status`.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn report(phase: &str, messages: u64, wall: Duration, cpu: Option<Duration>) {
    let rate = messages as f64 / wall.as_secs_f64();
    let cpu_us = cpu.map_or(f64::NAN, |c| c.as_secs_f64() * 1e6 / messages as f64);
    println!("{phase:<12} {rate:>12.0} msgs/s  {cpu_us:>6.2} µs CPU/msg");
}

fn arg(index: usize, default: u64) -> u64 {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

async fn run(messages: u64, prefetch: u16, size: usize) -> kombu_core::Result<()> {
    let mut registry = Registry::new();
    kombu_memory::register(&mut registry);
    let registry = std::sync::Arc::new(registry);
    let url = format!("memory://bench-{}", std::process::id());
    let admin = Connection::with_registry(&url, registry.clone())?;
    let channel = admin.channel().await?;
    let queue = "bench";
    Queue::new(queue).declare(channel.as_ref()).await?;
    let body = Bytes::from(vec![b'x'; size]);

    let conn = Connection::with_registry(&url, registry.clone())?;
    let producer = Producer::new(&conn);
    producer.channel().await?;
    let (wall, cpu) = (Instant::now(), cpu_time());
    let publisher = tokio::spawn(async move {
        for _ in 0..messages {
            producer
                .publish(
                    Payload::from(body.clone()),
                    PublishOptions::new().routing_key(queue),
                )
                .await?;
        }
        Ok::<(), kombu_core::Error>(())
    });
    publisher.await.expect("publisher task")?;
    let cpu_used = cpu_time().zip(cpu).map(|(b, a)| b - a);
    report("publish", messages, wall.elapsed(), cpu_used);
    println!(
        "  peak RSS after publish: {:.1} MiB",
        peak_rss_mib().unwrap_or(f64::NAN)
    );

    let conn = Connection::with_registry(&url, registry)?;
    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(queue))
        .declare(false)
        .prefetch_count(prefetch)
        .build()
        .await?;
    let (wall, cpu) = (Instant::now(), cpu_time());
    let consuming = tokio::spawn(async move {
        for _ in 0..messages {
            let message = consumer.next().await.expect("a message")?;
            message.ack().await?;
        }
        consumer.close().await
    });
    consuming.await.expect("consumer task")?;
    let cpu_used = cpu_time().zip(cpu).map(|(b, a)| b - a);
    report("consume+ack", messages, wall.elapsed(), cpu_used);
    println!("  peak RSS: {:.1} MiB", peak_rss_mib().unwrap_or(f64::NAN));
    channel.queue_delete(queue).await?;
    Ok(())
}

fn main() {
    let messages = arg(0, 200_000);
    let prefetch = u16::try_from(arg(1, 100)).unwrap_or(100);
    let size = usize::try_from(arg(2, 100)).unwrap_or(100);
    println!("memory:// {messages} messages of {size} bytes, prefetch {prefetch}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime
        .block_on(run(messages, prefetch, size))
        .expect("bench run");
}
