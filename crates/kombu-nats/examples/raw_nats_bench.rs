//! The ceiling for `kombu bench` on NATS: the same JetStream work done
//! directly with async-nats, with the bookkeeping kombu needs and nothing
//! else.
//!
//! Workload (as `kombu bench`): N messages of B bytes to one fresh queue
//! (a work-queue stream with a durable pull consumer, as kombu-nats makes
//! them); publish all, then consume+ack all, then K single round trips.
//!
//! - publish: a kombu-format JSON envelope per message (as Python kombu
//!   5.7 writes it), a JetStream publish whose answer (the stream's ack) is
//!   awaited; `--in-flight K` keeps K publishes under way at once (1: each
//!   awaited before the next).
//! - consume+ack: pulls of `--prefetch` messages (`no_wait`, then a
//!   waiting pull when the stream is empty), each envelope decoded, each
//!   message acked with `+ACK` as a request whose answer is awaited (an
//!   ack JetStream has taken), a pull's acks sent together.
//! - round trip: a waiting pull of one message, then a publish; the time
//!   until the message is in hand (the ack is not timed).
//!
//! ```text
//! cargo run --release -p kombu-nats --example raw_nats_bench -- \
//!     --url nats://127.0.0.1:4222 --messages 20000 --size 100 --in-flight 1 --prefetch 100 [--json]
//! ```
//!
//! It speaks the JetStream API as plain requests through the core client,
//! as kombu-nats does (async-nats's `jetstream` module expects newer
//! servers than 2.9). The stream `RAWBENCH_<n>` is deleted at the end.

use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use kombu_core::envelope::{Envelope, PublishProperties};
use kombu_testkit::raw_bench::RawBenchReport;
use serde_json::{json, Map};

/// Round trips before the timed ones.
const WARM_UP: u32 = 10;

struct Args {
    url: String,
    messages: u64,
    size: usize,
    rtt_samples: u32,
    in_flight: usize,
    prefetch: usize,
    json: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: raw_nats_bench [--url URL] [--messages N] [--size B] [--rtt-samples K] \
         [--in-flight N] [--prefetch N] [--json]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        url: std::env::var("KOMBU_TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        messages: 20_000,
        size: 100,
        rtt_samples: 500,
        in_flight: 1,
        prefetch: 100,
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
            "--in-flight" => args.in_flight = value().parse().unwrap_or_else(|_| usage()),
            "--prefetch" => args.prefetch = value().parse().unwrap_or_else(|_| usage()),
            "--json" => args.json = true,
            _ => usage(),
        }
    }
    if args.in_flight == 0 || args.prefetch == 0 || args.messages == 0 {
        usage();
    }
    args
}

fn fail(what: &str, err: impl std::fmt::Display) -> ! {
    eprintln!("raw_nats_bench: {what}: {err}");
    std::process::exit(1)
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

/// A JetStream API request; its JSON answer (an error answer fails).
async fn api(
    client: &async_nats::Client,
    subject: String,
    body: serde_json::Value,
) -> serde_json::Value {
    let payload = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).expect("JSON")
    };
    let answer = client
        .request(subject.clone(), payload.into())
        .await
        .unwrap_or_else(|e| fail(&subject, e));
    let value: serde_json::Value =
        serde_json::from_slice(&answer.payload).unwrap_or_else(|e| fail(&subject, e));
    if value.get("error").is_some() {
        fail(&subject, value);
    }
    value
}

/// A JetStream publish, its answer awaited.
async fn publish_one(client: &async_nats::Client, subject: &str, payload: Vec<u8>) {
    let answer = client
        .request(subject.to_owned(), payload.into())
        .await
        .unwrap_or_else(|e| fail("publish", e));
    if answer.payload.starts_with(b"{\"error\"") {
        fail("publish", String::from_utf8_lossy(&answer.payload));
    }
}

async fn publish(client: &async_nats::Client, args: &Args, queue: &str, subject: &str) -> Duration {
    let body = vec![b'x'; args.size];
    let start = Instant::now();
    let mut under_way = FuturesUnordered::new();
    for _ in 0..args.messages {
        if under_way.len() >= args.in_flight {
            under_way.next().await;
        }
        under_way.push(publish_one(client, subject, envelope(queue, &body)));
    }
    while under_way.next().await.is_some() {}
    start.elapsed()
}

/// One pull: up to `batch` messages, `no_wait` or waiting `expires`.
async fn pull(
    client: &async_nats::Client,
    stream: &str,
    batch: usize,
    expires: Option<Duration>,
) -> Vec<async_nats::Message> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .unwrap_or_else(|e| fail("subscribe", e));
    let body = match expires {
        None => json!({"batch": batch, "no_wait": true, "expires": 1_000_000_000u64}),
        Some(e) => json!({"batch": batch, "expires": e.as_nanos() as u64}),
    };
    client
        .publish_with_reply(
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.raw"),
            inbox,
            serde_json::to_vec(&body).expect("JSON").into(),
        )
        .await
        .unwrap_or_else(|e| fail("pull", e));
    let mut got = Vec::with_capacity(batch);
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(15), sub.next()).await {
        if m.status.is_some() {
            break;
        }
        got.push(m);
        if got.len() >= batch {
            break;
        }
    }
    let _ = sub.unsubscribe().await;
    got
}

async fn ack_all(client: &async_nats::Client, messages: &[async_nats::Message]) {
    let acks = messages.iter().map(|m| {
        let reply = m.reply.clone().expect("a JetStream delivery");
        client.request(reply, "+ACK".into())
    });
    for acked in futures::future::join_all(acks).await {
        acked.unwrap_or_else(|e| fail("ack", e));
    }
}

async fn consume(client: &async_nats::Client, args: &Args, stream: &str) -> Duration {
    let start = Instant::now();
    let mut got = 0u64;
    while got < args.messages {
        let mut batch = pull(client, stream, args.prefetch, None).await;
        if batch.is_empty() {
            batch = pull(client, stream, 1, Some(Duration::from_secs(5))).await;
            if batch.is_empty() {
                fail("consume", format!("stalled after {got} messages"));
            }
        }
        for m in &batch {
            let decoded = Envelope::from_json(&m.payload).unwrap_or_else(|e| fail("decode", e));
            std::hint::black_box(decoded);
        }
        ack_all(client, &batch).await;
        got += batch.len() as u64;
    }
    start.elapsed()
}

async fn round_trips(
    client: &async_nats::Client,
    args: &Args,
    queue: &str,
    stream: &str,
    subject: &str,
) -> Vec<Duration> {
    let body = vec![b'x'; args.size];
    let mut samples = Vec::with_capacity(args.rtt_samples as usize);
    for trip in 0..WARM_UP + args.rtt_samples {
        let inbox = client.new_inbox();
        let mut sub = client
            .subscribe(inbox.clone())
            .await
            .unwrap_or_else(|e| fail("subscribe", e));
        client
            .publish_with_reply(
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.raw"),
                inbox,
                serde_json::to_vec(&json!({"batch": 1, "expires": 30_000_000_000u64}))
                    .expect("JSON")
                    .into(),
            )
            .await
            .unwrap_or_else(|e| fail("pull", e));
        client.flush().await.unwrap_or_else(|e| fail("flush", e));
        let start = Instant::now();
        publish_one(client, subject, envelope(queue, &body)).await;
        let m = match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
            Ok(Some(m)) if m.status.is_none() => m,
            other => fail("round trip", format!("no message: {other:?}")),
        };
        let decoded = Envelope::from_json(&m.payload).unwrap_or_else(|e| fail("decode", e));
        std::hint::black_box(decoded);
        let took = start.elapsed();
        ack_all(client, std::slice::from_ref(&m)).await;
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
    let url = kombu_core::BrokerUrl::parse(&args.url).unwrap_or_else(|e| fail("url", e));
    let shown = url.as_uri(false);
    let server = format!(
        "nats://{}:{}",
        url.hostname().unwrap_or("localhost"),
        url.port().unwrap_or(4222)
    );
    let mut options = async_nats::ConnectOptions::new();
    if let (Some(user), Some(password)) = (url.userid(), url.password()) {
        options = options.user_and_password(user.into(), password.into());
    }
    let client = async_nats::connect_with_options(server, options)
        .await
        .unwrap_or_else(|e| fail("connect", e));
    let n = std::process::id();
    let queue = format!("rawbench-{n}");
    let stream = format!("RAWBENCH_{n}");
    let subject = format!("rawbench.{n}");
    api(
        &client,
        format!("$JS.API.STREAM.CREATE.{stream}"),
        json!({"name": stream, "subjects": [subject], "retention": "workqueue",
               "storage": "file", "num_replicas": 1, "discard": "old"}),
    )
    .await;
    api(
        &client,
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.raw"),
        json!({"stream_name": stream, "config": {"durable_name": "raw",
               "ack_policy": "explicit", "ack_wait": 3_600_000_000_000u64,
               "deliver_policy": "all", "max_ack_pending": 20_000, "max_deliver": -1}}),
    )
    .await;

    let publish_took = publish(&client, &args, &queue, &subject).await;
    let consume_took = consume(&client, &args, &stream).await;
    let rtt = round_trips(&client, &args, &queue, &stream, &subject).await;
    api(
        &client,
        format!("$JS.API.STREAM.DELETE.{stream}"),
        serde_json::Value::Null,
    )
    .await;

    RawBenchReport {
        url: &shown,
        transport: "nats-raw",
        messages: args.messages,
        size: args.size,
        in_flight: Some(args.in_flight as u64),
        prefetch: args.prefetch as u64,
        publish: publish_took,
        consume: consume_took,
        rtt,
    }
    .print(
        args.json,
        &format!(
            "nats-raw on {shown}: {} messages of {} bytes, {} publishes in flight, pulls of {}",
            args.messages, args.size, args.in_flight, args.prefetch
        ),
    );
}
