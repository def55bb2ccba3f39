//! Native delayed delivery as kombu 5.5+ and Celery 5.5+ do it on RabbitMQ
//! (kombu's `transport/native_delayed_delivery.py`), so that a message
//! delayed here waits in the same queues, under the same names and
//! arguments, as one Celery sent with a `countdown`.
//!
//! 28 levels: topic exchange and queue `celery_delayed_<n>` for n = 27..0.
//! Queue n keeps a message 2^n seconds (`x-message-ttl`) and then
//! dead-letters it to exchange n-1 (level 0: to the topic exchange
//! `celery_delayed_delivery`). The routing key is the delay in seconds as
//! 28 binary digits joined by dots, then `.` and the message's own routing
//! key: exchange n routes a key whose digit for 2^n is `1` into queue n and
//! one whose digit is `0` on to exchange n-1. A message is published to
//! `celery_delayed_27`; after its delay it reaches `celery_delayed_delivery`,
//! which routes it to whatever is bound there with `#.<routing key>`.

use std::time::{Duration, SystemTime};

use kombu_core::{Binding, Channel, Error, ErrorKind, Exchange, ExchangeType, Queue, Result};

/// Number of levels (binary digits of the delay in seconds).
pub const LEVELS: u32 = 28;

/// The longest delay: 2^28 - 1 seconds (about 8.5 years).
pub const MAX_DELAY: Duration = Duration::from_secs((1 << LEVELS) - 1);

/// The exchange a delayed message is published to (the highest level).
pub const ENTRY_EXCHANGE: &str = "celery_delayed_27";

/// The topic exchange a message reaches when its delay is over; queues
/// (or their exchanges) are bound to it with `#.<routing key>`.
pub const DELIVERY_EXCHANGE: &str = "celery_delayed_delivery";

/// The queue type of the delay queues (Celery's
/// `broker_native_delayed_delivery_queue_type`; transport option
/// `delayed_delivery_queue_type`).
///
/// ```
/// use kombu_amqp::delayed::DelayQueueType;
/// assert_eq!(DelayQueueType::parse("classic").unwrap(), DelayQueueType::Classic);
/// assert_eq!(DelayQueueType::default().as_str(), "quorum");
/// assert!(DelayQueueType::parse("stream").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DelayQueueType {
    /// Quorum queues with at-least-once dead-lettering (Celery's default;
    /// RabbitMQ 3.10+).
    #[default]
    Quorum,
    /// Classic queues (at-most-once dead-lettering).
    Classic,
}

impl DelayQueueType {
    /// `"quorum"` or `"classic"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DelayQueueType::Quorum => "quorum",
            DelayQueueType::Classic => "classic",
        }
    }

    /// Parse `"quorum"` or `"classic"` (as kombu accepts them).
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "quorum" => Ok(DelayQueueType::Quorum),
            "classic" => Ok(DelayQueueType::Classic),
            other => Err(Error::new(
                ErrorKind::InvalidOption,
                format!("delayed_delivery_queue_type: {other:?} is not \"quorum\" or \"classic\""),
            )),
        }
    }
}

/// The name of level `level`'s exchange and queue.
///
/// ```
/// assert_eq!(kombu_amqp::delayed::level_name(27), "celery_delayed_27");
/// ```
pub fn level_name(level: u32) -> String {
    format!("celery_delayed_{level}")
}

/// The whole seconds to wait for a message due at `not_before`, rounded up
/// (never early); `None` when it is due already. A delay over
/// [`MAX_DELAY`] is a `LimitExceeded` error.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use kombu_amqp::delayed::delay_seconds;
/// let now = SystemTime::now();
/// assert_eq!(delay_seconds(now + Duration::from_millis(1500), now).unwrap(), Some(2));
/// assert_eq!(delay_seconds(now + Duration::from_secs(3), now).unwrap(), Some(3));
/// assert_eq!(delay_seconds(now, now).unwrap(), None);
/// assert!(delay_seconds(now + Duration::from_secs(1 << 28), now).is_err());
/// ```
pub fn delay_seconds(not_before: SystemTime, now: SystemTime) -> Result<Option<u64>> {
    let Ok(wait) = not_before.duration_since(now) else {
        return Ok(None);
    };
    if wait.is_zero() {
        return Ok(None);
    }
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if secs > MAX_DELAY.as_secs() {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "amqp: a delay of {secs} s is over the {} s native delayed delivery can keep \
                 (2^28 - 1 s); the message was not sent",
                MAX_DELAY.as_secs()
            ),
        ));
    }
    Ok(Some(secs))
}

/// The length of the delay prefix: 28 digits and their dots.
const PREFIX_LEN: usize = 2 * LEVELS as usize;

/// True when `routing_key` starts with a delay prefix (28 `0.`/`1.`).
fn has_delay_prefix(routing_key: &str) -> bool {
    let bytes = routing_key.as_bytes();
    bytes.len() >= PREFIX_LEN
        && bytes[..PREFIX_LEN]
            .chunks(2)
            .all(|pair| matches!(pair, [b'0' | b'1', b'.']))
}

/// `routing_key` without a leading delay prefix (28 `0.`/`1.`), as a
/// delivery of a delayed message carries it.
///
/// ```
/// let delivered = format!("{}1.1.tasks", "0.".repeat(26));
/// assert_eq!(kombu_amqp::delayed::strip_delay_prefix(&delivered), "tasks");
/// assert_eq!(kombu_amqp::delayed::strip_delay_prefix("tasks"), "tasks");
/// ```
pub fn strip_delay_prefix(routing_key: &str) -> &str {
    if has_delay_prefix(routing_key) {
        &routing_key[PREFIX_LEN..]
    } else {
        routing_key
    }
}

/// The routing key of a message delayed `seconds` (1 ..= 2^28 - 1):
/// the 28 binary digits of the delay joined by dots, `.`, then
/// `routing_key` (kombu's `calculate_routing_key`, which also strips a
/// delay prefix already there, as on a retried task).
///
/// ```
/// let key = kombu_amqp::delayed::routing_key(5, "tasks").unwrap();
/// assert_eq!(key, format!("{}1.0.1.tasks", "0.".repeat(25)));
/// assert_eq!(kombu_amqp::delayed::routing_key(1, &key).unwrap(), format!("{}1.tasks", "0.".repeat(27)));
/// assert!(kombu_amqp::delayed::routing_key(5, "").is_err());
/// ```
pub fn routing_key(seconds: u64, routing_key: &str) -> Result<String> {
    if seconds == 0 || seconds > MAX_DELAY.as_secs() {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!("amqp: a native delay is 1 ..= 2^28 - 1 seconds, not {seconds}"),
        ));
    }
    if routing_key.is_empty() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "amqp: a delayed message needs a routing key (native delayed delivery routes \
             by it, as kombu requires); the message was not sent",
        ));
    }
    let rest = strip_delay_prefix(routing_key);
    let digits = format!("{seconds:028b}");
    let mut key = String::with_capacity(PREFIX_LEN + rest.len());
    for digit in digits.chars() {
        key.push(digit);
        key.push('.');
    }
    key.push_str(rest);
    Ok(key)
}

/// The binding key under [`DELIVERY_EXCHANGE`] (and on the destination
/// exchange) for messages published with `routing_key`: `#.<routing key>`,
/// or the key itself when it starts with `#` (as kombu binds).
///
/// ```
/// assert_eq!(kombu_amqp::delayed::delivery_binding_key("tasks"), "#.tasks");
/// assert_eq!(kombu_amqp::delayed::delivery_binding_key("#.x"), "#.x");
/// ```
pub fn delivery_binding_key(routing_key: &str) -> String {
    if routing_key.starts_with('#') {
        routing_key.to_owned()
    } else {
        format!("#.{routing_key}")
    }
}

/// Level `level`'s queue, with the arguments kombu declares it with:
/// `x-queue-type`, `x-overflow: reject-publish`, `x-message-ttl` 2^level
/// seconds in milliseconds, `x-dead-letter-exchange` the level below (level
/// 0: [`DELIVERY_EXCHANGE`]) and, for quorum queues,
/// `x-dead-letter-strategy: at-least-once`.
///
/// ```
/// use kombu_amqp::delayed::{level_queue, DelayQueueType};
/// let args = level_queue(3, DelayQueueType::Quorum).declare_arguments();
/// assert_eq!(args["x-message-ttl"], 8000);
/// assert_eq!(args["x-dead-letter-exchange"], "celery_delayed_2");
/// assert_eq!(args["x-dead-letter-strategy"], "at-least-once");
/// ```
pub fn level_queue(level: u32, queue_type: DelayQueueType) -> Queue {
    let next = if level > 0 {
        level_name(level - 1)
    } else {
        DELIVERY_EXCHANGE.to_owned()
    };
    let queue = Queue::new(level_name(level))
        .argument("x-queue-type", queue_type.as_str())
        .argument("x-overflow", "reject-publish")
        .argument("x-message-ttl", (1u64 << level) * 1000)
        .argument("x-dead-letter-exchange", next);
    match queue_type {
        DelayQueueType::Quorum => queue.argument("x-dead-letter-strategy", "at-least-once"),
        DelayQueueType::Classic => queue,
    }
}

/// The binding key of level `level`'s queue on its exchange: the digit for
/// 2^level is `1` (`*.` once per higher level, then `1.#`).
fn level_queue_key(level: u32) -> String {
    format!("{}1.#", "*.".repeat((LEVELS - 1 - level) as usize))
}

/// The binding key of exchange `level - 1` on exchange `level` (level 0:
/// of [`DELIVERY_EXCHANGE`] on exchange 0): the digit for 2^level is `0`.
fn next_level_key(level: u32) -> String {
    format!("{}0.#", "*.".repeat((LEVELS - 1 - level) as usize))
}

/// Declare the 28 levels and the delivery exchange on `channel`, as
/// kombu's `declare_native_delayed_delivery_exchanges_and_queues` (which
/// a Celery worker with quorum queues runs at startup) declares them:
/// durable topic exchanges, the queues of [`level_queue`] bound to their
/// level's exchange, each exchange bound to the one above it. Declaring
/// again is harmless; against a topology declared with another queue type
/// RabbitMQ answers `PreconditionFailed` (and closes the channel).
///
/// A delayed publish on an AMQP connection does this once, on a channel of
/// its own; call it yourself to set the topology up ahead of time.
///
/// ```no_run
/// # async fn demo(conn: &kombu_core::Connection) -> kombu_core::Result<()> {
/// let channel = conn.channel().await?;
/// kombu_amqp::delayed::declare_topology(channel.as_ref(), kombu_amqp::delayed::DelayQueueType::Quorum).await?;
/// # Ok(()) }
/// ```
pub async fn declare_topology(channel: &dyn Channel, queue_type: DelayQueueType) -> Result<()> {
    for level in (0..LEVELS).rev() {
        let name = level_name(level);
        channel
            .exchange_declare(&Exchange::new(&name, ExchangeType::Topic))
            .await?;
        channel
            .queue_declare(&level_queue(level, queue_type))
            .await?;
        channel
            .queue_bind(&name, &Binding::new(&name, level_queue_key(level)))
            .await?;
    }
    for level in (1..LEVELS).rev() {
        channel
            .exchange_bind(
                &level_name(level - 1),
                &level_name(level),
                &next_level_key(level),
            )
            .await?;
    }
    channel
        .exchange_declare(&Exchange::new(DELIVERY_EXCHANGE, ExchangeType::Topic))
        .await?;
    channel
        .exchange_bind(DELIVERY_EXCHANGE, &level_name(0), &next_level_key(0))
        .await
}

/// Make `queue` receive the delayed messages published to it, as kombu's
/// `bind_queue_to_native_delayed_delivery_exchange` (which a Celery worker
/// runs for each of its queues at startup) does: for each binding of the
/// queue to a named exchange, that exchange is bound to
/// [`DELIVERY_EXCHANGE`] and the queue to that exchange, both with
/// [`delivery_binding_key`] of the binding's routing key. A binding to an
/// exchange the queue declares as direct is skipped (a direct exchange
/// cannot route the prefixed key; kombu logs a warning too). A queue with no
/// bindings (reached through the default exchange by its name) is bound to
/// [`DELIVERY_EXCHANGE`] with `#.<queue name>`, which a delayed publish to
/// the default exchange also does by itself.
///
/// Call it where a consumer starts, after declaring the queue, when
/// messages for it are published with a delay to a topic or fanout exchange.
/// [`DELIVERY_EXCHANGE`] must exist: call [`declare_topology`] first, as a
/// Celery worker does, unless you know a delayed publish or a worker has
/// declared it on this vhost.
///
/// ```no_run
/// # async fn demo(conn: &kombu_core::Connection) -> kombu_core::Result<()> {
/// use kombu_amqp::delayed::{bind_queue, declare_topology, DelayQueueType};
/// use kombu_core::{Exchange, Queue};
/// let tasks = Queue::new("tasks").quorum().bind(&Exchange::topic("tasks"), "tasks");
/// let channel = conn.channel().await?;
/// tasks.declare(channel.as_ref()).await?;
/// declare_topology(channel.as_ref(), DelayQueueType::Quorum).await?;
/// bind_queue(channel.as_ref(), &tasks).await?;
/// # Ok(()) }
/// ```
pub async fn bind_queue(channel: &dyn Channel, queue: &Queue) -> Result<()> {
    if queue.bindings.is_empty() {
        return channel
            .queue_bind(
                &queue.name,
                &Binding::new(DELIVERY_EXCHANGE, delivery_binding_key(&queue.name)),
            )
            .await;
    }
    for binding in &queue.bindings {
        if binding.exchange.is_empty() {
            continue;
        }
        let direct = queue
            .exchanges
            .iter()
            .any(|e| e.name == binding.exchange && e.kind == ExchangeType::Direct);
        if direct {
            tracing::warn!(
                exchange = %binding.exchange,
                queue = %queue.name,
                "native delayed delivery cannot route through a direct exchange: not bound"
            );
            continue;
        }
        let key = delivery_binding_key(&binding.routing_key);
        channel
            .exchange_bind(&binding.exchange, DELIVERY_EXCHANGE, &key)
            .await?;
        let mut bound = Binding::new(&binding.exchange, &key);
        bound.arguments = binding.arguments.clone();
        channel.queue_bind(&queue.name, &bound).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_kombu_makes_them() {
        // kombu: level 27 queue key "1.#", level 0 "*." * 27 + "1.#".
        assert_eq!(level_queue_key(27), "1.#");
        assert_eq!(level_queue_key(0), format!("{}1.#", "*.".repeat(27)));
        // exchange 26 on 27 with "0.#"; delivery on 0 with "*." * 27 + "0.#".
        assert_eq!(next_level_key(27), "0.#");
        assert_eq!(next_level_key(0), format!("{}0.#", "*.".repeat(27)));
    }

    #[test]
    fn routing_key_digits() {
        let key = routing_key(MAX_DELAY.as_secs(), "rk").unwrap();
        assert_eq!(key, format!("{}rk", "1.".repeat(28)));
        assert!(has_delay_prefix(&key));
        assert!(!has_delay_prefix("0.1.rk"));
        assert!(routing_key(0, "rk").is_err());
        assert!(routing_key(1 << 28, "rk").is_err());
        // A prefix is stripped once, like kombu's re.sub(count=1).
        let twice = format!("{}{}", "0.".repeat(28), "1.".repeat(28));
        let again = routing_key(2, &format!("{twice}rk")).unwrap();
        assert_eq!(
            again,
            format!("{}1.0.{}rk", "0.".repeat(26), "1.".repeat(28))
        );
    }

    #[test]
    fn ttl_types_like_py_amqp() {
        let args = level_queue(27, DelayQueueType::Classic).declare_arguments();
        assert_eq!(args["x-message-ttl"], 134_217_728_000u64);
        assert_eq!(args["x-queue-type"], "classic");
        assert!(!args.contains_key("x-dead-letter-strategy"));
        let zero = level_queue(0, DelayQueueType::Quorum).declare_arguments();
        assert_eq!(zero["x-dead-letter-exchange"], DELIVERY_EXCHANGE);
        assert_eq!(zero["x-message-ttl"], 1000);
    }
}
