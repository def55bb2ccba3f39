//! `kombu queue size|purge|delete`.

use crate::cli::{QueueArgs, QueueCommand};
use crate::connect;
use crate::failure::Outcome;

/// Run a `kombu queue` command: the number goes to stdout, a sentence to stderr.
pub async fn run(command: &QueueCommand) -> Outcome {
    let args: &QueueArgs = match command {
        QueueCommand::Size(args) | QueueCommand::Purge(args) | QueueCommand::Delete(args) => args,
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
        };
        let _ = channel.close().await;
        println!("{count}");
        Ok::<_, kombu::Error>(())
    }
    .await;
    let _ = conn.close().await;
    Ok(result?)
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
