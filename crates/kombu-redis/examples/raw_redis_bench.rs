//! The ceiling for `kombu bench` on Redis: the same workload done directly
//! with the `redis` crate, with the bookkeeping kombu needs and nothing
//! else, pipelined in batches as the fastest honest Rust client would.
//!
//! Workload (as `kombu bench`): N messages of B bytes to one fresh queue;
//! publish all, then consume+ack all, then K single round trips.
//!
//! - publish: a kombu-format JSON envelope per message (fresh uuid
//!   `delivery_tag`, body base64, as Python kombu 5.7 writes it), LPUSH'd
//!   in pipelines of `--batch`.
//! - consume+ack: per batch, `RPOP queue <batch>`; one pipeline recording
//!   every message as unacked the way kombu does (`ZADD unacked_index`,
//!   `HSET unacked <tag> [message, exchange, routing_key]`, on keys named
//!   after the queue so the shared `unacked` hash is left alone); decode each
//!   envelope; one pipeline acking them (`ZREM` + `HDEL`).
//! - round trip: LPUSH one message, BRPOP it on a second connection and
//!   record it as unacked (the ack is not timed).
//!
//! ```text
//! cargo run --release -p kombu-redis --example raw_redis_bench -- \
//!     --url redis://127.0.0.1:6379/0 --messages 50000 --size 100 --rtt-samples 500 [--json]
//! ```
//!
//! With `--json` it prints one line with the keys of `kombu bench --json`.
//! Keys it writes: `raw-bench-<uuid>` and `raw-bench-<uuid>.unacked[_index]`,
//! deleted at the end.

use std::time::{Duration, Instant};

use kombu_core::envelope::{Envelope, PublishProperties};
use kombu_testkit::raw_bench::RawBenchReport;
use redis::aio::MultiplexedConnection;
use serde_json::{Map, Value};

/// Round trips before the timed ones.
const WARM_UP: u32 = 10;

struct Args {
    url: String,
    messages: u64,
    size: usize,
    rtt_samples: u32,
    batch: usize,
    json: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: raw_redis_bench [--url URL] [--messages N] [--size B] [--rtt-samples K] \
         [--batch N] [--json]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        url: std::env::var("KOMBU_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()),
        messages: 50_000,
        size: 100,
        rtt_samples: 500,
        batch: 64,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => args.url = value(),
            "--messages" => args.messages = value().parse().unwrap_or_else(|_| usage()),
            "--size" => args.size = value().parse().unwrap_or_else(|_| usage()),
            "--rtt-samples" => args.rtt_samples = value().parse().unwrap_or_else(|_| usage()),
            "--batch" => args.batch = value().parse().unwrap_or_else(|_| usage()),
            "--json" => args.json = true,
            _ => usage(),
        }
    }
    if args.batch == 0 || args.messages == 0 {
        usage();
    }
    args
}

/// One message as Python kombu 5.7 stores it.
fn envelope(queue: &str, body: &[u8]) -> Vec<u8> {
    let properties = PublishProperties::default().into_map("", queue);
    Envelope::new(
        body.to_vec(),
        Some("application/data".into()),
        Some("binary".into()),
        Map::new(),
        properties,
    )
    .to_json()
}

fn fail(what: &str, err: impl std::fmt::Display) -> ! {
    eprintln!("raw_redis_bench: {what}: {err}");
    std::process::exit(1)
}

async fn publish(conn: &mut MultiplexedConnection, args: &Args, queue: &str) -> Duration {
    let body = vec![b'x'; args.size];
    let start = Instant::now();
    let mut left = args.messages;
    while left > 0 {
        let n = left.min(args.batch as u64);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.cmd("LPUSH")
                .arg(queue)
                .arg(envelope(queue, &body))
                .ignore();
        }
        let () = pipe
            .query_async(conn)
            .await
            .unwrap_or_else(|e| fail("publish", e));
        left -= n;
    }
    start.elapsed()
}

/// Record `items` as unacked the way kombu does; returns their tags.
fn record_unacked(pipe: &mut redis::Pipeline, queue: &str, items: &[Vec<u8>]) -> Vec<String> {
    let now = format!(
        "{:.6}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    );
    let queue_json = Value::String(queue.to_owned()).to_string();
    let tags: Vec<String> = items
        .iter()
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let zadd = pipe.cmd("ZADD").arg(format!("{queue}.unacked_index"));
    for tag in &tags {
        zadd.arg(&now).arg(tag);
    }
    zadd.ignore();
    let hset = pipe.cmd("HSET").arg(format!("{queue}.unacked"));
    for (tag, item) in tags.iter().zip(items) {
        let mut entry = Vec::with_capacity(item.len() + queue_json.len() + 8);
        entry.push(b'[');
        entry.extend_from_slice(item);
        entry.extend_from_slice(b", \"\", ");
        entry.extend_from_slice(queue_json.as_bytes());
        entry.push(b']');
        hset.arg(tag).arg(entry);
    }
    hset.ignore();
    tags
}

async fn ack(conn: &mut MultiplexedConnection, queue: &str, tags: &[String]) {
    let () = redis::pipe()
        .cmd("ZREM")
        .arg(format!("{queue}.unacked_index"))
        .arg(tags)
        .ignore()
        .cmd("HDEL")
        .arg(format!("{queue}.unacked"))
        .arg(tags)
        .ignore()
        .query_async(conn)
        .await
        .unwrap_or_else(|e| fail("ack", e));
}

async fn consume(conn: &mut MultiplexedConnection, args: &Args, queue: &str) -> Duration {
    let start = Instant::now();
    let mut got = 0u64;
    let mut idle = Instant::now();
    while got < args.messages {
        let items: Option<Vec<Vec<u8>>> = redis::cmd("RPOP")
            .arg(queue)
            .arg(args.batch)
            .query_async(conn)
            .await
            .unwrap_or_else(|e| fail("consume", e));
        let items = items.unwrap_or_default();
        if items.is_empty() {
            if idle.elapsed() > Duration::from_secs(30) {
                fail("consume", format!("stalled after {got} messages"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        idle = Instant::now();
        let mut pipe = redis::pipe();
        let tags = record_unacked(&mut pipe, queue, &items);
        let () = pipe
            .query_async(conn)
            .await
            .unwrap_or_else(|e| fail("record unacked", e));
        for item in &items {
            let decoded = Envelope::from_json(item).unwrap_or_else(|e| fail("decode", e));
            std::hint::black_box(decoded);
        }
        ack(conn, queue, &tags).await;
        got += items.len() as u64;
    }
    start.elapsed()
}

async fn round_trips(
    client: &redis::Client,
    conn: &mut MultiplexedConnection,
    args: &Args,
    queue: &str,
) -> Vec<Duration> {
    // BRPOP blocks its connection: the consumer gets one of its own.
    let mut blocking = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .unwrap_or_else(|e| fail("connect", e));
    let body = vec![b'x'; args.size];
    let mut samples = Vec::with_capacity(args.rtt_samples as usize);
    for trip in 0..WARM_UP + args.rtt_samples {
        let start = Instant::now();
        let () = redis::cmd("LPUSH")
            .arg(queue)
            .arg(envelope(queue, &body))
            .query_async::<i64>(conn)
            .await
            .map(drop)
            .unwrap_or_else(|e| fail("round trip publish", e));
        let popped: Option<(String, Vec<u8>)> = redis::cmd("BRPOP")
            .arg(queue)
            .arg(30)
            .query_async(&mut blocking)
            .await
            .unwrap_or_else(|e| fail("round trip consume", e));
        let Some((_, item)) = popped else {
            fail("round trip", "no message within 30 s")
        };
        let mut pipe = redis::pipe();
        let tags = record_unacked(&mut pipe, queue, std::slice::from_ref(&item));
        let () = pipe
            .query_async(&mut blocking)
            .await
            .unwrap_or_else(|e| fail("record unacked", e));
        let decoded = Envelope::from_json(&item).unwrap_or_else(|e| fail("decode", e));
        std::hint::black_box(decoded);
        let took = start.elapsed();
        ack(conn, queue, &tags).await;
        if trip >= WARM_UP {
            samples.push(took);
        }
    }
    samples.sort_unstable();
    samples
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let shown = kombu_core::BrokerUrl::parse(&args.url)
        .map(|u| u.as_uri(false))
        .unwrap_or_else(|_| "(invalid URL)".into());
    let client = redis::Client::open(args.url.as_str()).unwrap_or_else(|e| fail("url", e));
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| fail("connect", e));
    let queue = format!("raw-bench-{}", uuid::Uuid::new_v4().simple());

    let publish_took = publish(&mut conn, &args, &queue).await;
    let consume_took = consume(&mut conn, &args, &queue).await;
    let rtt = round_trips(&client, &mut conn, &args, &queue).await;
    let _: redis::RedisResult<i64> = redis::cmd("DEL")
        .arg(&queue)
        .arg(format!("{queue}.unacked"))
        .arg(format!("{queue}.unacked_index"))
        .query_async(&mut conn)
        .await;

    RawBenchReport {
        url: &shown,
        transport: "redis-raw",
        messages: args.messages,
        size: args.size,
        in_flight: None,
        prefetch: args.batch as u64,
        publish: publish_took,
        consume: consume_took,
        rtt,
    }
    .print(
        args.json,
        &format!(
            "redis-raw on {shown}: {} messages of {} bytes, batches of {}",
            args.messages, args.size, args.batch
        ),
    );
}
