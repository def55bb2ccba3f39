//! `kombu queue size|purge|delete` and `kombu queue quarantine
//! show|requeue|purge`.

use std::time::Duration;

use kombu::{quarantine_of, Accept, Channel, Connection, Producer, PublishOptions};

use crate::cli::{QuarantineCommand, QueueArgs, QueueCommand};
use crate::connect;
use crate::failure::Outcome;
use crate::render::{render, Decoder};

/// Run a `kombu queue` command: the number goes to stdout, a sentence to stderr.
pub async fn run(command: &QueueCommand) -> Outcome {
    let args: &QueueArgs = match command {
        QueueCommand::Size(args) | QueueCommand::Purge(args) | QueueCommand::Delete(args) => args,
        QueueCommand::Quarantine(QuarantineCommand::Show(show)) => &show.queue,
        QueueCommand::Quarantine(
            QuarantineCommand::Requeue(args) | QuarantineCommand::Purge(args),
        ) => args,
    };
    let conn = connect::open(&args.broker).await?;
    let result = async {
        let channel = conn.channel().await?;
        let count = match command {
            QueueCommand::Size(_) => channel.queue_size(&args.queue).await?,
            QueueCommand::Purge(_) => {
                let n = channel.queue_purge(&args.queue).await?;
                eprintln!(
                    "purged {n} message{} from queue {:?}",
                    plural(n),
                    args.queue
                );
                n
            }
            QueueCommand::Delete(_) => {
                let n = channel.queue_delete(&args.queue).await?;
                eprintln!("deleted queue {:?} ({n} message{})", args.queue, plural(n));
                n
            }
            QueueCommand::Quarantine(QuarantineCommand::Show(show)) => {
                show_quarantine(&conn, channel.as_ref(), &args.queue, show.count).await?
            }
            QueueCommand::Quarantine(QuarantineCommand::Requeue(_)) => {
                let n = requeue_quarantine(&conn, channel.as_ref(), &args.queue).await?;
                eprintln!(
                    "requeued {n} quarantined message{} to queue {:?}",
                    plural(n),
                    args.queue
                );
                n
            }
            QueueCommand::Quarantine(QuarantineCommand::Purge(_)) => {
                let n = channel.queue_purge(&quarantine_of(&args.queue)).await?;
                eprintln!(
                    "purged {n} message{} from the quarantine of {:?}",
                    plural(n),
                    args.queue
                );
                n
            }
        };
        let _ = channel.close().await;
        println!("{count}");
        Ok::<_, kombu::Error>(())
    }
    .await;
    let _ = conn.close().await;
    Ok(result?)
}

/// Print up to `count` quarantined messages of `queue` (JSON lines on
/// stdout, as `kombu consume` prints them), then give them back: the
/// channel closes without acking, so they stay quarantined.
async fn show_quarantine(
    conn: &Connection,
    channel: &dyn Channel,
    queue: &str,
    count: usize,
) -> kombu::Result<u64> {
    let quarantine = quarantine_of(queue);
    let decoder = Decoder::new(conn, Accept::all());
    let peek = conn.channel().await?;
    let mut shown = 0u64;
    while (shown as usize) < count {
        let Some(delivery) = peek.basic_get(&quarantine, false).await? else {
            break;
        };
        println!("{}", render(&delivery, &decoder));
        shown += 1;
    }
    // Unacked: back to the quarantine as the channel closes.
    peek.close().await?;
    let left = channel.queue_size(&quarantine).await?;
    eprintln!("{shown} shown; {left} message{} quarantined", plural(left));
    Ok(shown)
}

/// Move every quarantined message of `queue` back into it: each is
/// published to `queue` (headers kept, `x-death` saying where it was),
/// then acked in the quarantine, so none is lost on the way.
async fn requeue_quarantine(
    conn: &Connection,
    channel: &dyn Channel,
    queue: &str,
) -> kombu::Result<u64> {
    let quarantine = quarantine_of(queue);
    let producer = Producer::new(conn);
    let mut moved = 0u64;
    // Bounded: what arrives while this runs waits for the next run.
    let limit = channel.queue_size(&quarantine).await?;
    while moved < limit {
        let Some(delivery) = channel.basic_get(&quarantine, false).await? else {
            break;
        };
        let mut options = PublishOptions::new().routing_key(queue);
        options.headers = delivery.message.headers.clone();
        options.properties = delivery.message.properties.clone();
        options.content_type = delivery.message.content_type.clone();
        options.content_encoding = delivery.message.content_encoding.clone();
        let body = kombu::Payload::Bytes(delivery.message.body.clone());
        tokio::time::timeout(Duration::from_secs(30), producer.publish(body, options))
            .await
            .map_err(|_| {
                kombu::Error::new(kombu::ErrorKind::Timeout, "publish took over 30 s")
            })??;
        channel.basic_ack(delivery.delivery_tag, false).await?;
        moved += 1;
    }
    Ok(moved)
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
