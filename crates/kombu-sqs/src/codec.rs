//! The SQS message body as Python kombu 5.7 writes and reads it, and the
//! per-message send parameters (FIFO group and deduplication ids, delay).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use kombu_core::{Envelope, Error, ErrorKind, Result};
use serde_json::{Map, Value};

/// SQS takes at most 900 seconds of per-message delay.
pub const MAX_DELAY_SECONDS: i32 = 900;

/// The body kombu writes: the envelope's JSON, base64-encoded when
/// `sqs_base64_encoding` is on (kombu's default).
///
/// ```
/// # use kombu_core::Envelope;
/// let envelope = Envelope::from_json(br#"{"body": "aGk=", "properties": {"body_encoding": "base64"}}"#)?;
/// let body = kombu_sqs::encode_body(&envelope, true);
/// assert_eq!(kombu_sqs::decode_body(&body, "q").body, b"hi");
/// # Ok::<(), kombu_core::Error>(())
/// ```
pub fn encode_body(envelope: &Envelope, base64: bool) -> String {
    let json = envelope.to_json();
    if base64 {
        STANDARD.encode(json)
    } else {
        String::from_utf8(json).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }
}

/// kombu's `_optional_b64_decode`: the bytes base64 stands for, when `raw`
/// is strict base64 of UTF-8 text; else `raw` itself.
fn optional_b64_decode(raw: &str) -> Vec<u8> {
    let candidate = raw.trim();
    let looks_like = !candidate.is_empty()
        && candidate.len().is_multiple_of(4)
        && candidate
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    if looks_like {
        if let Ok(decoded) = STANDARD.decode(candidate) {
            if std::str::from_utf8(&decoded).is_ok() {
                return decoded;
            }
        }
    }
    raw.as_bytes().to_vec()
}

/// Read an SQS body back as an envelope: base64 or plain JSON (SNS
/// deliveries and `sqs_base64_encoding=false` are plain), and, like kombu,
/// any other text as a message whose body is that text.
pub fn decode_body(raw: &str, queue: &str) -> Envelope {
    let bytes = optional_b64_decode(raw);
    if let Ok(envelope) = Envelope::from_json(&bytes) {
        if !envelope.properties.is_empty() {
            return envelope;
        }
    }
    // Not a kombu message (another producer, an S3 event...): kombu hands
    // the text over as the body.
    let mut info = Map::new();
    info.insert("exchange".into(), "".into());
    info.insert("routing_key".into(), queue.into());
    let mut properties = Map::new();
    properties.insert("delivery_info".into(), Value::Object(info));
    Envelope {
        body: bytes,
        content_type: None,
        content_encoding: None,
        headers: Map::new(),
        properties,
    }
}

/// A value set on the message as a kombu property (Python's
/// `producer.publish(..., MessageGroupId=...)`) or as a header (what a
/// kombu-rs producer can set).
fn message_value<'a>(envelope: &'a Envelope, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| {
        envelope
            .properties
            .get(*k)
            .or_else(|| envelope.headers.get(*k))
            .filter(|v| !v.is_null())
    })
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The parameters of one SendMessage besides the queue.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outgoing {
    pub(crate) body: String,
    pub(crate) group_id: Option<String>,
    pub(crate) dedup_id: Option<String>,
    pub(crate) delay_seconds: Option<i32>,
    pub(crate) attributes: Vec<(String, String)>,
}

impl Outgoing {
    /// Build the send for `envelope` into the queue `sqs_name`; checks the
    /// size limit before anything is sent.
    pub(crate) fn new(
        envelope: &Envelope,
        sqs_name: &str,
        base64: bool,
        common_attributes: &std::collections::BTreeMap<String, String>,
        max_size: usize,
    ) -> Result<Outgoing> {
        let mut envelope = envelope.clone();
        // Python kombu pops per-message attributes out of the body.
        let per_message = envelope.properties.shift_remove("message_attributes");
        let mut attributes: Vec<(String, String)> = common_attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(Value::Object(map)) = per_message {
            for (k, v) in map {
                attributes.retain(|(name, _)| *name != k);
                attributes.push((k, as_text(&v)));
            }
        }
        let fifo = crate::names::is_fifo(sqs_name);
        let group_id = message_value(&envelope, &["MessageGroupId"])
            .map(as_text)
            .or_else(|| fifo.then(|| "default".to_owned()));
        let dedup_id = if fifo {
            Some(dedup_id(&envelope))
        } else {
            None
        };
        let delay = message_value(&envelope, &["delay_seconds", "DelaySeconds"])
            .and_then(Value::as_f64)
            .filter(|d| *d >= 0.0)
            .map(|d| (d as i32).min(MAX_DELAY_SECONDS));
        let delay_seconds = match delay {
            Some(d) if fifo => {
                tracing::warn!(
                    queue = sqs_name,
                    delay = d,
                    "SQS FIFO queues take no per-message delay: ignored"
                );
                None
            }
            other => other,
        };
        let outgoing = Outgoing {
            body: encode_body(&envelope, base64),
            group_id,
            dedup_id,
            delay_seconds,
            attributes,
        };
        let size = outgoing.wire_size();
        if size > max_size {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "message too large for SQS: {size} bytes as sent (the envelope{}), \
                     the limit is {max_size} bytes; compress it, send a reference \
                     (e.g. to S3), or raise max_message_size if your queues allow more",
                    if base64 { ", base64-encoded" } else { "" }
                ),
            ));
        }
        Ok(outgoing)
    }

    /// What SQS counts against its size limits: the body and the message
    /// attributes (names, type and values).
    pub(crate) fn wire_size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len() + "String".len())
                .sum::<usize>()
    }
}

/// The FIFO deduplication id: an explicit `MessageDeduplicationId`, else
/// the message id, else the publish's delivery tag (one per publish, shared
/// by every copy and every retry of it). Never a fresh random value.
fn dedup_id(envelope: &Envelope) -> String {
    let id = message_value(
        envelope,
        &["MessageDeduplicationId", "message_id", "delivery_tag"],
    )
    .map(as_text)
    .unwrap_or_else(|| crate::names::stable_hash(&envelope.body));
    // SQS: at most 128 characters of [\x21-\x7e].
    let clean: String = id
        .chars()
        .filter(|c| ('\x21'..='\x7e').contains(c))
        .collect();
    if clean.len() <= 128 && !clean.is_empty() {
        clean
    } else {
        crate::names::stable_hash(id.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn envelope(extra: Value) -> Envelope {
        let mut json = serde_json::json!({
            "body": "eyJoZWxsbyI6ICJ3b3JsZCJ9",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"x-origin": "python"},
            "properties": {"delivery_mode": 2,
                "delivery_info": {"exchange": "capex", "routing_key": "rk"},
                "priority": 3, "body_encoding": "base64",
                "delivery_tag": "6d434860-0000-4000-8000-000000000000"}
        });
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                json["properties"][k] = v;
            }
        }
        Envelope::from_json(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn base64_of_the_envelope_json_as_kombu_writes() {
        let e = envelope(Value::Null);
        let body = encode_body(&e, true);
        let json = STANDARD.decode(&body).unwrap();
        assert!(json.starts_with(b"{\"body\": \"eyJoZWxsbyI6ICJ3b3JsZCJ9\""));
        assert_eq!(decode_body(&body, "q"), e);
        let plain = encode_body(&e, false);
        assert!(plain.starts_with('{'));
        assert_eq!(decode_body(&plain, "q"), e);
    }

    #[test]
    fn foreign_text_becomes_the_body() {
        let e = decode_body("just text", "q");
        assert_eq!(e.body, b"just text");
        assert_eq!(e.properties["delivery_info"]["routing_key"], "q");
        // Base64 of non-UTF-8 bytes stays as it is (kombu's rule).
        let e = decode_body("/w==", "q");
        assert_eq!(e.body, b"/w==");
    }

    #[test]
    fn fifo_ids_come_from_the_message_never_random() {
        let e = envelope(Value::Null);
        let a = Outgoing::new(&e, "q.fifo", true, &BTreeMap::new(), 262_144).unwrap();
        let b = Outgoing::new(&e, "q.fifo", true, &BTreeMap::new(), 262_144).unwrap();
        assert_eq!(a.group_id.as_deref(), Some("default"));
        assert_eq!(
            a.dedup_id.as_deref(),
            Some("6d434860-0000-4000-8000-000000000000")
        );
        assert_eq!(a.dedup_id, b.dedup_id);
        let e = envelope(serde_json::json!({"message_id": "order-7", "MessageGroupId": "cust-1"}));
        let o = Outgoing::new(&e, "q.fifo", true, &BTreeMap::new(), 262_144).unwrap();
        assert_eq!(o.dedup_id.as_deref(), Some("order-7"));
        assert_eq!(o.group_id.as_deref(), Some("cust-1"));
        let std = Outgoing::new(&e, "q", true, &BTreeMap::new(), 262_144).unwrap();
        assert_eq!(std.dedup_id, None);
    }

    #[test]
    fn delay_and_attributes() {
        let e = envelope(serde_json::json!({"delay_seconds": 5000,
            "message_attributes": {"tenant": "t1"}}));
        let mut common = BTreeMap::new();
        common.insert("app".to_owned(), "x".to_owned());
        let o = Outgoing::new(&e, "q", false, &common, 262_144).unwrap();
        assert_eq!(o.delay_seconds, Some(900));
        assert_eq!(o.attributes.len(), 2);
        assert!(!o.body.contains("message_attributes"));
        let fifo = Outgoing::new(&e, "q.fifo", false, &common, 262_144).unwrap();
        assert_eq!(fifo.delay_seconds, None);
    }

    #[test]
    fn too_large_is_a_clear_error() {
        let mut e = envelope(Value::Null);
        e.body = vec![b'x'; 200_000];
        let err = Outgoing::new(&e, "q", true, &BTreeMap::new(), 262_144).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
        assert!(err.message().contains("262144"));
        assert!(Outgoing::new(&e, "q", false, &BTreeMap::new(), 300_000).is_ok());
    }
}
