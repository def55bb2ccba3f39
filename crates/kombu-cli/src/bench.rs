//! `kombu bench`: throughput, round-trip latency and peak memory of a transport.
//!
//! Three phases on a fresh queue, one after the other:
//! 1. publish: P tasks, each with its own connection and producer, publish
//!    N messages of BYTES (raw bytes, `application/data`) between them,
//!    each task with `--in-flight` publishes under way at once (concurrent
//!    `Producer::publish` calls: they pipeline on the wire);
//! 2. consume+ack: C tasks, each with its own connection and consumer
//!    (prefetch as given), receive and ack the N messages, which are all
//!    waiting in the queue when the phase starts;
//! 3. round trip: one producer and one consumer (prefetch 1) on a second
//!    queue; each sample times one message from the publish call to its
//!    arrival at the consumer (the ack is not timed), one in flight at a
//!    time, after 10 untimed warm-up trips.
//!
//! Peak RSS is the process's high-water mark (`VmHWM`), read at the end.
//! CPU time per message (user + system, whole process, from
//! `/proc/self/stat`) is reported too: unlike msgs/s it does not depend on
//! how busy the machine is.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kombu::serialization::Payload;
use kombu::{Consumer, Producer, PublishOptions, Queue};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cli::BenchArgs;
use crate::connect;
use crate::failure::{Failure, Outcome};

/// A phase fails when its counter has not moved for this long.
const STALL: Duration = Duration::from_secs(30);
/// Untimed round trips before the timed ones.
const WARM_UP: u32 = 10;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub url: String,
    pub transport: String,
    pub messages: u64,
    pub size: usize,
    pub producers: u16,
    pub in_flight: u16,
    pub consumers: u16,
    pub prefetch: u16,
    pub publish: Took,
    pub consume: Took,
    pub rtt: Vec<Duration>,
    pub peak_rss_bytes: Option<u64>,
}

fn per_sec(count: u64, took: Duration) -> f64 {
    let secs = took.as_secs_f64();
    if secs > 0.0 {
        (count as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// The `p`-th percentile (0 < p <= 100) by nearest rank, in microseconds.
pub fn percentile_us(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some((sorted[index].as_secs_f64() * 1e7).round() / 10.0)
}

impl Report {
    /// The `--json` object.
    pub fn to_json(&self) -> Value {
        json!({
            "url": self.url,
            "transport": self.transport,
            "messages": self.messages,
            "size": self.size,
            "producers": self.producers,
            "in_flight": self.in_flight,
            "consumers": self.consumers,
            "prefetch": self.prefetch,
            "publish_secs": self.publish.wall.as_secs_f64(),
            "publish_per_sec": per_sec(self.messages, self.publish.wall),
            "publish_cpu_us_per_msg": cpu_us_per_message(&self.publish, self.messages),
            "consume_secs": self.consume.wall.as_secs_f64(),
            "consume_per_sec": per_sec(self.messages, self.consume.wall),
            "consume_cpu_us_per_msg": cpu_us_per_message(&self.consume, self.messages),
            "rtt_samples": self.rtt.len(),
            "rtt_method": "single round trips: publish one message, time until the consumer has it (prefetch 1, ack not timed)",
            "rtt_p50_us": percentile_us(&self.rtt, 50.0),
            "rtt_p99_us": percentile_us(&self.rtt, 99.0),
            "peak_rss_bytes": self.peak_rss_bytes,
        })
    }

    /// The table for people.
    pub fn to_text(&self) -> String {
        let plural = |n: u16, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let mut out = format!(
            "kombu bench on {}: {} messages of {} bytes, {} ({} in flight each), {}, prefetch {}\n",
            self.url,
            thousands(self.messages as f64),
            self.size,
            plural(self.producers, "producer"),
            self.in_flight,
            plural(self.consumers, "consumer"),
            self.prefetch
        );
        for (label, took) in [("publish", &self.publish), ("consume+ack", &self.consume)] {
            let cpu = cpu_us_per_message(took, self.messages)
                .map(|us| format!(", {us:.1} µs CPU per message"))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {label:<12}  {:>12} msgs/s  ({:.2} s{cpu})\n",
                thousands(per_sec(self.messages, took.wall)),
                took.wall.as_secs_f64()
            ));
        }
        match (percentile_us(&self.rtt, 50.0), percentile_us(&self.rtt, 99.0)) {
            (Some(p50), Some(p99)) => out.push_str(&format!(
                "  round trip    p50 {p50:.1} µs, p99 {p99:.1} µs  ({} single round trips, publish to receipt)\n",
                self.rtt.len()
            )),
            _ => out.push_str("  round trip    not measured (--rtt-samples 0)\n"),
        }
        match self.peak_rss_bytes {
            Some(bytes) => out.push_str(&format!(
                "  peak RSS      {:.1} MiB\n",
                bytes as f64 / (1024.0 * 1024.0)
            )),
            None => out.push_str("  peak RSS      unknown (no /proc/self/status)\n"),
        }
        out
    }
}

/// `1234567.8` as `1,234,568`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The process's peak resident set size (`VmHWM`), in bytes (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system) the process has used so far (Linux; clock
/// ticks of /proc/self/stat, taken as 100 per second).
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at `) `.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Wall-clock and CPU time of one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Took {
    pub wall: Duration,
    pub cpu: Option<Duration>,
}

/// Times a phase from `start` on.
struct Clock {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            cpu: cpu_time(),
            wall: Instant::now(),
        }
    }

    fn stop(&self) -> Took {
        let wall = self.wall.elapsed();
        let cpu = match (self.cpu, cpu_time()) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
            _ => None,
        };
        Took { wall, cpu }
    }
}

/// CPU microseconds per message, when known.
fn cpu_us_per_message(took: &Took, messages: u64) -> Option<f64> {
    took.cpu
        .map(|cpu| (cpu.as_secs_f64() * 1e6 / messages.max(1) as f64 * 10.0).round() / 10.0)
}

/// A queue name no other run uses.
fn unique_queue() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "kombu-bench-{:x}-{:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

/// A progress bar on stderr, only when stderr is a terminal.
struct Progress {
    bar: Option<(ProgressBar, JoinHandle<()>)>,
}

impl Progress {
    fn start(label: &str, total: u64, counter: Arc<AtomicU64>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                ticking.set_position(counter.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Progress {
            bar: Some((bar, ticker)),
        }
    }

    fn finish(self) {
        if let Some((bar, ticker)) = self.bar {
            ticker.abort();
            bar.finish_and_clear();
        }
    }
}

/// Wait for every task; fail when one fails or `counter` stalls.
async fn supervise(
    phase: &str,
    tasks: Vec<JoinHandle<kombu::Result<()>>>,
    counter: &AtomicU64,
    total: u64,
) -> Outcome {
    let all = futures::future::try_join_all(tasks);
    tokio::pin!(all);
    let mut last = counter.load(Ordering::Relaxed);
    let mut moved = Instant::now();
    loop {
        tokio::select! {
            joined = &mut all => {
                let results = joined.map_err(|err| Failure::failed(format!("{phase}: a task failed: {err}")))?;
                for result in results {
                    result.map_err(|err| Failure::failed(format!("{phase}: {err}")))?;
                }
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                let now = counter.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    moved = Instant::now();
                } else if moved.elapsed() >= STALL {
                    return Err(Failure::failed(format!(
                        "{phase} stalled: {now} of {total} messages, none for {} s",
                        STALL.as_secs()
                    )));
                }
            }
        }
    }
}

/// How many of `total` messages worker `index` of `workers` handles.
fn share(total: u64, workers: u16, index: u16) -> u64 {
    let workers = u64::from(workers);
    total / workers + u64::from(u64::from(index) < total % workers)
}

async fn publish_phase(args: &BenchArgs, queue: &str, body: &Bytes) -> Outcome<Took> {
    let mut producers = Vec::new();
    for index in 0..args.producers {
        let conn = connect::open(&args.broker).await?;
        let producer = Producer::new(&conn);
        producer.channel().await?;
        producers.push((conn, producer, share(args.messages, args.producers, index)));
    }
    let published = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("publish", args.messages, published.clone());
    let clock = Clock::start();
    let tasks = producers
        .into_iter()
        .map(|(conn, producer, count)| {
            let (body, queue, published) = (body.clone(), queue.to_owned(), published.clone());
            let in_flight = args.in_flight;
            tokio::spawn(async move {
                if in_flight <= 1 {
                    // Each publish awaited before the next.
                    for _ in 0..count {
                        producer
                            .publish(
                                Payload::from(body.clone()),
                                PublishOptions::new().routing_key(queue.as_str()),
                            )
                            .await?;
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(channel) = producer.channel().await {
                        let _ = channel.close().await;
                    }
                    return conn.close().await;
                }
                // `in_flight` concurrent publishes on the one producer: each
                // still gets its own result.
                let mut results = futures::stream::iter(0..count)
                    .map(|_| {
                        producer.publish(
                            Payload::from(body.clone()),
                            PublishOptions::new().routing_key(queue.as_str()),
                        )
                    })
                    .buffer_unordered(usize::from(in_flight));
                while let Some(result) = results.next().await {
                    result?;
                    published.fetch_add(1, Ordering::Relaxed);
                }
                drop(results);
                if let Ok(channel) = producer.channel().await {
                    let _ = channel.close().await;
                }
                conn.close().await
            })
        })
        .collect();
    let result = supervise("publish", tasks, &published, args.messages).await;
    let took = clock.stop();
    progress.finish();
    result.map(|_| took)
}

async fn consume_phase(args: &BenchArgs, queue: &str) -> Outcome<Took> {
    let consumed = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let total = args.messages;
    let mut connections = Vec::new();
    for _ in 0..args.consumers {
        connections.push(connect::open(&args.broker).await?);
    }
    let progress = Progress::start("consume+ack", total, consumed.clone());
    let clock = Clock::start();
    let mut tasks = Vec::new();
    for conn in connections {
        let mut consumer = Consumer::builder(&conn)
            .queue(Queue::new(queue))
            .declare(false)
            .prefetch_count(args.prefetch)
            .build()
            .await?;
        let (consumed, done_tx, mut done_rx) = (consumed.clone(), done_tx.clone(), done_rx.clone());
        tasks.push(tokio::spawn(async move {
            let result = async {
                // Set up once, polled (first) with every message.
                let done = done_rx.wait_for(|done| *done);
                tokio::pin!(done);
                loop {
                    let next = tokio::select! {
                        biased;
                        _ = &mut done => return Ok(()),
                        next = consumer.next() => next,
                    };
                    let Some(message) = next else { return Ok(()) };
                    message?.ack().await?;
                    if consumed.fetch_add(1, Ordering::Relaxed) + 1 >= total {
                        let _ = done_tx.send(true);
                    }
                }
            }
            .await;
            let closed = consumer.close().await;
            let _ = conn.close().await;
            result.and(closed)
        }));
    }
    let result = supervise("consume", tasks, &consumed, total).await;
    let took = clock.stop();
    let _ = done_tx.send(true);
    progress.finish();
    result.map(|_| took)
}

async fn rtt_phase(args: &BenchArgs, queue: &str, body: &Bytes) -> Outcome<Vec<Duration>> {
    if args.rtt_samples == 0 {
        return Ok(Vec::new());
    }
    let conn = connect::open(&args.broker).await?;
    let mut consumer = Consumer::builder(&conn)
        .queue(Queue::new(queue))
        .prefetch_count(1)
        .build()
        .await?;
    let producer = Producer::new(&conn);
    let mut samples = Vec::with_capacity(args.rtt_samples as usize);
    let result: Outcome = async {
        for trip in 0..WARM_UP + args.rtt_samples {
            let start = Instant::now();
            producer
                .publish(
                    Payload::from(body.clone()),
                    PublishOptions::new().routing_key(queue),
                )
                .await?;
            let message = match tokio::time::timeout(STALL, consumer.next()).await {
                Ok(Some(message)) => message?,
                Ok(None) => return Err(Failure::failed("round trip: the consumer stopped")),
                Err(_) => {
                    return Err(Failure::failed(format!(
                        "round trip: no message within {} s",
                        STALL.as_secs()
                    )))
                }
            };
            let took = start.elapsed();
            message.ack().await?;
            if trip >= WARM_UP {
                samples.push(took);
            }
        }
        Ok(())
    }
    .await;
    let _ = consumer.close().await;
    if let Ok(channel) = producer.channel().await {
        let _ = channel.close().await;
    }
    let _ = conn.close().await;
    result?;
    samples.sort_unstable();
    Ok(samples)
}

/// Run `kombu bench`.
pub async fn run(args: &BenchArgs) -> Outcome {
    let recorder = if args.metrics {
        Some(crate::prometheus::install().map_err(Failure::failed)?)
    } else {
        None
    };
    let admin = connect::open(&args.broker).await?;
    let channel = admin.channel().await?;
    let queue = unique_queue();
    let rtt_queue = format!("{queue}-rtt");
    Queue::new(&queue).declare(channel.as_ref()).await?;
    let body = Bytes::from(vec![b'x'; args.size]);
    let phases = async {
        let publish = publish_phase(args, &queue, &body).await?;
        let consume = consume_phase(args, &queue).await?;
        let rtt = rtt_phase(args, &rtt_queue, &body).await?;
        Ok((publish, consume, rtt))
    };
    // Ctrl-C stops the run; the queues are still deleted.
    let measured: Outcome<(Took, Took, Vec<Duration>)> = tokio::select! {
        measured = phases => measured,
        _ = crate::consume::interrupted() => Err(Failure::interrupted("bench interrupted")),
    };
    for name in [&queue, &rtt_queue] {
        let _ = channel.queue_delete(name).await;
    }
    let _ = channel.close().await;
    let _ = admin.close().await;
    let (publish, consume, rtt) = measured?;
    let report = Report {
        url: connect::display_url(&args.broker),
        transport: admin.transport_name().to_owned(),
        messages: args.messages,
        size: args.size,
        producers: args.producers,
        in_flight: args.in_flight,
        consumers: args.consumers,
        prefetch: args.prefetch,
        publish,
        consume,
        rtt,
        peak_rss_bytes: peak_rss_bytes(),
    };
    let metrics = recorder.map(|handle| handle.render());
    if args.json {
        let mut json = report.to_json();
        if let Some(text) = metrics {
            json["metrics"] = text.into();
        }
        println!("{json}");
    } else {
        print!("{}", report.to_text());
        if let Some(text) = metrics {
            print!("\n# kombu-rs metrics (Prometheus text)\n{text}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile_us(&sorted, 50.0), Some(50.0));
        assert_eq!(percentile_us(&sorted, 99.0), Some(99.0));
        assert_eq!(percentile_us(&sorted[..1], 99.0), Some(1.0));
        assert_eq!(percentile_us(&[], 50.0), None);
    }

    #[test]
    fn shares_add_up() {
        let total: u64 = (0..3).map(|i| share(10, 3, i)).sum();
        assert_eq!(total, 10);
        assert_eq!(share(10, 3, 0), 4);
        assert_eq!(share(10, 3, 2), 3);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
    }

    #[test]
    fn peak_rss_and_cpu_time_are_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().unwrap() > 0);
            let before = cpu_time().unwrap();
            let mut x = 0u64;
            for i in 0..50_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            assert!(cpu_time().unwrap() >= before);
        }
    }
}
