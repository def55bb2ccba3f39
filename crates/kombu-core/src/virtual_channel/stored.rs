//! [`StoredMessage`]: a message as the virtual channel holds it between a
//! publish and a queue, typed, with no JSON maps: what an in-process
//! backend keeps as it is, and what any other backend turns into a kombu
//! [`Envelope`].

use bytes::Bytes;
use serde_json::{Map, Value};

use super::convert::{from_envelope, new_delivery_tag, published_ms, to_envelope, PUBLISHED_MS};
use crate::envelope::Envelope;
use crate::message::{DeliveryInfo, DeliveryMode, Headers, Properties, RawMessage};

/// Envelope property keys the typed fields stand for (the rest are kept in
/// [`StoredMessage`]'s extra properties).
const MODELLED: &[&str] = &[
    "delivery_mode",
    "priority",
    "expiration",
    "correlation_id",
    "reply_to",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "delivery_info",
    "body_encoding",
    "delivery_tag",
    PUBLISHED_MS,
];

/// A message on its way through a virtual transport, typed: the body,
/// content type, headers and properties as published, where it was
/// published, whether it was delivered before, and its publish time when a
/// TTL needs one.
///
/// A backend that keeps messages in process (memory://) stores these as
/// they are ([`VirtualBackend::put_message`](super::VirtualBackend::put_message)
/// and [`FetchedBody::Message`](super::FetchedBody::Message)): no kombu
/// envelope is built, read or kept. Any other backend gets the
/// [`Envelope`] it writes ([`into_envelope`](Self::into_envelope)), byte for
/// byte what Python kombu 5.7 writes.
///
/// Small on purpose (an in-process queue holds one per message): empty
/// headers and default properties take no heap.
///
/// ```
/// use kombu_core::spi::StoredMessage;
/// use kombu_core::RawMessage;
/// let message = RawMessage::new(&b"hi"[..]).content_type("text/plain", "utf-8");
/// let stored = StoredMessage::new(message.clone(), "ex", "rk");
/// assert_eq!(stored.routing_key(), "rk");
/// let envelope = stored.clone().into_envelope();
/// assert_eq!(envelope.delivery_info().unwrap()["routing_key"], "rk");
/// let back = StoredMessage::from_envelope(envelope);
/// assert_eq!(back.body(), stored.body());
/// assert_eq!(back.to_raw_message().content_type.as_deref(), Some("text/plain"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub(super) body: Bytes,
    pub(super) content_type: Option<Box<str>>,
    pub(super) content_encoding: Option<Box<str>>,
    /// `None` when empty.
    pub(super) headers: Option<Box<Headers>>,
    /// `None` when every property but the two below is unset.
    pub(super) properties: Option<Box<Properties>>,
    pub(super) delivery_mode: Option<DeliveryMode>,
    pub(super) priority: Option<u8>,
    pub(super) exchange: Box<str>,
    pub(super) routing_key: Box<str>,
    pub(super) redelivered: bool,
    pub(super) published_ms: Option<u64>,
    /// Envelope properties kombu-rs does not model (from a stored
    /// envelope), kept through dead-lettering.
    pub(super) extra: Option<Box<Map<String, Value>>>,
    /// Delayed delivery: not before this (Unix ms); not stored.
    pub(super) not_before_ms: Option<u64>,
}

fn boxed_text(text: Option<String>) -> Option<Box<str>> {
    text.map(String::into_boxed_str)
}

impl StoredMessage {
    /// A message published to `exchange` with `routing_key`.
    pub fn new(message: RawMessage, exchange: &str, routing_key: &str) -> Self {
        let RawMessage {
            body,
            content_type,
            content_encoding,
            headers,
            mut properties,
            not_before,
        } = message;
        let delivery_mode = properties.delivery_mode.take();
        let priority = properties.priority.take();
        StoredMessage {
            body,
            content_type: boxed_text(content_type),
            content_encoding: boxed_text(content_encoding),
            headers: (!headers.is_empty()).then(|| Box::new(headers)),
            properties: (properties != Properties::default()).then(|| Box::new(properties)),
            delivery_mode,
            priority,
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            redelivered: false,
            published_ms: None,
            extra: None,
            not_before_ms: not_before.map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64)
            }),
        }
    }

    /// When it may be delivered (Unix milliseconds), for a delayed message
    /// ([`RawMessage::not_before`]); `None`: at once. Kept in process only
    /// (a stored kombu envelope has no such field: the transport keeps the
    /// time its own way).
    pub fn not_before_ms(&self) -> Option<u64> {
        self.not_before_ms
    }

    /// Deliver at once from now on (a delayed message whose time the
    /// transport keeps itself).
    pub fn clear_not_before(&mut self) {
        self.not_before_ms = None;
    }

    /// The message as a kombu envelope read from a store holds it (its
    /// properties that kombu-rs does not model are kept).
    pub fn from_envelope(envelope: Envelope) -> Self {
        let (message, info) = from_envelope(&envelope);
        let published = published_ms(&envelope);
        let extra: Map<String, Value> = envelope
            .properties
            .into_iter()
            .filter(|(key, _)| !MODELLED.contains(&key.as_str()))
            .collect();
        let mut stored = StoredMessage::new(message, &info.exchange, &info.routing_key);
        stored.redelivered = info.redelivered;
        stored.published_ms = published;
        stored.extra = (!extra.is_empty()).then(|| Box::new(extra));
        stored
    }

    /// The kombu envelope of this message, as Python kombu 5.7 writes it
    /// (a fresh `delivery_tag`; marked redelivered when it was delivered
    /// before; the publish time, when kept, under `x-published-ms`).
    pub fn into_envelope(self) -> Envelope {
        let StoredMessage {
            redelivered,
            published_ms,
            extra,
            ..
        } = self;
        let exchange = self.exchange;
        let routing_key = self.routing_key;
        let mut properties = self.properties.map(|p| *p).unwrap_or_default();
        properties.delivery_mode = self.delivery_mode;
        properties.priority = self.priority;
        let message = RawMessage {
            body: self.body,
            content_type: self.content_type.map(String::from),
            content_encoding: self.content_encoding.map(String::from),
            headers: self.headers.map(|h| *h).unwrap_or_default(),
            properties,
            not_before: None,
        };
        let mut envelope = to_envelope(message, &exchange, &routing_key, new_delivery_tag());
        if let Some(extra) = extra {
            for (key, value) in *extra {
                envelope.properties.entry(key).or_insert(value);
            }
        }
        if let Some(ms) = published_ms {
            envelope.properties.insert(PUBLISHED_MS.into(), ms.into());
        }
        if redelivered {
            envelope.mark_redelivered();
        }
        envelope
    }

    /// [`into_envelope`](Self::into_envelope) of a copy.
    pub fn to_envelope(&self) -> Envelope {
        self.clone().into_envelope()
    }

    /// The body (serialized, maybe compressed).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The application headers (empty when there are none).
    pub fn headers(&self) -> &Headers {
        static EMPTY: std::sync::LazyLock<Headers> = std::sync::LazyLock::new(Headers::new);
        self.headers.as_deref().unwrap_or(&EMPTY)
    }

    /// The headers, to change them.
    pub fn headers_mut(&mut self) -> &mut Headers {
        self.headers.get_or_insert_with(Default::default)
    }

    /// The exchange it was published to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// Where it goes next (dead-lettering re-publishes it).
    pub fn set_destination(&mut self, exchange: &str, routing_key: &str) {
        self.exchange = exchange.into();
        self.routing_key = routing_key.into();
    }

    /// The message priority (0 when unset).
    pub fn priority(&self) -> u8 {
        self.priority.unwrap_or(0)
    }

    /// True when it was delivered before and put back.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Mark it delivered before (requeue, restore).
    pub fn mark_redelivered(&mut self) {
        self.redelivered = true;
    }

    /// Count one more return to the queue (`x-delivery-count`; see
    /// [`Envelope::count_return`]).
    pub fn count_return(&mut self) {
        let returned = self.delivery_count() + 1;
        self.headers_mut().insert(
            crate::envelope::DELIVERY_COUNT_HEADER.into(),
            returned.into(),
        );
    }

    /// How often it was delivered and put back (`x-delivery-count`).
    pub fn delivery_count(&self) -> u64 {
        crate::envelope::delivery_count(self.headers())
    }

    /// The publish time in milliseconds, when kept (for a TTL).
    pub fn published_ms(&self) -> Option<u64> {
        self.published_ms
    }

    /// Keep the publish time (for a TTL), unless one is kept already.
    pub fn stamp_published(&mut self, now_ms: u64) {
        self.published_ms.get_or_insert(now_ms);
    }

    /// Forget the per-message TTL and the publish time (dead-lettering).
    pub fn clear_expiry(&mut self) {
        self.published_ms = None;
        if let Some(properties) = &mut self.properties {
            properties.expiration = None;
        }
    }

    /// The per-message TTL (the `expiration` property), if any.
    pub fn expiration(&self) -> Option<std::time::Duration> {
        self.properties
            .as_ref()
            .and_then(|p| p.expiration_duration())
    }

    /// True when the message carries a per-message TTL.
    pub fn has_expiration(&self) -> bool {
        self.properties
            .as_ref()
            .is_some_and(|p| p.expiration.is_some())
    }

    /// The message as a consumer gets it (a copy; the body is shared).
    pub fn to_raw_message(&self) -> RawMessage {
        let mut properties = self.properties.as_deref().cloned().unwrap_or_default();
        properties.delivery_mode = self.delivery_mode;
        properties.priority = self.priority;
        RawMessage {
            body: self.body.clone(),
            content_type: self.content_type.as_deref().map(str::to_owned),
            content_encoding: self.content_encoding.as_deref().map(str::to_owned),
            headers: self.headers.as_deref().cloned().unwrap_or_default(),
            properties,
            not_before: None,
        }
    }

    /// Where it was published and whether it was delivered before.
    pub fn delivery_info(&self) -> DeliveryInfo {
        let mut info = DeliveryInfo::new(&*self.exchange, &*self.routing_key);
        info.redelivered = self.redelivered;
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> RawMessage {
        let mut m = RawMessage::new(&b"{\"a\": 1}"[..])
            .content_type("application/json", "utf-8")
            .header("x-origin", "rust");
        m.properties.priority = Some(7);
        m.properties.correlation_id = Some("c1".into());
        m.properties.expiration = Some("1500".into());
        m.properties.delivery_mode = Some(DeliveryMode::Transient);
        m
    }

    #[test]
    fn the_envelope_is_the_one_a_publish_writes() {
        let stored = StoredMessage::new(sample(), "ex", "rk");
        let mut direct = to_envelope(sample(), "ex", "rk", "tag".into());
        let mut via = stored.into_envelope();
        for envelope in [&mut direct, &mut via] {
            envelope
                .properties
                .insert("delivery_tag".into(), "tag".into());
        }
        assert_eq!(via.to_json(), direct.to_json());
    }

    #[test]
    fn envelopes_round_trip_with_what_is_not_modelled() {
        let mut envelope = to_envelope(sample(), "ex", "rk", "tag".into());
        envelope
            .properties
            .insert("x-custom".into(), json!({"k": [1, 2]}));
        envelope.properties.insert(PUBLISHED_MS.into(), 42.into());
        envelope.mark_redelivered();
        let stored = StoredMessage::from_envelope(envelope.clone());
        assert!(stored.redelivered());
        assert_eq!(stored.published_ms(), Some(42));
        assert_eq!(stored.priority(), 7);
        assert_eq!(stored.exchange(), "ex");
        let back = stored.into_envelope();
        assert_eq!(back.properties["x-custom"], json!({"k": [1, 2]}));
        assert_eq!(back.properties[PUBLISHED_MS], 42);
        assert!(back.redelivered());
        assert_eq!(back.body, envelope.body);
        assert_eq!(back.headers["x-origin"], "rust");
    }

    #[test]
    fn defaults_take_no_heap() {
        let stored = StoredMessage::new(RawMessage::new(&b"x"[..]), "", "q");
        assert!(stored.headers.is_none());
        assert!(stored.properties.is_none());
        assert!(stored.headers().is_empty());
        assert!(
            std::mem::size_of::<StoredMessage>() <= 160,
            "{}",
            std::mem::size_of::<StoredMessage>()
        );
    }

    #[test]
    fn expiry_is_read_and_cleared() {
        let mut stored = StoredMessage::new(sample(), "ex", "rk");
        assert_eq!(
            stored.expiration(),
            Some(std::time::Duration::from_millis(1500))
        );
        stored.stamp_published(10);
        stored.stamp_published(20);
        assert_eq!(stored.published_ms(), Some(10));
        stored.clear_expiry();
        assert!(!stored.has_expiration());
        assert_eq!(stored.published_ms(), None);
    }
}
