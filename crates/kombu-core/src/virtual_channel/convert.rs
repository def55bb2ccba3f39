//! Between [`RawMessage`] and kombu's envelope, in kombu's key order.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::envelope::Envelope;
use crate::message::{DeliveryInfo, DeliveryMode, Properties, RawMessage};

/// Property key (ignored by Python kombu) holding the publish time in
/// milliseconds, written only when a TTL needs it.
pub(crate) const PUBLISHED_MS: &str = "x-published-ms";

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A fresh uuid4 string for a `delivery_tag`, as kombu writes one.
///
/// kombu only needs these to be unique, not secret: each thread seeds a
/// SplitMix64 sequence once from the OS (one `getrandom` per thread rather
/// than one per message) and draws the 122 random bits from it.
///
/// ```
/// let tag = kombu_core::spi::new_delivery_tag();
/// assert_eq!(uuid::Uuid::parse_str(&tag).unwrap().get_version_num(), 4);
/// ```
pub fn new_delivery_tag() -> String {
    thread_local! {
        static NEXT: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    fn splitmix64(state: u64) -> u64 {
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let state = NEXT.with(|next| {
        let state = next.get();
        next.set(state.wrapping_add(GAMMA.wrapping_mul(2)));
        state
    });
    let mut random = [0u8; 16];
    random[..8].copy_from_slice(&splitmix64(state).to_le_bytes());
    random[8..].copy_from_slice(&splitmix64(state.wrapping_add(GAMMA)).to_le_bytes());
    let uuid = uuid::Builder::from_random_bytes(random).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut text).to_owned()
}

/// Build the envelope a virtual transport stores, with properties in the
/// order Python kombu 5.7 writes them: the extra properties, then
/// `delivery_mode`, `expiration`, `delivery_info`, `priority`,
/// `body_encoding`, `delivery_tag`. The message's body, content type and
/// headers move into the envelope (no copy).
pub(crate) fn to_envelope(
    message: RawMessage,
    exchange: &str,
    routing_key: &str,
    delivery_tag: String,
) -> Envelope {
    let RawMessage {
        body,
        content_type,
        content_encoding,
        headers,
        properties: p,
        not_before: _,
    } = message;
    let mut props = Map::with_capacity(7);
    let mut text = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            props.insert(key.to_owned(), Value::String(v));
        }
    };
    text("correlation_id", p.correlation_id);
    text("reply_to", p.reply_to);
    text("message_id", p.message_id);
    text("type", p.message_type);
    text("user_id", p.user_id);
    text("app_id", p.app_id);
    if let Some(ts) = p.timestamp {
        props.insert("timestamp".into(), ts.into());
    }
    let mode = p.delivery_mode.unwrap_or_default();
    props.insert("delivery_mode".into(), mode.as_u8().into());
    if let Some(exp) = p.expiration {
        props.insert("expiration".into(), exp.into());
    }
    let mut info = Map::with_capacity(2);
    info.insert("exchange".into(), exchange.into());
    info.insert("routing_key".into(), routing_key.into());
    props.insert("delivery_info".into(), Value::Object(info));
    props.insert("priority".into(), p.priority.unwrap_or(0).into());
    props.insert("body_encoding".into(), "base64".into());
    props.insert("delivery_tag".into(), delivery_tag.into());
    Envelope {
        // Reuses the allocation when the Bytes came from a Vec and is not shared.
        body: Vec::from(body),
        content_type,
        content_encoding,
        headers,
        properties: props,
    }
}

fn value_str(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn value_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn prop_u64(props: &Map<String, Value>, key: &str) -> Option<u64> {
    props.get(key).and_then(value_u64)
}

/// The AMQP properties and the `delivery_info` map of an envelope, read in
/// one pass over its properties (no hashing per key).
fn read_properties(envelope: &Envelope) -> (Properties, Option<&Map<String, Value>>) {
    let mut properties = Properties::default();
    let mut info_map = None;
    for (key, value) in &envelope.properties {
        match key.as_str() {
            "delivery_mode" => {
                properties.delivery_mode =
                    value_u64(value).and_then(|m| DeliveryMode::from_u8(m as u8));
            }
            "priority" => properties.priority = value_u64(value).map(|p| p.min(255) as u8),
            "expiration" => properties.expiration = value_str(value),
            "correlation_id" => properties.correlation_id = value_str(value),
            "reply_to" => properties.reply_to = value_str(value),
            "message_id" => properties.message_id = value_str(value),
            "timestamp" => properties.timestamp = value_u64(value),
            "type" => properties.message_type = value_str(value),
            "user_id" => properties.user_id = value_str(value),
            "app_id" => properties.app_id = value_str(value),
            "delivery_info" => info_map = value.as_object(),
            _ => {}
        }
    }
    (properties, info_map)
}

/// Where the message was published and whether it was delivered before.
fn read_delivery_info(envelope: &Envelope, info_map: Option<&Map<String, Value>>) -> DeliveryInfo {
    let info_str = |key: &str| {
        info_map
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let redelivered = info_map
        .and_then(|m| m.get("redelivered"))
        .and_then(Value::as_bool)
        .or_else(|| envelope.headers.get("redelivered").and_then(Value::as_bool))
        .unwrap_or(false);
    DeliveryInfo {
        exchange: info_str("exchange"),
        routing_key: info_str("routing_key"),
        redelivered,
        consumer_tag: None,
        queue: None,
        receipt: None,
    }
}

/// Read a stored envelope back as a message and where it was published.
pub(crate) fn from_envelope(envelope: &Envelope) -> (RawMessage, DeliveryInfo) {
    let (properties, info_map) = read_properties(envelope);
    let info = read_delivery_info(envelope, info_map);
    let message = RawMessage {
        body: envelope.body.clone().into(),
        content_type: envelope.content_type.clone(),
        content_encoding: envelope.content_encoding.clone(),
        headers: envelope.headers.clone(),
        properties,
        not_before: None,
    };
    (message, info)
}

/// [`from_envelope`] with the body handed over rather than copied: the
/// envelope keeps an empty body, the message gets `body` (the caller took it
/// out of the envelope with `std::mem::take`).
pub(crate) fn from_envelope_with_body(
    envelope: &Envelope,
    body: Bytes,
) -> (RawMessage, DeliveryInfo) {
    let (properties, info_map) = read_properties(envelope);
    let info = read_delivery_info(envelope, info_map);
    let message = RawMessage {
        body,
        content_type: envelope.content_type.clone(),
        content_encoding: envelope.content_encoding.clone(),
        headers: envelope.headers.clone(),
        properties,
        not_before: None,
    };
    (message, info)
}

/// The message priority and TTL of an envelope (for routing and expiry).
pub(crate) fn priority_and_expiration(envelope: &Envelope) -> (u8, Option<std::time::Duration>) {
    let (properties, _) = read_properties(envelope);
    (
        properties.priority.unwrap_or(0),
        properties.expiration_duration(),
    )
}

/// The publish time recorded in the envelope, if any.
pub(crate) fn published_ms(envelope: &Envelope) -> Option<u64> {
    prop_u64(&envelope.properties, PUBLISHED_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_everything() {
        let mut m = RawMessage::new(&b"{\"a\": 1}"[..])
            .content_type("application/json", "utf-8")
            .header("x-origin", "rust");
        m.properties.priority = Some(7);
        m.properties.correlation_id = Some("c1".into());
        m.properties.reply_to = Some("replies".into());
        m.properties.expiration = Some("1500".into());
        m.properties.delivery_mode = Some(DeliveryMode::Transient);
        let env = to_envelope(m.clone(), "ex", "rk", "tag-1".into());
        let keys: Vec<&str> = env.properties.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "correlation_id",
                "reply_to",
                "delivery_mode",
                "expiration",
                "delivery_info",
                "priority",
                "body_encoding",
                "delivery_tag"
            ]
        );
        let (back, info) = from_envelope(&env);
        assert_eq!(back, m);
        assert_eq!(info.exchange, "ex");
        assert_eq!(info.routing_key, "rk");
        assert!(!info.redelivered);
        let (moved, _) = from_envelope_with_body(&env, back.body.clone());
        assert_eq!(moved, m);
    }

    #[test]
    fn delivery_tags_are_distinct_uuid4s() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let tag = new_delivery_tag();
            let uuid = uuid::Uuid::parse_str(&tag).expect("a uuid");
            assert_eq!(uuid.get_version_num(), 4);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(tag, uuid.hyphenated().to_string());
            assert!(seen.insert(tag), "repeated delivery tag");
        }
        let other = std::thread::spawn(new_delivery_tag).join().unwrap();
        assert!(!seen.contains(&other));
    }
}
