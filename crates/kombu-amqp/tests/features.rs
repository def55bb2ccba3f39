//! AMQP features beyond the conformance suite: publisher confirms,
//! mandatory, exchange-to-exchange bindings, quorum queues, streams, ack multiple,
//! cancel, field-table types.

mod common;

use std::time::Duration;

use futures::StreamExt;
use kombu_amqp::AmqpTransport;
use kombu_core::{
    BrokerUrl, Channel, ConnectionOptions, Consumer, ErrorKind, Exchange, Producer, PublishOptions,
    Queue, RawMessage, StreamOffset,
};
use kombu_testkit::{recv, unique, Cleanup};
use serde_json::json;

async fn transport(options: ConnectionOptions) -> Option<AmqpTransport> {
    let url = BrokerUrl::parse(&common::url()?).unwrap();
    Some(AmqpTransport::open(&url, &options).await.unwrap())
}

fn message(body: &str) -> RawMessage {
    RawMessage::new(body.to_owned()).content_type("text/plain", "utf-8")
}

async fn next(stream: &mut kombu_core::DeliveryStream) -> kombu_core::Delivery {
    *tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a delivery in time")
        .expect("stream open")
        .expect("a delivery")
}

#[tokio::test]
async fn confirm_publish_waits_and_reports_nacks() {
    let options = ConnectionOptions::new().transport_option("confirm_publish", true);
    let Some(transport) = transport(options).await else {
        return;
    };
    let channel = transport.open_channel().await.unwrap();
    assert!(channel.confirms_enabled());
    // A queue that refuses publishes beyond one message: the broker nacks.
    let q = Queue::new(unique("confirm-q"))
        .max_length(1)
        .argument("x-overflow", "reject-publish");
    channel.queue_declare(&q).await.unwrap();
    channel
        .basic_publish(message("first"), "", &q.name, false)
        .await
        .unwrap();
    // Confirmed means enqueued: the size is exact at once.
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 1);
    let err = channel
        .basic_publish(message("second"), "", &q.name, false)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err:?}");
    assert!(err.to_string().contains("nack"), "{err}");
    // The channel goes on after a nack.
    assert!(channel.is_open());
    channel.queue_purge(&q.name).await.unwrap();
    channel
        .basic_publish(message("third"), "", &q.name, false)
        .await
        .unwrap();
    channel.queue_delete(&q.name).await.unwrap();
}

/// A producer whose publish was nacked opens a fresh channel for the next
/// one (RabbitMQ 3.10 can keep nacking on a channel after a quorum queue
/// lost its leader; kombu-faults' kill-quorum-leader scenario needs this).
#[tokio::test]
async fn a_nacked_producer_publishes_next_on_a_fresh_channel() {
    let Some(url) = common::url() else { return };
    let options = ConnectionOptions::new().transport_option("confirm_publish", true);
    let conn = common::connection(&url, options);
    let q = Queue::new(unique("nack-fresh-q"))
        .max_length(1)
        .argument("x-overflow", "reject-publish");
    let producer = Producer::new(&conn);
    let publish = |body: &'static str| {
        producer.publish(
            json!(body),
            PublishOptions::new()
                .routing_key(&q.name)
                .declare(q.clone()),
        )
    };
    publish("first").await.unwrap();
    let before = producer.channel().await.unwrap();
    let err = publish("second").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err:?}");
    let after = producer.channel().await.unwrap();
    assert!(
        !std::sync::Arc::ptr_eq(&before, &after),
        "the nacked channel was kept"
    );
    after.queue_purge(&q.name).await.unwrap();
    publish("third").await.unwrap();
    after.queue_delete(&q.name).await.unwrap();
}

#[tokio::test]
async fn mandatory_unroutable_is_rejected_and_routable_goes_through() {
    let Some(transport) = transport(ConnectionOptions::new()).await else {
        return;
    };
    let channel = transport.open_channel().await.unwrap();
    let ex = Exchange::direct(unique("mandatory-ex"));
    channel.exchange_declare(&ex).await.unwrap();
    let q = Queue::new(unique("mandatory-q")).bind(&ex, "here");
    q.declare(&channel).await.unwrap();
    let err = channel
        .basic_publish(message("lost"), &ex.name, "nowhere", true)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err:?}");
    assert!(err.to_string().contains("NO_ROUTE"), "{err}");
    assert!(channel.is_open());
    channel
        .basic_publish(message("kept"), &ex.name, "here", true)
        .await
        .unwrap();
    // Not mandatory: an unroutable message is dropped silently (AMQP).
    channel
        .basic_publish(message("dropped"), &ex.name, "nowhere", false)
        .await
        .unwrap();
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 1);
    channel.queue_delete(&q.name).await.unwrap();
    channel.exchange_delete(&ex.name).await.unwrap();
}

#[tokio::test]
async fn exchange_to_exchange_binding_routes() {
    let Some(url) = common::url() else { return };
    let conn = common::connection(&url, ConnectionOptions::new());
    let channel = conn.channel().await.unwrap();
    let mut clean = Cleanup::new();
    let source = Exchange::topic(clean.exchange(&unique("e2e-src")));
    let dest = Exchange::fanout(clean.exchange(&unique("e2e-dst")));
    channel.exchange_declare(&source).await.unwrap();
    channel.exchange_declare(&dest).await.unwrap();
    channel
        .exchange_bind(&dest.name, &source.name, "logs.*")
        .await
        .unwrap();
    let q = Queue::new(clean.queue(&unique("e2e-q"))).bind(&dest, "");
    let mut consumer = Consumer::builder(&conn)
        .queue(q.clone())
        .build()
        .await
        .unwrap();
    let producer = Producer::new(&conn).exchange(source.clone());
    producer
        .publish(
            json!("skipped"),
            PublishOptions::new().routing_key("other.x"),
        )
        .await
        .unwrap();
    producer
        .publish(
            json!("routed"),
            PublishOptions::new().routing_key("logs.error"),
        )
        .await
        .unwrap();
    let m = recv(&mut consumer).await.unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "routed");
    assert_eq!(m.delivery_info().exchange, source.name);
    m.ack().await.unwrap();
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);
    clean.run(channel.as_ref()).await;
}

#[tokio::test]
async fn quorum_queue_with_per_consumer_qos() {
    let Some(url) = common::url() else { return };
    let conn = common::connection(&url, ConnectionOptions::new());
    let channel = conn.channel().await.unwrap();
    let q = Queue::new(unique("quorum-q")).quorum();
    // Quorum queues refuse global QoS; the consumer's prefetch is per consumer.
    let mut consumer = Consumer::builder(&conn)
        .queue(q.clone())
        .prefetch_count(1)
        .build()
        .await
        .unwrap();
    let producer = Producer::new(&conn);
    for n in 0..2 {
        producer
            .publish(json!(n), PublishOptions::new().routing_key(&q.name))
            .await
            .unwrap();
    }
    let first = recv(&mut consumer).await.unwrap();
    assert_eq!(first.decode::<i64>().unwrap(), 0);
    first.requeue().await.unwrap();
    // RabbitMQ 3.10 quorum queues put a returned message at the back.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let m = recv(&mut consumer).await.unwrap();
        let n = m.decode::<i64>().unwrap();
        if n == 0 {
            assert!(m.redelivered());
            // x-delivery-count is the quorum queue's own header.
            assert_eq!(m.headers().get("x-delivery-count"), Some(&json!(1)));
        } else {
            assert!(!m.redelivered());
        }
        seen.push(n);
        m.ack().await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, [0, 1]);
    channel.queue_delete(&q.name).await.unwrap();
}

/// A quorum queue with a delivery limit dead-letters a message returned
/// too often (at least once) instead of delivering it round and round.
#[tokio::test]
async fn quorum_queue_delivery_limit_dead_letters() {
    let Some(url) = common::url() else { return };
    let conn = common::connection(&url, ConnectionOptions::new());
    let channel = conn.channel().await.unwrap();
    let dead = Queue::new(unique("quorum-dead")).quorum();
    channel.queue_declare(&dead).await.unwrap();
    let q = Queue::new(unique("quorum-limit"))
        .quorum()
        .delivery_limit(1)
        .dead_letter_exchange("")
        .dead_letter_routing_key(&dead.name)
        .dead_letter_at_least_once();
    let mut consumer = Consumer::builder(&conn)
        .queue(q.clone())
        .prefetch_count(1)
        .build()
        .await
        .unwrap();
    Producer::new(&conn)
        .publish(json!("poison"), PublishOptions::new().routing_key(&q.name))
        .await
        .unwrap();
    let mut deliveries = 0;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(3), consumer.next()).await
    {
        let message = message.unwrap();
        deliveries += 1;
        assert!(deliveries <= 3, "delivered past its limit");
        message.requeue().await.unwrap();
    }
    assert_eq!(deliveries, 2, "the first delivery and one redelivery");
    consumer.close().await.unwrap();
    // Dead-lettering is asynchronous: look for a few seconds.
    let mut got = None;
    for _ in 0..50 {
        got = channel.basic_get(&dead.name, true).await.unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = got.expect("dead-lettered within 5 s");
    assert_eq!(got.message.body.as_ref(), b"\"poison\"");
    for name in [&q.name, &dead.name] {
        channel.queue_delete(name).await.unwrap();
    }
}

/// A classic queue would take `x-delivery-limit` and ignore it (the
/// poison message loops forever): the declaration is refused instead.
#[tokio::test]
async fn a_delivery_limit_on_a_classic_queue_is_refused() {
    let Some(url) = common::url() else { return };
    let conn = common::connection(&url, ConnectionOptions::new());
    let channel = conn.channel().await.unwrap();
    let q = Queue::new(unique("classic-limit")).delivery_limit(3);
    let err = channel.queue_declare(&q).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("quorum"), "{err}");
}

/// A stream keeps what it was sent after it is read: each consumer reads
/// from its own `x-stream-offset` (first: everything; an offset: from
/// there; next: only what comes after it starts).
#[tokio::test]
async fn stream_consumers_read_from_their_offsets() {
    let Some(url) = common::url() else { return };
    let conn = common::connection(&url, ConnectionOptions::new());
    let channel = conn.channel().await.unwrap();
    let q = Queue::new(unique("stream")).stream();
    channel.queue_declare(&q).await.unwrap();
    let producer = Producer::new(&conn);
    for n in 0..5 {
        producer
            .publish(json!(n), PublishOptions::new().routing_key(&q.name))
            .await
            .unwrap();
    }
    let read = |offset: StreamOffset, want: usize| {
        let (conn, q) = (conn.clone(), q.clone());
        async move {
            let mut consumer = Consumer::builder(&conn)
                .queue(q)
                .prefetch_count(10)
                .stream_offset(offset)
                .build()
                .await
                .unwrap();
            let mut got = Vec::new();
            while got.len() < want {
                let message = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                    .await
                    .expect("a stream message within 10 s")
                    .unwrap()
                    .unwrap();
                got.push(message.decode::<u32>().unwrap());
                message.ack().await.unwrap();
            }
            (consumer, got)
        }
    };
    let (first, all) = read(StreamOffset::First, 5).await;
    assert_eq!(all, [0, 1, 2, 3, 4]);
    first.close().await.unwrap();
    // Read and acked, and still there for the next reader.
    let (again, from_first) = read(StreamOffset::First, 5).await;
    assert_eq!(from_first, [0, 1, 2, 3, 4]);
    again.close().await.unwrap();
    let (at, from_three) = read(StreamOffset::Offset(3), 2).await;
    assert_eq!(from_three, [3, 4]);
    at.close().await.unwrap();
    let mut next = Consumer::builder(&conn)
        .queue(q.clone())
        .prefetch_count(10)
        .stream_offset(StreamOffset::Next)
        .build()
        .await
        .unwrap();
    // `next` starts at the end: only what is published from now on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    producer
        .publish(json!(5), PublishOptions::new().routing_key(&q.name))
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), next.next())
        .await
        .expect("the new message within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(message.decode::<u32>().unwrap(), 5);
    message.ack().await.unwrap();
    next.close().await.unwrap();
    channel.queue_delete(&q.name).await.unwrap();
}

#[tokio::test]
async fn ack_multiple_and_cancel() {
    let Some(transport) = transport(ConnectionOptions::new()).await else {
        return;
    };
    let channel = transport.open_channel().await.unwrap();
    let q = Queue::new(unique("multi-ack-q"));
    channel.queue_declare(&q).await.unwrap();
    for n in 0..3 {
        channel
            .basic_publish(message(&n.to_string()), "", &q.name, false)
            .await
            .unwrap();
    }
    channel.basic_qos(10).await.unwrap();
    let mut stream = channel
        .basic_consume(&q.name, "multi", false)
        .await
        .unwrap();
    let mut last = None;
    for n in 0..3 {
        let d = next(&mut stream).await;
        assert_eq!(&d.message.body[..], n.to_string().as_bytes());
        assert_eq!(d.info.consumer_tag.as_deref(), Some("multi"));
        assert_eq!(d.info.queue.as_deref(), Some(q.name.as_str()));
        last = Some(d.delivery_tag);
    }
    channel.basic_ack(last.unwrap(), true).await.unwrap();
    channel.basic_cancel("multi").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends after cancel");
    assert!(ended.is_none());
    // All three were acked by the one multiple ack: nothing comes back on close.
    channel.close().await.unwrap();
    let check = transport.open_channel().await.unwrap();
    assert_eq!(check.queue_size(&q.name).await.unwrap(), 0);
    check.queue_delete(&q.name).await.unwrap();
}

#[tokio::test]
async fn header_types_survive_the_broker() {
    let Some(transport) = transport(ConnectionOptions::new()).await else {
        return;
    };
    let channel = transport.open_channel().await.unwrap();
    let q = Queue::new(unique("types-q"));
    channel.queue_declare(&q).await.unwrap();
    let headers = json!({
        "small": 7, "big": 9_000_000_000i64, "neg": -3, "f": 2.5, "s": "t\u{e9}xt",
        "yes": true, "none": null, "list": [1, "two", [3]], "table": {"k": {"n": 1}}
    });
    let mut m = message("x");
    m.headers = headers.as_object().unwrap().clone();
    channel.basic_publish(m, "", &q.name, false).await.unwrap();
    let got = channel.basic_get(&q.name, true).await.unwrap();
    let got = match got {
        Some(d) => d,
        None => panic!("no message"),
    };
    assert_eq!(serde_json::Value::Object(got.message.headers), headers);
    assert_eq!(got.message.properties.priority, Some(0));
    assert_eq!(
        got.message.properties.delivery_mode,
        Some(kombu_core::DeliveryMode::Persistent)
    );
    assert_eq!(got.info.consumer_tag, None);
    channel.queue_delete(&q.name).await.unwrap();
}

#[tokio::test]
async fn dropping_a_channel_requeues_its_unacked_messages() {
    let Some(transport) = transport(ConnectionOptions::new()).await else {
        return;
    };
    let q = Queue::new(unique("drop-channel-q"));
    let channel = transport.open_channel().await.unwrap();
    channel.queue_declare(&q).await.unwrap();
    channel
        .basic_publish(message("held"), "", &q.name, false)
        .await
        .unwrap();
    let held = channel.basic_get(&q.name, false).await.unwrap();
    assert!(held.is_some());
    drop(channel);
    let check = transport.open_channel().await.unwrap();
    let mut back = None;
    for _ in 0..50 {
        back = check.basic_get(&q.name, true).await.unwrap();
        if back.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = back.expect("the unacked message came back");
    assert!(back.info.redelivered);
    check.queue_delete(&q.name).await.unwrap();
}
