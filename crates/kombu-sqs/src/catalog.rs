//! Declarations kept in SQS itself, where every process sees them: tags.
//!
//! - An exchange is a standard queue named `<prefix>kombu-exchange-<name>`
//!   (never consumed) whose tags hold the exchange type (`kombu.type`) and
//!   one tag per binding (`kombu.b.<hash>` = base64 of the JSON
//!   `[queue, routing_key, arguments]`).
//! - A queue's own tags hold its kombu declaration (`kombu.decl.<n>`:
//!   base64 of the JSON of its dead-letter exchange and routing key, message
//!   TTL, max length, in chunks of 256 characters) and the exchanges it is
//!   bound to (`kombu.x.<hash>` = base64 of the exchange name), so deleting
//!   it removes its bindings too.
//!
//! SQS allows 50 tags per queue, keys up to 128 and values up to 256
//! characters of `[\p{L}\p{Z}\p{N}_.:/=+\-@]`: base64 fits.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use kombu_core::spi::QueueBinding;
use kombu_core::{Error, ErrorKind, ExchangeType, Queue, Result};
use serde_json::{json, Value};

use crate::names::stable_hash;

/// Tag holding an exchange's type.
pub(crate) const TYPE_TAG: &str = "kombu.type";
const BINDING_PREFIX: &str = "kombu.b.";
const BOUND_PREFIX: &str = "kombu.x.";
const DECLARATION_PREFIX: &str = "kombu.decl.";
/// The longest tag value SQS takes.
pub(crate) const MAX_TAG_VALUE: usize = 256;
/// The most tags SQS keeps on one queue.
pub(crate) const MAX_TAGS: usize = 50;

fn encode(value: &Value) -> String {
    STANDARD.encode(value.to_string())
}

fn decode(text: &str) -> Option<Value> {
    let bytes = STANDARD.decode(text).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The tag that stores `binding`.
pub(crate) fn binding_tag(exchange: &str, binding: &QueueBinding) -> Result<(String, String)> {
    let value = json!([binding.queue, binding.routing_key, binding.arguments]);
    let encoded = encode(&value);
    if encoded.len() > MAX_TAG_VALUE {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "binding of queue {:?} to exchange {exchange:?} with key {:?} is too long to \
                 store in an SQS tag (queue name, routing key and arguments must fit in 192 \
                 bytes of JSON)",
                binding.queue, binding.routing_key
            ),
        ));
    }
    let key = format!(
        "{BINDING_PREFIX}{}",
        stable_hash(value.to_string().as_bytes())
    );
    Ok((key, encoded))
}

/// The exchange type and bindings an exchange marker's tags hold.
pub(crate) fn read_exchange(
    tags: &HashMap<String, String>,
) -> (Option<ExchangeType>, Vec<QueueBinding>) {
    let kind = tags.get(TYPE_TAG).and_then(|t| t.parse().ok());
    let mut bindings: Vec<(String, QueueBinding)> = tags
        .iter()
        .filter(|(k, _)| k.starts_with(BINDING_PREFIX))
        .filter_map(|(k, v)| {
            let value = decode(v)?;
            let queue = value.get(0)?.as_str()?;
            let key = value.get(1)?.as_str()?;
            let arguments = value
                .get(2)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            Some((
                k.clone(),
                QueueBinding::new(queue, key).with_arguments(arguments),
            ))
        })
        .collect();
    bindings.sort_by(|a, b| a.0.cmp(&b.0));
    (kind, bindings.into_iter().map(|(_, b)| b).collect())
}

/// The keys of the binding tags that bind `queue`.
pub(crate) fn binding_keys_of_queue(tags: &HashMap<String, String>, queue: &str) -> Vec<String> {
    tags.iter()
        .filter(|(k, _)| k.starts_with(BINDING_PREFIX))
        .filter(|(_, v)| {
            decode(v).and_then(|j| j.get(0)?.as_str().map(|q| q == queue)) == Some(true)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// The tag on a queue recording that it is bound to `exchange` (`None`
/// when the name is too long to record: it is then not cleaned up on
/// delete).
pub(crate) fn bound_tag(exchange: &str) -> Option<(String, String)> {
    let encoded = STANDARD.encode(exchange);
    (encoded.len() <= MAX_TAG_VALUE).then(|| {
        (
            format!("{BOUND_PREFIX}{}", stable_hash(exchange.as_bytes())),
            encoded,
        )
    })
}

/// The exchanges a queue's tags say it is bound to.
pub(crate) fn bound_exchanges(tags: &HashMap<String, String>) -> Vec<String> {
    tags.iter()
        .filter(|(k, _)| k.starts_with(BOUND_PREFIX))
        .filter_map(|(_, v)| String::from_utf8(STANDARD.decode(v).ok()?).ok())
        .collect()
}

/// The tags holding `queue`'s declaration (none when it declares nothing
/// the channel needs).
pub(crate) fn declaration_tags(queue: &Queue) -> Result<Vec<(String, String)>> {
    let mut decl = serde_json::Map::new();
    if let Some(dlx) = &queue.dead_letter_exchange {
        decl.insert("dlx".into(), dlx.clone().into());
    }
    if let Some(rk) = &queue.dead_letter_routing_key {
        decl.insert("dlrk".into(), rk.clone().into());
    }
    if let Some(ttl) = queue.message_ttl {
        decl.insert("ttl_ms".into(), (ttl.as_millis() as u64).into());
    }
    if let Some(max) = queue.max_length {
        decl.insert("max_length".into(), max.into());
    }
    if decl.is_empty() {
        return Ok(Vec::new());
    }
    let encoded = encode(&Value::Object(decl));
    let chunks: Vec<(String, String)> = encoded
        .as_bytes()
        .chunks(MAX_TAG_VALUE)
        .enumerate()
        .map(|(i, chunk)| {
            (
                format!("{DECLARATION_PREFIX}{i}"),
                String::from_utf8_lossy(chunk).into_owned(),
            )
        })
        .collect();
    if chunks.len() > 8 {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "the declaration of queue {:?} is too long to store in SQS tags",
                queue.name
            ),
        ));
    }
    Ok(chunks)
}

/// `name`'s declaration as its tags record it.
pub(crate) fn read_declaration(name: &str, tags: &HashMap<String, String>) -> Queue {
    let mut chunks: Vec<(usize, &String)> = tags
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(DECLARATION_PREFIX)?.parse().ok()?, v)))
        .collect();
    chunks.sort();
    let joined: String = chunks.into_iter().map(|(_, v)| v.as_str()).collect();
    let mut queue = Queue::new(name);
    if let Some(decl) = decode(&joined) {
        let text = |k: &str| decl.get(k).and_then(Value::as_str).map(str::to_owned);
        queue.dead_letter_exchange = text("dlx");
        queue.dead_letter_routing_key = text("dlrk");
        queue.message_ttl = decl
            .get("ttl_ms")
            .and_then(Value::as_u64)
            .map(Duration::from_millis);
        queue.max_length = decl.get("max_length").and_then(Value::as_u64);
    }
    queue
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: Vec<(String, String)>) -> HashMap<String, String> {
        pairs.into_iter().collect()
    }

    #[test]
    fn bindings_round_trip_through_tags() {
        let b1 = QueueBinding::new("q1", "a.#");
        let mut args = serde_json::Map::new();
        args.insert("x-match".into(), "all".into());
        let b2 = QueueBinding::new("q2", "").with_arguments(args);
        let mut all = vec![(TYPE_TAG.to_owned(), "topic".to_owned())];
        all.push(binding_tag("ex", &b1).unwrap());
        all.push(binding_tag("ex", &b2).unwrap());
        for (k, v) in &all {
            assert!(k.len() <= 128 && v.len() <= MAX_TAG_VALUE);
            assert!(
                v.chars()
                    .all(|c| c.is_alphanumeric() || "_.:/=+-@ ".contains(c)),
                "{v}"
            );
        }
        let map = tags(all);
        let (kind, bindings) = read_exchange(&map);
        assert_eq!(kind, Some(ExchangeType::Topic));
        assert_eq!(bindings.len(), 2);
        assert!(bindings.contains(&b1) && bindings.contains(&b2));
        assert_eq!(binding_keys_of_queue(&map, "q1").len(), 1);
        // The same binding makes the same key (no duplicates).
        assert_eq!(
            binding_tag("ex", &b1).unwrap(),
            binding_tag("ex", &b1).unwrap()
        );
    }

    #[test]
    fn too_long_binding_is_an_error() {
        let b = QueueBinding::new("q", "k".repeat(200));
        assert_eq!(
            binding_tag("ex", &b).unwrap_err().kind(),
            ErrorKind::LimitExceeded
        );
    }

    #[test]
    fn declarations_round_trip() {
        let mut q = Queue::new("work");
        q.dead_letter_exchange = Some("dlx".into());
        q.dead_letter_routing_key = Some("dead".into());
        q.message_ttl = Some(Duration::from_millis(1500));
        let map = tags(declaration_tags(&q).unwrap());
        let back = read_declaration("work", &map);
        assert_eq!(back.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(back.dead_letter_routing_key.as_deref(), Some("dead"));
        assert_eq!(back.message_ttl, Some(Duration::from_millis(1500)));
        assert!(declaration_tags(&Queue::new("plain")).unwrap().is_empty());
        let (k, v) = bound_tag("ex.1").unwrap();
        assert_eq!(
            bound_exchanges(&tags(vec![(k, v)])),
            vec!["ex.1".to_owned()]
        );
    }
}
