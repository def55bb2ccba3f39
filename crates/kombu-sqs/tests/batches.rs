//! Batch sends and deletes, counted on the wire: `put_many` goes out as
//! `SendMessageBatch` requests of at most 10 messages and 256 KiB, and
//! `ack_many` as `DeleteMessageBatch` requests of at most 10; an entry SQS
//! refuses makes the call an error.
//!
//! The connection goes through a small HTTP proxy that records every
//! request's action and body on its way to moto (`KOMBU_TEST_SQS_URL`);
//! skipped without it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kombu_core::spi::{Fetched, FetchedBody, VirtualBackend};
use kombu_core::{Connection, ConnectionOptions, Envelope, Queue, Registry, TransportOptions};
use kombu_sqs::SqsBackend;
use kombu_testkit::{test_url, unique};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A bound on every wait of these tests.
const DEADLINE: Duration = Duration::from_secs(60);

/// SQS's limit on one batch's total payload (and kombu-sqs's default
/// `max_message_size`).
const BATCH_BYTES: usize = 262_144;

/// One request seen by the proxy: the SQS action and the JSON body.
#[derive(Clone, Debug)]
struct Seen {
    action: String,
    body: Value,
}

/// Requests recorded by the proxy, in the order they arrived.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Read one HTTP/1.1 message (head and Content-Length body) from `reader`;
/// `None` at the end of the stream.
async fn read_message(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        if reader.read_until(b'\n', &mut head).await.ok()? == 0 {
            return None;
        }
        if head[before..] == *b"\r\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    assert!(
        !text.contains("transfer-encoding: chunked"),
        "the test proxy reads Content-Length bodies only"
    );
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    Some((head, body))
}

/// Forward one client connection to `upstream`, request by request,
/// recording each request.
async fn relay(client: TcpStream, upstream: String, log: Log) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (client_read, mut client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    let (mut client_read, mut server_read) =
        (BufReader::new(client_read), BufReader::new(server_read));
    while let Some((head, body)) = read_message(&mut client_read).await {
        let head_text = String::from_utf8_lossy(&head).to_string();
        let action = head_text
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("x-amz-target").then(|| {
                    value
                        .trim()
                        .rsplit('.')
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
            })
            .unwrap_or_default();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        log.0.lock().unwrap().push(Seen { action, body: json });
        if server_write.write_all(&head).await.is_err()
            || server_write.write_all(&body).await.is_err()
        {
            return;
        }
        let Some((response_head, response_body)) = read_message(&mut server_read).await else {
            return;
        };
        if client_write.write_all(&response_head).await.is_err()
            || client_write.write_all(&response_body).await.is_err()
        {
            return;
        }
        if String::from_utf8_lossy(&response_head)
            .to_ascii_lowercase()
            .contains("connection: close")
        {
            return;
        }
    }
}

/// A connection to the test server through a recording proxy, and its log.
async fn recorded_connection() -> Option<(Connection, Log)> {
    let url = kombu_core::BrokerUrl::parse(&test_url("sqs")?).ok()?;
    let upstream = format!("{}:{}", url.hostname()?, url.port()?);
    let listener = TcpListener::bind("127.0.0.1:0").await.ok()?;
    let port = listener.local_addr().ok()?.port();
    let log = Log::default();
    let recorder = log.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(relay(client, upstream.clone(), recorder.clone()));
        }
    });
    let proxied = format!(
        "sqs://{}:{}@127.0.0.1:{port}",
        url.userid()?,
        url.password()?
    );
    let mut registry = Registry::new();
    kombu_sqs::register(&mut registry);
    let options = ConnectionOptions::new()
        .transport_options(TransportOptions::new().set("wait_time_seconds", 1));
    let conn = Connection::with_registry_options(&proxied, options, Arc::new(registry))
        .expect("a usable URL");
    Some((conn, log))
}

fn envelope(body: Vec<u8>) -> Envelope {
    let mut properties = Map::new();
    properties.insert("delivery_mode".into(), 2.into());
    properties.insert("delivery_tag".into(), unique("tag").into());
    Envelope::new(
        body,
        Some("application/data".into()),
        Some("binary".into()),
        Map::new(),
        properties,
    )
}

/// (visible, in flight) messages of `queue`, asked of the test server
/// directly.
async fn counts(queue: &str) -> (u64, u64) {
    use aws_sdk_sqs::types::QueueAttributeName as Name;
    let url = kombu_core::BrokerUrl::parse(&test_url("sqs").expect("a test URL")).expect("URL");
    let creds = aws_credential_types::Credentials::new(
        url.userid().expect("key"),
        url.password().expect("secret"),
        None,
        None,
        "test",
    );
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(format!(
            "http://{}:{}",
            url.hostname().expect("host"),
            url.port().expect("port")
        ))
        .http_client(http)
        .build();
    let sqs = aws_sdk_sqs::Client::from_conf(config);
    let asked = async {
        let found = sqs
            .get_queue_url()
            .queue_name(kombu_sqs::entity_name(queue))
            .send()
            .await
            .expect("the queue's URL");
        sqs.get_queue_attributes()
            .queue_url(found.queue_url().unwrap_or_default())
            .attribute_names(Name::ApproximateNumberOfMessages)
            .attribute_names(Name::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("the queue's attributes")
    };
    let out = tokio::time::timeout(DEADLINE, asked)
        .await
        .expect("attributes within the deadline");
    let attributes = out.attributes().cloned().unwrap_or_default();
    let number = |name: Name| {
        attributes
            .get(&name)
            .and_then(|n| n.parse().ok())
            .expect("a count")
    };
    (
        number(Name::ApproximateNumberOfMessages),
        number(Name::ApproximateNumberOfMessagesNotVisible),
    )
}

/// A body of `len` bytes that starts with its index, so each is told apart.
fn body(index: usize, len: usize) -> Vec<u8> {
    let mut body = format!("{index:05}:").into_bytes();
    body.resize(len.max(body.len()), b'a' + (index % 26) as u8);
    body
}

/// Fetch until `count` messages are in hand (within the deadline).
async fn fetch_all(backend: &SqsBackend, queue: &str, count: usize) -> Vec<Fetched> {
    let queues = [queue.to_owned()];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while got.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} messages within {DEADLINE:?}",
            got.len()
        );
        let room = (count - got.len()).min(10);
        let batch = tokio::time::timeout(
            DEADLINE,
            backend.fetch_batch(&queues, Duration::from_secs(1), room),
        )
        .await
        .expect("a fetch within the deadline")
        .expect("fetch");
        got.extend(batch);
    }
    got
}

fn body_of(fetched: &Fetched) -> Vec<u8> {
    match &fetched.body {
        FetchedBody::Envelope(envelope) => envelope.body.clone(),
        other => panic!("not an envelope: {other:?}"),
    }
}

fn requests<'a>(seen: &'a [Seen], action: &str) -> Vec<&'a Seen> {
    seen.iter().filter(|s| s.action == action).collect()
}

fn entries(seen: &Seen) -> &Vec<Value> {
    seen.body["Entries"].as_array().expect("batch entries")
}

async fn declared(conn: &Connection, prefix: &str) -> (String, Arc<SqsBackend>) {
    let name = unique(prefix);
    let channel = conn.channel().await.expect("channel");
    Queue::new(&name)
        .declare(channel.as_ref())
        .await
        .expect("declare");
    let backend = conn.extension::<SqsBackend>().await.expect("the backend");
    (name, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_many_and_ack_many_go_ten_per_request() {
    let Some((conn, log)) = recorded_connection().await else {
        return;
    };
    let (queue, backend) = declared(&conn, "batch10").await;
    let bodies: Vec<Vec<u8>> = (0..25).map(|i| body(i, 100)).collect();
    log.take();
    backend
        .put_many(
            &queue,
            bodies.iter().cloned().map(|b| (envelope(b), 0)).collect(),
        )
        .await
        .expect("put_many");
    let seen = log.take();
    let batches = requests(&seen, "SendMessageBatch");
    let sizes: Vec<usize> = batches.iter().map(|s| entries(s).len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 25, "{sizes:?}");
    assert_eq!(batches.len(), 3, "25 messages in 3 requests: {sizes:?}");
    assert!(requests(&seen, "SendMessage").is_empty());

    let fetched = fetch_all(&backend, &queue, 25).await;
    let mut got: Vec<Vec<u8>> = fetched.iter().map(body_of).collect();
    got.sort();
    assert_eq!(got, bodies, "every message arrives once, intact");

    log.take();
    let acks: Vec<(String, String)> = fetched
        .iter()
        .map(|f| (f.queue.clone(), f.receipt.clone()))
        .collect();
    backend.ack_many(&acks).await.expect("ack_many");
    let seen = log.take();
    let deletes = requests(&seen, "DeleteMessageBatch");
    let sizes: Vec<usize> = deletes.iter().map(|s| entries(s).len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 25, "{sizes:?}");
    assert!(sizes.iter().all(|n| *n <= 10), "{sizes:?}");
    assert_eq!(deletes.len(), 3, "25 acks in 3 requests: {sizes:?}");
    assert!(requests(&seen, "DeleteMessage").is_empty());

    assert_eq!(counts(&queue).await, (0, 0), "deleted for good");
    backend.delete_queue(&queue).await.expect("delete");
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_many_keeps_each_request_within_256_kib() {
    let Some((conn, log)) = recorded_connection().await else {
        return;
    };
    let (queue, backend) = declared(&conn, "batchbytes").await;
    // As sent, a body weighs about 1.8x (base64 in the envelope, then the
    // envelope in base64): 100,000 bytes are about 178 KiB on the wire,
    // 140,000 about 249 KiB, just under the 256 KiB message limit.
    let lens = [
        100_000, 40_000, 100_000, 5_000, 140_000, 10, 60_000, 60_000, 60_000, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 30_000, 30_000,
    ];
    let bodies: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, n)| body(i, *n)).collect();
    log.take();
    tokio::time::timeout(
        DEADLINE,
        backend.put_many(
            &queue,
            bodies.iter().cloned().map(|b| (envelope(b), 0)).collect(),
        ),
    )
    .await
    .expect("put_many within the deadline")
    .expect("put_many");
    let seen = log.take();
    let mut sent = 0;
    let mut wire = 0;
    let mut count = 0;
    for request in &seen {
        let bodies: Vec<usize> = match request.action.as_str() {
            "SendMessageBatch" => entries(request)
                .iter()
                .map(|e| e["MessageBody"].as_str().unwrap().len())
                .collect(),
            "SendMessage" => vec![request.body["MessageBody"].as_str().unwrap().len()],
            _ => continue,
        };
        let total: usize = bodies.iter().sum();
        assert!(bodies.len() <= 10, "{bodies:?}");
        assert!(
            total <= BATCH_BYTES,
            "a request of {total} bytes: {bodies:?}"
        );
        sent += bodies.len();
        wire += total;
        count += 1;
    }
    assert_eq!(sent, lens.len(), "every message sent once");
    assert!(
        count >= wire.div_ceil(BATCH_BYTES) && count < lens.len(),
        "{count} requests for {} messages of {wire} bytes",
        lens.len()
    );

    let fetched = fetch_all(&backend, &queue, lens.len()).await;
    let mut got: Vec<Vec<u8>> = fetched.iter().map(body_of).collect();
    got.sort();
    let mut want = bodies.clone();
    want.sort();
    assert!(got == want, "every message arrives once, intact");
    let acks: Vec<(String, String)> = fetched
        .iter()
        .map(|f| (f.queue.clone(), f.receipt.clone()))
        .collect();
    backend.ack_many(&acks).await.expect("ack_many");
    backend.delete_queue(&queue).await.expect("delete");
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_many_on_a_fifo_queue_keeps_the_order() {
    let Some((conn, log)) = recorded_connection().await else {
        return;
    };
    let name = format!("{}.fifo", unique("batchfifo"));
    let channel = conn.channel().await.expect("channel");
    Queue::new(&name)
        .declare(channel.as_ref())
        .await
        .expect("declare");
    let backend = conn.extension::<SqsBackend>().await.expect("the backend");
    let bodies: Vec<Vec<u8>> = (0..23).map(|i| body(i, 50)).collect();
    log.take();
    backend
        .put_many(
            &name,
            bodies.iter().cloned().map(|b| (envelope(b), 0)).collect(),
        )
        .await
        .expect("put_many");
    let seen = log.take();
    let batches = requests(&seen, "SendMessageBatch");
    assert_eq!(batches.len(), 3);
    for entry in batches.iter().flat_map(|s| entries(s)) {
        assert_eq!(entry["MessageGroupId"], "default");
        assert!(entry["MessageDeduplicationId"].is_string(), "{entry}");
    }
    // A FIFO queue hands out a group's next messages once the last ones
    // are deleted: take and ack in turns.
    let mut got = Vec::new();
    while got.len() < bodies.len() {
        let fetched = fetch_all(&backend, &name, (bodies.len() - got.len()).min(10)).await;
        got.extend(fetched.iter().map(body_of));
        let acks: Vec<(String, String)> = fetched
            .iter()
            .map(|f| (f.queue.clone(), f.receipt.clone()))
            .collect();
        backend.ack_many(&acks).await.expect("ack_many");
    }
    assert_eq!(got, bodies, "in the order sent");
    backend.delete_queue(&name).await.expect("delete");
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_many_with_a_refused_entry_is_an_error_and_deletes_the_rest() {
    let Some((conn, log)) = recorded_connection().await else {
        return;
    };
    let (queue, backend) = declared(&conn, "batchfail").await;
    backend
        .put_many(&queue, (0..3).map(|i| (envelope(body(i, 10)), 0)).collect())
        .await
        .expect("put_many");
    let fetched = fetch_all(&backend, &queue, 3).await;
    log.take();
    let mut acks: Vec<(String, String)> = fetched[..2]
        .iter()
        .map(|f| (f.queue.clone(), f.receipt.clone()))
        .collect();
    acks.push((queue.clone(), "not-a-receipt-handle".into()));
    let err = backend
        .ack_many(&acks)
        .await
        .expect_err("a refused entry fails the call");
    assert!(err.message().contains("ReceiptHandleIsInvalid"), "{err}");
    assert_eq!(requests(&log.take(), "DeleteMessageBatch").len(), 1);
    // The two good ones are gone; the third is still held (in flight).
    assert_eq!(counts(&queue).await, (0, 1));
    backend.delete_queue(&queue).await.expect("delete");
    conn.close().await.expect("close");
}
