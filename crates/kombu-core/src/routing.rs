//! Exchange routing as pure functions: which queues a message goes to.
//!
//! Virtual transports (everything but AMQP) route in the client with these.
//! Semantics are AMQP 0-9-1's (RabbitMQ's): direct compares keys, topic
//! patterns use `*` for exactly one word and `#` for zero or more words,
//! fanout ignores the key, headers match on `x-match` = `all` (default) or
//! `any`.

use serde_json::{Map, Value};

use crate::entity::{Arguments, ExchangeType};

/// A stored binding: messages matching `routing_key` (a pattern for topic
/// exchanges, binding arguments for headers exchanges) go to `queue`.
///
/// ```
/// use kombu_core::routing::QueueBinding;
/// let b = QueueBinding::new("q1", "a.*");
/// assert_eq!(b.queue, "q1");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueueBinding {
    /// The bound queue.
    pub queue: String,
    /// Binding key (pattern for topic).
    pub routing_key: String,
    /// Binding arguments (headers exchange match spec).
    pub arguments: Arguments,
}

impl QueueBinding {
    /// A binding without arguments.
    pub fn new(queue: impl Into<String>, routing_key: impl Into<String>) -> Self {
        QueueBinding {
            queue: queue.into(),
            routing_key: routing_key.into(),
            arguments: Arguments::new(),
        }
    }

    /// A binding with arguments.
    pub fn with_arguments(mut self, arguments: Arguments) -> Self {
        self.arguments = arguments;
        self
    }
}

/// True when an AMQP topic `pattern` matches `routing_key`.
///
/// ```
/// use kombu_core::routing::topic_matches;
/// assert!(topic_matches("a.*", "a.err"));
/// assert!(topic_matches("#.err", "b.c.err"));
/// assert!(topic_matches("a.#", "a"));
/// assert!(!topic_matches("a.*", "a.x.y"));
/// ```
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let words: Vec<&str> = routing_key.split('.').collect();
    match_words(&pattern, &words)
}

fn match_words(pattern: &[&str], words: &[&str]) -> bool {
    // Iterative matcher with backtracking on the last `#` (like glob `*`).
    let (mut p, mut w) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while w < words.len() {
        if p < pattern.len() && pattern[p] == "#" {
            star = Some((p, w));
            p += 1;
        } else if p < pattern.len() && (pattern[p] == "*" || pattern[p] == words[w]) {
            p += 1;
            w += 1;
        } else if let Some((sp, sw)) = star {
            p = sp + 1;
            w = sw + 1;
            star = Some((sp, sw + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|part| *part == "#")
}

/// The regex Python kombu stores for a topic binding key (kombu's
/// `_translate` in `kombu.transport.virtual.exchange.TopicExchange`):
/// `.` escaped, `*` -> `[^\.]+`, `#` -> `.*?`, anchored.
///
/// ```
/// use kombu_core::routing::kombu_topic_regex;
/// assert_eq!(kombu_topic_regex("a.*"), r"^a\.[^\.]+$");
/// assert_eq!(kombu_topic_regex("#.err"), r"^.*?\.err$");
/// ```
pub fn kombu_topic_regex(pattern: &str) -> String {
    let escaped = pattern
        .replace('.', r"\.")
        .replace('*', r"[^\.]+")
        .replace('#', ".*?");
    format!("^{escaped}$")
}

/// True when message `headers` satisfy a headers-exchange binding.
///
/// Keys starting with `x-` in the binding are not matched. `x-match` is
/// `all` (default: every key present and equal) or `any` (at least one).
/// A binding value of `null` matches on presence alone.
///
/// ```
/// use serde_json::json;
/// use kombu_core::routing::headers_match;
/// let binding = json!({"x-match": "any", "format": "pdf", "type": "report"});
/// let headers = json!({"format": "pdf"});
/// assert!(headers_match(binding.as_object().unwrap(), headers.as_object().unwrap()));
/// ```
pub fn headers_match(binding: &Arguments, headers: &Map<String, Value>) -> bool {
    let any = binding
        .get("x-match")
        .and_then(Value::as_str)
        .is_some_and(|m| m.eq_ignore_ascii_case("any") || m.eq_ignore_ascii_case("any-with-x"));
    let mut keys = binding
        .iter()
        .filter(|(k, _)| !k.starts_with("x-"))
        .peekable();
    if keys.peek().is_none() {
        return !any;
    }
    let one = |(key, expected): (&String, &Value)| match headers.get(key) {
        None => false,
        Some(_) if expected.is_null() => true,
        Some(actual) => values_equal(expected, actual),
    };
    if any {
        keys.any(one)
    } else {
        keys.all(one)
    }
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// The queues a message published to an exchange of type `kind` reaches,
/// in binding order, each at most once.
///
/// ```
/// use kombu_core::ExchangeType;
/// use kombu_core::routing::{route, QueueBinding};
/// let bindings = vec![QueueBinding::new("tq1", "a.*"), QueueBinding::new("tq2", "#.err")];
/// let queues = route(ExchangeType::Topic, &bindings, "a.err", &Default::default());
/// assert_eq!(queues, vec!["tq1", "tq2"]);
/// ```
pub fn route<'a>(
    kind: ExchangeType,
    bindings: &'a [QueueBinding],
    routing_key: &str,
    headers: &Map<String, Value>,
) -> Vec<&'a str> {
    let mut out: Vec<&'a str> = Vec::new();
    for b in bindings {
        let hit = match kind {
            ExchangeType::Direct => b.routing_key == routing_key,
            ExchangeType::Topic => topic_matches(&b.routing_key, routing_key),
            ExchangeType::Fanout => true,
            ExchangeType::Headers => headers_match(&b.arguments, headers),
        };
        if hit && !out.contains(&b.queue.as_str()) {
            out.push(&b.queue);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn topic_examples_from_the_wire_capture() {
        let b = vec![
            QueueBinding::new("tq1", "a.*"),
            QueueBinding::new("tq2", "#.err"),
            QueueBinding::new("tq3", "a.#"),
        ];
        let none = Map::new();
        assert_eq!(
            route(ExchangeType::Topic, &b, "a.err", &none),
            ["tq1", "tq2", "tq3"]
        );
        assert_eq!(route(ExchangeType::Topic, &b, "b.c.err", &none), ["tq2"]);
        assert_eq!(route(ExchangeType::Topic, &b, "a.x.y", &none), ["tq3"]);
    }

    #[test]
    fn topic_edge_cases() {
        assert!(topic_matches("#", ""));
        assert!(topic_matches("#", "a.b.c"));
        assert!(topic_matches("a.#.c", "a.c"));
        assert!(topic_matches("a.#.c", "a.b.b.c"));
        assert!(!topic_matches("a.#.c", "a.b.b.d"));
        assert!(topic_matches("*.*", "a.b"));
        assert!(!topic_matches("*", "a.b"));
        assert!(topic_matches("a.#.#.d", "a.d"));
        assert!(topic_matches("#.b.#", "a.b.c"));
        assert!(!topic_matches("a", "ab"));
    }

    #[test]
    fn direct_and_fanout() {
        let b = vec![
            QueueBinding::new("q1", "rk"),
            QueueBinding::new("q2", "other"),
        ];
        let none = Map::new();
        assert_eq!(route(ExchangeType::Direct, &b, "rk", &none), ["q1"]);
        assert_eq!(
            route(ExchangeType::Fanout, &b, "ignored", &none),
            ["q1", "q2"]
        );
    }

    #[test]
    fn a_queue_bound_twice_gets_one_copy() {
        let b = vec![QueueBinding::new("q", "a.*"), QueueBinding::new("q", "#")];
        assert_eq!(route(ExchangeType::Topic, &b, "a.b", &Map::new()), ["q"]);
    }

    #[test]
    fn headers_all_and_any() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        let all = obj(json!({"format": "pdf", "type": "report"}));
        let any = obj(json!({"x-match": "any", "format": "pdf", "type": "report"}));
        let both = obj(json!({"format": "pdf", "type": "report", "extra": 1}));
        let one = obj(json!({"format": "pdf"}));
        let wrong = obj(json!({"format": "zip"}));
        assert!(headers_match(&all, &both));
        assert!(!headers_match(&all, &one));
        assert!(headers_match(&any, &one));
        assert!(!headers_match(&any, &wrong));
        let numeric = obj(json!({"n": 1}));
        assert!(headers_match(&numeric, &obj(json!({"n": 1.0}))));
        let presence = obj(json!({"flag": null}));
        assert!(headers_match(&presence, &obj(json!({"flag": "yes"}))));
        let empty_all = obj(json!({}));
        assert!(headers_match(&empty_all, &obj(json!({}))));
    }

    fn reference_match(pattern: &[&str], words: &[&str]) -> bool {
        match (pattern.split_first(), words.split_first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some((&"#", rest)), _) => {
                reference_match(rest, words)
                    || (!words.is_empty() && reference_match(pattern, &words[1..]))
            }
            (Some(_), None) => false,
            (Some((p, prest)), Some((w, wrest))) => {
                (*p == "*" || p == w) && reference_match(prest, wrest)
            }
        }
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_the_recursive_definition(
            pattern in prop::collection::vec(prop::sample::select(vec!["a", "b", "*", "#"]), 1..6),
            words in prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..7),
        ) {
            let p = pattern.join(".");
            let w = words.join(".");
            prop_assert_eq!(topic_matches(&p, &w), reference_match(&pattern, &words));
        }

        #[test]
        fn kombu_regex_agrees_when_no_hash(
            pattern in prop::collection::vec(prop::sample::select(vec!["a", "b", "*"]), 1..5),
            words in prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..6),
        ) {
            let p = pattern.join(".");
            let w = words.join(".");
            let re = regex::Regex::new(&kombu_topic_regex(&p)).unwrap();
            prop_assert_eq!(topic_matches(&p, &w), re.is_match(&w));
        }
    }
}
