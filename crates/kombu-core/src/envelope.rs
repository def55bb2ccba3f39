//! The message as kombu's virtual transports store it (Redis list entries,
//! SQS bodies, MongoDB payloads, ...): one JSON object.
//!
//! ```json
//! {"body": "eyJoZWxsbyI6ICJ3b3JsZCIsICJuIjogMX0=", "content-encoding": "utf-8",
//!  "content-type": "application/json", "headers": {"x-origin": "python"},
//!  "properties": {"delivery_mode": 2,
//!                 "delivery_info": {"exchange": "ex", "routing_key": "rk"},
//!                 "priority": 0, "body_encoding": "base64",
//!                 "delivery_tag": "21451875-7e5e-4de5-a491-637f733e59d8"}}
//! ```
//!
//! [`Envelope::to_json`] writes exactly the bytes Python kombu 5.7 writes
//! (its JSON layout, see [`to_kombu_json`](crate::serialization::to_kombu_json)); [`Envelope::from_json`] reads
//! what any kombu version writes.

use std::borrow::Cow;

use base64::Engine as _;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::serialization::to_kombu_json_of;

/// One message in a virtual transport's storage format.
///
/// `body` holds the bytes after the `base64` body encoding is undone: the
/// serialized (and maybe compressed) body.
///
/// ```
/// use kombu_core::envelope::{Envelope, PublishProperties};
/// let props = PublishProperties::default().into_map("ex", "rk");
/// let env = Envelope::new(b"{}".to_vec(), Some("application/json".into()), Some("utf-8".into()),
///                         Default::default(), props);
/// let back = Envelope::from_json(&env.to_json()).unwrap();
/// assert_eq!(back, env);
/// assert_eq!(back.delivery_tag(), env.delivery_tag());
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Envelope {
    /// The serialized body (not base64).
    pub body: Vec<u8>,
    /// `content-type`, `None` when kombu wrote `null`.
    pub content_type: Option<String>,
    /// `content-encoding`, `None` when kombu wrote `null`.
    pub content_encoding: Option<String>,
    /// Application headers (plus `compression`, `redelivered`).
    pub headers: Map<String, Value>,
    /// Message properties: `delivery_mode`, `delivery_info`, `priority`,
    /// `body_encoding`, `delivery_tag`, `correlation_id`, ...
    pub properties: Map<String, Value>,
}

fn bad_envelope(message: impl std::fmt::Display) -> Error {
    Error::protocol(format!("cannot read message envelope: {message}"))
}

/// Python's `base64.b64decode`: characters outside the alphabet are skipped,
/// padding is required.
fn decode_base64(text: &str) -> Result<Vec<u8>> {
    // The common case: nothing to skip.
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text) {
        return Ok(bytes);
    }
    let clean: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .map_err(|e| bad_envelope(format!("body is not valid base64: {e}")))
}

fn optional_string(map: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad_envelope(format!("{key:?} is not a string: {other}"))),
    }
}

fn optional_object(map: &mut Map<String, Value>, key: &str) -> Result<Map<String, Value>> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(bad_envelope(format!("{key:?} is not an object: {other}"))),
    }
}

impl Envelope {
    /// An envelope from its parts.
    pub fn new(
        body: Vec<u8>,
        content_type: Option<String>,
        content_encoding: Option<String>,
        headers: Map<String, Value>,
        properties: Map<String, Value>,
    ) -> Self {
        Envelope {
            body,
            content_type,
            content_encoding,
            headers,
            properties,
        }
    }

    /// The envelope's JSON, byte-for-byte as kombu writes it.
    ///
    /// Keys come in kombu's order (`body`, `content-encoding`,
    /// `content-type`, `headers`, `properties`); the body is base64 and
    /// `properties.body_encoding` is set to `"base64"` (kept in place when
    /// present, appended otherwise). Other keys keep their order.
    ///
    /// ```
    /// use kombu_core::envelope::Envelope;
    /// let env = Envelope::new(b"hi".to_vec(), Some("text/plain".into()), Some("utf-8".into()),
    ///                         Default::default(), Default::default());
    /// assert_eq!(
    ///     env.to_json(),
    ///     br#"{"body": "aGk=", "content-encoding": "utf-8", "content-type": "text/plain", "headers": {}, "properties": {"body_encoding": "base64"}}"#
    /// );
    /// ```
    pub fn to_json(&self) -> Vec<u8> {
        // Written straight from the fields: no copy of the maps.
        to_kombu_json_of(&WireOut(self))
    }

    /// Read an envelope written by any kombu version.
    ///
    /// `properties.body_encoding` `"base64"` means a base64 body; absent,
    /// `null` or `"utf-8"` means the body string is the body (as UTF-8).
    /// Missing or `null` headers and properties read as empty; a missing or
    /// `null` body as empty. Unknown top-level keys are ignored. Anything else
    /// malformed is an [`ErrorKind::Protocol`](crate::ErrorKind::Protocol)
    /// error, never a panic.
    ///
    /// ```
    /// use kombu_core::envelope::Envelope;
    /// let env = Envelope::from_json(br#"{"body": "hi", "content-type": null}"#).unwrap();
    /// assert_eq!(env.body, b"hi");
    /// assert_eq!(env.content_type, None);
    /// assert!(Envelope::from_json(b"[1]").is_err());
    /// ```
    pub fn from_json(json: &[u8]) -> Result<Envelope> {
        // The fast path: straight into the fields, the body borrowed from
        // the input. Anything it refuses goes the slow way, which says
        // what is wrong.
        // (An object only: serde would also read a struct from an array.)
        let object = json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if let Some(wire) = object
            .then(|| serde_json::from_slice::<WireIn<'_>>(json).ok())
            .flatten()
        {
            let properties = wire.properties.unwrap_or_default();
            let body_text = wire.body.unwrap_or_default();
            let body = match properties.get("body_encoding") {
                None | Some(Value::Null) => Some(body_text.into_owned().into_bytes()),
                Some(Value::String(enc)) if enc.eq_ignore_ascii_case("utf-8") => {
                    Some(body_text.into_owned().into_bytes())
                }
                Some(Value::String(enc)) if enc.eq_ignore_ascii_case("base64") => {
                    decode_base64(&body_text).ok()
                }
                Some(_) => None,
            };
            if let Some(body) = body {
                return Ok(Envelope {
                    body,
                    content_type: wire.content_type,
                    content_encoding: wire.content_encoding,
                    headers: wire.headers.unwrap_or_default(),
                    properties,
                });
            }
        }
        Self::from_json_checked(json)
    }

    /// [`from_json`](Self::from_json) through a `Value`: every part
    /// checked, with an error that names what is wrong.
    fn from_json_checked(json: &[u8]) -> Result<Envelope> {
        let value: Value = serde_json::from_slice(json).map_err(bad_envelope)?;
        let Value::Object(mut map) = value else {
            return Err(bad_envelope("not a JSON object"));
        };
        let headers = optional_object(&mut map, "headers")?;
        let properties = optional_object(&mut map, "properties")?;
        let body_text = optional_string(&map, "body")?.unwrap_or_default();
        let body = match properties.get("body_encoding") {
            None | Some(Value::Null) => body_text.into_bytes(),
            Some(Value::String(enc)) if enc.eq_ignore_ascii_case("utf-8") => body_text.into_bytes(),
            Some(Value::String(enc)) if enc.eq_ignore_ascii_case("base64") => {
                decode_base64(&body_text)?
            }
            Some(other) => return Err(bad_envelope(format!("unsupported body_encoding {other}"))),
        };
        Ok(Envelope {
            body,
            content_type: optional_string(&map, "content-type")?,
            content_encoding: optional_string(&map, "content-encoding")?,
            headers,
            properties,
        })
    }

    /// `properties.delivery_tag`, kombu's uuid4 string.
    pub fn delivery_tag(&self) -> Option<&str> {
        self.properties.get("delivery_tag")?.as_str()
    }

    /// `properties.delivery_info` (`exchange`, `routing_key`, maybe `redelivered`).
    pub fn delivery_info(&self) -> Option<&Map<String, Value>> {
        self.properties.get("delivery_info")?.as_object()
    }

    /// Set `delivery_info.exchange` and `.routing_key`, keeping its other keys,
    /// as kombu's `basic_publish` does.
    ///
    /// ```
    /// use kombu_core::envelope::Envelope;
    /// let mut env = Envelope::default();
    /// env.set_delivery_info("ex", "rk");
    /// assert_eq!(env.delivery_info().unwrap()["routing_key"], "rk");
    /// ```
    pub fn set_delivery_info(&mut self, exchange: &str, routing_key: &str) {
        let entry = self
            .properties
            .entry("delivery_info")
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        if let Value::Object(info) = entry {
            info.insert("exchange".into(), exchange.into());
            info.insert("routing_key".into(), routing_key.into());
        }
    }

    /// The priority as kombu's virtual transports read it: `properties.priority`
    /// as an integer clamped to 0..=9, 0 when missing or not a number.
    ///
    /// ```
    /// use kombu_core::envelope::Envelope;
    /// let mut env = Envelope::default();
    /// assert_eq!(env.priority(), 0);
    /// env.properties.insert("priority".into(), 12.into());
    /// assert_eq!(env.priority(), 9);
    /// ```
    pub fn priority(&self) -> u8 {
        let raw = match self.properties.get("priority") {
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_u64().map(|_| i64::MAX))
                .or_else(|| n.as_f64().map(|f| f.trunc() as i64)),
            Some(Value::Bool(b)) => Some(i64::from(*b)),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        raw.map_or(0, |p| p.clamp(0, 9) as u8)
    }

    /// True when the message was delivered before and put back
    /// (`headers.redelivered` or `delivery_info.redelivered`).
    pub fn redelivered(&self) -> bool {
        self.headers.get("redelivered") == Some(&Value::Bool(true))
            || self
                .delivery_info()
                .and_then(|info| info.get("redelivered"))
                == Some(&Value::Bool(true))
    }

    /// Mark the message as redelivered before putting it back, as kombu's
    /// Redis transport does on requeue and restore: `headers.redelivered =
    /// true` and, when there is a `delivery_info`, `delivery_info.redelivered
    /// = true`.
    ///
    /// ```
    /// use kombu_core::envelope::Envelope;
    /// let mut env = Envelope::default();
    /// env.set_delivery_info("ex", "rk");
    /// env.mark_redelivered();
    /// assert!(env.redelivered());
    /// assert_eq!(env.delivery_info().unwrap()["redelivered"], true);
    /// ```
    pub fn mark_redelivered(&mut self) {
        self.headers.insert("redelivered".into(), true.into());
        if let Some(Value::Object(info)) = self.properties.get_mut("delivery_info") {
            info.insert("redelivered".into(), true.into());
        }
    }
}

/// The header counting how often a message was delivered and put back
/// (RabbitMQ quorum queues' name): virtual transports raise it on every
/// requeue and restore, and a queue's `x-delivery-limit` is read against it.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// How often a message with these headers was delivered and put back
/// (its `x-delivery-count`, 0 when absent).
///
/// ```
/// use kombu_core::envelope::{delivery_count, Envelope};
/// let mut envelope = Envelope::default();
/// assert_eq!(delivery_count(&envelope.headers), 0);
/// envelope.count_return();
/// envelope.count_return();
/// assert_eq!(delivery_count(&envelope.headers), 2);
/// ```
pub fn delivery_count(headers: &serde_json::Map<String, Value>) -> u64 {
    headers
        .get(DELIVERY_COUNT_HEADER)
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
        .unwrap_or(0)
}

impl Envelope {
    /// Count one more return to the queue in its `x-delivery-count`
    /// header (for a queue with an `x-delivery-limit`; kombu itself keeps
    /// no count, so other requeues stay byte-identical to kombu's).
    pub fn count_return(&mut self) {
        let returned = delivery_count(&self.headers) + 1;
        self.headers
            .insert(DELIVERY_COUNT_HEADER.into(), returned.into());
    }
}

/// What a publish puts in the envelope's properties, in kombu's order.
///
/// Python kombu 5.7's `Producer.publish(body, exchange=..., routing_key=...,
/// priority=..., delivery_mode=..., expiration=..., **properties)` on a
/// virtual transport writes, in this order: the extra `**properties` in the
/// caller's order (`correlation_id`, `reply_to`, `message_id`, `timestamp`,
/// `type`, `app_id`, `user_id`, ...), `delivery_mode`, `expiration` (if any,
/// milliseconds as a string), `delivery_info` (`exchange`, `routing_key`),
/// `priority`, `body_encoding` (`"base64"`) and `delivery_tag` (a fresh uuid4).
///
/// ```
/// use kombu_core::envelope::PublishProperties;
/// use std::time::Duration;
/// let mut p = PublishProperties::default().with("correlation_id", "cid-1").with("reply_to", "replyq");
/// p.priority = 5;
/// p.expiration = Some(Duration::from_millis(1500));
/// let map = p.into_map_with_tag("ex", "rk", "00000000-0000-4000-8000-000000000002");
/// assert_eq!(
///     kombu_core::serialization::to_kombu_json(&map.into()),
///     br#"{"correlation_id": "cid-1", "reply_to": "replyq", "delivery_mode": 2, "expiration": "1500", "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 5, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000002"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PublishProperties {
    /// Extra AMQP properties, in the order they were given.
    pub extra: Map<String, Value>,
    /// 2 (persistent, kombu's default) or 1 (transient).
    pub delivery_mode: u8,
    /// Message TTL; kombu writes it as whole milliseconds in a string.
    pub expiration: Option<std::time::Duration>,
    /// Message priority (0 unless set).
    pub priority: u8,
}

impl Default for PublishProperties {
    fn default() -> Self {
        PublishProperties {
            extra: Map::new(),
            delivery_mode: 2,
            expiration: None,
            priority: 0,
        }
    }
}

impl PublishProperties {
    /// Add an extra property such as `correlation_id` or `reply_to`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The properties map for a message published to `exchange` with
    /// `routing_key`, with a fresh uuid4 `delivery_tag`.
    pub fn into_map(self, exchange: &str, routing_key: &str) -> Map<String, Value> {
        let tag = uuid::Uuid::new_v4().to_string();
        self.into_map_with_tag(exchange, routing_key, &tag)
    }

    /// [`into_map`](Self::into_map) with a given `delivery_tag` (all copies
    /// of a message routed to several queues share one).
    pub fn into_map_with_tag(
        self,
        exchange: &str,
        routing_key: &str,
        delivery_tag: &str,
    ) -> Map<String, Value> {
        // The same steps, in the same order, as kombu: Producer.publish,
        // Channel.prepare_message, Channel._inplace_augment_message.
        let mut props = self.extra;
        props.insert("delivery_mode".into(), self.delivery_mode.into());
        if let Some(ttl) = self.expiration {
            props.insert("expiration".into(), ttl.as_millis().to_string().into());
        }
        if !props.get("delivery_info").is_some_and(Value::is_object) {
            props.insert("delivery_info".into(), Value::Object(Map::new()));
        }
        props.entry("priority").or_insert(self.priority.into());
        props.insert("body_encoding".into(), "base64".into());
        props.insert("delivery_tag".into(), delivery_tag.into());
        if let Some(Value::Object(info)) = props.get_mut("delivery_info") {
            info.insert("exchange".into(), exchange.into());
            info.insert("routing_key".into(), routing_key.into());
        }
        props
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::CompressionRegistry;
    use crate::serialization::{tagged_bytes, Payload, SerializerRegistry};
    use serde_json::json;
    use std::time::Duration;

    /// From docs WIRE-FORMAT.md (captured from Redis).
    const WIRE_FORMAT_EXAMPLE: &str = r#"{"body": "eyJoZWxsbyI6ICJ3b3JsZCIsICJuIjogMX0=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"x-origin": "python"}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "21451875-7e5e-4de5-a491-637f733e59d8"}}"#;
    /// The example after kombu's Redis transport restored it
    /// (`_do_restore_message`, run on kombu 5.7.0).
    const WIRE_FORMAT_REQUEUED: &str = r#"{"body": "eyJoZWxsbyI6ICJ3b3JsZCIsICJuIjogMX0=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"x-origin": "python", "redelivered": true}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk", "redelivered": true}, "priority": 0, "body_encoding": "base64", "delivery_tag": "21451875-7e5e-4de5-a491-637f733e59d8"}}"#;

    // What Python 3.11.7 + kombu 5.7.0 stores for `Producer(channel,
    // exchange=Exchange("ex", "direct")).publish(body, routing_key="rk", ...)`
    // on a virtual transport (the dict handed to `Channel._put`, through
    // kombu.utils.json.dumps as the Redis transport does), with delivery tags
    // made deterministic ("00000000-0000-4000-8000-0000000000NN").
    const JSON: &str = r#"{"body": "eyJoZWxsbyI6ICJ3b3JsZCIsICJuIjogMX0=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"x-origin": "python"}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000001"}}"#;
    const JSON_PROPS: &str = r#"{"body": "eyJhIjogWzEsIDIuNSwgbnVsbCwgdHJ1ZV19", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"h": 1}, "properties": {"correlation_id": "cid-1", "reply_to": "replyq", "delivery_mode": 2, "expiration": "1500", "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 5, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000002"}}"#;
    const JSON_PROPS2: &str = r#"{"body": "WzFd", "content-encoding": "utf-8", "content-type": "application/json", "headers": {}, "properties": {"message_id": "m1", "timestamp": 1700000000, "reply_to": "r", "correlation_id": "c", "type": "t", "app_id": "app", "user_id": "u", "delivery_mode": 1, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000003"}}"#;
    const MSGPACK: &str = r#"{"body": "gaFrlAGheMs/+AAAAAAAAMQCAP8=", "content-encoding": "binary", "content-type": "application/x-msgpack", "headers": {}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000004"}}"#;
    const YAML: &str = r#"{"body": "azoKLSAxCi0geAotIDEuNQpuZXN0ZWQ6CiAgYTogbnVsbAo=", "content-encoding": "utf-8", "content-type": "application/x-yaml", "headers": {}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000005"}}"#;
    const RAW_BYTES: &str = r#"{"body": "AAH/cmF3", "content-encoding": "binary", "content-type": "application/data", "headers": {}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000006"}}"#;
    const TEXT: &str = r#"{"body": "aMOpbGxv", "content-encoding": "utf-8", "content-type": "text/plain", "headers": {}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000007"}}"#;
    const RAW_SER: &str = r#"{"body": "dGV4dA==", "content-encoding": "utf-8", "content-type": "application/data", "headers": {}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000008"}}"#;
    const EXPLICIT_CT: &str = r#"{"body": "YWJj", "content-encoding": "utf-8", "content-type": "text/csv", "headers": {}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000009"}}"#;
    const C_ZLIB: &str = r#"{"body": "eJyrVspIzcnJV7JSUCrPL8pJUaoFADmZBhc=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"compression": "application/x-gzip"}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000010"}}"#;
    const C_BZIP2: &str = r#"{"body": "QlpoOTFBWSZTWTvtSu4AAAgZgFAAABAGRJCKIAAiAaGgQNA0HvYAzHJlNI5vF3JFOFCQO+1K7g==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"compression": "application/x-bz2"}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000011"}}"#;
    const C_LZMA: &str = r#"{"body": "/Td6WFoAAATm1rRGAgAhARYAAAB0L+WjAQAReyJoZWxsbyI6ICJ3b3JsZCJ9AAAAesJkkN1TrGYAASoSSwhUvB+2830BAAAAAARZWg==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"compression": "application/x-lzma"}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000012"}}"#;
    const C_BROTLI: &str = r#"{"body": "iwiAeyJoZWxsbyI6ICJ3b3JsZCJ9Aw==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"compression": "application/x-brotli"}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000013"}}"#;
    const C_ZSTD: &str = r#"{"body": "KLUv/SASkQAAeyJoZWxsbyI6ICJ3b3JsZCJ9", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"compression": "application/zstd"}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "ex", "routing_key": "rk"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "00000000-0000-4000-8000-000000000014"}}"#;

    fn tag(n: u32) -> String {
        format!("00000000-0000-4000-8000-{n:012}")
    }

    /// Our side of the same publish: serialize, compress, build the envelope.
    fn publish(
        payload: Payload,
        serializer: Option<&str>,
        compression: Option<&str>,
        headers: Value,
        props: PublishProperties,
        n: u32,
    ) -> Vec<u8> {
        let (mut body, ct, ce) = SerializerRegistry::default()
            .encode_payload(&payload, serializer)
            .unwrap();
        let Value::Object(mut headers) = headers else {
            panic!()
        };
        if let Some(c) = compression {
            let (packed, header) = CompressionRegistry::default().compress(c, &body).unwrap();
            body = packed;
            headers.insert("compression".into(), header.into());
        }
        let props = props.into_map_with_tag("ex", "rk", &tag(n));
        Envelope::new(body, Some(ct), Some(ce), headers, props).to_json()
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn wire_format_example_round_trips() {
        let env = Envelope::from_json(WIRE_FORMAT_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(env.body, br#"{"hello": "world", "n": 1}"#);
        assert_eq!(env.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            env.delivery_tag(),
            Some("21451875-7e5e-4de5-a491-637f733e59d8")
        );
        assert_eq!(env.delivery_info().unwrap()["exchange"], "ex");
        assert_eq!(env.priority(), 0);
        assert!(!env.redelivered());
        assert_eq!(text(env.to_json()), WIRE_FORMAT_EXAMPLE);
    }

    #[test]
    fn requeue_matches_kombu() {
        let mut env = Envelope::from_json(WIRE_FORMAT_EXAMPLE.as_bytes()).unwrap();
        env.mark_redelivered();
        assert!(env.redelivered());
        assert_eq!(text(env.to_json()), WIRE_FORMAT_REQUEUED);
        let back = Envelope::from_json(WIRE_FORMAT_REQUEUED.as_bytes()).unwrap();
        assert!(back.redelivered());
        assert_eq!(back, env);
    }

    #[test]
    fn python_envelopes_round_trip() {
        for golden in [
            JSON,
            JSON_PROPS,
            JSON_PROPS2,
            MSGPACK,
            YAML,
            RAW_BYTES,
            TEXT,
            RAW_SER,
            EXPLICIT_CT,
            C_ZLIB,
            C_BZIP2,
            C_LZMA,
            C_BROTLI,
            C_ZSTD,
        ] {
            let env = Envelope::from_json(golden.as_bytes()).unwrap();
            assert_eq!(text(env.to_json()), golden);
        }
    }

    #[test]
    fn publishing_builds_kombu_envelopes() {
        let dflt = PublishProperties::default;
        let none = || json!({});
        let p = |v: Value| Payload::Value(v);
        assert_eq!(
            text(publish(
                p(json!({"hello": "world", "n": 1})),
                None,
                None,
                json!({"x-origin": "python"}),
                dflt(),
                1
            )),
            JSON
        );
        let mut props = dflt()
            .with("correlation_id", "cid-1")
            .with("reply_to", "replyq");
        props.priority = 5;
        props.expiration = Some(Duration::from_secs_f64(1.5));
        assert_eq!(
            text(publish(
                p(json!({"a": [1, 2.5, null, true]})),
                None,
                None,
                json!({"h": 1}),
                props,
                2
            )),
            JSON_PROPS
        );
        let mut props = dflt()
            .with("message_id", "m1")
            .with("timestamp", 1_700_000_000)
            .with("reply_to", "r")
            .with("correlation_id", "c")
            .with("type", "t")
            .with("app_id", "app")
            .with("user_id", "u");
        props.delivery_mode = 1;
        assert_eq!(
            text(publish(p(json!([1])), None, None, none(), props, 3)),
            JSON_PROPS2
        );
        let v = json!({"k": [1, "x", 1.5, tagged_bytes(b"\x00\xff")]});
        assert_eq!(
            text(publish(p(v), Some("msgpack"), None, none(), dflt(), 4)),
            MSGPACK
        );
        let v = json!({"k": [1, "x", 1.5], "nested": {"a": null}});
        assert_eq!(
            text(publish(p(v), Some("yaml"), None, none(), dflt(), 5)),
            YAML
        );
        assert_eq!(
            text(publish(
                b"\x00\x01\xffraw".to_vec().into(),
                None,
                None,
                none(),
                dflt(),
                6
            )),
            RAW_BYTES
        );
        assert_eq!(
            text(publish("h\u{e9}llo".into(), None, None, none(), dflt(), 7)),
            TEXT
        );
        assert_eq!(
            text(publish("text".into(), Some("raw"), None, none(), dflt(), 8)),
            RAW_SER
        );
        let csv = Envelope::new(
            b"abc".to_vec(),
            Some("text/csv".into()),
            Some("utf-8".into()),
            Map::new(),
            dflt().into_map_with_tag("ex", "rk", &tag(9)),
        );
        assert_eq!(text(csv.to_json()), EXPLICIT_CT);
        let hello = || p(json!({"hello": "world"}));
        let cases = [
            ("bzip2", C_BZIP2, 11),
            ("lzma", C_LZMA, 12),
            ("brotli", C_BROTLI, 13),
            ("zstd", C_ZSTD, 14),
        ];
        for (name, golden, n) in cases {
            assert_eq!(
                text(publish(hello(), None, Some(name), none(), dflt(), n)),
                golden,
                "{name}"
            );
        }
        // zlib: our deflate bytes differ from C zlib's; everything else is equal.
        let ours =
            Envelope::from_json(&publish(hello(), None, Some("zlib"), none(), dflt(), 10)).unwrap();
        let python = Envelope::from_json(C_ZLIB.as_bytes()).unwrap();
        let reg = CompressionRegistry::default();
        assert_eq!(
            reg.decompress("zlib", &ours.body).unwrap(),
            reg.decompress("zlib", &python.body).unwrap()
        );
        assert_eq!(
            Envelope {
                body: python.body.clone(),
                ..ours
            },
            python
        );
    }

    #[test]
    fn decoded_bodies_match_what_python_sent() {
        let reg = SerializerRegistry::default();
        let accept = crate::serialization::Accept::all();
        let decode = |golden: &str| {
            let env = Envelope::from_json(golden.as_bytes()).unwrap();
            reg.decode(
                env.content_type.as_deref(),
                env.content_encoding.as_deref(),
                &env.body,
                &accept,
            )
            .unwrap()
        };
        assert_eq!(
            decode(JSON_PROPS),
            Payload::Value(json!({"a": [1, 2.5, null, true]}))
        );
        assert_eq!(
            decode(MSGPACK),
            Payload::Value(json!({"k": [1, "x", 1.5, tagged_bytes(b"\x00\xff")]}))
        );
        assert_eq!(
            decode(YAML),
            Payload::Value(json!({"k": [1, "x", 1.5], "nested": {"a": null}}))
        );
        assert_eq!(
            decode(RAW_BYTES),
            Payload::from(b"\x00\x01\xffraw".to_vec())
        );
        assert_eq!(decode(TEXT), Payload::from("h\u{e9}llo"));
        assert_eq!(decode(RAW_SER), Payload::from("text"));
        let env = Envelope::from_json(JSON_PROPS.as_bytes()).unwrap();
        assert_eq!(env.priority(), 5);
        assert_eq!(env.properties["expiration"], "1500");
    }

    #[test]
    fn reads_what_other_kombu_versions_write() {
        // No body_encoding: the body string is the body.
        let env = Envelope::from_json(br#"{"body": "{\"a\": 1}", "content-type": "application/json", "properties": {"delivery_tag": "t"}}"#).unwrap();
        assert_eq!(env.body, br#"{"a": 1}"#);
        assert!(env.headers.is_empty());
        assert_eq!(env.content_encoding, None);
        assert_eq!(env.delivery_tag(), Some("t"));
        // utf-8 body_encoding, null parts, the memory transport's top-level flag.
        let env = Envelope::from_json(br#"{"body": "x", "headers": null, "properties": {"body_encoding": "utf-8"}, "redelivered": true}"#).unwrap();
        assert_eq!(env.body, b"x");
        let env =
            Envelope::from_json(br#"{"body": null, "properties": {"body_encoding": "base64"}}"#)
                .unwrap();
        assert!(env.body.is_empty());
        // Python's b64decode skips characters outside the alphabet.
        let env = Envelope::from_json(
            br#"{"body": "aGVs\nbG8=", "properties": {"body_encoding": "base64"}}"#,
        )
        .unwrap();
        assert_eq!(env.body, b"hello");
        let env = Envelope::from_json(b"{}").unwrap();
        assert_eq!(env, Envelope::default());
        assert_eq!(env.delivery_tag(), None);
        assert!(env.delivery_info().is_none());
    }

    #[test]
    fn refuses_malformed_envelopes() {
        for bad in [
            &b""[..],
            b"nul",
            b"[]",
            b"\"s\"",
            br#"{"body": 1}"#,
            br#"{"headers": []}"#,
            br#"{"properties": 3}"#,
            br#"{"content-type": 1}"#,
            br#"{"body": "aGk", "properties": {"body_encoding": "base64"}}"#,
            br#"{"body": "x", "properties": {"body_encoding": "rot13"}}"#,
        ] {
            let err = Envelope::from_json(bad).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::ErrorKind::Protocol,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn priority_is_read_like_kombu() {
        let mut env = Envelope::default();
        for (raw, expected) in [
            (json!(5), 5),
            (json!(-3), 0),
            (json!(7.9), 7),
            (json!("4"), 4),
            (json!(u64::MAX), 9),
            (json!(true), 1),
            (json!("x"), 0),
            (json!(null), 0),
        ] {
            env.properties.insert("priority".into(), raw.clone());
            assert_eq!(env.priority(), expected, "{raw}");
        }
    }

    #[test]
    fn publish_properties_keep_caller_fields() {
        let props = PublishProperties::default()
            .with("delivery_info", json!({"extra": 1}))
            .with("priority", 7)
            .into_map("ex", "");
        assert_eq!(
            props["delivery_info"],
            json!({"extra": 1, "exchange": "ex", "routing_key": ""})
        );
        assert_eq!(props["priority"], 7);
        let tag = props["delivery_tag"].as_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(tag).unwrap().get_version_num(), 4);
        let mut env = Envelope::default();
        env.properties.insert("delivery_info".into(), json!("junk"));
        env.set_delivery_info("e", "r");
        assert_eq!(env.delivery_info().unwrap()["exchange"], "e");
    }

    fn json_leaf() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            ".*".prop_map(Value::from),
        ]
    }

    fn json_map() -> impl proptest::strategy::Strategy<Value = Map<String, Value>> {
        use proptest::prelude::*;
        let value = json_leaf().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::vec((".*", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        });
        proptest::collection::vec((".*", value), 0..5).prop_map(|kv| kv.into_iter().collect())
    }

    proptest::proptest! {
        #[test]
        fn envelopes_round_trip(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            content_type in proptest::option::of(".*"),
            content_encoding in proptest::option::of(".*"),
            headers in json_map(),
            extra in json_map(),
            priority in 0u8..=255,
        ) {
            let props = PublishProperties {
                extra,
                priority,
                ..Default::default()
            };
            let env = Envelope::new(body, content_type, content_encoding, headers, props.into_map("x", "y"));
            let json = env.to_json();
            proptest::prop_assert!(json.is_ascii());
            let back = Envelope::from_json(&json).unwrap();
            proptest::prop_assert_eq!(&back, &env);
            proptest::prop_assert_eq!(back.to_json(), json);
        }

        #[test]
        fn from_json_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = Envelope::from_json(&bytes);
        }

        #[test]
        fn from_json_never_panics_on_envelope_like_json(
            body in proptest::option::of(json_leaf()),
            headers in json_leaf(),
            properties in json_map(),
        ) {
            let mut map = Map::new();
            if let Some(body) = body { map.insert("body".into(), body); }
            map.insert("headers".into(), headers);
            map.insert("properties".into(), Value::Object(properties));
            if let Ok(env) = Envelope::from_json(&serde_json::to_vec(&map).unwrap()) {
                let _ = (env.priority(), env.redelivered(), env.delivery_tag(), env.delivery_info());
            }
        }
    }
}

/// The envelope as it goes on the wire (see [`Envelope::to_json`]).
struct WireOut<'a>(&'a Envelope);

impl Serialize for WireOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let env = self.0;
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry(
            "body",
            &base64::engine::general_purpose::STANDARD.encode(&env.body),
        )?;
        map.serialize_entry("content-encoding", &env.content_encoding)?;
        map.serialize_entry("content-type", &env.content_type)?;
        map.serialize_entry("headers", &env.headers)?;
        map.serialize_entry("properties", &PropertiesOut(&env.properties))?;
        map.end()
    }
}

/// The properties with `body_encoding` `"base64"`: in its place when
/// present, last otherwise.
struct PropertiesOut<'a>(&'a Map<String, Value>);

impl Serialize for PropertiesOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let has = self.0.contains_key("body_encoding");
        let mut map = serializer.serialize_map(Some(self.0.len() + usize::from(!has)))?;
        for (key, value) in self.0 {
            if key == "body_encoding" {
                map.serialize_entry(key, "base64")?;
            } else {
                map.serialize_entry(key, value)?;
            }
        }
        if !has {
            map.serialize_entry("body_encoding", "base64")?;
        }
        map.end()
    }
}

/// The envelope as read on the fast path of [`Envelope::from_json`]
/// (unknown keys ignored, as kombu does).
#[derive(Deserialize)]
struct WireIn<'a> {
    #[serde(borrow, default)]
    body: Option<Cow<'a, str>>,
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    #[serde(rename = "content-encoding", default)]
    content_encoding: Option<String>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    properties: Option<Map<String, Value>>,
}
