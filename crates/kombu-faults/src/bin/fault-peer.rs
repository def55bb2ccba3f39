//! `fault-peer`: the publisher and the consumer of the fault tests.
//!
//! ```text
//! fault-peer publish --url URL --queue Q --count N --log FILE [--pace-ms 5]
//! fault-peer consume --url URL --queue Q --count N --log FILE [--work-ms 2] [--prefetch 10]
//!         [--settle-s 15]
//! fault-peer ack-and-die --url URL --queue Q --count N --log FILE --acks K [--prefetch 10]
//! common: [--deadline-s 60] [--op-timeout-s 10]
//! ```
//!
//! The publisher sends ids `0..N` as persistent messages to the durable
//! queue `Q` (through the default exchange) on one connection, each publish
//! retried (`Connection::ensure_with`, reconnecting) until it returns `Ok`;
//! it logs `retry <id> <error>` per failed try and `published <id> <tries>`
//! after the `Ok`. The consumer (one `kombu::Consumer`, which reconnects by
//! itself) logs `reconnect auto` for each of its reconnects, `got <id> ok`
//! when a message arrived, `acking <id>` before it acks and `acked <id>`
//! after the ack returned `Ok`, and exits 0 once every id was acked (by it
//! or by an earlier consumer writing the same log), or once every id was
//! acked or its ack is in doubt and nothing came for `settle` (an ack that
//! timed out, failed, or was under way when a consumer was killed may have
//! been applied: the message then never comes again), or 2 at the deadline. See `kombu_faults::ledger` for the format.
//!
//! `ack-and-die` consumes with `--prefetch`, waits until it holds
//! `min(prefetch, N)` messages (logging `got <id> ok` each), acks the first
//! `K` of them one after another (each ack returns `Ok`), logs `acked <K>`
//! and aborts the process at once: no destructor, no flush, so acks the
//! library queued for its next flush never reach the broker.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu::{Connection, Consumer, DeliveryMode, Producer, PublishOptions, Queue, RetryPolicy};
use kombu_faults::body::{self, Check};
use kombu_faults::peer::LineLog;
use tokio::time::{sleep, timeout};

#[derive(Debug)]
struct Args {
    mode: String,
    url: String,
    queue: String,
    count: u64,
    log: PathBuf,
    pace: Duration,
    work: Duration,
    prefetch: u16,
    deadline: Duration,
    op_timeout: Duration,
    settle: Duration,
    acks: u64,
    /// Declare the queue as a RabbitMQ quorum queue (`--queue-type quorum`).
    quorum: bool,
}

impl Args {
    /// The queue the peers declare: durable; a quorum queue when asked.
    fn queue(&self) -> Queue {
        let queue = Queue::new(&self.queue).durable(true);
        if self.quorum {
            queue.quorum()
        } else {
            queue
        }
    }
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = it
        .next()
        .ok_or("usage: fault-peer publish|consume --url URL ...")?;
    let mut args = Args {
        mode,
        url: String::new(),
        queue: String::new(),
        count: 0,
        log: PathBuf::new(),
        pace: Duration::from_millis(5),
        work: Duration::from_millis(2),
        prefetch: 10,
        deadline: Duration::from_secs(60),
        op_timeout: Duration::from_secs(10),
        settle: Duration::from_secs(15),
        acks: 0,
        quorum: false,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => args.url = value.clone(),
            "--queue" => args.queue = value.clone(),
            "--count" => args.count = num()?,
            "--log" => args.log = PathBuf::from(&value),
            "--pace-ms" => args.pace = Duration::from_millis(num()?),
            "--work-ms" => args.work = Duration::from_millis(num()?),
            "--prefetch" => args.prefetch = num()? as u16,
            "--deadline-s" => args.deadline = Duration::from_secs(num()?),
            "--op-timeout-s" => args.op_timeout = Duration::from_secs(num()?),
            "--settle-s" => args.settle = Duration::from_secs(num()?),
            "--acks" => args.acks = num()?,
            "--queue-type" => match value.as_str() {
                "quorum" => args.quorum = true,
                "classic" => args.quorum = false,
                other => return Err(format!("--queue-type: {other:?} is not quorum or classic")),
            },
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.url.is_empty() || args.queue.is_empty() || args.log.as_os_str().is_empty() {
        return Err("--url, --queue and --log are required".into());
    }
    Ok(args)
}

/// One line, no newlines inside.
fn flat(err: impl std::fmt::Display) -> String {
    err.to_string().replace('\n', " ")
}

async fn close(conn: Connection) {
    let _ = timeout(Duration::from_secs(1), conn.close()).await;
}

/// Quick retries: a fault lasts seconds, the test tens of seconds.
fn policy(deadline: Instant) -> RetryPolicy {
    RetryPolicy::new()
        .max_retries(None)
        .interval_start(Duration::from_millis(100))
        .interval_step(Duration::from_millis(200))
        .interval_max(Duration::from_secs(1))
        .timeout(deadline.saturating_duration_since(Instant::now()))
}

/// One connection for the whole run (its heartbeat monitor finds a hung
/// broker); each publish goes through `Connection::ensure_with`, which is
/// what `PublishOptions::retry_policy` does inside `Producer::publish`,
/// plus a callback that logs each retry. A publish that still fails (the
/// policy gave up, or `--op-timeout-s` passed) is logged as a retry too and
/// tried again.
async fn publish(args: &Args, log: &mut LineLog) -> std::io::Result<bool> {
    let queue = args.queue();
    let deadline = Instant::now() + args.deadline;
    let conn = match Connection::new(&args.url) {
        Ok(conn) => conn,
        Err(e) => {
            log.line(&format!("fatal {}", flat(e)))?;
            return Ok(false);
        }
    };
    let producer = Producer::new(&conn);
    for id in 0..args.count {
        let mut tries = 1u32;
        loop {
            if Instant::now() > deadline {
                log.line("deadline")?;
                return Ok(false);
            }
            // Each publish declares the queue (the connection remembers it
            // for its topology recovery after a reconnect).
            let options = PublishOptions::new()
                .routing_key(&args.queue)
                .delivery_mode(DeliveryMode::Persistent)
                .declare(queue.clone());
            let mut failures = Vec::new();
            let outcome = timeout(
                args.op_timeout,
                conn.ensure_with(
                    &policy(deadline),
                    || producer.publish(body::make(id), options.clone()),
                    |err, _wait| failures.push(flat(err)),
                ),
            )
            .await;
            tries += failures.len() as u32;
            for failure in failures {
                log.line(&format!("retry {id} {failure}"))?;
            }
            let failure = match outcome {
                Ok(Ok(())) => {
                    log.line(&format!("published {id} {tries}"))?;
                    break;
                }
                Ok(Err(e)) => flat(e),
                Err(_) => "timed out".to_string(),
            };
            log.line(&format!("retry {id} {failure}"))?;
            tries += 1;
            sleep(Duration::from_millis(100)).await;
        }
        if !args.pace.is_zero() {
            sleep(args.pace).await;
        }
    }
    log.line("done")?;
    close(conn).await;
    Ok(true)
}

/// One consumer for the whole run: it reconnects by itself (its reconnects
/// are logged as `reconnect auto` before the next message's line). Only a
/// stream that ends or a consumer that cannot be built is started over.
async fn consume(args: &Args, log: &mut LineLog) -> std::io::Result<bool> {
    // Ids an earlier consumer of this log acked will not come again.
    let earlier = std::fs::read_to_string(&args.log).unwrap_or_default();
    let ids = |verb: &str| -> BTreeSet<u64> {
        earlier
            .lines()
            .filter_map(|l| l.strip_prefix(verb))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let mut acked = ids("acked ");
    // Acks begun and not known to have been applied: the message may or
    // may not come again.
    let mut in_doubt: BTreeSet<u64> = ids("acking ").difference(&acked).copied().collect();
    log.line(&format!("start {}", std::process::id()))?;
    let queue = args.queue();
    let deadline = Instant::now() + args.deadline;
    let all = |ids: &BTreeSet<u64>| ids.range(0..args.count).count() as u64 == args.count;
    let conn = match Connection::new(&args.url) {
        Ok(conn) => conn,
        Err(e) => {
            log.line(&format!("fatal {}", flat(e)))?;
            return Ok(false);
        }
    };
    let mut settled = false;
    loop {
        if all(&acked) || settled {
            log.line("done")?;
            close(conn).await;
            return Ok(true);
        }
        if Instant::now() > deadline {
            log.line("deadline")?;
            return Ok(false);
        }
        let built = timeout(
            args.op_timeout,
            Consumer::builder(&conn)
                .queue(queue.clone())
                .prefetch_count(args.prefetch)
                .reconnect(policy(deadline))
                .build(),
        )
        .await;
        let mut consumer = match built {
            Ok(Ok(consumer)) => consumer,
            Ok(Err(e)) => {
                log.line(&format!("connect-failed {}", flat(e)))?;
                sleep(Duration::from_millis(250)).await;
                continue;
            }
            Err(_) => {
                log.line("connect-failed timed out")?;
                sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let mut reconnects = 0;
        let why = loop {
            if all(&acked) {
                break None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Some("deadline".to_string());
            }
            let settling = all(&acked.union(&in_doubt).copied().collect());
            let wait = if settling { args.settle } else { left };
            let next = timeout(wait.min(left), consumer.next()).await;
            while reconnects < consumer.reconnects() {
                reconnects += 1;
                log.line("reconnect auto")?;
            }
            let message = match next {
                Err(_) if settling && Instant::now() < deadline => {
                    log.line("settled")?;
                    break None;
                }
                Err(_) => break Some("deadline".to_string()),
                Ok(None) => break Some("stream ended".to_string()),
                Ok(Some(Err(e))) => {
                    log.line(&format!("error {}", flat(e)))?;
                    continue;
                }
                Ok(Some(Ok(message))) => message,
            };
            let id = match message.decode::<serde_json::Value>() {
                Ok(value) => match body::check(&value) {
                    Check::Ok(id) => {
                        log.line(&format!("got {id} ok"))?;
                        Some(id)
                    }
                    Check::Corrupt(Some(id)) => {
                        log.line(&format!("got {id} corrupt"))?;
                        None
                    }
                    Check::Corrupt(None) => {
                        log.line("corrupt no id")?;
                        None
                    }
                },
                Err(e) => {
                    log.line(&format!("corrupt {}", flat(e)))?;
                    None
                }
            };
            if !args.work.is_zero() {
                sleep(args.work).await;
            }
            let shown = id.map_or("-".to_string(), |id| id.to_string());
            log.line(&format!("acking {shown}"))?;
            if let Some(id) = id {
                in_doubt.insert(id);
            }
            match timeout(args.op_timeout, message.ack()).await {
                Ok(Ok(())) => {
                    if let Some(id) = id {
                        log.line(&format!("acked {id}"))?;
                        acked.insert(id);
                        in_doubt.remove(&id);
                    }
                }
                // The consumer reconnects by itself; the message comes again.
                Ok(Err(e)) => log.line(&format!("ackerr {shown} {}", flat(e)))?,
                Err(_) => log.line(&format!("ackerr {shown} timed out"))?,
            }
        };
        let _ = timeout(Duration::from_secs(1), consumer.close()).await;
        match why {
            None => settled = true,
            Some(why) if why == "deadline" => {}
            Some(why) => {
                log.line(&format!("reconnect {why}"))?;
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// See the module doc: hold a prefetch window, ack `--acks` of it, abort.
async fn ack_and_die(args: &Args, log: &mut LineLog) -> std::io::Result<bool> {
    let conn = match Connection::new(&args.url) {
        Ok(conn) => conn,
        Err(e) => {
            log.line(&format!("fatal {}", flat(e)))?;
            return Ok(false);
        }
    };
    let deadline = Instant::now() + args.deadline;
    let built = timeout(
        args.op_timeout,
        Consumer::builder(&conn)
            .queue(args.queue())
            .prefetch_count(args.prefetch)
            .build(),
    )
    .await;
    let mut consumer = match built {
        Ok(Ok(consumer)) => consumer,
        Ok(Err(e)) => {
            log.line(&format!("fatal {}", flat(e)))?;
            return Ok(false);
        }
        Err(_) => {
            log.line("fatal consumer timed out")?;
            return Ok(false);
        }
    };
    let want = u64::from(args.prefetch).min(args.count);
    let mut held = Vec::new();
    while (held.len() as u64) < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, consumer.next()).await {
            Ok(Some(Ok(message))) => {
                if let Ok(value) = message.decode::<serde_json::Value>() {
                    if let Check::Ok(id) = body::check(&value) {
                        log.line(&format!("got {id} ok"))?;
                    }
                }
                held.push(message);
            }
            Ok(Some(Err(e))) => log.line(&format!("error {}", flat(e)))?,
            Ok(None) | Err(_) => {
                log.line("deadline")?;
                return Ok(false);
            }
        }
    }
    // Back to back, then abort before the library's flush (about a
    // millisecond after the first of them) can run.
    let mut acked = 0;
    for message in held.iter().take(args.acks as usize) {
        if message.ack().await.is_ok() {
            acked += 1;
        }
    }
    log.line(&format!("acked {acked}"))?;
    std::process::abort();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    kombu::install_default_transports();
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("fault-peer: {e}");
            return ExitCode::from(64);
        }
    };
    let mut log = match LineLog::open(&args.log) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("fault-peer: {}: {e}", args.log.display());
            return ExitCode::from(74);
        }
    };
    let outcome = match args.mode.as_str() {
        "publish" => publish(&args, &mut log).await,
        "consume" => consume(&args, &mut log).await,
        "ack-and-die" => ack_and_die(&args, &mut log).await,
        other => {
            eprintln!("fault-peer: unknown mode {other}");
            return ExitCode::from(64);
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("fault-peer: log: {e}");
            ExitCode::from(74)
        }
    }
}
