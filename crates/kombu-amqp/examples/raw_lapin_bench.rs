//! The raw-client baseline for `kombu bench` on AMQP: the same workload
//! done directly with lapin, as well as an honest hand-written client does it.
//!
//! ```text
//! cargo run --release -p kombu-amqp --example raw_lapin_bench -- \
//!     --url 'amqp://guest:guest@127.0.0.1:5672//' --messages 50000 --size 100 \
//!     --rtt-samples 500 [--prefetch 100] [--confirm] [--window 64] [--json]
//! ```
//!
//! 1. publish: one connection publishes N messages of B bytes (the
//!    properties kombu sends: `application/data`, `binary`, empty headers,
//!    persistent, priority 0) to one durable queue, `--window` publishes
//!    under way at once (default 1: each awaited before the next), each
//!    with `--confirm` resolving on its own publisher confirm, then closes;
//! 2. consume+ack: one connection consumes them with prefetch 100 (kombu
//!    bench's default) and acks with `multiple=true` every 50 messages
//!    (and the last one);
//! 3. round trip: K single publishes on a second queue, each timed until
//!    the consumer (prefetch 1) has the message, after 10 warm-up trips.
//!
//! With `--json` it prints one line with the keys of `kombu bench --json`
//! (`transport` is `amqp-raw`); the URL's password is masked.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::BrokerUrl;
use kombu_testkit::raw_bench::RawBenchReport;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// Acks go out as one `multiple=true` ack per this many messages.
const ACK_EVERY: u64 = 50;
/// Untimed round trips before the timed ones.
const WARM_UP: u32 = 10;

struct Args {
    url: String,
    messages: u64,
    size: usize,
    prefetch: u16,
    rtt_samples: u32,
    confirm: bool,
    /// Publishes in flight at once (each awaits its own confirm).
    window: usize,
    json: bool,
}

const USAGE: &str = "usage: raw_lapin_bench [--url URL] [--messages N] [--size BYTES] \
[--prefetch N] [--rtt-samples K] [--confirm] [--window N] [--json]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: std::env::var("KOMBU_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672//".into()),
        messages: 100_000,
        size: 100,
        prefetch: 100,
        rtt_samples: 500,
        confirm: false,
        window: 1,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, text: String| {
            text.parse::<u64>()
                .map_err(|_| format!("{name}: {text:?} is not a number"))
        };
        match flag.as_str() {
            "--url" => args.url = value("--url")?,
            "--messages" => args.messages = number("--messages", value("--messages")?)?.max(1),
            "--size" => args.size = number("--size", value("--size")?)? as usize,
            "--prefetch" => {
                args.prefetch = u16::try_from(number("--prefetch", value("--prefetch")?)?)
                    .map_err(|_| "--prefetch: at most 65535".to_owned())?
            }
            "--rtt-samples" => {
                args.rtt_samples = u32::try_from(number("--rtt-samples", value("--rtt-samples")?)?)
                    .map_err(|_| "--rtt-samples: too large".to_owned())?
            }
            "--confirm" => args.confirm = true,
            "--window" => args.window = number("--window", value("--window")?)?.max(1) as usize,
            "--json" => args.json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// The lapin URI for a kombu URL (`//` is the vhost `/`, as in kombu).
fn lapin_uri(url: &BrokerUrl) -> AMQPUri {
    let tls = url.scheme().eq_ignore_ascii_case("amqps");
    AMQPUri {
        scheme: if tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: url.userid().unwrap_or("guest").to_owned(),
                password: url.password().unwrap_or("guest").to_owned(),
            },
            host: url.hostname().unwrap_or("localhost").to_owned(),
            port: url.port().unwrap_or(if tls { 5671 } else { 5672 }),
        },
        vhost: url.virtual_host().unwrap_or("/").to_owned(),
        query: AMQPQueryString::default(),
    }
}

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

async fn connect(uri: &AMQPUri) -> Fallible<Connection> {
    Ok(Connection::connect_uri(uri.clone(), ConnectionProperties::default()).await?)
}

/// The properties kombu-amqp puts on a raw-bytes message.
fn properties() -> BasicProperties {
    BasicProperties::default()
        .with_headers(FieldTable::default())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_content_type("application/data".into())
        .with_content_encoding("binary".into())
}

async fn publish_one(channel: &Channel, queue: &str, body: &[u8], confirm: bool) -> Fallible<()> {
    let confirmation = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties(),
        )
        .await?;
    if confirm && !confirmation.await?.is_ack() {
        return Err("the broker nacked a publish".into());
    }
    Ok(())
}

async fn publish_phase(args: &Args, uri: &AMQPUri, queue: &str, body: &[u8]) -> Fallible<Duration> {
    let conn = connect(uri).await?;
    let channel = conn.create_channel().await?;
    if args.confirm {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    let started = Instant::now();
    // `window` publishes under way at once on the one channel, each
    // resolving on its own confirm (1: each awaited before the next).
    let mut publishes = futures::stream::iter(0..args.messages)
        .map(|_| publish_one(&channel, queue, body, args.confirm))
        .buffer_unordered(args.window);
    while let Some(result) = publishes.next().await {
        result?;
    }
    drop(publishes);
    channel.close(200, "OK".into()).await?;
    conn.close(200, "OK".into()).await?;
    Ok(started.elapsed())
}

async fn consume_phase(args: &Args, uri: &AMQPUri, queue: &str) -> Fallible<Duration> {
    let conn = connect(uri).await?;
    let started = Instant::now();
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(args.prefetch, BasicQosOptions { global: false })
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "raw-lapin-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut received = 0u64;
    while received < args.messages {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .map_err(|_| format!("consume stalled at {received} of {}", args.messages))?
            .ok_or("the consumer stopped")??;
        received += 1;
        if received.is_multiple_of(ACK_EVERY) || received == args.messages {
            channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    channel.close(200, "OK".into()).await?;
    conn.close(200, "OK".into()).await?;
    Ok(started.elapsed())
}

async fn rtt_phase(
    args: &Args,
    uri: &AMQPUri,
    queue: &str,
    body: &[u8],
) -> Fallible<Vec<Duration>> {
    if args.rtt_samples == 0 {
        return Ok(Vec::new());
    }
    let conn = connect(uri).await?;
    let consuming = conn.create_channel().await?;
    consuming
        .basic_qos(1, BasicQosOptions { global: false })
        .await?;
    let mut consumer = consuming
        .basic_consume(
            queue.into(),
            "raw-lapin-rtt".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publishing = conn.create_channel().await?;
    if args.confirm {
        publishing
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    let mut samples = Vec::with_capacity(args.rtt_samples as usize);
    for trip in 0..WARM_UP + args.rtt_samples {
        let started = Instant::now();
        publish_one(&publishing, queue, body, args.confirm).await?;
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .map_err(|_| "round trip: no message within 30 s")?
            .ok_or("round trip: the consumer stopped")??;
        let took = started.elapsed();
        consuming
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await?;
        if trip >= WARM_UP {
            samples.push(took);
        }
    }
    conn.close(200, "OK".into()).await?;
    samples.sort_unstable();
    Ok(samples)
}

async fn run(args: &Args) -> Fallible<()> {
    let url = BrokerUrl::parse(&args.url)?;
    let uri = lapin_uri(&url);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let queue = format!("raw-lapin-bench-{:x}-{:x}", std::process::id(), nanos);
    let rtt_queue = format!("{queue}-rtt");
    let admin = connect(&uri).await?;
    let admin_channel = admin.create_channel().await?;
    for name in [&queue, &rtt_queue] {
        admin_channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    let body = vec![b'x'; args.size];
    let measured = async {
        let publish = publish_phase(args, &uri, &queue, &body).await?;
        let consume = consume_phase(args, &uri, &queue).await?;
        let rtt = rtt_phase(args, &uri, &rtt_queue, &body).await?;
        Fallible::Ok((publish, consume, rtt))
    }
    .await;
    for name in [&queue, &rtt_queue] {
        let _ = admin_channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = admin.close(200, "OK".into()).await;
    let (publish, consume, rtt) = measured?;
    let shown = url.as_uri(false);
    RawBenchReport {
        url: &shown,
        transport: "amqp-raw",
        messages: args.messages,
        size: args.size,
        in_flight: Some(args.window as u64),
        prefetch: u64::from(args.prefetch),
        publish,
        consume,
        rtt,
    }
    .print(
        args.json,
        &format!(
            "raw lapin on {shown}: {} messages of {} bytes, prefetch {}, acks multiple every {ACK_EVERY}{}",
            args.messages,
            args.size,
            args.prefetch,
            if args.confirm { ", publisher confirms" } else { "" }
        ),
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if let Err(err) = run(&args).await {
        eprintln!("raw_lapin_bench: {err}");
        std::process::exit(1);
    }
}
