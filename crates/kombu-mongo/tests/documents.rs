//! What kombu-rs writes in MongoDB, read back raw: kombu 5.7's documents
//! and indexes, and the lease fields around ack and requeue.

mod support;

use std::time::Duration;

use kombu_core::{Exchange, Producer, PublishOptions, Queue, TransportOptions};
use mongodb::bson::{doc, Bson, Document};
use serde_json::{json, Value};

use support::*;

fn keys(document: &Document) -> Vec<&str> {
    document.keys().map(String::as_str).collect()
}

fn payload(document: &Document) -> Value {
    serde_json::from_str(document.get_str("payload").expect("payload is a string"))
        .expect("payload is JSON")
}

async fn index_names(db: &mongodb::Database, collection: &str) -> Vec<String> {
    db.collection::<Document>(collection)
        .list_index_names()
        .await
        .expect("indexes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_and_indexes_are_kombus() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("kdoc");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let conn = connection(&url, TransportOptions::new());
    let channel = conn.channel().await.unwrap();

    let direct = Exchange::direct("docex");
    let topic = Exchange::topic("doctopic");
    let fanout = Exchange::fanout("docfan");
    for (queue, exchange, key) in [
        ("docq", &direct, "rk"),
        ("doctq", &topic, "a.#"),
        ("docfq", &fanout, ""),
    ] {
        Queue::new(queue)
            .bind(exchange, key)
            .declare(channel.as_ref())
            .await
            .unwrap();
    }
    Producer::new(&conn)
        .exchange(direct.clone())
        .publish(
            json!({"hello": "world"}),
            PublishOptions::new().routing_key("rk").priority(3),
        )
        .await
        .unwrap();
    Producer::new(&conn)
        .exchange(topic.clone())
        .publish(json!({"t": 1}), PublishOptions::new().routing_key("a.b"))
        .await
        .unwrap();
    Producer::new(&conn)
        .exchange(fanout.clone())
        .publish(json!("all"), PublishOptions::new().routing_key("x"))
        .await
        .unwrap();

    // messages: {_id, payload, queue, priority = 9 - priority}
    let messages = documents(&raw, "messages").await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let m = &messages[0];
    assert_eq!(keys(m), ["_id", "payload", "queue", "priority"]);
    assert!(matches!(m.get("_id"), Some(Bson::ObjectId(_))));
    assert_eq!(m.get_str("queue").unwrap(), "docq");
    assert_eq!(m.get("priority"), Some(&Bson::Int32(6)));
    let envelope = payload(m);
    assert_eq!(
        envelope["properties"]["delivery_info"],
        json!({"exchange": "docex", "routing_key": "rk"})
    );
    assert_eq!(envelope["properties"]["priority"], json!(3));
    assert_eq!(envelope["content-type"], json!("application/json"));
    assert_eq!(messages[1].get("priority"), Some(&Bson::Int32(9)));
    assert_eq!(messages[1].get_str("queue").unwrap(), "doctq");

    // messages.routing: {exchange, pattern, queue, routing_key}
    let routes = documents(&raw, "messages.routing").await;
    assert_eq!(routes.len(), 3, "{routes:?}");
    for expected in [
        doc! {"exchange": "docex", "queue": "docq", "routing_key": "rk", "pattern": Bson::Null},
        doc! {"exchange": "doctopic", "queue": "doctq", "routing_key": "a.#", "pattern": r"^a\..*?$"},
        doc! {"exchange": "docfan", "queue": "docfq", "routing_key": "", "pattern": Bson::Null},
    ] {
        let mut found = routes
            .iter()
            .find(|r| r.get_str("queue") == expected.get_str("queue"))
            .cloned()
            .expect("binding document");
        found.remove("_id");
        // Field order is the server's (upsert): compare field by field.
        for (key, value) in &expected {
            assert_eq!(found.get(key), Some(value), "routing field {key}");
        }
        assert_eq!(
            found.len(),
            expected.len(),
            "extra routing fields: {found:?}"
        );
    }

    // messages.broadcast: capped, {payload, queue: <exchange>}
    let broadcast = documents(&raw, "messages.broadcast").await;
    assert_eq!(broadcast.len(), 1);
    assert_eq!(keys(&broadcast[0]), ["_id", "payload", "queue"]);
    assert_eq!(broadcast[0].get_str("queue").unwrap(), "docfan");
    assert_eq!(
        payload(&broadcast[0])["properties"]["delivery_info"]["exchange"],
        json!("docfan")
    );
    let specs = raw
        .run_command(doc! {"listCollections": 1, "filter": {"name": "messages.broadcast"}})
        .await
        .unwrap();
    let options = specs
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .ok()
        .and_then(|batch| batch.first())
        .and_then(Bson::as_document)
        .and_then(|spec| spec.get_document("options").ok())
        .expect("collection options");
    assert_eq!(options.get_bool("capped"), Ok(true), "{options:?}");
    assert_eq!(
        options
            .get_i32("size")
            .map(i64::from)
            .or(options.get_i64("size")),
        Ok(100_000)
    );

    // messages.queues: kombu's queue_declare keyword arguments.
    let queues = documents(&raw, "messages.queues").await;
    let q = queues
        .iter()
        .find(|d| d.get_str("_id") == Ok("docq"))
        .expect("queue document");
    assert_eq!(
        q.get_document("options").unwrap(),
        &doc! {"durable": true, "exclusive": false, "auto_delete": false, "arguments": {}, "nowait": false}
    );
    assert!(q.get("expire_at").is_none(), "no expire_at without ttl");

    // messages.exchanges (kombu-rs only).
    let exchanges = documents(&raw, "messages.exchanges").await;
    let types: Vec<(String, String)> = exchanges
        .iter()
        .map(|d| {
            (
                d.get_str("_id").unwrap().into(),
                d.get_str("type").unwrap().into(),
            )
        })
        .collect();
    assert!(
        types.contains(&("docfan".into(), "fanout".into())),
        "{types:?}"
    );
    assert!(
        types.contains(&("doctopic".into(), "topic".into())),
        "{types:?}"
    );

    // Indexes with kombu's names.
    assert!(index_names(&raw, "messages")
        .await
        .contains(&"queue_1_priority_1__id_1".into()));
    assert!(index_names(&raw, "messages.routing")
        .await
        .contains(&"queue_1_exchange_1".into()));
    assert!(index_names(&raw, "messages.broadcast")
        .await
        .contains(&"queue_1".into()));

    let _ = conn.close().await;
    drop_database(&raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_follow_fetch_requeue_and_ack() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("klease");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let conn = connection(&url, TransportOptions::new());
    let channel = conn.channel().await.unwrap();
    Queue::new("leaseq")
        .declare(channel.as_ref())
        .await
        .unwrap();
    Producer::new(&conn)
        .publish(json!("held"), PublishOptions::new().routing_key("leaseq"))
        .await
        .unwrap();

    let delivery = channel
        .basic_get("leaseq", false)
        .await
        .unwrap()
        .expect("a message");
    let held = documents(&raw, "messages").await;
    assert_eq!(held.len(), 1, "the message stays stored while unacked");
    let doc = &held[0];
    assert!(doc.get_str("lease_owner").is_ok(), "{doc:?}");
    assert!(doc.get_str("lease_id").is_ok(), "{doc:?}");
    assert!(
        matches!(doc.get("lease_until"), Some(Bson::DateTime(_))),
        "{doc:?}"
    );
    assert_eq!(
        channel.queue_size("leaseq").await.unwrap(),
        0,
        "a leased message is not ready"
    );

    channel
        .basic_reject(delivery.delivery_tag, true)
        .await
        .unwrap();
    let released = documents(&raw, "messages").await;
    assert_eq!(released.len(), 1);
    assert!(
        released[0].get("lease_owner").is_none(),
        "{:?}",
        released[0]
    );
    assert!(released[0].get("lease_until").is_none());
    assert_eq!(payload(&released[0])["headers"]["redelivered"], json!(true));
    assert_eq!(
        released[0].get("_id"),
        doc.get("_id"),
        "same document, served next"
    );

    let again = channel
        .basic_get("leaseq", false)
        .await
        .unwrap()
        .expect("redelivered");
    assert!(again.info.redelivered);
    channel.basic_ack(again.delivery_tag, false).await.unwrap();
    assert!(documents(&raw, "messages").await.is_empty(), "ack deletes");

    let _ = conn.close().await;
    drop_database(&raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_lease_is_reclaimed_and_flagged() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("klapse");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    // Renewal off: the lease lapses after half a second.
    let options = TransportOptions::new()
        .set("lease_timeout", 0.5)
        .set("lease_renew_interval", 0);
    let holder = connection(&url, options.clone());
    let thief = connection(&url, options);
    let holder_channel = holder.channel().await.unwrap();
    Queue::new("lapseq")
        .declare(holder_channel.as_ref())
        .await
        .unwrap();
    Producer::new(&holder)
        .publish(json!("once"), PublishOptions::new().routing_key("lapseq"))
        .await
        .unwrap();
    let first = holder_channel
        .basic_get("lapseq", false)
        .await
        .unwrap()
        .expect("claimed");
    let thief_channel = thief.channel().await.unwrap();
    assert!(
        thief_channel
            .basic_get("lapseq", false)
            .await
            .unwrap()
            .is_none(),
        "a held lease is not claimable"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = thief_channel
        .basic_get("lapseq", false)
        .await
        .unwrap()
        .expect("reclaimed after the lease lapsed");
    assert!(
        second.info.redelivered,
        "a reclaimed message is flagged redelivered"
    );
    // The first holder's ack no longer deletes it (its lease is gone) ...
    holder_channel
        .basic_ack(first.delivery_tag, false)
        .await
        .unwrap();
    assert_eq!(documents(&raw, "messages").await.len(), 1);
    // ... the new holder's does.
    thief_channel
        .basic_ack(second.delivery_tag, false)
        .await
        .unwrap();
    assert!(documents(&raw, "messages").await.is_empty());
    let _ = holder.close().await;
    let _ = thief.close().await;
    drop_database(&raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_option_writes_expire_at_and_ttl_indexes() {
    let Some(base) = base_url() else { return };
    let database = fresh_database("kttl");
    let url = with_database(&base, &database);
    let raw = raw_database(&base, &database).await;
    let conn = connection(&url, TransportOptions::new().set("ttl", true));
    let channel = conn.channel().await.unwrap();
    Queue::new("ttlq")
        .message_ttl(Duration::from_secs(60))
        .expires(Duration::from_secs(120))
        .declare(channel.as_ref())
        .await
        .unwrap();
    Producer::new(&conn)
        .publish(
            json!(1),
            PublishOptions::new()
                .routing_key("ttlq")
                .expiration(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let queue = &documents(&raw, "messages.queues").await[0];
    // Field order is the server's (upsert), as for kombu's documents.
    let mut fields = keys(queue);
    fields.sort();
    assert_eq!(fields, ["_id", "expire_at", "options"]);
    assert_eq!(
        queue
            .get_document("options")
            .unwrap()
            .get_document("arguments")
            .unwrap(),
        &doc! {"x-message-ttl": 60000, "x-expires": 120000}
    );
    let message = &documents(&raw, "messages").await[0];
    let expire_at = message.get_datetime("expire_at").expect("expire_at");
    let in_ms = expire_at.timestamp_millis() - mongodb::bson::DateTime::now().timestamp_millis();
    assert!(
        (20_000..=31_000).contains(&in_ms),
        "message expiry in {in_ms} ms (30 s < 60 s)"
    );
    for collection in ["messages", "messages.routing", "messages.queues"] {
        assert!(
            index_names(&raw, collection)
                .await
                .contains(&"expire_at_1".into()),
            "{collection} has the TTL index"
        );
    }
    let _ = conn.close().await;
    drop_database(&raw).await;
}
