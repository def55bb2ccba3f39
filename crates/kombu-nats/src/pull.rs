//! Pulling messages from a queue's durable consumer: one
//! `CONSUMER.MSG.NEXT` request, its messages read from an inbox of its own
//! until the batch is full or JetStream says there is no more.

use std::time::Duration;

use async_nats::StatusCode;
use futures::StreamExt;
use kombu_core::{Error, ErrorKind, Result};
use serde_json::json;

use crate::api::Api;
use crate::error;

/// How a pull waits.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Take what is there now (`no_wait`).
    No,
    /// Wait up to this long for the batch (`expires`).
    Upto(Duration),
}

/// Pull up to `batch` messages of `stream`'s consumer `consumer`. Nothing
/// (not an error) when the stream or consumer does not exist.
pub(crate) async fn pull(
    api: &Api,
    stream: &str,
    consumer: &str,
    batch: usize,
    wait: Wait,
    request_timeout: Duration,
) -> Result<Vec<async_nats::Message>> {
    let client = &api.client;
    let inbox = client.new_inbox();
    let mut inbox_sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| error::client("pulling messages", e))?;
    let (body, deadline) = match wait {
        // No `expires` with `no_wait`: nats-server 2.9 then holds the pull
        // until it expires whenever messages are pending ack, instead of
        // answering 404 at once.
        Wait::No => (json!({"batch": batch, "no_wait": true}), request_timeout),
        Wait::Upto(wait) => (
            json!({"batch": batch, "expires": wait.as_nanos() as u64}),
            wait + request_timeout,
        ),
    };
    client
        .publish_with_reply(
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            inbox,
            serde_json::to_vec(&body)
                .expect("JSON values serialize")
                .into(),
        )
        .await
        .map_err(|e| error::client("pulling messages", e))?;
    let mut got = Vec::with_capacity(batch.min(256));
    let read = async {
        while let Some(message) = inbox_sub.next().await {
            match message.status {
                None | Some(StatusCode::OK) => {
                    got.push(message);
                    if got.len() >= batch {
                        break;
                    }
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // No messages, the request expired, or it ended (409:
                // consumer deleted, too many waiting pulls, batch done).
                Some(StatusCode::NOT_FOUND)
                | Some(StatusCode::TIMEOUT)
                | Some(StatusCode::REQUEST_TERMINATED)
                | Some(StatusCode::NO_RESPONDERS) => break,
                Some(status) => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!(
                            "nats: pulling from {stream}: status {status} {}",
                            message.description.as_deref().unwrap_or("")
                        ),
                    ))
                }
            }
        }
        Ok(())
    };
    // `None`: the deadline passed.
    let outcome: Option<Result<()>> = tokio::time::timeout(deadline, read).await.ok();
    match outcome {
        Some(Ok(())) => {}
        Some(Err(e)) if got.is_empty() => return Err(e),
        Some(Err(e)) => tracing::warn!(error = %e, "nats: a pull ended with an error"),
        None if got.is_empty() => {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "nats: pulling from {stream}: no answer within {:.1} s",
                    deadline.as_secs_f64()
                ),
            ))
        }
        // What arrived is reserved for us: hand it over.
        None => {}
    }
    let _ = inbox_sub.unsubscribe().await;
    Ok(got)
}

/// How many times a message was delivered, from its `$JS.ACK` reply
/// subject (both the 9-token form and the one with domain and account).
pub(crate) fn delivered_count(reply: &str) -> u64 {
    let tokens: Vec<&str> = reply.split('.').collect();
    let at = match tokens.len() {
        9 => 4,
        n if n >= 11 => 6,
        _ => return 1,
    };
    if tokens[0] != "$JS" || tokens[1] != "ACK" {
        return 1;
    }
    tokens[at].parse().unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_counts() {
        assert_eq!(delivered_count("$JS.ACK.S.C.1.10.12.1733380000.0"), 1);
        assert_eq!(delivered_count("$JS.ACK.S.C.3.10.12.1733380000.0"), 3);
        assert_eq!(
            delivered_count("$JS.ACK.dom.hash.S.C.2.10.12.1733380000.0.rand"),
            2
        );
        assert_eq!(delivered_count("not.an.ack"), 1);
    }
}
