//! Exchanges, queues and bindings: what a producer publishes to and a
//! consumer reads from.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};

/// Extra arguments of a declaration or a binding (AMQP field table, as JSON).
pub type Arguments = Map<String, Value>;

/// How an exchange routes a message to the queues bound to it.
///
/// ```
/// use kombu_core::ExchangeType;
/// assert_eq!("topic".parse::<ExchangeType>().unwrap(), ExchangeType::Topic);
/// assert_eq!(ExchangeType::Fanout.as_str(), "fanout");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ExchangeType {
    /// Routing key equals binding key.
    #[default]
    Direct,
    /// Binding key is a pattern: `*` one word, `#` zero or more words.
    Topic,
    /// Every bound queue gets a copy; the routing key is ignored.
    Fanout,
    /// Match on message headers (`x-match` = `all` or `any`).
    Headers,
}

impl ExchangeType {
    /// Every exchange type, in table order.
    pub const ALL: [ExchangeType; 4] = [
        ExchangeType::Direct,
        ExchangeType::Topic,
        ExchangeType::Fanout,
        ExchangeType::Headers,
    ];

    /// The AMQP name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Topic => "topic",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Headers => "headers",
        }
    }
}

impl fmt::Display for ExchangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExchangeType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "direct" => Ok(ExchangeType::Direct),
            "topic" => Ok(ExchangeType::Topic),
            "fanout" => Ok(ExchangeType::Fanout),
            "headers" => Ok(ExchangeType::Headers),
            other => Err(Error::new(
                ErrorKind::InvalidOption,
                format!("exchange type {other:?} is not one of direct, topic, fanout, headers"),
            )),
        }
    }
}

/// An exchange declaration.
///
/// The nameless exchange `""` is AMQP's default exchange: it routes to the
/// queue named by the routing key and never needs declaring.
///
/// ```
/// use kombu_core::{Exchange, ExchangeType};
/// let ex = Exchange::new("logs", ExchangeType::Topic).durable(false);
/// assert_eq!(ex.name, "logs");
/// assert!(!ex.durable);
/// assert!(Exchange::default_exchange().is_default());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Exchange {
    /// Name; empty for the default exchange.
    pub name: String,
    /// Routing behaviour.
    pub kind: ExchangeType,
    /// Survives a broker restart (kombu's default: true).
    pub durable: bool,
    /// Deleted when the last queue is unbound.
    pub auto_delete: bool,
    /// Declare only if it exists already (fail otherwise).
    pub passive: bool,
    /// Extra arguments (for example `alternate-exchange`).
    pub arguments: Arguments,
}

impl Exchange {
    /// A durable exchange of the given type.
    pub fn new(name: impl Into<String>, kind: ExchangeType) -> Self {
        Exchange {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            passive: false,
            arguments: Arguments::new(),
        }
    }

    /// A direct exchange.
    pub fn direct(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeType::Direct)
    }
    /// A topic exchange.
    pub fn topic(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeType::Topic)
    }
    /// A fanout exchange.
    pub fn fanout(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeType::Fanout)
    }
    /// A headers exchange.
    pub fn headers(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeType::Headers)
    }

    /// The default (nameless, direct) exchange.
    pub fn default_exchange() -> Self {
        Self::new("", ExchangeType::Direct)
    }

    /// True for the nameless default exchange.
    pub fn is_default(&self) -> bool {
        self.name.is_empty()
    }

    /// Set durability.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
    /// Set auto-delete.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }
    /// Make the declaration passive.
    pub fn passive(mut self, passive: bool) -> Self {
        self.passive = passive;
        self
    }
    /// Add an argument.
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.arguments.insert(key.into(), value.into());
        self
    }
}

/// One binding of a queue to an exchange.
///
/// ```
/// use kombu_core::Binding;
/// let b = Binding::new("logs", "*.error");
/// assert_eq!(b.routing_key, "*.error");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Binding {
    /// The exchange name.
    pub exchange: String,
    /// The binding key (a pattern for topic exchanges).
    pub routing_key: String,
    /// Binding arguments (headers exchanges match on these).
    pub arguments: Arguments,
}

impl Binding {
    /// A binding with no arguments.
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Binding {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            arguments: Arguments::new(),
        }
    }

    /// Add an argument (for headers exchanges: the headers to match, and `x-match`).
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.arguments.insert(key.into(), value.into());
        self
    }
}

/// A queue declaration, with its bindings.
///
/// The typed fields become the usual `x-` arguments when declared
/// (see [`Queue::declare_arguments`]).
///
/// ```
/// use std::time::Duration;
/// use kombu_core::{Exchange, Queue};
/// let q = Queue::new("tasks")
///     .bind(&Exchange::direct("work"), "tasks")
///     .max_priority(10)
///     .message_ttl(Duration::from_secs(60));
/// assert_eq!(q.bindings.len(), 1);
/// assert_eq!(q.declare_arguments()["x-max-priority"], 10);
/// assert_eq!(q.declare_arguments()["x-message-ttl"], 60000);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Queue {
    /// Queue name.
    pub name: String,
    /// Exchanges this queue is bound to.
    pub bindings: Vec<Binding>,
    /// Exchanges declared together with the queue (those given to [`Queue::bind`]).
    pub exchanges: Vec<Exchange>,
    /// Survives a broker restart (kombu's default: true).
    pub durable: bool,
    /// Used by one connection only, deleted when it closes.
    pub exclusive: bool,
    /// Deleted when the last consumer goes away.
    pub auto_delete: bool,
    /// Declare only if it exists already.
    pub passive: bool,
    /// Highest priority honoured (`x-max-priority`).
    pub max_priority: Option<u8>,
    /// Time a message may stay in the queue (`x-message-ttl`).
    pub message_ttl: Option<Duration>,
    /// The queue is deleted after this long unused (`x-expires`).
    pub expires: Option<Duration>,
    /// Most messages the queue holds; the oldest are dropped (`x-max-length`).
    pub max_length: Option<u64>,
    /// Where rejected, expired and dropped messages go (`x-dead-letter-exchange`).
    pub dead_letter_exchange: Option<String>,
    /// Routing key for dead-lettered messages (`x-dead-letter-routing-key`).
    pub dead_letter_routing_key: Option<String>,
    /// Other arguments, passed as they are.
    pub arguments: Arguments,
}

impl Queue {
    /// A durable queue with no bindings (reachable through the default exchange).
    pub fn new(name: impl Into<String>) -> Self {
        Queue {
            name: name.into(),
            bindings: Vec::new(),
            exchanges: Vec::new(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            passive: false,
            max_priority: None,
            message_ttl: None,
            expires: None,
            max_length: None,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            arguments: Arguments::new(),
        }
    }

    /// Bind to `exchange` with `routing_key` (the exchange is declared with the queue).
    pub fn bind(mut self, exchange: &Exchange, routing_key: impl Into<String>) -> Self {
        self.bindings
            .push(Binding::new(exchange.name.clone(), routing_key));
        if !exchange.is_default() && !self.exchanges.iter().any(|e| e.name == exchange.name) {
            self.exchanges.push(exchange.clone());
        }
        self
    }

    /// Add a ready-made binding.
    pub fn binding(mut self, binding: Binding) -> Self {
        self.bindings.push(binding);
        self
    }

    /// Set durability.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
    /// Set exclusivity.
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }
    /// Set auto-delete.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }
    /// Make the declaration passive.
    pub fn passive(mut self, passive: bool) -> Self {
        self.passive = passive;
        self
    }
    /// Honour priorities up to `max` (kombu uses 10 as a typical value).
    pub fn max_priority(mut self, max: u8) -> Self {
        self.max_priority = Some(max);
        self
    }
    /// Expire messages older than `ttl`.
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }
    /// Delete the queue after it has been unused for `after`.
    pub fn expires(mut self, after: Duration) -> Self {
        self.expires = Some(after);
        self
    }
    /// Keep at most `max` messages (drop the oldest).
    pub fn max_length(mut self, max: u64) -> Self {
        self.max_length = Some(max);
        self
    }
    /// Dead-letter to `exchange` (with the message's routing key unless one is set).
    pub fn dead_letter_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.dead_letter_exchange = Some(exchange.into());
        self
    }
    /// Routing key for dead-lettered messages.
    pub fn dead_letter_routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.dead_letter_routing_key = Some(routing_key.into());
        self
    }
    /// Add a raw argument.
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.arguments.insert(key.into(), value.into());
        self
    }

    /// A RabbitMQ quorum queue (`x-queue-type: quorum`, durable): replicated
    /// across a cluster's nodes, what Celery 5.5 recommends. Consumers of
    /// it get per-consumer QoS (kombu-amqp always sets it so); quorum
    /// queues refuse exclusive and non-durable declarations and
    /// `x-max-priority`. Other transports keep the argument and ignore it.
    ///
    /// ```
    /// use kombu_core::Queue;
    /// let q = Queue::new("tasks").quorum().delivery_limit(5);
    /// assert_eq!(q.queue_type(), Some("quorum"));
    /// assert_eq!(q.declare_arguments()["x-delivery-limit"], 5);
    /// ```
    pub fn quorum(self) -> Self {
        self.durable(true).argument("x-queue-type", "quorum")
    }

    /// A RabbitMQ stream (`x-queue-type: stream`, durable): an append-only
    /// log that keeps its messages after they are read (until its
    /// retention, `x-max-age` or `x-max-length-bytes`, drops them); each
    /// consumer reads from its own offset
    /// ([`ConsumerBuilder::stream_offset`](crate::ConsumerBuilder::stream_offset))
    /// and needs a prefetch count. Other transports keep the argument and
    /// ignore it.
    ///
    /// ```
    /// use kombu_core::Queue;
    /// let q = Queue::new("events").stream().argument("x-max-age", "7D");
    /// assert_eq!(q.queue_type(), Some("stream"));
    /// assert!(q.durable);
    /// ```
    pub fn stream(self) -> Self {
        self.durable(true).argument("x-queue-type", "stream")
    }

    /// The `x-queue-type` argument (`"quorum"`, `"stream"`, `"classic"`),
    /// when one is set.
    pub fn queue_type(&self) -> Option<&str> {
        self.arguments.get("x-queue-type").and_then(Value::as_str)
    }

    /// Dead-letter (or drop) a message after it was delivered `limit` times
    /// and returned (`x-delivery-limit`; RabbitMQ honours it on quorum
    /// queues), so a message no consumer can handle does not loop forever.
    pub fn delivery_limit(self, limit: u32) -> Self {
        self.argument("x-delivery-limit", limit)
    }

    /// Dead-letter at least once (`x-dead-letter-strategy: at-least-once`
    /// with `x-overflow: reject-publish`, which RabbitMQ requires for it):
    /// a quorum queue keeps a dead-lettered message until the dead-letter
    /// queue has confirmed it, instead of RabbitMQ's default at-most-once.
    pub fn dead_letter_at_least_once(self) -> Self {
        self.argument("x-dead-letter-strategy", "at-least-once")
            .argument("x-overflow", "reject-publish")
    }

    /// The AMQP arguments of the declaration: the typed fields as `x-` keys
    /// plus [`Queue::arguments`].
    pub fn declare_arguments(&self) -> Arguments {
        let mut args = self.arguments.clone();
        if let Some(p) = self.max_priority {
            args.insert("x-max-priority".into(), p.into());
        }
        if let Some(ttl) = self.message_ttl {
            args.insert("x-message-ttl".into(), (ttl.as_millis() as u64).into());
        }
        if let Some(exp) = self.expires {
            args.insert("x-expires".into(), (exp.as_millis() as u64).into());
        }
        if let Some(max) = self.max_length {
            args.insert("x-max-length".into(), max.into());
        }
        if let Some(dlx) = &self.dead_letter_exchange {
            args.insert("x-dead-letter-exchange".into(), dlx.clone().into());
        }
        if let Some(rk) = &self.dead_letter_routing_key {
            args.insert("x-dead-letter-routing-key".into(), rk.clone().into());
        }
        args
    }

    /// Read the typed fields back from `x-` arguments (the inverse of
    /// [`Queue::declare_arguments`]); unknown arguments stay in `arguments`.
    pub fn from_arguments(name: impl Into<String>, arguments: &Arguments) -> Self {
        let mut q = Queue::new(name);
        for (key, value) in arguments {
            let ms = value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()));
            match key.as_str() {
                "x-max-priority" => q.max_priority = ms.map(|v| v.min(255) as u8),
                "x-message-ttl" => q.message_ttl = ms.map(Duration::from_millis),
                "x-expires" => q.expires = ms.map(Duration::from_millis),
                "x-max-length" => q.max_length = ms,
                "x-dead-letter-exchange" => {
                    q.dead_letter_exchange = value.as_str().map(str::to_owned)
                }
                "x-dead-letter-routing-key" => {
                    q.dead_letter_routing_key = value.as_str().map(str::to_owned)
                }
                _ => {
                    q.arguments.insert(key.clone(), value.clone());
                }
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let q = Queue::new("q")
            .max_priority(9)
            .message_ttl(Duration::from_millis(1500))
            .expires(Duration::from_secs(10))
            .max_length(5)
            .dead_letter_exchange("dlx")
            .dead_letter_routing_key("dead")
            .argument("x-queue-type", "quorum");
        let back = Queue::from_arguments("q", &q.declare_arguments());
        assert_eq!(back, q);
    }

    #[test]
    fn quorum_queues_as_celery_declares_them() {
        let q = Queue::new("celery")
            .durable(false)
            .quorum()
            .delivery_limit(3)
            .dead_letter_exchange("dlx")
            .dead_letter_at_least_once();
        assert!(q.durable, "quorum queues are durable");
        assert_eq!(q.queue_type(), Some("quorum"));
        let args = q.declare_arguments();
        assert_eq!(args["x-queue-type"], "quorum");
        assert_eq!(args["x-delivery-limit"], 3);
        assert_eq!(args["x-dead-letter-strategy"], "at-least-once");
        assert_eq!(args["x-overflow"], "reject-publish");
        assert_eq!(args["x-dead-letter-exchange"], "dlx");
        assert_eq!(Queue::new("c").queue_type(), None);
    }

    #[test]
    fn bad_exchange_type_is_named() {
        let err = "fan".parse::<ExchangeType>().unwrap_err();
        assert!(err.to_string().contains("\"fan\""));
    }
}
