//! Messages as transports see them: serialized body, content type,
//! headers, properties and delivery information.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

/// Headers of a message (AMQP `application_headers`), as JSON.
pub type Headers = Map<String, Value>;

/// Whether the broker keeps a message on disk.
///
/// ```
/// use kombu_core::DeliveryMode;
/// assert_eq!(DeliveryMode::Persistent.as_u8(), 2);
/// assert_eq!(DeliveryMode::from_u8(1), Some(DeliveryMode::Transient));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum DeliveryMode {
    /// Kept in memory only (AMQP 1).
    Transient,
    /// Written to disk (AMQP 2, kombu's default).
    #[default]
    Persistent,
}

impl DeliveryMode {
    /// The AMQP number (1 or 2).
    pub fn as_u8(self) -> u8 {
        match self {
            DeliveryMode::Transient => 1,
            DeliveryMode::Persistent => 2,
        }
    }

    /// From the AMQP number.
    pub fn from_u8(n: u8) -> Option<Self> {
        match n {
            1 => Some(DeliveryMode::Transient),
            2 => Some(DeliveryMode::Persistent),
            _ => None,
        }
    }
}

/// The AMQP basic properties kombu-rs carries (besides content type and
/// encoding, which live on [`RawMessage`]).
///
/// ```
/// use std::time::Duration;
/// use kombu_core::Properties;
/// let mut p = Properties::default();
/// p.set_expiration(Duration::from_millis(1500));
/// assert_eq!(p.expiration.as_deref(), Some("1500"));
/// assert_eq!(p.expiration_duration(), Some(Duration::from_millis(1500)));
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Properties {
    /// Persistent or transient.
    pub delivery_mode: Option<DeliveryMode>,
    /// Priority, higher first (AMQP meaning; virtual transports map it on the wire).
    pub priority: Option<u8>,
    /// Per-message TTL in milliseconds, as a decimal string (AMQP).
    pub expiration: Option<String>,
    /// Correlation id (RPC replies).
    pub correlation_id: Option<String>,
    /// Reply-to queue (RPC).
    pub reply_to: Option<String>,
    /// Application message id.
    pub message_id: Option<String>,
    /// Unix time in seconds.
    pub timestamp: Option<u64>,
    /// Application message type.
    pub message_type: Option<String>,
    /// Creating user id.
    pub user_id: Option<String>,
    /// Creating application id.
    pub app_id: Option<String>,
}

impl Properties {
    /// Set the per-message TTL.
    pub fn set_expiration(&mut self, ttl: Duration) {
        self.expiration = Some(ttl.as_millis().to_string());
    }

    /// The per-message TTL, when it is a valid number of milliseconds.
    pub fn expiration_duration(&self) -> Option<Duration> {
        self.expiration
            .as_deref()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| Duration::from_micros((ms * 1000.0) as u64))
    }
}

/// A message as it travels: serialized (and maybe compressed) body plus
/// metadata. The user-level API builds one from a payload and decodes one
/// back; transports store and move it.
///
/// ```
/// use kombu_core::RawMessage;
/// let m = RawMessage::new("hello").content_type("text/plain", "utf-8");
/// assert_eq!(&m.body[..], b"hello");
/// assert_eq!(m.content_type.as_deref(), Some("text/plain"));
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct RawMessage {
    /// The serialized body.
    pub body: Bytes,
    /// MIME type of the body (`application/json`, ...).
    pub content_type: Option<String>,
    /// Character set or `binary`.
    pub content_encoding: Option<String>,
    /// Application headers (kombu puts `compression` here).
    pub headers: Headers,
    /// Basic properties.
    pub properties: Properties,
    /// Deliver no sooner than this (delayed delivery, kombu-rs's own: see
    /// [`PublishOptions::delay`](crate::PublishOptions::delay)); `None`:
    /// at once.
    pub not_before: Option<std::time::SystemTime>,
}

impl RawMessage {
    /// A message with this body and nothing else set.
    pub fn new(body: impl Into<Bytes>) -> Self {
        RawMessage {
            body: body.into(),
            ..Default::default()
        }
    }

    /// Deliver no sooner than `when` (delayed delivery).
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// let when = SystemTime::now() + Duration::from_secs(5);
    /// let m = kombu_core::RawMessage::new("later").not_before(when);
    /// assert_eq!(m.not_before, Some(when));
    /// ```
    pub fn not_before(mut self, when: std::time::SystemTime) -> Self {
        self.not_before = Some(when);
        self
    }

    /// Set content type and encoding.
    pub fn content_type(mut self, content_type: &str, content_encoding: &str) -> Self {
        self.content_type = Some(content_type.to_owned());
        self.content_encoding = Some(content_encoding.to_owned());
        self
    }

    /// Set one header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }
}

/// Where a delivered message came from.
///
/// ```
/// use kombu_core::DeliveryInfo;
/// let info = DeliveryInfo::new("ex", "rk");
/// assert!(!info.redelivered);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct DeliveryInfo {
    /// The exchange it was published to (empty: the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// True when the message was delivered before and not acked.
    pub redelivered: bool,
    /// The consumer it was delivered to, if any (None for `basic_get`).
    pub consumer_tag: Option<String>,
    /// The queue it was taken from, when the transport knows.
    pub queue: Option<String>,
    /// The transport's own handle on this delivery, where it has one (a
    /// virtual transport's receipt: the SQS receipt handle, ...), for
    /// transport-specific calls such as extending an SQS message's lease.
    pub receipt: Option<String>,
}

impl DeliveryInfo {
    /// Delivery info for an exchange and routing key.
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        DeliveryInfo {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            ..Default::default()
        }
    }
}

/// One message handed out by a channel, identified on that channel by
/// `delivery_tag` until it is acked or rejected.
///
/// ```
/// use kombu_core::{Delivery, DeliveryInfo, RawMessage};
/// let d = Delivery::new(1, RawMessage::new("x"), DeliveryInfo::new("", "q"));
/// assert_eq!(d.delivery_tag, 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Delivery {
    /// Channel-scoped tag used to ack or reject.
    pub delivery_tag: u64,
    /// The message.
    pub message: RawMessage,
    /// Where it came from.
    pub info: DeliveryInfo,
}

impl Delivery {
    /// A delivery.
    pub fn new(delivery_tag: u64, message: RawMessage, info: DeliveryInfo) -> Self {
        Delivery {
            delivery_tag,
            message,
            info,
        }
    }
}
