//! Between [`RawMessage`] and kombu's envelope, in kombu's key order.

use std::time::{SystemTime, UNIX_EPOCH};

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

/// Build the envelope a virtual transport stores, with properties in the
/// order Python kombu 5.7 writes them: the extra properties, then
/// `delivery_mode`, `expiration`, `delivery_info`, `priority`,
/// `body_encoding`, `delivery_tag`.
pub(crate) fn to_envelope(
    message: &RawMessage,
    exchange: &str,
    routing_key: &str,
    delivery_tag: &str,
) -> Envelope {
    let p = &message.properties;
    let mut props = Map::new();
    let mut text = |key: &str, value: &Option<String>| {
        if let Some(v) = value {
            props.insert(key.to_owned(), Value::String(v.clone()));
        }
    };
    text("correlation_id", &p.correlation_id);
    text("reply_to", &p.reply_to);
    text("message_id", &p.message_id);
    text("type", &p.message_type);
    text("user_id", &p.user_id);
    text("app_id", &p.app_id);
    if let Some(ts) = p.timestamp {
        props.insert("timestamp".into(), ts.into());
    }
    let mode = p.delivery_mode.unwrap_or_default();
    props.insert("delivery_mode".into(), mode.as_u8().into());
    if let Some(exp) = &p.expiration {
        props.insert("expiration".into(), exp.clone().into());
    }
    let mut info = Map::new();
    info.insert("exchange".into(), exchange.into());
    info.insert("routing_key".into(), routing_key.into());
    props.insert("delivery_info".into(), Value::Object(info));
    props.insert("priority".into(), p.priority.unwrap_or(0).into());
    props.insert("body_encoding".into(), "base64".into());
    props.insert("delivery_tag".into(), delivery_tag.into());
    Envelope {
        body: message.body.to_vec(),
        content_type: message.content_type.clone(),
        content_encoding: message.content_encoding.clone(),
        headers: message.headers.clone(),
        properties: props,
    }
}

fn prop_str(props: &Map<String, Value>, key: &str) -> Option<String> {
    match props.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn prop_u64(props: &Map<String, Value>, key: &str) -> Option<u64> {
    match props.get(key)? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Read a stored envelope back as a message and where it was published.
pub(crate) fn from_envelope(envelope: &Envelope) -> (RawMessage, DeliveryInfo) {
    let props = &envelope.properties;
    let properties = Properties {
        delivery_mode: prop_u64(props, "delivery_mode")
            .and_then(|m| DeliveryMode::from_u8(m as u8)),
        priority: prop_u64(props, "priority").map(|p| p.min(255) as u8),
        expiration: prop_str(props, "expiration"),
        correlation_id: prop_str(props, "correlation_id"),
        reply_to: prop_str(props, "reply_to"),
        message_id: prop_str(props, "message_id"),
        timestamp: prop_u64(props, "timestamp"),
        message_type: prop_str(props, "type"),
        user_id: prop_str(props, "user_id"),
        app_id: prop_str(props, "app_id"),
    };
    let info_map = props.get("delivery_info").and_then(Value::as_object);
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
    let info = DeliveryInfo {
        exchange: info_str("exchange"),
        routing_key: info_str("routing_key"),
        redelivered,
        consumer_tag: None,
        queue: None,
        receipt: None,
    };
    let message = RawMessage {
        body: envelope.body.clone().into(),
        content_type: envelope.content_type.clone(),
        content_encoding: envelope.content_encoding.clone(),
        headers: envelope.headers.clone(),
        properties,
    };
    (message, info)
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
        let env = to_envelope(&m, "ex", "rk", "tag-1");
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
    }
}
