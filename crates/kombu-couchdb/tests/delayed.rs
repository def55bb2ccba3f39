//! Delayed delivery on CouchDB: a delayed message is a message document in
//! its queue's id range that no claim takes before its due time (as if
//! leased by nobody until then). A consumer on another connection learns
//! of it from the changes feed and looks again when it is due.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::{
    Connection, ConnectionOptions, Consumer, Producer, PublishOptions, Queue, Registry,
};
use kombu_testkit::{recv_within, test_url, unique};
use serde_json::{json, Value};

fn connect() -> Option<Connection> {
    let url = test_url("couchdb")?;
    let mut registry = Registry::new();
    kombu_couchdb::register(&mut registry);
    Some(
        Connection::with_registry_options(&url, ConnectionOptions::new(), Arc::new(registry))
            .expect("couchdb URL"),
    )
}

async fn publish_delayed(conn: &Connection, queue: &str, body: &str, delay: Duration) -> Instant {
    let sent = Instant::now();
    Producer::new(conn)
        .publish(
            json!(body),
            PublishOptions::new().routing_key(queue).delay(delay),
        )
        .await
        .expect("delayed publish");
    sent
}

/// The message documents of `queue`, read behind the transport's back.
async fn raw_messages(queue: &str) -> Vec<Value> {
    let url = test_url("couchdb").expect("couchdb URL");
    let http_url = url.replacen("couchdb://", "http://", 1);
    let (start, end) = kombu_couchdb::layout::message_range(queue);
    let bytes = reqwest::Client::new()
        .get(format!("{http_url}/_all_docs"))
        .query(&[
            ("startkey", Value::from(start).to_string()),
            ("endkey", Value::from(end).to_string()),
            ("include_docs", "true".to_owned()),
        ])
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("GET _all_docs")
        .bytes()
        .await
        .expect("_all_docs body");
    let body: Value = serde_json::from_slice(&bytes).expect("JSON");
    body["rows"]
        .as_array()
        .map(|rows| rows.iter().map(|r| r["doc"].clone()).collect())
        .unwrap_or_default()
}

/// Stored at once (not ready, not counted by `size`), delivered to a
/// consumer on another connection not before its time and within a
/// second after it, once, for several delays; a message published after
/// it without a delay comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_on_time_to_another_connection() {
    let Some(publisher) = connect() else { return };
    let Some(consumer_conn) = connect() else {
        return;
    };
    let q = Queue::new(unique("delay-q"));
    let channel = publisher.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let mut c = Consumer::builder(&consumer_conn)
        .queue(q.clone())
        .prefetch_count(10)
        .build()
        .await
        .unwrap();
    for delay in [
        Duration::from_millis(300),
        Duration::from_millis(1200),
        Duration::from_secs(2),
    ] {
        let sent = publish_delayed(&publisher, &q.name, "later", delay).await;
        let docs = raw_messages(&q.name).await;
        assert_eq!(docs.len(), 1, "{docs:?}");
        assert!(docs[0]["not_before"].as_u64().is_some(), "{docs:?}");
        assert_eq!(docs[0]["queue"], q.name.as_str());
        if delay > Duration::from_millis(500) {
            assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);
            Producer::new(&publisher)
                .publish(json!("now"), PublishOptions::new().routing_key(&q.name))
                .await
                .unwrap();
            let first = recv_within(&mut c, Duration::from_secs(10), "the undelayed message")
                .await
                .unwrap();
            assert_eq!(first.decode::<String>().unwrap(), "now");
            first.ack().await.unwrap();
        }
        let m = recv_within(
            &mut c,
            delay + Duration::from_secs(10),
            "the delayed message",
        )
        .await
        .unwrap();
        let took = sent.elapsed();
        println!("delay {delay:?}: delivered to another connection after {took:?}");
        assert_eq!(m.decode::<String>().unwrap(), "later");
        assert!(!m.redelivered());
        assert!(took >= delay, "delivered after {took:?}, before {delay:?}");
        assert!(
            took <= delay + Duration::from_secs(1),
            "delivered {took:?} after the publish, over a second late"
        );
        m.ack().await.unwrap();
    }
    drop(c);
    channel.queue_delete(&q.name).await.unwrap();
    publisher.close().await.unwrap();
    consumer_conn.close().await.unwrap();
}

/// `queue_purge` removes delayed messages too (counted), as memory:// and
/// redis:// do; `queue_delete` removes them with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_delayed_messages() {
    let Some(conn) = connect() else { return };
    let q = Queue::new(unique("delay-purge-q"));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    publish_delayed(&conn, &q.name, "in a minute", Duration::from_secs(60)).await;
    Producer::new(&conn)
        .publish(json!("now"), PublishOptions::new().routing_key(&q.name))
        .await
        .unwrap();
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 1);
    assert_eq!(channel.queue_purge(&q.name).await.unwrap(), 2);
    assert!(raw_messages(&q.name).await.is_empty());
    channel.queue_delete(&q.name).await.unwrap();
    conn.close().await.unwrap();
}
