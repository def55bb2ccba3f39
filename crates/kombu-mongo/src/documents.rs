//! The documents kombu 5.7 writes (and the fields kombu-rs adds, which
//! kombu ignores), and the conversions between JSON and BSON.

use kombu_core::{Arguments, Envelope, Exchange, ExchangeType, Queue};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use serde_json::{Map, Number, Value};

/// kombu's `max_priority` for virtual channels: stored priorities are
/// `9 - priority`, popped lowest first.
pub(crate) const MAX_PRIORITY: u8 = 9;

/// Field names of the lease kombu-rs adds to message documents (kombu's
/// `find_one_and_delete` ignores them).
pub(crate) mod lease {
    /// Who holds the message (one id per kombu-rs transport).
    pub const OWNER: &str = "lease_owner";
    /// Which claim holds it (one id per delivery).
    pub const ID: &str = "lease_id";
    /// When the claim lapses unless renewed.
    pub const UNTIL: &str = "lease_until";
    /// How often the message was claimed (handed to a consumer), counted
    /// by every claim with `$inc`: the claims before this one are its
    /// returns (requeued, or its lease lapsed), read against the queue's
    /// `x-delivery-limit`.
    pub const DELIVERIES: &str = "deliveries";
}

/// The `priority` field kombu stores: `9 - min(priority, 9)` (3 -> 6).
pub(crate) fn stored_priority(priority: u8) -> i32 {
    i32::from(MAX_PRIORITY - priority.min(MAX_PRIORITY))
}

/// The JSON text kombu stores in `payload`.
pub(crate) fn payload_of(envelope: &Envelope) -> String {
    String::from_utf8(envelope.to_json()).unwrap_or_else(|e| {
        // The envelope is serde_json output: always UTF-8.
        String::from_utf8_lossy(e.as_bytes()).into_owned()
    })
}

/// A `messages` document, fields in kombu's order:
/// `{_id, payload, queue, priority[, expire_at]}`.
pub(crate) fn message_document(
    queue: &str,
    payload: String,
    priority: u8,
    expire_at: Option<Option<DateTime>>,
) -> Document {
    let mut document = doc! {
        "_id": ObjectId::new(),
        "payload": payload,
        "queue": queue,
        "priority": stored_priority(priority),
    };
    if let Some(expire_at) = expire_at {
        document.insert("expire_at", expire_at.map_or(Bson::Null, Bson::DateTime));
    }
    document
}

/// The stored payload as bytes (kombu writes a string; older versions and
/// other clients may write binary).
pub(crate) fn payload_bytes(document: &Document) -> Vec<u8> {
    match document.get("payload") {
        Some(Bson::String(text)) => text.as_bytes().to_vec(),
        Some(Bson::Binary(binary)) => binary.bytes.clone(),
        Some(other) => other.to_string().into_bytes(),
        None => Vec::new(),
    }
}

/// The `options` kombu stores in `messages.queues` (its `queue_declare`
/// keyword arguments).
pub(crate) fn queue_options(queue: &Queue) -> Document {
    doc! {
        "durable": queue.durable,
        "exclusive": queue.exclusive,
        "auto_delete": queue.auto_delete,
        "arguments": arguments_to_bson(&queue.declare_arguments()),
        "nowait": false,
    }
}

/// A queue declaration back from a `messages.queues` document.
pub(crate) fn queue_from_document(name: &str, document: &Document) -> Queue {
    let options = document.get_document("options").ok();
    let arguments = options
        .and_then(|o| o.get_document("arguments").ok())
        .map(arguments_from_bson)
        .unwrap_or_default();
    let flag = |key: &str, default: bool| {
        options
            .and_then(|o| o.get_bool(key).ok())
            .unwrap_or(default)
    };
    Queue::from_arguments(name, &arguments)
        .durable(flag("durable", true))
        .exclusive(flag("exclusive", false))
        .auto_delete(flag("auto_delete", false))
}

/// A `messages.exchanges` document (kombu-rs only: kombu keeps exchange
/// types in each process).
pub(crate) fn exchange_document(exchange: &Exchange) -> Document {
    doc! {
        "_id": &exchange.name,
        "type": exchange.kind.as_str(),
        "durable": exchange.durable,
        "auto_delete": exchange.auto_delete,
        "arguments": arguments_to_bson(&exchange.arguments),
    }
}

/// An exchange back from its document.
pub(crate) fn exchange_from_document(document: &Document) -> Option<Exchange> {
    let name = document.get_str("_id").ok()?;
    let kind: ExchangeType = document.get_str("type").ok()?.parse().ok()?;
    let mut exchange = Exchange::new(name, kind)
        .durable(document.get_bool("durable").unwrap_or(true))
        .auto_delete(document.get_bool("auto_delete").unwrap_or(false));
    if let Ok(arguments) = document.get_document("arguments") {
        exchange.arguments = arguments_from_bson(arguments);
    }
    Some(exchange)
}

/// The `pattern` kombu stores for a binding: its topic regex for topic
/// exchanges, else null.
pub(crate) fn binding_pattern(kind: ExchangeType, routing_key: &str) -> Bson {
    match kind {
        ExchangeType::Topic => Bson::String(kombu_core::routing::kombu_topic_regex(routing_key)),
        _ => Bson::Null,
    }
}

/// Arguments as a BSON document.
pub(crate) fn arguments_to_bson(arguments: &Arguments) -> Document {
    arguments
        .iter()
        .map(|(key, value)| (key.clone(), json_to_bson(value)))
        .collect()
}

/// Arguments from a BSON document.
pub(crate) fn arguments_from_bson(document: &Document) -> Arguments {
    document
        .iter()
        .map(|(key, value)| (key.clone(), bson_to_json(value)))
        .collect()
}

/// JSON to BSON as pymongo writes Python values: integers that fit in 32
/// bits are int32, larger ones int64.
pub(crate) fn json_to_bson(value: &Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i32::try_from(i).map_or(Bson::Int64(i), Bson::Int32)
            } else {
                Bson::Double(n.as_f64().unwrap_or(f64::MAX))
            }
        }
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(json_to_bson).collect()),
        Value::Object(map) => Bson::Document(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_bson(v)))
                .collect(),
        ),
    }
}

/// BSON to JSON (dates as milliseconds, ids as hex).
pub(crate) fn bson_to_json(value: &Bson) -> Value {
    match value {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Bson::String(s) => Value::String(s.clone()),
        Bson::Array(items) => Value::Array(items.iter().map(bson_to_json).collect()),
        Bson::Document(d) => Value::Object(
            d.iter()
                .map(|(k, v)| (k.clone(), bson_to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        Bson::DateTime(t) => Value::from(t.timestamp_millis()),
        Bson::ObjectId(id) => Value::String(id.to_hex()),
        other => Value::String(other.to_string()),
    }
}

/// `now + millis` as a BSON date.
pub(crate) fn after_millis(now: DateTime, millis: u64) -> DateTime {
    DateTime::from_millis(
        now.timestamp_millis()
            .saturating_add(i64::try_from(millis).unwrap_or(i64::MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn priorities_are_stored_as_kombu_does() {
        assert_eq!(stored_priority(0), 9);
        assert_eq!(stored_priority(3), 6);
        assert_eq!(stored_priority(9), 0);
        assert_eq!(stored_priority(200), 0);
    }

    #[test]
    fn message_document_has_kombus_field_order() {
        let d = message_document("q", "{}".into(), 3, None);
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(keys, ["_id", "payload", "queue", "priority"]);
        assert_eq!(d.get_i32("priority").unwrap(), 6);
        let d = message_document("q", "{}".into(), 3, Some(None));
        assert_eq!(d.get("expire_at"), Some(&Bson::Null));
    }

    #[test]
    fn queue_options_round_trip() {
        let q = Queue::new("q")
            .message_ttl(Duration::from_secs(60))
            .expires(Duration::from_secs(120))
            .durable(false);
        let stored = doc! { "_id": "q", "options": queue_options(&q) };
        let options = stored.get_document("options").unwrap();
        assert_eq!(
            options.get_document("arguments").unwrap(),
            &doc! { "x-message-ttl": 60000, "x-expires": 120000 }
        );
        assert_eq!(queue_from_document("q", &stored), q);
    }

    #[test]
    fn topic_bindings_store_kombus_regex() {
        assert_eq!(
            binding_pattern(ExchangeType::Topic, "a.#"),
            Bson::String(r"^a\..*?$".into())
        );
        assert_eq!(binding_pattern(ExchangeType::Direct, "rk"), Bson::Null);
    }

    #[test]
    fn json_bson_round_trip() {
        let value = json!({"a": 1, "b": 5_000_000_000i64, "c": [true, null, 1.5], "d": {"e": "f"}});
        let bson = json_to_bson(&value);
        assert_eq!(bson.as_document().unwrap().get("a"), Some(&Bson::Int32(1)));
        assert_eq!(bson_to_json(&bson), value);
    }

    #[test]
    fn exchanges_round_trip() {
        let ex = Exchange::topic("logs")
            .durable(false)
            .argument("alternate-exchange", "ae");
        assert_eq!(exchange_from_document(&exchange_document(&ex)), Some(ex));
    }
}
