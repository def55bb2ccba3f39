//! Waiting for messages with the database's `_changes` feed (longpoll).
//!
//! A consumer with nothing to claim asks for the changes since the last
//! sequence it saw and sleeps until one comes. Sequences are opaque JSON
//! (integers on pouchdb-server, strings on CouchDB 2+) and are sent back as
//! given. The wait is bounded on the client side: pouchdb-server ignores
//! `timeout` when nothing changes, so an unanswered longpoll is dropped at
//! the deadline and counts as "no changes". No server-side filter is used
//! (`filter=_selector` crashes pouchdb-server): the rows carry document
//! ids, and a message id names its queue.

use std::sync::Mutex;
use std::time::Duration;

use kombu_core::Result;
use reqwest::Method;
use serde_json::Value;

use crate::client::CouchClient;
use crate::layout::queue_of_message_id;

/// Rows read per longpoll; a backlog of changes is read in several calls.
const CHANGES_LIMIT: u32 = 200;

/// The position in the changes feed this backend has read up to.
#[derive(Debug, Default)]
pub(crate) struct ChangesFeed {
    since: Mutex<Option<Value>>,
}

/// The `since` parameter for a sequence: strings as they are, anything
/// else (pouchdb's integers) as JSON.
pub(crate) fn since_param(seq: &Value) -> String {
    match seq {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// True when a changes row may bring a message to one of `queues`: a
/// message document of theirs that was written (not deleted). Claims
/// write too, which costs a useless look at worst.
pub(crate) fn concerns(row: &Value, queues: &[String]) -> bool {
    if row.get("deleted").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    row.get("id")
        .and_then(Value::as_str)
        .and_then(queue_of_message_id)
        .is_some_and(|queue| queues.contains(&queue))
}

impl ChangesFeed {
    /// The sequence to wait from: the last one seen, or the database's
    /// current one (read before the caller's first claim, so nothing
    /// stored after it is missed).
    pub async fn position(&self, client: &CouchClient) -> Result<Value> {
        if let Some(seq) = self.lock().clone() {
            return Ok(seq);
        }
        let query = [("descending", "true".to_owned()), ("limit", "1".to_owned())];
        let body = client
            .send(Method::GET, &["_changes"], &query, None, None)
            .await?
            .ok("read the changes feed position")?;
        Ok(body.get("last_seq").cloned().unwrap_or(Value::from(0)))
    }

    /// Remember how far the feed was read.
    pub fn remember(&self, seq: Value) {
        *self.lock() = Some(seq);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Value>> {
        self.since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait up to `timeout` for changes after `since`. Returns the new
    /// position and whether a change concerns one of `queues`. No answer
    /// by the deadline is "no changes".
    pub async fn wait(
        &self,
        client: &CouchClient,
        since: &Value,
        queues: &[String],
        timeout: Duration,
    ) -> Result<(Value, bool)> {
        let query = [
            ("feed", "longpoll".to_owned()),
            ("since", since_param(since)),
            ("timeout", timeout.as_millis().max(1).to_string()),
            ("limit", CHANGES_LIMIT.to_string()),
        ];
        let request = client.send(
            Method::GET,
            &["_changes"],
            &query,
            None,
            Some(timeout + Duration::from_secs(5)),
        );
        let reply = match tokio::time::timeout(timeout, request).await {
            Ok(reply) => reply?,
            Err(_) => return Ok((since.clone(), false)),
        };
        let body = reply.ok("wait on the changes feed")?;
        let next = body
            .get("last_seq")
            .filter(|s| !s.is_null())
            .cloned()
            .unwrap_or_else(|| since.clone());
        let relevant = body
            .get("results")
            .and_then(Value::as_array)
            .is_some_and(|rows| rows.iter().any(|row| concerns(row, queues)));
        Ok((next, relevant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sequences_are_sent_as_given() {
        assert_eq!(since_param(&json!(42)), "42");
        assert_eq!(since_param(&json!("13-g1AAAAB")), "13-g1AAAAB");
        assert_eq!(since_param(&json!([1, "x"])), r#"[1,"x"]"#);
    }

    #[test]
    fn only_written_messages_of_our_queues_concern_us() {
        let queues = vec!["a".to_owned(), "b:c".to_owned()];
        assert!(concerns(&json!({"id": r#"message:"a":1-0-x"#}), &queues));
        assert!(concerns(&json!({"id": r#"message:"b:c":1-0-x"#}), &queues));
        assert!(!concerns(
            &json!({"id": r#"message:"a":1-0-x"#, "deleted": true}),
            &queues
        ));
        assert!(!concerns(&json!({"id": r#"message:"z":1-0-x"#}), &queues));
        assert!(!concerns(&json!({"id": "queue:a"}), &queues));
        assert!(!concerns(&json!({"seq": 3}), &queues));
    }
}
