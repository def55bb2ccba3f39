//! A received message as the JSON line `kombu consume` prints.

use std::sync::Arc;

use base64::Engine;
use kombu::serialization::Payload;
use kombu::{
    Accept, CompressionRegistry, Connection, Delivery, Error, ErrorKind, SerializerRegistry,
};
use serde_json::{json, Map, Value};

/// Decompresses and deserializes bodies as the connection's consumers do.
pub struct Decoder {
    serializers: Arc<SerializerRegistry>,
    compressors: Arc<CompressionRegistry>,
    accept: Accept,
}

impl Decoder {
    /// A decoder with the connection's serializers and compressors.
    pub fn new(conn: &Connection, accept: Accept) -> Self {
        Decoder {
            serializers: conn.serializers().clone(),
            compressors: conn.compressors().clone(),
            accept,
        }
    }

    /// The body decompressed (per its `compression` header) and decoded.
    pub fn payload(&self, delivery: &Delivery) -> kombu::Result<Payload> {
        let message = &delivery.message;
        let decompressed;
        let mut body: &[u8] = &message.body;
        if let Some(kind) = message.headers.get("compression").and_then(Value::as_str) {
            let compressor = self.compressors.by_content_type(kind).ok_or_else(|| {
                Error::new(
                    ErrorKind::Compression,
                    format!("unknown compression {kind:?} in message"),
                )
            })?;
            decompressed = compressor.decompress(body)?;
            body = &decompressed;
        }
        self.serializers.decode(
            message.content_type.as_deref(),
            message.content_encoding.as_deref(),
            body,
            &self.accept,
        )
    }
}

/// The accept list for `--accept`: serializer names as kombu-rs knows them,
/// `raw` as `application/data` and `text` as `text/plain`; content types as
/// given. Empty: every content type.
pub fn accept_of(items: &[String]) -> Accept {
    if items.is_empty() {
        return Accept::all();
    }
    Accept::new(items.iter().map(|item| match item.trim() {
        "raw" => "application/data".to_owned(),
        "text" => "text/plain".to_owned(),
        other => other.to_owned(),
    }))
}

fn base64_of(bytes: &[u8]) -> Value {
    json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
}

/// The printed form of a body: the decoded value, a string for text, and
/// `{"base64": ...}` for bytes.
fn body_value(payload: Payload, raw: &[u8]) -> Value {
    match payload {
        Payload::Value(value) => value,
        Payload::Text(text) => Value::String(text),
        Payload::Bytes(bytes) => base64_of(&bytes),
        _ => base64_of(raw),
    }
}

/// The properties that are set, under kombu's names.
fn properties(delivery: &Delivery) -> Value {
    let p = &delivery.message.properties;
    let mut out = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            out.insert(key.to_owned(), value);
        }
    };
    put("delivery_mode", p.delivery_mode.map(|m| m.as_u8().into()));
    put("priority", p.priority.map(Value::from));
    put("expiration", p.expiration.clone().map(Value::from));
    put("correlation_id", p.correlation_id.clone().map(Value::from));
    put("reply_to", p.reply_to.clone().map(Value::from));
    put("message_id", p.message_id.clone().map(Value::from));
    put("timestamp", p.timestamp.map(Value::from));
    put("type", p.message_type.clone().map(Value::from));
    put("user_id", p.user_id.clone().map(Value::from));
    put("app_id", p.app_id.clone().map(Value::from));
    Value::Object(out)
}

/// One message as a JSON object: body, content type and encoding, headers,
/// properties, delivery info; plus `error` when the body could not be
/// decoded (its bytes are then shown as base64).
pub fn render(delivery: &Delivery, decoder: &Decoder) -> Value {
    let message = &delivery.message;
    let (body, error) = match decoder.payload(delivery) {
        Ok(payload) => (body_value(payload, &message.body), None),
        Err(err) => (base64_of(&message.body), Some(err.to_string())),
    };
    let mut line = json!({
        "body": body,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": Value::Object(message.headers.clone()),
        "properties": properties(delivery),
        "delivery_info": {
            "exchange": delivery.info.exchange,
            "routing_key": delivery.info.routing_key,
            "redelivered": delivery.info.redelivered,
        },
    });
    if let (Some(error), Value::Object(map)) = (error, &mut line) {
        map.insert("error".into(), error.into());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use kombu::{DeliveryInfo, RawMessage};

    fn decoder() -> Decoder {
        kombu::install_default_transports();
        let conn = Connection::new("memory://render-tests").unwrap();
        Decoder::new(&conn, Accept::all())
    }

    fn delivered(message: RawMessage) -> Delivery {
        Delivery::new(1, message, DeliveryInfo::new("ex", "rk"))
    }

    #[test]
    fn json_bodies_print_as_values() {
        let message = RawMessage::new(r#"{"a":[1,2]}"#).content_type("application/json", "utf-8");
        let line = render(&delivered(message), &decoder());
        assert_eq!(line["body"], json!({"a": [1, 2]}));
        assert_eq!(line["content_type"], "application/json");
        assert_eq!(line["delivery_info"]["routing_key"], "rk");
        assert_eq!(line["delivery_info"]["redelivered"], false);
        assert!(line.get("error").is_none());
    }

    #[test]
    fn text_prints_as_a_string_and_bytes_as_base64() {
        let text = RawMessage::new("hé").content_type("text/plain", "utf-8");
        assert_eq!(render(&delivered(text), &decoder())["body"], "hé");
        let bytes = RawMessage::new(vec![0u8, 255]).content_type("application/data", "binary");
        assert_eq!(
            render(&delivered(bytes), &decoder())["body"],
            json!({"base64": "AP8="})
        );
    }

    #[test]
    fn refused_content_prints_raw_with_the_reason() {
        kombu::install_default_transports();
        let conn = Connection::new("memory://render-tests").unwrap();
        let only_json = Decoder::new(&conn, accept_of(&["json".to_owned()]));
        let yaml = RawMessage::new("a: 1\n").content_type("application/x-yaml", "utf-8");
        let line = render(&delivered(yaml), &only_json);
        assert_eq!(line["body"], json!({"base64": "YTogMQo="}));
        assert!(line["error"]
            .as_str()
            .unwrap()
            .contains("content disallowed"));
    }

    #[test]
    fn accept_names_map_to_content_types() {
        let reg = SerializerRegistry::default();
        let accept = accept_of(&["text".to_owned(), "msgpack".to_owned()]);
        assert!(accept.allows("text/plain", &reg));
        assert!(accept.allows("application/x-msgpack", &reg));
        assert!(!accept.allows("application/x-yaml", &reg));
    }
}
