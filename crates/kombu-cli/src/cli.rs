//! The command line: every command, flag and value parser.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kombu::ExchangeType;

/// Publish, consume, inspect and benchmark any kombu-rs broker by URL.
///
/// The broker URL comes from --url, else $KOMBU_URL, else memory://.
/// Exit status: 0 ok, 1 the command failed (a broker error, `consume
/// --timeout` with fewer messages than --count), 2 bad input (flags, URL,
/// scheme, option, unreachable broker), 130 interrupted.
#[derive(Debug, Parser)]
#[command(name = "kombu", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The transports compiled into this binary and what each can do.
    Transports(TransportsArgs),
    /// Declare an exchange (and a queue), then publish BODY.
    Publish(PublishArgs),
    /// Print messages of a queue as JSON lines, acking each.
    Consume(ConsumeArgs),
    /// Size, purge or delete a queue; show, requeue or purge its quarantine.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Measure publish and consume throughput, round-trip latency and memory.
    Bench(BenchArgs),
}

/// Where the broker is and how to talk to it (every command that connects).
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Broker URL, e.g. redis://localhost:6379/0 (passwords are never printed).
    #[arg(
        long,
        env = "KOMBU_URL",
        hide_env_values = true,
        value_name = "URL",
        default_value = "memory://"
    )]
    pub url: String,
    /// A transport option (kombu's transport_options); repeat for more.
    #[arg(long = "option", value_name = "K=V", value_parser = parse_key_value)]
    pub options: Vec<(String, String)>,
    /// Give up connecting after this many seconds (default: kombu's, 5 s).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub connect_timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct TransportsArgs {
    /// One JSON array with every transport's capabilities.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// The Markdown table of the README.
    #[arg(long)]
    pub markdown: bool,
}

/// An exchange and how a queue is bound to it (publish and consume).
#[derive(Debug, Clone, Args)]
pub struct ExchangeArgs {
    /// Exchange name (default: the default exchange, which routes by queue name).
    #[arg(long, value_name = "EX")]
    pub exchange: Option<String>,
    /// Exchange type.
    #[arg(long = "type", value_name = "TYPE", default_value = "direct", value_parser = parse_exchange_type)]
    pub kind: ExchangeType,
    /// Binding key of the queue (default: the routing key, else the queue
    /// name; for a fanout exchange, empty).
    #[arg(long, value_name = "BK")]
    pub binding_key: Option<String>,
    /// A binding argument, e.g. x-match=any for headers exchanges; repeat for more.
    #[arg(long = "binding-arg", value_name = "K=V", value_parser = parse_key_value)]
    pub binding_args: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub exchange: ExchangeArgs,
    /// Routing key (default: the queue name).
    #[arg(long, value_name = "RK")]
    pub routing_key: Option<String>,
    /// Declare this queue and bind it to the exchange first.
    #[arg(long, value_name = "Q")]
    pub queue: Option<String>,
    /// Serializer (default: json for a JSON BODY, text otherwise).
    #[arg(long, value_parser = ["json", "msgpack", "yaml", "raw", "text"])]
    pub serializer: Option<String>,
    /// Compress the body.
    #[arg(long, value_parser = ["zlib", "bzip2", "lzma", "brotli", "zstd"])]
    pub compression: Option<String>,
    /// A header; the value is JSON when it parses as JSON, else a string. Repeat for more.
    #[arg(long = "header", value_name = "K=V", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// Priority (higher first).
    #[arg(long, value_name = "N")]
    pub priority: Option<u8>,
    /// 1 transient, 2 persistent (the default).
    #[arg(long, value_name = "1|2", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub delivery_mode: Option<u8>,
    /// Message TTL in seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub expiration: Option<Duration>,
    /// Deliver no sooner than SECS from now (delayed delivery; refused by a
    /// transport without it).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub delay: Option<Duration>,
    /// Publish BODY this many times; `{i}` in BODY becomes the index (0-based).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Fail when no queue takes the message.
    #[arg(long)]
    pub mandatory: bool,
    /// The message body; JSON is sent as JSON; `-` reads it from stdin.
    #[arg(value_name = "BODY")]
    pub body: String,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The queue to consume (declared first unless --no-declare).
    #[arg(long, value_name = "Q")]
    pub queue: String,
    #[command(flatten)]
    pub exchange: ExchangeArgs,
    /// Stop after N messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop after SECS; with --count, fewer than N messages by then is exit status 1.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
    /// Most unacked messages at once (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub prefetch: u16,
    /// Do not ack: the broker forgets messages as it delivers them.
    #[arg(long, conflicts_with = "requeue")]
    pub no_ack: bool,
    /// Peek: hold every message unacked and put them all back at the end.
    #[arg(long)]
    pub requeue: bool,
    /// Decode only these (json, msgpack, yaml, raw, text or content types); others print as base64.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub accept: Vec<String>,
    /// Do not declare the queue, exchange or binding.
    #[arg(long)]
    pub no_declare: bool,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Print how many messages are ready in QUEUE.
    Size(QueueArgs),
    /// Remove every ready message of QUEUE; prints how many.
    Purge(QueueArgs),
    /// Delete QUEUE; prints how many messages it held.
    Delete(QueueArgs),
    /// QUEUE's quarantine (QUEUE.quarantine): what was rejected, unreadable
    /// or over its delivery limit without a dead-letter exchange.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// Print up to COUNT quarantined messages as JSON lines (with why, in
    /// `x-death` or `x-kombu-error`), leaving them quarantined.
    Show(QuarantineShowArgs),
    /// Put every quarantined message back in QUEUE; prints how many.
    Requeue(QueueArgs),
    /// Remove every quarantined message; prints how many.
    Purge(QueueArgs),
}

#[derive(Debug, Args)]
pub struct QuarantineShowArgs {
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Most messages to print.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub count: usize,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The queue's name.
    #[arg(value_name = "QUEUE")]
    pub queue: String,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// How many messages to publish and consume.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Body size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub size: usize,
    /// Publishing tasks, each with its own connection.
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub producers: u16,
    /// Publishes each publishing task keeps in flight at once on its one
    /// producer (1: each awaited before the next; more: concurrent
    /// `Producer::publish` calls, which pipeline on the wire).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub in_flight: u16,
    /// Consuming tasks, each with its own connection.
    #[arg(long, value_name = "C", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub consumers: u16,
    /// Prefetch of each consumer (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub prefetch: u16,
    /// Single round trips timed for the latency figures (0: skip).
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub rtt_samples: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Record kombu-rs's metrics (counters, latency histograms, in-flight
    /// gauge) and print them in Prometheus text format at the end (with
    /// `--json`: as its `metrics` field).
    #[arg(long)]
    pub metrics: bool,
}

/// `KEY=VALUE` (the value may contain `=`; the key may not be empty).
pub fn parse_key_value(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

/// A non-negative, finite number of seconds (fractions allowed).
pub fn parse_seconds(input: &str) -> Result<Duration, String> {
    let seconds: f64 = input
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds".to_owned())?;
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err("expected a number of seconds between 0 and 1e9".to_owned());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_exchange_type(input: &str) -> Result<ExchangeType, String> {
    input
        .parse::<ExchangeType>()
        .map_err(|_| "expected one of direct, topic, fanout, headers".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn key_values_and_seconds() {
        assert_eq!(
            parse_key_value("a=b=c").unwrap(),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=v").is_err());
        assert_eq!(parse_seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
