//! `kombu consume`: print a queue's messages as JSON lines.
//!
//! Three ways to settle, chosen by flags:
//! - ack (default): print, then ack. With `--count N` and prefetch P, the
//!   last P messages are acked only after the consumer is cancelled, so the
//!   broker never delivers more than N (none beyond N comes back flagged
//!   redelivered), whether the broker applies a QoS change to running
//!   consumers or not.
//! - `--requeue`: hold every message unacked and put them all back at the
//!   end (a peek).
//! - `--no-ack`: the broker forgets each message as it delivers it. With
//!   `--count` messages are taken one by one (`basic_get`), so none beyond N
//!   is lost.
//!
//! Ctrl-C (or SIGTERM) stops between two messages: the consumer's channel
//! is closed, so every delivered, unacked message goes back to the queue.

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use kombu::{Channel, Connection, Consumer, Delivery, ExchangeType, Message, Queue};
use tokio::time::Instant;

use crate::cli::ConsumeArgs;
use crate::connect;
use crate::failure::{Failure, Outcome};
use crate::publish::{exchange_of, queue_of};
use crate::render::{accept_of, render, Decoder};

/// Why the loop stopped.
enum Stop {
    /// `--count` reached (or the stream ended without a count).
    Done,
    /// `--timeout` passed.
    TimedOut,
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// stdout is closed (`| head -1`): stop quietly.
    OutputClosed,
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
pub async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleep until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Print one message; false when stdout is closed.
fn print_line(delivery: &Delivery, decoder: &Decoder) -> bool {
    let line = render(delivery, decoder);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
}

/// The queue to consume, bound as the flags say.
fn queue_for(args: &ConsumeArgs) -> Queue {
    let exchange = exchange_of(&args.exchange);
    // A fanout exchange ignores keys, but kombu's redis PUB/SUB fanout
    // (fanout_patterns) puts the publish's routing key in the channel: the
    // empty key, kombu's own for fanout queues, takes every message.
    let binding_key = args.exchange.binding_key.clone().unwrap_or_else(|| {
        if args.exchange.kind == ExchangeType::Fanout {
            String::new()
        } else {
            args.queue.clone()
        }
    });
    queue_of(&args.queue, &exchange, &binding_key, &args.exchange)
}

/// Run `kombu consume`.
pub async fn run(args: &ConsumeArgs) -> Outcome {
    let conn = connect::open(&args.broker).await?;
    let decoder = Decoder::new(&conn, accept_of(&args.accept));
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let result = if args.no_ack && args.count.is_some() {
        get_loop(&conn, args, &decoder, deadline).await
    } else {
        stream_loop(&conn, args, &decoder, deadline).await
    };
    let _ = conn.close().await;
    let (stop, received) = result?;
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    match stop {
        Stop::Done | Stop::OutputClosed => Ok(()),
        Stop::TimedOut => match args.count {
            Some(wanted) if received < wanted => Err(Failure::failed(format!(
                "timed out after {} s: received {received} of {wanted} message{} from queue {:?}",
                args.timeout.unwrap_or_default().as_secs_f64(),
                plural(wanted),
                args.queue
            ))),
            _ => Ok(()),
        },
        Stop::Interrupted => Err(Failure::interrupted(format!(
            "interrupted after {received} message{}; unacked messages went back to queue {:?}",
            plural(received),
            args.queue
        ))),
    }
}

/// Consume with a subscription (ack, `--requeue`, or `--no-ack` without a count).
async fn stream_loop(
    conn: &Connection,
    args: &ConsumeArgs,
    decoder: &Decoder,
    deadline: Option<Instant>,
) -> Outcome<(Stop, u64)> {
    let hold = args.requeue;
    let cap = |n: u64| u16::try_from(n).unwrap_or(u16::MAX);
    let prefetch = match (args.count, hold, args.no_ack) {
        (_, _, true) => args.prefetch,
        // A peek holds everything: room for all of them (0: no limit).
        (Some(n), true, _) => u16::try_from(n).unwrap_or(0),
        (None, true, _) => 0,
        (Some(n), false, _) if args.prefetch == 0 => cap(n),
        (Some(n), false, _) => args.prefetch.min(cap(n)),
        (None, false, _) => args.prefetch,
    };
    let mut consumer = Consumer::builder(conn)
        .queue(queue_for(args))
        .declare(!args.no_declare)
        .prefetch_count(prefetch)
        .no_ack(args.no_ack)
        .accept(kombu::Accept::all())
        .build()
        .await?;
    let mut held: Vec<Message> = Vec::new();
    let mut deferred: Vec<Message> = Vec::new();
    let mut received = 0u64;
    let stop_signal = interrupted();
    tokio::pin!(stop_signal);
    let outcome: Outcome<Stop> = async {
        loop {
            if args.count.is_some_and(|n| received >= n) {
                return Ok(Stop::Done);
            }
            let next = tokio::select! {
                biased;
                _ = &mut stop_signal => return Ok(Stop::Interrupted),
                _ = until(deadline) => return Ok(Stop::TimedOut),
                next = consumer.next() => next,
            };
            let message = match next {
                None => return Ok(Stop::Done),
                Some(Err(err)) if err.is_connection_error() => {
                    return Err(Failure::failed(format!(
                        "consuming {:?}: {err}",
                        args.queue
                    )))
                }
                Some(Err(err)) => {
                    eprintln!("kombu: warning: {err}");
                    continue;
                }
                Some(Ok(message)) => message,
            };
            if !print_line(message.delivery(), decoder) {
                return Ok(Stop::OutputClosed);
            }
            received += 1;
            if args.no_ack {
                continue;
            }
            if hold {
                held.push(message);
                continue;
            }
            // Ack message j now only if the broker, refilling the prefetch
            // window, cannot go past N: j + prefetch <= N. Later ones are
            // acked after the consumer is cancelled.
            match args.count {
                Some(n) if received + u64::from(prefetch) > n => deferred.push(message),
                _ => message.ack().await?,
            }
        }
    }
    .await;
    if !deferred.is_empty() || !held.is_empty() {
        if let Err(err) = consumer.cancel().await {
            eprintln!("kombu: warning: cancelling the consumer: {err}");
        }
    }
    // Every printed message is acked, whatever stopped the loop.
    for message in &deferred {
        if let Err(err) = message.ack().await {
            eprintln!("kombu: warning: could not ack a message: {err}");
        }
    }
    // Put held messages back newest first, so that a transport that
    // requeues at the front restores the original order.
    for message in held.iter().rev() {
        if let Err(err) = message.requeue().await {
            eprintln!("kombu: warning: could not requeue a message: {err}");
        }
    }
    drop(held);
    // Closing the channel returns every other unacked message.
    if let Err(err) = consumer.close().await {
        eprintln!("kombu: warning: closing the consumer: {err}");
    }
    outcome.map(|stop| (stop, received))
}

/// `--no-ack --count N`: take messages one at a time so none beyond N is lost.
async fn get_loop(
    conn: &Connection,
    args: &ConsumeArgs,
    decoder: &Decoder,
    deadline: Option<Instant>,
) -> Outcome<(Stop, u64)> {
    let channel = conn.channel().await?;
    if !args.no_declare {
        queue_for(args).declare(channel.as_ref()).await?;
    }
    let wanted = args.count.unwrap_or(u64::MAX);
    let stop_signal = interrupted();
    tokio::pin!(stop_signal);
    let mut received = 0u64;
    let mut pause = Duration::from_millis(1);
    let outcome: Outcome<Stop> = async {
        while received < wanted {
            let got = tokio::select! {
                biased;
                _ = &mut stop_signal => return Ok(Stop::Interrupted),
                _ = until(deadline) => return Ok(Stop::TimedOut),
                got = channel.basic_get(&args.queue, true) => got?,
            };
            match got {
                Some(delivery) => {
                    pause = Duration::from_millis(1);
                    received += 1;
                    if !print_line(&delivery, decoder) {
                        return Ok(Stop::OutputClosed);
                    }
                }
                None => {
                    tokio::select! {
                        biased;
                        _ = &mut stop_signal => return Ok(Stop::Interrupted),
                        _ = until(deadline) => return Ok(Stop::TimedOut),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
            }
        }
        Ok(Stop::Done)
    }
    .await;
    close_channel(channel.as_ref()).await;
    outcome.map(|stop| (stop, received))
}

async fn close_channel(channel: &dyn Channel) {
    if let Err(err) = channel.close().await {
        eprintln!("kombu: warning: closing the channel: {err}");
    }
}
