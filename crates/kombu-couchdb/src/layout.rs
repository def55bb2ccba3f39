//! The documents this transport stores and their ids
//! (docs/transports/couchdb.md shows the layout).
//!
//! Every document has a `kombu` field naming its type: `message`, `queue`,
//! `exchange` or `binding`. Messages keep kombu 3.0.37's `queue` and
//! `payload` (the envelope as a JSON string) and add what ordering and
//! leasing need. A message's id orders it: one queue's messages are one
//! `_all_docs` id range, most urgent first, then oldest, so no index or
//! query is needed to find the next one.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kombu_core::routing::QueueBinding;
use kombu_core::{Envelope, Exchange, ExchangeType, Queue};
use serde_json::{json, Map, Value};

/// The field naming a document's type.
pub const KIND: &str = "kombu";

/// Prefix of message ids (`message:"<queue>":<rank>-<seq>`).
pub const MESSAGE_PREFIX: &str = "message:";
const QUEUE_PREFIX: &str = "queue:";
const EXCHANGE_PREFIX: &str = "exchange:";
const BINDING_PREFIX: &str = "binding:";

/// The id of the message `seq` of `queue` sent with `priority`:
/// `message:`, the queue name as a JSON string, `:`, the [`rank`] in three
/// digits, `-` and the sequence. The queue is in the id so that a changes
/// feed row (which has only the id) says which queue it concerns, and the
/// JSON quoting makes a queue's messages one id range that no other
/// queue's ids fall into. In that range the ids sort by rank, then by
/// sequence: most urgent first, then oldest.
///
/// ```
/// use kombu_couchdb::layout::{message_id, queue_of_message_id, seq_of_message_id};
/// let id = message_id("jobs:eu", 9, "0001700000000000-000000-0a1b2c3d");
/// assert_eq!(id, r#"message:"jobs:eu":246-0001700000000000-000000-0a1b2c3d"#);
/// assert_eq!(queue_of_message_id(&id).as_deref(), Some("jobs:eu"));
/// assert_eq!(seq_of_message_id(&id), Some("0001700000000000-000000-0a1b2c3d"));
/// assert!(message_id("q", 9, "0002") < message_id("q", 0, "0001"));
/// ```
pub fn message_id(queue: &str, priority: u8, seq: &str) -> String {
    format!(
        "{MESSAGE_PREFIX}{}:{:03}-{seq}",
        Value::from(queue),
        rank(priority)
    )
}

/// The queue name and what follows it (`<rank>-<seq>`) in a message id.
fn split_message_id(id: &str) -> Option<(String, &str)> {
    let rest = id.strip_prefix(MESSAGE_PREFIX)?;
    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<String>();
    let queue = values.next()?.ok()?;
    let key = rest[values.byte_offset()..].strip_prefix(':')?;
    Some((queue, key))
}

/// The rank and the sequence in the part of a message id after the queue.
/// Ids written before the rank was in them (`message:"<queue>":<seq>`,
/// the sequence starting with 16 digits) have no rank.
fn split_key(key: &str) -> (Option<u8>, &str) {
    let bytes = key.as_bytes();
    if bytes.len() > 4 && bytes[..3].iter().all(u8::is_ascii_digit) && bytes[3] == b'-' {
        if let Ok(rank) = key[..3].parse::<u8>() {
            return (Some(rank), &key[4..]);
        }
    }
    (None, key)
}

/// The queue a message id belongs to (`None` for other documents).
pub fn queue_of_message_id(id: &str) -> Option<String> {
    split_message_id(id).map(|(queue, _)| queue)
}

/// The sequence part of a message id.
pub fn seq_of_message_id(id: &str) -> Option<&str> {
    split_message_id(id).map(|(_, key)| split_key(key).1)
}

/// The rank part of a message id (`None` for ids without one).
pub fn rank_of_message_id(id: &str) -> Option<u8> {
    split_message_id(id).and_then(|(_, key)| split_key(key).0)
}

/// The `_all_docs` id range (`startkey`, `endkey`) holding the messages of
/// `queue`, most urgent first, then oldest.
pub fn message_range(queue: &str) -> (String, String) {
    let start = format!("{MESSAGE_PREFIX}{}:", Value::from(queue));
    let end = format!("{start}\u{fff0}");
    (start, end)
}

/// The id of a queue's declaration.
pub fn queue_doc_id(queue: &str) -> String {
    format!("{QUEUE_PREFIX}{queue}")
}

/// The id of an exchange's declaration.
pub fn exchange_doc_id(exchange: &str) -> String {
    format!("{EXCHANGE_PREFIX}{exchange}")
}

/// The id of a binding: `binding:` and the JSON array
/// `[exchange, queue, routing_key, arguments]` (arguments with sorted
/// keys), so binding twice stores one document.
///
/// ```
/// use kombu_core::routing::QueueBinding;
/// use kombu_couchdb::layout::binding_doc_id;
/// let id = binding_doc_id("logs", &QueueBinding::new("q1", "a.*"));
/// assert_eq!(id, r#"binding:["logs","q1","a.*",{}]"#);
/// ```
pub fn binding_doc_id(exchange: &str, binding: &QueueBinding) -> String {
    let key = json!([
        exchange,
        binding.queue,
        binding.routing_key,
        canonical(&Value::Object(binding.arguments.clone())),
    ]);
    format!("{BINDING_PREFIX}{key}")
}

/// The `_all_docs` id range (`startkey`, `endkey`) holding the bindings of
/// `exchange`, or every binding when `None`.
pub fn binding_range(exchange: Option<&str>) -> (String, String) {
    let start = match exchange {
        Some(name) => format!("{BINDING_PREFIX}[{},", Value::from(name)),
        None => BINDING_PREFIX.to_owned(),
    };
    let end = format!("{start}\u{fff0}");
    (start, end)
}

/// `value` with the keys of every object sorted.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, Value> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Makes message sequences: `<ms since epoch, 16 digits>-<counter, 6
/// digits>-<8 hex digits of this process>`. They sort as strings in the
/// order this process made them (the clock never goes back for them), and
/// across processes by time.
#[derive(Debug)]
pub struct SequenceGenerator {
    suffix: String,
    last: Mutex<(u64, u32)>,
}

impl SequenceGenerator {
    /// A generator with a random suffix.
    pub fn new() -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        SequenceGenerator {
            suffix,
            last: Mutex::new((0, 0)),
        }
    }

    /// The next sequence, for a message stored at `now_ms`.
    ///
    /// ```
    /// use kombu_couchdb::layout::SequenceGenerator;
    /// let seqs = SequenceGenerator::new();
    /// let a = seqs.next(1_700_000_000_000);
    /// let b = seqs.next(1_699_999_999_999); // the clock went back
    /// assert!(a < b);
    /// assert!(a.starts_with("0001700000000000-000000-"));
    /// ```
    pub fn next(&self, now_ms: u64) -> String {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (ms, counter) = *last;
        *last = if now_ms > ms {
            (now_ms, 0)
        } else if counter >= 999_999 {
            (ms + 1, 0)
        } else {
            (ms, counter + 1)
        };
        format!("{:016}-{:06}-{}", last.0, last.1, self.suffix)
    }
}

impl Default for SequenceGenerator {
    fn default() -> Self {
        Self::new()
    }
}

/// `255 - priority`: ranks sort ascending where AMQP priorities sort
/// descending, so a message id that starts with its rank puts the most
/// urgent messages first in `_all_docs` order.
pub fn rank(priority: u8) -> u8 {
    u8::MAX - priority
}

/// True when a message document may be claimed at `now_ms`: never leased,
/// released, or its lease ran out.
///
/// ```
/// use kombu_couchdb::layout::is_ready;
/// assert!(is_ready(&serde_json::json!({"lease_until": 0}), 5));
/// assert!(!is_ready(&serde_json::json!({"lease_until": 9}), 5));
/// ```
pub fn is_ready(doc: &Value, now_ms: u64) -> bool {
    doc.get("lease_until")
        .and_then(Value::as_u64)
        .is_none_or(|until| until < now_ms)
}

/// A new, ready message document.
///
/// ```
/// use kombu_core::Envelope;
/// use kombu_couchdb::layout::message_doc;
/// let doc = message_doc("q", "0001-000000-ab", &Envelope::default(), 5, 42);
/// assert_eq!(doc["_id"], r#"message:"q":250-0001-000000-ab"#);
/// assert_eq!(doc["kombu"], "message");
/// assert_eq!(doc["rank"], 250);
/// assert_eq!(doc["lease_until"], 0);
/// assert!(doc["payload"].is_string());
/// ```
pub fn message_doc(
    queue: &str,
    seq: &str,
    envelope: &Envelope,
    priority: u8,
    published_at: u64,
) -> Value {
    let payload = String::from_utf8_lossy(&envelope.to_json()).into_owned();
    json!({
        "_id": message_id(queue, priority, seq),
        KIND: "message",
        "queue": queue,
        "payload": payload,
        "priority": priority,
        "rank": rank(priority),
        "seq": seq,
        "published_at": published_at,
        "lease_owner": null,
        "lease_id": null,
        "leased_at": null,
        "lease_until": 0,
        "deliveries": 0,
    })
}

/// The sequence of a delayed message due at `due_ms`: the due time in
/// place of the publish time, then the sequence `seq` it was published
/// with (which keeps it unique). Its id sorts among its queue's messages
/// by due time, so when due it is served after the messages stored before
/// that, and claims find ready messages ahead of it.
///
/// ```
/// use kombu_couchdb::layout::delayed_seq;
/// let seq = delayed_seq(1_700_000_005_000, "0001700000000000-000000-0a1b2c3d");
/// assert_eq!(seq, "0001700000005000-0001700000000000-000000-0a1b2c3d");
/// assert!(seq.as_str() > "0001700000004999-000000-0a1b2c3d");
/// ```
pub fn delayed_seq(due_ms: u64, seq: &str) -> String {
    format!("{due_ms:016}-{seq}")
}

/// A delayed message document: a message document (id by
/// [`delayed_seq`]) that is not ready until `due_ms`, as if leased by
/// nobody until then (`lease_until` just before it), with `not_before`
/// saying so. No claim takes it earlier; at `due_ms` it is ready like any
/// message, and its first claim is its first delivery.
///
/// ```
/// use kombu_core::Envelope;
/// use kombu_couchdb::layout::{delayed_message_doc, is_ready, due_of};
/// let doc = delayed_message_doc("q", "0001-000000-ab", &Envelope::default(), 0, 42, 5_000);
/// assert_eq!(doc["_id"], r#"message:"q":255-0000000000005000-0001-000000-ab"#);
/// assert!(!is_ready(&doc, 4_999) && is_ready(&doc, 5_000));
/// assert_eq!(due_of(&doc, 4_000), Some(5_000));
/// assert_eq!(due_of(&doc, 5_000), None);
/// ```
pub fn delayed_message_doc(
    queue: &str,
    seq: &str,
    envelope: &Envelope,
    priority: u8,
    published_at: u64,
    due_ms: u64,
) -> Value {
    let seq = delayed_seq(due_ms, seq);
    let mut doc = message_doc(queue, &seq, envelope, priority, published_at);
    doc["lease_until"] = due_ms.saturating_sub(1).into();
    doc["not_before"] = due_ms.into();
    doc
}

/// When a delayed message document becomes ready, if that is after
/// `now_ms` (`None` for a ready, leased or ordinary message).
pub fn due_of(doc: &Value, now_ms: u64) -> Option<u64> {
    if !doc.get("lease_owner").is_none_or(Value::is_null) {
        return None;
    }
    doc.get("not_before")
        .and_then(Value::as_u64)
        .filter(|due| *due > now_ms)
}

/// Lease a message document to `owner` until `until_ms` (the caller saves
/// it with its `_rev`: of several claimants exactly one succeeds).
///
/// `lease_id` numbers the owner's claims: no two lease writes of one owner
/// are the same document, even from the same read in the same
/// millisecond. That matters on pouchdb-server, whose revisions are a hash
/// of the content: a stale lease write equal to one already applied to a
/// message acked since crashes the server (docs/transports/couchdb.md).
///
/// ```
/// use kombu_couchdb::layout::lease;
/// let read = serde_json::json!({"_id": "m", "_rev": "1-a", "deliveries": 0});
/// let (mut a, mut b) = (read.clone(), read);
/// lease(&mut a, "me", 1, 100, 200);
/// lease(&mut b, "me", 2, 100, 200);
/// assert_ne!(a, b);
/// assert_eq!(a["deliveries"], 1);
/// ```
pub fn lease(doc: &mut Value, owner: &str, lease_id: u64, now_ms: u64, until_ms: u64) {
    if let Value::Object(map) = doc {
        let deliveries = map.get("deliveries").and_then(Value::as_u64).unwrap_or(0);
        map.insert("lease_owner".into(), owner.into());
        map.insert("lease_id".into(), lease_id.into());
        map.insert("leased_at".into(), now_ms.into());
        map.insert("lease_until".into(), until_ms.into());
        map.insert("deliveries".into(), (deliveries + 1).into());
    }
}

/// The envelope bytes of a message document: `payload` as a JSON string
/// (kombu's layout) or as an object.
pub fn payload_bytes(doc: &Value) -> Option<Vec<u8>> {
    match doc.get("payload")? {
        Value::String(s) => Some(s.clone().into_bytes()),
        Value::Object(_) => serde_json::to_vec(&doc["payload"]).ok(),
        _ => None,
    }
}

/// What a consumer keeps of a message it leased: enough to delete it (ack)
/// or to write it back without its lease (requeue) without reading it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The document id.
    pub id: String,
    /// The revision the lease wrote.
    pub rev: String,
    /// When the message was first stored (ms).
    pub published_at: u64,
    /// How many times it was leased (this lease included).
    pub deliveries: u64,
}

impl Lease {
    /// The lease taken by saving `doc` as revision `rev`.
    pub fn of(doc: &Value, rev: &str) -> Option<Lease> {
        Some(Lease {
            id: doc.get("_id")?.as_str()?.to_owned(),
            rev: rev.to_owned(),
            published_at: doc.get("published_at").and_then(Value::as_u64).unwrap_or(0),
            deliveries: doc.get("deliveries").and_then(Value::as_u64).unwrap_or(1),
        })
    }

    /// As a receipt: `<rev> <published_at> <deliveries> <id>`.
    ///
    /// ```
    /// use kombu_couchdb::layout::Lease;
    /// let lease = Lease { id: "message:1:a b".into(), rev: "2-ab".into(), published_at: 7, deliveries: 1 };
    /// assert_eq!(Lease::from_receipt(&lease.to_receipt()), Some(lease));
    /// ```
    pub fn to_receipt(&self) -> String {
        format!(
            "{} {} {} {}",
            self.rev, self.published_at, self.deliveries, self.id
        )
    }

    /// Read a receipt back.
    pub fn from_receipt(receipt: &str) -> Option<Lease> {
        let mut parts = receipt.splitn(4, ' ');
        let rev = parts.next()?.to_owned();
        let published_at = parts.next()?.parse().ok()?;
        let deliveries = parts.next()?.parse().ok()?;
        let id = parts.next()?.to_owned();
        Some(Lease {
            id,
            rev,
            published_at,
            deliveries,
        })
    }

    /// The message document written back, ready again, with `envelope`
    /// (the channel's copy, flagged redelivered), at its old place in the
    /// queue (same id, so same rank and sequence).
    pub fn released_doc(&self, queue: &str, envelope: &Envelope) -> Value {
        let seq = seq_of_message_id(&self.id).unwrap_or("");
        // The priority the id was made with (its rank is 255 - priority).
        let priority = rank_of_message_id(&self.id).map_or(envelope.priority(), |r| u8::MAX - r);
        let mut doc = message_doc(queue, seq, envelope, priority, self.published_at);
        doc["_id"] = self.id.clone().into();
        doc["_rev"] = self.rev.clone().into();
        doc["deliveries"] = self.deliveries.into();
        doc
    }
}

/// A queue's declaration document.
pub fn queue_doc(queue: &Queue, now_ms: u64) -> Value {
    json!({
        "_id": queue_doc_id(&queue.name),
        KIND: "queue",
        "name": queue.name,
        "arguments": Value::Object(queue.declare_arguments()),
        "durable": queue.durable,
        "auto_delete": queue.auto_delete,
        "declared_at": now_ms,
    })
}

/// The declaration in a queue document.
pub fn queue_from_doc(doc: &Value) -> Option<Queue> {
    let name = doc.get("name")?.as_str()?;
    let empty = Map::new();
    let arguments = doc
        .get("arguments")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut queue = Queue::from_arguments(name, arguments);
    queue.durable = doc.get("durable").and_then(Value::as_bool).unwrap_or(true);
    queue.auto_delete = doc
        .get("auto_delete")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Some(queue)
}

/// An exchange's declaration document.
pub fn exchange_doc(exchange: &Exchange) -> Value {
    json!({
        "_id": exchange_doc_id(&exchange.name),
        KIND: "exchange",
        "name": exchange.name,
        "type": exchange.kind.as_str(),
        "durable": exchange.durable,
        "auto_delete": exchange.auto_delete,
        "arguments": Value::Object(exchange.arguments.clone()),
    })
}

/// The declaration in an exchange document.
pub fn exchange_from_doc(doc: &Value) -> Option<Exchange> {
    let name = doc.get("name")?.as_str()?;
    let kind: ExchangeType = doc.get("type")?.as_str()?.parse().ok()?;
    let mut exchange = Exchange::new(name, kind);
    exchange.durable = doc.get("durable").and_then(Value::as_bool).unwrap_or(true);
    exchange.auto_delete = doc
        .get("auto_delete")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(args) = doc.get("arguments").and_then(Value::as_object) {
        exchange.arguments = args.clone();
    }
    Some(exchange)
}

/// A binding document.
pub fn binding_doc(exchange: &str, binding: &QueueBinding) -> Value {
    json!({
        "_id": binding_doc_id(exchange, binding),
        KIND: "binding",
        "exchange": exchange,
        "queue": binding.queue,
        "routing_key": binding.routing_key,
        "arguments": Value::Object(binding.arguments.clone()),
    })
}

/// The binding in a binding document, with its exchange.
pub fn binding_from_doc(doc: &Value) -> Option<(String, QueueBinding)> {
    let exchange = doc.get("exchange")?.as_str()?.to_owned();
    let queue = doc.get("queue")?.as_str()?;
    let routing_key = doc.get("routing_key")?.as_str()?;
    let mut binding = QueueBinding::new(queue, routing_key);
    if let Some(args) = doc.get("arguments").and_then(Value::as_object) {
        binding = binding.with_arguments(args.clone());
    }
    Some((exchange, binding))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An envelope as it reads back after a store (normalised).
    fn envelope(body: &str) -> Envelope {
        let first = Envelope::from_json(
            format!(
                r#"{{"body": "{body}", "content-encoding": "utf-8", "content-type": "text/plain", "headers": {{}}, "properties": {{"priority": 3}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        Envelope::from_json(&first.to_json()).unwrap()
    }

    #[test]
    fn message_doc_has_kombu_3_fields_and_ours() {
        let env = envelope("hi");
        let doc = message_doc("q", "s1", &env, 3, 1000);
        assert_eq!(doc["queue"], "q");
        let payload = doc["payload"].as_str().unwrap();
        assert_eq!(Envelope::from_json(payload.as_bytes()).unwrap(), env);
        assert_eq!(doc["priority"], 3);
        assert_eq!(doc["rank"], 252);
        assert_eq!(doc["seq"], "s1");
        assert_eq!(doc["published_at"], 1000);
        assert_eq!(doc["lease_owner"], Value::Null);
        assert_eq!(doc["deliveries"], 0);
    }

    #[test]
    fn payload_may_be_a_string_or_an_object() {
        let env = envelope("x");
        let doc = message_doc("q", "s", &env, 0, 0);
        assert_eq!(payload_bytes(&doc).unwrap(), env.to_json());
        let as_object =
            json!({"payload": serde_json::from_slice::<Value>(&env.to_json()).unwrap()});
        let bytes = payload_bytes(&as_object).unwrap();
        assert_eq!(Envelope::from_json(&bytes).unwrap(), env);
        assert_eq!(payload_bytes(&json!({"payload": 3})), None);
    }

    #[test]
    fn lease_and_release_round_trip() {
        let mut doc = message_doc("q", "0001-000001-aa", &envelope("x"), 3, 77);
        assert_eq!(doc["lease_id"], Value::Null);
        lease(&mut doc, "me", 7, 100, 200);
        assert_eq!(doc["lease_owner"], "me");
        assert_eq!(doc["lease_id"], 7);
        assert_eq!(doc["lease_until"], 200);
        assert_eq!(doc["leased_at"], 100);
        assert_eq!(doc["deliveries"], 1);
        let lease = Lease::of(&doc, "2-x").unwrap();
        let again = Lease::from_receipt(&lease.to_receipt()).unwrap();
        assert_eq!(again, lease);
        let mut redelivered = envelope("x");
        redelivered.mark_redelivered();
        let released = again.released_doc("q", &redelivered);
        assert_eq!(released["_id"], doc["_id"]);
        assert_eq!(released["_rev"], "2-x");
        assert_eq!(released["seq"], "0001-000001-aa");
        assert_eq!(released["rank"], 252);
        assert_eq!(released["lease_until"], 0);
        assert_eq!(released["lease_owner"], Value::Null);
        assert_eq!(released["lease_id"], Value::Null);
        assert_eq!(released["published_at"], 77);
        assert_eq!(released["deliveries"], 1);
        let payload = payload_bytes(&released).unwrap();
        assert!(Envelope::from_json(&payload).unwrap().redelivered());
    }

    #[test]
    fn sequences_sort_in_order_of_making() {
        let seqs = SequenceGenerator::new();
        let mut made: Vec<String> = (0..1000).map(|i| seqs.next(5 + i / 100)).collect();
        made.push(seqs.next(1));
        let mut sorted = made.clone();
        sorted.sort();
        assert_eq!(sorted, made);
        let other = SequenceGenerator::new();
        assert_ne!(other.next(5), SequenceGenerator::new().next(5));
    }

    #[test]
    fn message_ids_name_their_queue() {
        for queue in ["q", "a:b:c", "with space/and/slash", "ünï", "q\":\"x", ""] {
            for priority in [0, 9, 255] {
                let id = message_id(queue, priority, "0001-000000-ab");
                assert_eq!(queue_of_message_id(&id).as_deref(), Some(queue));
                assert_eq!(seq_of_message_id(&id), Some("0001-000000-ab"));
                assert_eq!(rank_of_message_id(&id), Some(rank(priority)));
                let (start, end) = message_range(queue);
                assert!(start < id && id < end, "{id}");
                for other in ["q2", "a:b", "q\"", "a:b:c:d"] {
                    if other != queue {
                        let foreign = message_id(other, priority, "0001-000000-ab");
                        assert!(!(start < foreign && foreign < end), "{foreign} in {queue}");
                    }
                }
            }
        }
        assert_eq!(queue_of_message_id("queue:q"), None);
        assert_eq!(queue_of_message_id("_design/kombu-messages"), None);
        // An id from before the rank was in it.
        let old = r#"message:"q":0001700000000000-000000-0a1b2c3d"#;
        assert_eq!(queue_of_message_id(old).as_deref(), Some("q"));
        assert_eq!(rank_of_message_id(old), None);
        assert_eq!(
            seq_of_message_id(old),
            Some("0001700000000000-000000-0a1b2c3d")
        );
    }

    #[test]
    fn message_ids_sort_most_urgent_then_oldest() {
        let seqs = SequenceGenerator::new();
        let mut made = Vec::new();
        for (i, priority) in [0u8, 9, 0, 255, 5, 9, 0].into_iter().enumerate() {
            made.push((
                priority,
                i,
                message_id("q", priority, &seqs.next(10 + i as u64)),
            ));
        }
        let mut by_id = made.clone();
        by_id.sort_by(|a, b| a.2.cmp(&b.2));
        let mut expected = made;
        expected.sort_by_key(|(priority, i, _)| (std::cmp::Reverse(*priority), *i));
        assert_eq!(by_id, expected);
    }

    #[test]
    fn requeue_keeps_the_id_and_the_priority_of_the_id() {
        let doc = message_doc("q", "0001-000001-aa", &envelope("x"), 3, 77);
        let lease = Lease::of(&doc, "2-x").unwrap();
        // Whatever the envelope now says, the message keeps its place.
        let released = lease.released_doc("q", &Envelope::default());
        assert_eq!(released["_id"], doc["_id"]);
        assert_eq!(released["priority"], 3);
        assert_eq!(released["rank"], 252);
    }

    #[test]
    fn readiness_is_the_lease_deadline() {
        assert!(is_ready(&json!({"lease_until": 0}), 1));
        assert!(is_ready(&json!({}), 1));
        assert!(is_ready(&json!({"lease_until": 4}), 5));
        assert!(!is_ready(&json!({"lease_until": 5}), 5));
    }

    #[test]
    fn binding_ids_are_canonical_and_ranged() {
        let b1 = QueueBinding::new("q", "k").with_arguments(
            json!({"x-match": "all", "a": 1})
                .as_object()
                .unwrap()
                .clone(),
        );
        let b2 = QueueBinding::new("q", "k").with_arguments(
            json!({"a": 1, "x-match": "all"})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(binding_doc_id("ex", &b1), binding_doc_id("ex", &b2));
        let (start, end) = binding_range(Some("ex"));
        let id = binding_doc_id("ex", &b1);
        assert!(start.as_str() <= id.as_str() && id.as_str() < end.as_str());
        let other = binding_doc_id("ex2", &b1);
        assert!(!(start.as_str() <= other.as_str() && other.as_str() < end.as_str()));
        let tricky = binding_doc_id("ex\",", &b1);
        assert!(!(start.as_str() <= tricky.as_str() && tricky.as_str() < end.as_str()));
        let (exchange, back) = binding_from_doc(&binding_doc("ex", &b1)).unwrap();
        assert_eq!(exchange, "ex");
        assert_eq!(back, b1);
    }

    #[test]
    fn declarations_round_trip() {
        let q = Queue::new("q")
            .max_priority(9)
            .message_ttl(Duration::from_millis(1500))
            .dead_letter_exchange("dlx");
        let back = queue_from_doc(&queue_doc(&q, 1)).unwrap();
        assert_eq!(back.max_priority, Some(9));
        assert_eq!(back.message_ttl, Some(Duration::from_millis(1500)));
        assert_eq!(back.dead_letter_exchange.as_deref(), Some("dlx"));
        let ex = Exchange::topic("logs").durable(false);
        assert_eq!(exchange_from_doc(&exchange_doc(&ex)).unwrap(), ex);
    }
}
