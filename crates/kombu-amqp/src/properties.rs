//! Messages to AMQP basic properties (as py-amqp sends them) and AMQP
//! deliveries back to [`Delivery`].

use bytes::Bytes;
use kombu_core::{Delivery, DeliveryInfo, DeliveryMode, Properties, RawMessage, Result};
use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;

use crate::field_table::{from_field_table, short_string, to_field_table};

/// The properties py-amqp puts on a kombu message: always content type and
/// encoding (when known), `application_headers` (empty when none),
/// `delivery_mode` (2 unless told) and `priority` (0 unless set); the
/// others only when given.
pub(crate) fn to_basic_properties(message: &RawMessage) -> Result<BasicProperties> {
    let p = &message.properties;
    let mut props = BasicProperties::default()
        .with_headers(to_field_table(&message.headers)?)
        .with_delivery_mode(p.delivery_mode.unwrap_or_default().as_u8())
        .with_priority(p.priority.unwrap_or(0));
    let short = |what: &str, value: &Option<String>| -> Result<Option<ShortString>> {
        value.as_deref().map(|v| short_string(what, v)).transpose()
    };
    if let Some(v) = short("content_type", &message.content_type)? {
        props = props.with_content_type(v);
    }
    if let Some(v) = short("content_encoding", &message.content_encoding)? {
        props = props.with_content_encoding(v);
    }
    if let Some(v) = short("expiration", &p.expiration)? {
        props = props.with_expiration(v);
    }
    if let Some(v) = short("correlation_id", &p.correlation_id)? {
        props = props.with_correlation_id(v);
    }
    if let Some(v) = short("reply_to", &p.reply_to)? {
        props = props.with_reply_to(v);
    }
    if let Some(v) = short("message_id", &p.message_id)? {
        props = props.with_message_id(v);
    }
    if let Some(v) = p.timestamp {
        props = props.with_timestamp(v);
    }
    if let Some(v) = short("type", &p.message_type)? {
        props = props.with_type(v);
    }
    if let Some(v) = short("user_id", &p.user_id)? {
        props = props.with_user_id(v);
    }
    if let Some(v) = short("app_id", &p.app_id)? {
        props = props.with_app_id(v);
    }
    Ok(props)
}

fn text(value: &Option<ShortString>) -> Option<String> {
    value.as_ref().map(|s| s.as_str().to_owned())
}

/// The message carried by an AMQP delivery.
pub(crate) fn to_raw_message(props: &BasicProperties, body: Bytes) -> RawMessage {
    let mut properties = Properties::default();
    properties.delivery_mode = props.delivery_mode().and_then(DeliveryMode::from_u8);
    properties.priority = *props.priority();
    properties.expiration = text(props.expiration());
    properties.correlation_id = text(props.correlation_id());
    properties.reply_to = text(props.reply_to());
    properties.message_id = text(props.message_id());
    properties.timestamp = *props.timestamp();
    properties.message_type = text(props.kind());
    properties.user_id = text(props.user_id());
    properties.app_id = text(props.app_id());
    let mut message = RawMessage::new(body);
    message.content_type = text(props.content_type());
    message.content_encoding = text(props.content_encoding());
    message.headers = props
        .headers()
        .as_ref()
        .map(from_field_table)
        .unwrap_or_default();
    message.properties = properties;
    message
}

/// A lapin delivery as a kombu [`Delivery`], with its AMQP properties and
/// body (the body shared, not copied) for a caller that keeps them.
pub(crate) fn to_delivery(
    delivery: lapin::message::Delivery,
    consumer_tag: Option<&str>,
    queue: &str,
) -> (Delivery, BasicProperties, Bytes) {
    let mut info = DeliveryInfo::new(delivery.exchange.as_str(), delivery.routing_key.as_str());
    info.redelivered = delivery.redelivered;
    info.consumer_tag = consumer_tag.map(str::to_owned);
    info.queue = Some(queue.to_owned());
    let body = Bytes::from(delivery.data);
    let message = to_raw_message(&delivery.properties, body.clone());
    (
        Delivery::new(delivery.delivery_tag, message, info),
        delivery.properties,
        body,
    )
}

/// An empty field table (no arguments).
pub(crate) fn no_arguments() -> FieldTable {
    FieldTable::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;

    #[test]
    fn defaults_are_py_amqp_s() {
        let message = RawMessage::new("{}").content_type("application/json", "utf-8");
        let props = to_basic_properties(&message).unwrap();
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(props.priority(), &Some(0));
        assert_eq!(props.headers(), &Some(FieldTable::default()));
        assert_eq!(
            props.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(props.message_id(), &None);
        assert_eq!(props.timestamp(), &None);
    }

    #[test]
    fn properties_round_trip() {
        let mut message = RawMessage::new("x")
            .content_type("text/plain", "utf-8")
            .header("n", 7)
            .header("compression", "application/x-gzip");
        message.properties.priority = Some(5);
        message.properties.delivery_mode = Some(DeliveryMode::Transient);
        message.properties.expiration = Some("1500".into());
        message.properties.correlation_id = Some("c".into());
        message.properties.reply_to = Some("r".into());
        message.properties.message_id = Some("m".into());
        message.properties.timestamp = Some(1_700_000_000);
        message.properties.message_type = Some("t".into());
        message.properties.app_id = Some("a".into());
        let props = to_basic_properties(&message).unwrap();
        assert_eq!(
            props.headers().as_ref().unwrap().inner()["n"],
            AMQPValue::LongInt(7)
        );
        let back = to_raw_message(&props, Bytes::from_static(b"x"));
        assert_eq!(back, message);
    }
}
