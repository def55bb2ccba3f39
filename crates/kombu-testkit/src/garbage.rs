//! The garbage check: a value written where a transport keeps a queue's
//! messages, by something other than kombu (the transport's raw client,
//! through the hook its `tests/conformance.rs` gives), is neither lost nor
//! in the way: the consumer goes on with the next message and the value
//! ends in the queue's quarantine (`<queue>.quarantine`), its bytes intact.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Accept, Connection, Error, ErrorKind, Producer, PublishOptions, Queue, Result};
use serde_json::{json, Value};

use crate::checks::{check, expect_eq};
use crate::support::{consumer_builder, recv_within, step, unique, Cleanup};

/// What the check writes: text (SQS bodies and CouchDB/MongoDB string
/// fields hold text only) that is neither JSON nor base64, with a byte
/// outside ASCII to show the bytes come back as written.
pub const GARBAGE: &[u8] = "{kombu-testkit garbage: not a kombu message, caf\u{e9}".as_bytes();

/// An error of a transport's raw client, as a garbage hook returns it.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// How a transport meets a value that is not a kombu message, as its
/// garbage hook says (the check holds the transport to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GarbagePath {
    /// The transport cannot read it: it is never handed to the consumer
    /// (whose stream reports an error item and goes on), and it is put in
    /// the quarantine with the reason in its `x-kombu-error` header.
    Unreadable,
    /// The transport reads any stored value as a message (SQS, as Python
    /// kombu: any other text is a message whose body is that text; AMQP:
    /// every delivery is a message). It is delivered with the bytes as its
    /// body; the consumer cannot decode it and rejects it, and the reject
    /// puts it in the quarantine (`x-death` reason `rejected`).
    DeliveredAsBody,
}

/// A delivery from the check's consumer: its body, and whether it is the
/// good message.
enum Seen {
    Good,
    Garbage,
}

/// Write [`GARBAGE`] into `queue` with the transport's raw client (the
/// `garbage:` hook of [`conformance_tests!`](crate::conformance_tests)),
/// publish a good message after it, and consume: the good message is
/// delivered, and the quarantine holds the garbage bytes, intact, with
/// the error ([`GarbagePath`] says which way they got there). A transport
/// without a quarantine fails the check: the garbage would be lost.
pub async fn garbage_value_is_quarantined<W, F>(conn: &Connection, write_garbage: W) -> Result<()>
where
    W: FnOnce(String, Vec<u8>) -> F,
    F: Future<Output = std::result::Result<GarbagePath, HookError>>,
{
    let caps = conn.capabilities().await?;
    check(
        caps.quarantine,
        "no quarantine: a value that is not a kombu message would be lost",
    )?;
    let mut clean = Cleanup::new();
    let channel = conn.channel().await?;
    let q = Queue::new(clean.queue(&unique("garbage-q")));
    let quarantine = kombu_core::quarantine_of(&q.name);
    clean.queue(&quarantine);
    q.declare(channel.as_ref()).await?;
    step(format!(
        "writing garbage into {} with the raw client",
        q.name
    ));
    let path = tokio::time::timeout(
        Duration::from_secs(15),
        write_garbage(q.name.clone(), GARBAGE.to_vec()),
    )
    .await
    .map_err(|_| Error::new(ErrorKind::Timeout, "the raw client's write took over 15 s"))?
    .map_err(|e| Error::new(ErrorKind::Other, format!("the raw client's write: {e}")))?;
    let good = json!({"kombu-testkit-good": unique("g")});
    step("publishing a good message after it");
    Producer::new(conn)
        .publish(good.clone(), PublishOptions::new().routing_key(&q.name))
        .await?;
    let mut c = consumer_builder(conn)
        .queue(q.clone())
        .prefetch_count(10)
        .accept(Accept::all())
        .build()
        .await?;
    let (mut reported, mut delivered, mut good_seen) = (0, 0, false);
    let deadline = Instant::now() + Duration::from_secs(20);
    // Until both went by (in either order: a transport with priorities
    // may serve the raw value after the good message).
    while !(good_seen && reported + delivered > 0) {
        step("consuming the garbage and the good message");
        let left = deadline.saturating_duration_since(Instant::now());
        let item = match tokio::time::timeout(left, c.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => return Err(Error::new(ErrorKind::Closed, "the consumer stream ended")),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "waited 20 s for the garbage and the good message (good message \
                         seen: {good_seen}, garbage reported {reported}, delivered \
                         {delivered}): the consumer did not go on"
                    ),
                ))
            }
        };
        let m = match item {
            Ok(m) => m,
            Err(e) => {
                // An unreadable stored value, reported; the stream goes on.
                eprintln!("reported, as expected: {e}");
                reported += 1;
                continue;
            }
        };
        let seen = if m.body() == GARBAGE {
            Seen::Garbage
        } else if m.decode::<Value>().ok().as_ref() == Some(&good) {
            Seen::Good
        } else {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "unexpected delivery: {:?}",
                    String::from_utf8_lossy(m.body())
                ),
            ));
        };
        match seen {
            Seen::Good => {
                m.ack().await?;
                good_seen = true;
            }
            Seen::Garbage => {
                delivered += 1;
                // What a consumer does with a message it cannot use.
                m.reject().await?;
            }
        }
    }
    match path {
        GarbagePath::Unreadable => {
            expect_eq(delivered, 0, "deliveries of an unreadable value")?;
            check(
                reported <= 1,
                format!("the unreadable value was reported {reported} times"),
            )?;
        }
        GarbagePath::DeliveredAsBody => {
            expect_eq(delivered, 1, "deliveries of the garbage as a message")?;
        }
    }
    let mut held = consumer_builder(conn)
        .queue(Queue::new(&quarantine))
        .accept(Accept::all())
        .build()
        .await?;
    let kept = recv_within(
        &mut held,
        Duration::from_secs(15),
        "the garbage in the quarantine",
    )
    .await?;
    check(
        kept.body() == GARBAGE,
        format!(
            "the quarantined bytes: expected {:?}, got {:?}",
            String::from_utf8_lossy(GARBAGE),
            String::from_utf8_lossy(kept.body())
        ),
    )?;
    let headers = kept.headers();
    match path {
        GarbagePath::Unreadable => {
            let error = headers.get("x-kombu-error").and_then(Value::as_str);
            check(
                error.is_some_and(|e| !e.is_empty()),
                format!("the quarantined value's x-kombu-error header: {headers:?}"),
            )?;
        }
        GarbagePath::DeliveredAsBody => {
            let reason = headers
                .get("x-death")
                .and_then(|d| d.get(0))
                .and_then(|d| d.get("reason"))
                .cloned();
            expect_eq(reason, Some(json!("rejected")), "x-death reason")?;
        }
    }
    kept.ack().await?;
    drop(held);
    drop(c);
    clean.run(channel.as_ref()).await;
    Ok(())
}
