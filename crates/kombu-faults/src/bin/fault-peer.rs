//! `fault-peer`: the publisher and the consumer of the fault tests.
//!
//! ```text
//! fault-peer publish --url URL --queue Q --count N --log FILE [--pace-ms 5]
//! fault-peer consume --url URL --queue Q --count N --log FILE [--work-ms 2] [--prefetch 10]
//!         [--idle-s 10] [--settle-s 15]
//! common: [--deadline-s 60] [--op-timeout-s 5]
//! ```
//!
//! The publisher sends ids `0..N` as persistent messages to the durable
//! queue `Q` (through the default exchange), retrying each publish on a new
//! connection until it returns `Ok`; it logs `retry <id> <error>` per failed
//! try and `published <id> <tries>` after the `Ok`. The consumer logs
//! `got <id> ok` before it acks and `acked <id>` after the ack returned
//! `Ok`, starts over on a new connection after an error or after `idle`
//! without a message, and exits 0 once every id was acked (by it or by an
//! earlier consumer writing the same log), or once every id was received
//! and nothing came for `settle` (an ack whose outcome is unknown, e.g. it
//! timed out while the broker was stopped, may have been applied: the
//! message then never comes again), or 2 at the deadline. See `kombu_faults::ledger` for the format.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu::{Connection, Consumer, DeliveryMode, Producer, PublishOptions, Queue};
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
    idle: Duration,
    settle: Duration,
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
        op_timeout: Duration::from_secs(5),
        idle: Duration::from_secs(10),
        settle: Duration::from_secs(15),
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
            "--idle-s" => args.idle = Duration::from_secs(num()?),
            "--settle-s" => args.settle = Duration::from_secs(num()?),
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

async fn publish(args: &Args, log: &mut LineLog) -> std::io::Result<bool> {
    let queue = Queue::new(&args.queue).durable(true);
    let deadline = Instant::now() + args.deadline;
    let mut current: Option<(Connection, Producer)> = None;
    for id in 0..args.count {
        let mut tries = 0u32;
        loop {
            if Instant::now() > deadline {
                log.line("deadline")?;
                return Ok(false);
            }
            tries += 1;
            if current.is_none() {
                let conn = match Connection::new(&args.url) {
                    Ok(conn) => conn,
                    Err(e) => {
                        log.line(&format!("fatal {}", flat(e)))?;
                        return Ok(false);
                    }
                };
                let declared = timeout(args.op_timeout, async {
                    let channel = conn.channel().await?;
                    queue.declare(channel.as_ref()).await
                })
                .await;
                match declared {
                    Ok(Ok(_)) => current = Some((conn.clone(), Producer::new(&conn))),
                    Ok(Err(e)) => {
                        log.line(&format!("retry {id} connect: {}", flat(e)))?;
                        close(conn).await;
                        sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                    Err(_) => {
                        log.line(&format!("retry {id} connect: timed out"))?;
                        close(conn).await;
                        sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                }
            }
            let (_, producer) = current.as_ref().expect("connected");
            let options = PublishOptions::new()
                .routing_key(&args.queue)
                .delivery_mode(DeliveryMode::Persistent);
            let failure =
                match timeout(args.op_timeout, producer.publish(body::make(id), options)).await {
                    Ok(Ok(())) => {
                        log.line(&format!("published {id} {tries}"))?;
                        break;
                    }
                    Ok(Err(e)) => flat(e),
                    Err(_) => "timed out".to_string(),
                };
            log.line(&format!("retry {id} {failure}"))?;
            if let Some((conn, _)) = current.take() {
                close(conn).await;
            }
            sleep(Duration::from_millis(250)).await;
        }
        if !args.pace.is_zero() {
            sleep(args.pace).await;
        }
    }
    log.line("done")?;
    if let Some((conn, _)) = current.take() {
        close(conn).await;
    }
    Ok(true)
}

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
    let mut got = ids("got ");
    log.line(&format!("start {}", std::process::id()))?;
    let queue = Queue::new(&args.queue).durable(true);
    let deadline = Instant::now() + args.deadline;
    let all = |ids: &BTreeSet<u64>| ids.range(0..args.count).count() as u64 == args.count;
    let mut settled = false;
    loop {
        if all(&acked) || settled {
            log.line("done")?;
            return Ok(true);
        }
        if Instant::now() > deadline {
            log.line("deadline")?;
            return Ok(false);
        }
        let conn = match Connection::new(&args.url) {
            Ok(conn) => conn,
            Err(e) => {
                log.line(&format!("fatal {}", flat(e)))?;
                return Ok(false);
            }
        };
        let built = timeout(
            args.op_timeout,
            Consumer::builder(&conn)
                .queue(queue.clone())
                .prefetch_count(args.prefetch)
                .build(),
        )
        .await;
        let mut consumer = match built {
            Ok(Ok(consumer)) => consumer,
            Ok(Err(e)) => {
                log.line(&format!("connect-failed {}", flat(e)))?;
                close(conn).await;
                sleep(Duration::from_millis(250)).await;
                continue;
            }
            Err(_) => {
                log.line("connect-failed timed out")?;
                close(conn).await;
                sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let why = loop {
            if all(&acked) {
                break None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let settling = all(&got);
            let wait = if settling { args.settle } else { args.idle };
            let message = match timeout(wait.min(left), consumer.next()).await {
                Err(_) if settling && Instant::now() < deadline => {
                    log.line("settled")?;
                    break None;
                }
                Err(_) => break Some("idle".to_string()),
                Ok(None) => break Some("stream ended".to_string()),
                Ok(Some(Err(e))) => break Some(flat(e)),
                Ok(Some(Ok(message))) => message,
            };
            let id = match message.decode::<serde_json::Value>() {
                Ok(value) => match body::check(&value) {
                    Check::Ok(id) => {
                        log.line(&format!("got {id} ok"))?;
                        got.insert(id);
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
            match timeout(args.op_timeout, message.ack()).await {
                Ok(Ok(())) => {
                    if let Some(id) = id {
                        log.line(&format!("acked {id}"))?;
                        acked.insert(id);
                    }
                }
                Ok(Err(e)) => {
                    log.line(&format!("ackerr {shown} {}", flat(&e)))?;
                    break Some(format!("ack failed: {}", flat(e)));
                }
                Err(_) => {
                    log.line(&format!("ackerr {shown} timed out"))?;
                    break Some("ack timed out".to_string());
                }
            }
        };
        drop(consumer);
        close(conn).await;
        settled = why.is_none();
        if let Some(why) = why {
            log.line(&format!("reconnect {why}"))?;
            sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
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
