//! The names of every Redis key and PUB/SUB channel, as Python kombu 5.7
//! spells them, and the priority mapping.
//!
//! kombu serves a lower priority number first (its lists are read in step
//! order, `q` before `q\x06\x163`); kombu-rs's API is AMQP's, a higher
//! number first. On the wire a message with API priority `p` carries
//! `9 - p` (clamped to 0..9), so both languages agree on which message is
//! more urgent.

use crate::config::RedisConfig;

/// Highest priority kombu knows.
pub const MAX_PRIORITY: u8 = 9;

/// kombu's number for an API (AMQP) priority: `9 - p`.
///
/// ```
/// use kombu_redis::keys::{wire_priority, api_priority};
/// assert_eq!(wire_priority(9), 0);
/// assert_eq!(wire_priority(0), 9);
/// assert_eq!(wire_priority(200), 0);
/// assert_eq!(api_priority(wire_priority(4).into()), 4);
/// ```
pub fn wire_priority(api: u8) -> u8 {
    MAX_PRIORITY - api.min(MAX_PRIORITY)
}

/// The API (AMQP) priority of a kombu wire priority.
pub fn api_priority(wire: u64) -> u8 {
    MAX_PRIORITY - wire.min(u64::from(MAX_PRIORITY)) as u8
}

/// Key and channel names for one connection.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    sep: String,
    steps: Vec<u8>,
    fanout_prefix: String,
    fanout_patterns: bool,
    unacked: String,
    unacked_index: String,
    unacked_mutex: String,
    /// Redis Cluster: a queue's keys share its list's hash slot.
    cluster: bool,
    unacked_name: String,
    unacked_index_name: String,
    unacked_mutex_name: String,
}

/// The part of `key` Redis Cluster hashes: the content of its first
/// `{...}` when that is not empty, else the whole key.
///
/// ```
/// use kombu_redis::keys::hash_tag;
/// assert_eq!(hash_tag("celery"), "celery");
/// assert_eq!(hash_tag("jobs{eu}"), "eu");
/// assert_eq!(hash_tag("a{}b"), "a{}b");
/// ```
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

impl Keys {
    /// The names for `config`.
    pub fn new(config: &RedisConfig) -> Self {
        let p = &config.global_keyprefix;
        Keys {
            prefix: p.clone(),
            sep: config.sep.clone(),
            steps: config.priority_steps.clone(),
            fanout_prefix: config.fanout_prefix.clone(),
            fanout_patterns: config.fanout_patterns,
            unacked: format!("{p}{}", config.unacked_key),
            unacked_index: format!("{p}{}", config.unacked_index_key),
            unacked_mutex: format!("{p}{}", config.unacked_mutex_key),
            cluster: config.cluster,
            unacked_name: config.unacked_key.clone(),
            unacked_index_name: config.unacked_index_key.clone(),
            unacked_mutex_name: config.unacked_mutex_key.clone(),
        }
    }

    /// Whether the names are Redis Cluster's (a queue's keys in one slot).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The hash tag every key of `queue` carries on a cluster: the slot
    /// key of its first list (kombu's own name for it).
    fn tag(&self, queue: &str) -> String {
        let list = format!("{}{queue}", self.prefix);
        hash_tag(&list).to_owned()
    }

    /// Refuse a queue whose keys cannot share a slot on a cluster: a name
    /// (with the prefix) holding a `}` outside a hash tag.
    pub fn check_queue(&self, queue: &str) -> kombu_core::Result<()> {
        if self.cluster && self.tag(queue).contains('}') {
            return Err(kombu_core::Error::new(
                kombu_core::ErrorKind::Unsupported,
                format!(
                    "rediscluster: queue {queue:?} has a '}}' outside a hash tag, so its \
                     keys cannot share one hash slot; rename it or give it a tag ({{...}})"
                ),
            ));
        }
        Ok(())
    }

    /// The priority steps, ascending (the first is served first).
    pub fn steps(&self) -> &[u8] {
        &self.steps
    }

    /// The step a wire priority falls in: the largest step not above it.
    pub fn step_for(&self, wire: u8) -> u8 {
        self.steps
            .iter()
            .copied()
            .rfind(|s| *s <= wire)
            .unwrap_or(0)
    }

    /// The list holding `queue`'s messages of step `step`.
    pub fn list(&self, queue: &str, step: u8) -> String {
        if step == 0 {
            format!("{}{queue}", self.prefix)
        } else if self.cluster {
            format!("{{{}}}{}{step}", self.tag(queue), self.sep)
        } else {
            format!("{}{queue}{}{step}", self.prefix, self.sep)
        }
    }

    /// The index in [`steps`](Self::steps) of the step a wire priority
    /// falls in.
    pub fn step_index(&self, wire: u8) -> usize {
        self.steps.iter().rposition(|s| *s <= wire).unwrap_or(0)
    }

    /// The sorted set of `queue`'s delayed messages (kombu-rs's own; kombu
    /// has no delayed delivery): `_kombu-rs.delayed.<queue>`, on a cluster
    /// `_kombu-rs.delayed{<queue>}` (in the queue's slot).
    pub fn delayed_of(&self, queue: &str) -> String {
        if self.cluster {
            format!("{}_kombu-rs.delayed{{{}}}", self.prefix, self.tag(queue))
        } else {
            format!("{}_kombu-rs.delayed.{queue}", self.prefix)
        }
    }

    /// The list a message of wire priority `wire` goes to.
    pub fn list_for_wire(&self, queue: &str, wire: u8) -> String {
        self.list(queue, self.step_for(wire))
    }

    /// Every list of `queue`, in serving order.
    pub fn lists(&self, queue: &str) -> Vec<String> {
        self.steps.iter().map(|s| self.list(queue, *s)).collect()
    }

    /// `_kombu.binding.<exchange>`.
    pub fn binding(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix)
    }

    /// `_kombu.binding_permanent.<exchange>`.
    pub fn binding_permanent(&self, exchange: &str) -> String {
        format!("{}_kombu.binding_permanent.{exchange}", self.prefix)
    }

    /// The table and permanent-set prefixes, for kombu's sweep script.
    pub fn binding_prefixes(&self) -> (String, String) {
        (self.binding(""), self.binding_permanent(""))
    }

    /// `_kombu.binding_deadlines`.
    pub fn binding_deadlines(&self) -> String {
        format!("{}_kombu.binding_deadlines", self.prefix)
    }

    /// A binding member: `routing_key SEP pattern SEP queue`.
    pub fn member(&self, routing_key: &str, pattern: &str, queue: &str) -> String {
        format!("{routing_key}{sep}{pattern}{sep}{queue}", sep = self.sep)
    }

    /// The parts of a binding member, if it has three.
    pub fn parse_member<'a>(&self, member: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let mut parts = member.splitn(3, self.sep.as_str());
        Some((parts.next()?, parts.next()?, parts.next()?))
    }

    /// Hash of exchange types (kombu ignores it): field = exchange name.
    pub fn exchange_types(&self) -> String {
        format!("{}_kombu-rs.exchange_types", self.prefix)
    }

    /// Hash of queue declarations (kombu ignores it): field = queue name,
    /// value = its AMQP arguments as JSON.
    pub fn queue_declarations(&self) -> String {
        format!("{}_kombu-rs.queues", self.prefix)
    }

    /// Hash of binding arguments of a headers exchange (kombu stores none):
    /// field = binding member, value = arguments as JSON.
    pub fn binding_args(&self, exchange: &str) -> String {
        format!("{}_kombu-rs.binding_args.{exchange}", self.prefix)
    }

    /// `unacked`.
    pub fn unacked(&self) -> &str {
        &self.unacked
    }
    /// `unacked_index`.
    pub fn unacked_index(&self) -> &str {
        &self.unacked_index
    }
    /// `unacked_mutex`.
    pub fn unacked_mutex(&self) -> &str {
        &self.unacked_mutex
    }

    /// The unacked hash holding `queue`'s fetched messages: kombu's one
    /// `unacked`, or on a cluster `unacked{<queue>}` (in the queue's slot).
    pub fn unacked_of(&self, queue: &str) -> String {
        self.per_queue(&self.unacked, &self.unacked_name, queue)
    }

    /// The unacked index of `queue`'s fetched messages (see
    /// [`unacked_of`](Self::unacked_of)).
    pub fn unacked_index_of(&self, queue: &str) -> String {
        self.per_queue(&self.unacked_index, &self.unacked_index_name, queue)
    }

    /// The restore mutex of `queue` (see [`unacked_of`](Self::unacked_of)).
    pub fn unacked_mutex_of(&self, queue: &str) -> String {
        self.per_queue(&self.unacked_mutex, &self.unacked_mutex_name, queue)
    }

    fn per_queue(&self, global: &str, name: &str, queue: &str) -> String {
        if self.cluster {
            format!("{}{name}{{{}}}", self.prefix, self.tag(queue))
        } else {
            global.to_owned()
        }
    }

    /// The PUB/SUB channel a fanout message goes to:
    /// `/{db}.{exchange}` or `/{db}.{exchange}/{routing_key}`.
    pub fn fanout_topic(&self, exchange: &str, routing_key: &str) -> String {
        if !routing_key.is_empty() && self.fanout_patterns {
            format!(
                "{}{}{exchange}/{routing_key}",
                self.prefix, self.fanout_prefix
            )
        } else {
            format!("{}{}{exchange}", self.prefix, self.fanout_prefix)
        }
    }

    /// The pattern a queue bound with `routing_key` subscribes to (kombu
    /// turns `#` into `*`).
    pub fn fanout_pattern(&self, exchange: &str, routing_key: &str) -> String {
        self.fanout_topic(exchange, &routing_key.replace('#', "*"))
    }

    /// The patterns this transport subscribes to for a fanout binding:
    /// kombu's, plus, for a binding key that is empty or `#`, the channels
    /// of every routing key (`/{db}.{exchange}/*`), so that a fanout
    /// exchange delivers whatever the key, as in AMQP.
    pub fn fanout_subscriptions(&self, exchange: &str, routing_key: &str) -> Vec<String> {
        let mut patterns = vec![self.fanout_pattern(exchange, routing_key)];
        if self.fanout_patterns && (routing_key.is_empty() || routing_key == "#") {
            patterns.push(format!("{}{}{exchange}/*", self.prefix, self.fanout_prefix));
            patterns.dedup();
        }
        patterns
    }

    /// The exchange a PUB/SUB channel name belongs to.
    pub fn exchange_of_topic<'a>(&self, channel: &'a str) -> &'a str {
        let rest = channel
            .strip_prefix(self.prefix.as_str())
            .unwrap_or(channel);
        let rest = if rest.starts_with('/') {
            rest.split_once('.').map_or(rest, |(_, r)| r)
        } else {
            rest
        };
        rest.split('/').next().unwrap_or(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kombu_core::{BrokerUrl, ConnectionOptions, TransportOptions};

    fn keys(to: TransportOptions) -> Keys {
        let options = ConnectionOptions::new().transport_options(to);
        let url = BrokerUrl::parse("redis://localhost/2").unwrap();
        Keys::new(&RedisConfig::new(&url, &options).unwrap())
    }

    #[test]
    fn names_match_kombu() {
        let k = keys(Default::default());
        assert_eq!(k.list_for_wire("q", 0), "q");
        assert_eq!(k.list_for_wire("q", 2), "q");
        assert_eq!(k.list_for_wire("q", 4), "q\x06\x163");
        assert_eq!(k.list_for_wire("q", 8), "q\x06\x166");
        assert_eq!(k.list_for_wire("q", 9), "q\x06\x169");
        assert_eq!(
            k.member("a.*", "^a\\.[^\\.]+$", "tq1"),
            "a.*\x06\x16^a\\.[^\\.]+$\x06\x16tq1"
        );
        assert_eq!(k.parse_member("\x06\x16\x06\x16fq1"), Some(("", "", "fq1")));
        assert_eq!(k.binding("ex"), "_kombu.binding.ex");
        assert_eq!(k.fanout_topic("ex", ""), "/2.ex");
        assert_eq!(k.fanout_topic("ex", "a.b"), "/2.ex/a.b");
        assert_eq!(k.fanout_pattern("ex", "a.#"), "/2.ex/a.*");
        assert_eq!(k.fanout_subscriptions("ex", ""), ["/2.ex", "/2.ex/*"]);
        assert_eq!(k.fanout_subscriptions("ex", "a.b"), ["/2.ex/a.b"]);
        assert_eq!(k.exchange_of_topic("/2.ex/a.b"), "ex");
        assert_eq!(k.exchange_of_topic("/2.ex"), "ex");
    }

    fn cluster_keys(to: TransportOptions) -> Keys {
        let options = ConnectionOptions::new().transport_options(to);
        let url = BrokerUrl::parse("rediscluster://localhost:7000").unwrap();
        Keys::new(&RedisConfig::new(&url, &options).unwrap())
    }

    #[test]
    fn cluster_keys_of_a_queue_share_its_slot() {
        use redis::cluster_routing::Slot;
        let k = cluster_keys(Default::default());
        assert_eq!(k.list("q", 0), "q");
        assert_eq!(k.list("q", 3), "{q}\x06\x163");
        assert_eq!(k.unacked_of("q"), "unacked{q}");
        assert_eq!(k.unacked_index_of("q"), "unacked_index{q}");
        assert_eq!(k.unacked_mutex_of("q"), "unacked_mutex{q}");
        for queue in ["celery", "jobs{eu}", "a{b", "x.y"] {
            let slot = Slot::for_key(k.list(queue, 0));
            for key in [
                k.list(queue, 9),
                k.delayed_of(queue),
                k.unacked_of(queue),
                k.unacked_index_of(queue),
                k.unacked_mutex_of(queue),
            ] {
                assert_eq!(Slot::for_key(&key), slot, "{queue}: {key}");
            }
            assert!(k.check_queue(queue).is_ok());
        }
        assert!(k.check_queue("a}b").is_err());
        assert!(k.check_queue("a{}b").is_err());
        // Single-node names are kombu's, whatever the queue.
        let single = keys(Default::default());
        assert_eq!(single.unacked_of("q"), "unacked");
        assert!(single.check_queue("a}b").is_ok());
        let prefixed = cluster_keys(TransportOptions::new().set("global_keyprefix", "p:"));
        assert_eq!(prefixed.list("q", 0), "p:q");
        assert_eq!(prefixed.list("q", 6), "{p:q}\x06\x166");
        assert_eq!(prefixed.unacked_of("q"), "p:unacked{p:q}");
    }

    #[test]
    fn prefix_applies_everywhere() {
        let k = keys(TransportOptions::new().set("global_keyprefix", "p:"));
        assert_eq!(k.list("q", 3), "p:q\x06\x163");
        assert_eq!(k.unacked(), "p:unacked");
        assert_eq!(k.fanout_topic("ex", ""), "p:/2.ex");
        assert_eq!(k.exchange_of_topic("p:/2.ex/rk"), "ex");
    }
}
