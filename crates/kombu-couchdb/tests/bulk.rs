//! Batch publishing and batch acks on the server of
//! `KOMBU_TEST_COUCHDB_URL`: `Producer::publish_many` writes the documents
//! a single publish writes, each once, in order, with `_bulk_docs`; a
//! document the server refuses fails the batch; coalesced acks delete the
//! messages.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{
    Connection, Consumer, Envelope, ErrorKind, Producer, PublishOptions, Queue, Registry,
    PUBLISH_MANY_WINDOW,
};
use kombu_testkit::{test_url, unique};
use serde_json::{json, Value};
use url::Url;

fn registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    kombu_couchdb::register(&mut registry);
    Arc::new(registry)
}

/// Plain HTTP to the test server, for looking at the documents themselves.
struct Http {
    client: reqwest::Client,
    /// `http://host:port/`.
    server: Url,
    login: Option<(String, String)>,
}

impl Http {
    fn new(couchdb_url: &str) -> Http {
        let url = Url::parse(couchdb_url).expect("couchdb URL");
        let host = url.host_str().expect("a host");
        let port = url.port().unwrap_or(5984);
        let server = Url::parse(&format!("http://{host}:{port}/")).expect("server URL");
        let login = (!url.username().is_empty()).then(|| {
            (
                url.username().to_owned(),
                url.password().unwrap_or_default().to_owned(),
            )
        });
        Http {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            server,
            login,
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method, self.server.join(path).expect("path"));
        if let Some((user, password)) = &self.login {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("HTTP request");
        let bytes = response.bytes().await.expect("HTTP answer");
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    /// The message documents of `queue` in `db`, in id (delivery) order.
    async fn messages(&self, db: &str, queue: &str) -> Vec<Value> {
        let start = format!("message:{}:", Value::from(queue));
        let end = format!("{start}\u{fff0}");
        let mut url = self.server.join(&format!("{db}/_all_docs")).expect("path");
        url.query_pairs_mut()
            .append_pair("startkey", &Value::from(start).to_string())
            .append_pair("endkey", &Value::from(end).to_string())
            .append_pair("include_docs", "true");
        let answer = self
            .send(
                reqwest::Method::GET,
                &url.as_str()[self.server.as_str().len()..],
                None,
            )
            .await;
        answer["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|row| row["doc"].clone())
            .collect()
    }
}

/// The body of a message document.
fn body(doc: &Value) -> Vec<u8> {
    let payload = doc["payload"].as_str().expect("payload is a string");
    Envelope::from_json(payload.as_bytes())
        .expect("an envelope")
        .body
}

/// The `n` of the JSON body of a message document.
fn number(doc: &Value) -> u64 {
    let body: Value = serde_json::from_slice(&body(doc)).expect("a JSON body");
    body["n"].as_u64().expect("n")
}

/// `numbers` are `0..count`, each once, in order within each batch the
/// producer hands over (it has two under way at once: their order may
/// differ).
fn in_order_within_batches(numbers: &[u64], count: u64) {
    let window = PUBLISH_MANY_WINDOW as u64;
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..count).collect::<Vec<_>>(), "each once");
    for batch in 0..count.div_ceil(window) {
        let of_batch: Vec<u64> = numbers
            .iter()
            .copied()
            .filter(|n| n / window == batch)
            .collect();
        let expected: Vec<u64> = (batch * window..count.min((batch + 1) * window)).collect();
        assert_eq!(of_batch, expected, "order within batch {batch}");
    }
}

/// The database of a `couchdb://` URL.
fn database(couchdb_url: &str) -> String {
    Url::parse(couchdb_url).expect("couchdb URL").path()[1..].to_owned()
}

/// 600 messages (three batches of the producer, three `_bulk_docs`
/// requests) land once each, in publication order within each batch, as the documents a
/// single publish writes; consuming them with coalesced acks deletes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_many_writes_each_document_once_in_order() {
    const COUNT: u64 = 600;
    let Some(url) = test_url("couchdb") else {
        return;
    };
    let http = Http::new(&url);
    let db = database(&url);
    let conn = Connection::with_registry(&url, registry()).unwrap();
    let q = Queue::new(unique("bulk-q"));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let producer = Producer::new(&conn);
    let options = PublishOptions::new().routing_key(&q.name);
    producer
        .publish(json!({"n": COUNT}), options.clone())
        .await
        .unwrap();
    let results = producer
        .publish_many((0..COUNT).map(|n| json!({ "n": n })), options)
        .await;
    assert_eq!(results.len() as u64, COUNT);
    for result in results {
        result.unwrap();
    }

    let docs = http.messages(&db, &q.name).await;
    assert_eq!(docs.len() as u64, COUNT + 1, "one document per message");
    let numbers: Vec<u64> = docs.iter().map(number).collect();
    assert_eq!(numbers[0], COUNT, "the single publish first");
    in_order_within_batches(&numbers[1..], COUNT);
    // The same fields as a single publish (kombu 3.0.37's `queue` and
    // `payload` among them).
    let fields = |doc: &Value| -> Vec<String> {
        let mut keys: Vec<String> = doc.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    for doc in &docs[1..] {
        assert_eq!(fields(doc), fields(&docs[0]));
        assert_eq!(doc["kombu"], "message");
        assert_eq!(doc["queue"], q.name.as_str());
        assert_eq!(doc["lease_until"], 0);
    }

    let mut consumer = Consumer::builder(&conn)
        .queue(q.clone())
        .prefetch_count(100)
        .build()
        .await
        .unwrap();
    let mut received = Vec::new();
    while received.len() as u64 <= COUNT {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a message within 30 s")
            .expect("consumer open")
            .unwrap();
        received.push(message.decode::<Value>().unwrap()["n"].as_u64().unwrap());
        message.ack().await.unwrap();
    }
    assert_eq!(received[0], COUNT);
    in_order_within_batches(&received[1..], COUNT);
    assert_eq!(received, numbers, "delivered in id order");
    drop(consumer);
    // The acks are coalesced and sent in the background: wait for them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = http.messages(&db, &q.name).await.len();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} acked messages still stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = channel.queue_delete(&q.name).await;
    conn.close().await.unwrap();
}

/// A document the server refuses (here a validation function of a
/// database of the test's own) fails every message of its batch; the
/// others of the batch are stored (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_document_fails_its_batch() {
    let Some(url) = test_url("couchdb") else {
        return;
    };
    let http = Http::new(&url);
    let db = format!(
        "kombu_bulk_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let created = http.send(reqwest::Method::PUT, &db, None).await;
    assert_eq!(created["ok"], true, "create {db}: {created}");
    // Envelope bodies are base64: "UkVGVVNFLU1F" is "REFUSE-ME".
    let validation = json!({
        "validate_doc_update": "function (doc) { \
            if (doc.payload && doc.payload.indexOf('UkVGVVNFLU1F') >= 0) { \
                throw({forbidden: 'refused by the test'}); } }"
    });
    let stored = http
        .send(
            reqwest::Method::PUT,
            &format!("{db}/_design/refuse"),
            Some(validation),
        )
        .await;
    assert_eq!(stored["ok"], true, "validation: {stored}");

    let mut db_url = Url::parse(&url).unwrap();
    db_url.set_path(&format!("/{db}"));
    let conn = Connection::with_registry(db_url.as_str(), registry()).unwrap();
    let q = Queue::new(unique("refused-q"));
    let producer = Producer::new(&conn);
    let bodies = (0..10).map(|n| {
        if n == 4 {
            "REFUSE-ME".to_owned()
        } else {
            n.to_string()
        }
    });
    let results = producer
        .publish_many(
            bodies,
            PublishOptions::new()
                .routing_key(&q.name)
                .declare(q.clone()),
        )
        .await;
    assert_eq!(results.len(), 10);
    for result in &results {
        let err = result.as_ref().expect_err("the batch failed");
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert!(err.to_string().contains("1 of 10"), "{err}");
        assert!(err.to_string().contains("forbidden"), "{err}");
    }
    let stored: Vec<Vec<u8>> = http.messages(&db, &q.name).await.iter().map(body).collect();
    let expected: Vec<Vec<u8>> = [0, 1, 2, 3, 5, 6, 7, 8, 9]
        .iter()
        .map(|n: &u32| n.to_string().into_bytes())
        .collect();
    assert_eq!(stored, expected, "the others are stored, in order");
    conn.close().await.unwrap();
    http.send(reqwest::Method::DELETE, &db, None).await;
}
