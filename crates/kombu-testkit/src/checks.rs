//! The conformance checks. Each makes its own uniquely named queues and
//! exchanges and deletes them at the end.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{
    Accept, Binding, Connection, Consumer, DeliveryMode, Error, ErrorKind, Exchange, Payload,
    Producer, PublishOptions, Queue, Result,
};
use serde_json::{json, Value};

use crate::support::{consumer_builder, recv, recv_n, recv_within, skip, step, unique, Cleanup};

pub use crate::garbage::{garbage_value_is_quarantined, GarbagePath, HookError, GARBAGE};

pub(crate) fn check(condition: bool, what: impl Into<String>) -> Result<()> {
    if condition {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Other, what.into()))
    }
}

pub(crate) fn expect_eq<T: PartialEq + std::fmt::Debug>(
    actual: T,
    expected: T,
    what: &str,
) -> Result<()> {
    check(
        actual == expected,
        format!("{what}: expected {expected:?}, got {actual:?}"),
    )
}

async fn consumer(conn: &Connection, queue: &Queue, prefetch: u16) -> Result<Consumer> {
    step(format!("starting a consumer of {}", queue.name));
    consumer_builder(conn)
        .queue(queue.clone())
        .prefetch_count(prefetch)
        .build()
        .await
}

/// Nothing but what was already received is in `queue` for `consumer`:
/// publish a sentinel to `queue` (through the default exchange) and read
/// up to it; any message before it is an error. Unlike waiting out a
/// fixed window, this is as fast as the transport and cannot pass only
/// because the transport was slow (a CouchDB stand-in polls once a second).
async fn expect_only_sentinel(
    conn: &Connection,
    consumer: &mut Consumer,
    queue: &str,
) -> Result<()> {
    let sentinel = json!({"kombu-testkit-sentinel": unique("s")});
    step(format!("publishing a sentinel to {queue}"));
    Producer::new(conn)
        .publish(sentinel.clone(), PublishOptions::new().routing_key(queue))
        .await?;
    let m = recv_within(
        consumer,
        crate::RECV_TIMEOUT,
        &format!("the sentinel on {queue}"),
    )
    .await?;
    let body = m.decode::<Value>().ok();
    m.ack().await?;
    if body.as_ref() == Some(&sentinel) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Other,
        format!(
            "{queue}: unexpected message before the sentinel: {:?}",
            String::from_utf8_lossy(m.body())
        ),
    ))
}

/// Nothing arrives on `consumer` within `wait`: only for what a sentinel
/// cannot show (a prefetch limit holding messages back also holds back a
/// sentinel).
async fn expect_silence(consumer: &mut Consumer, wait: Duration) -> Result<()> {
    step(format!("checking nothing arrives within {wait:?}"));
    match tokio::time::timeout(wait, consumer.next()).await {
        Err(_) => Ok(()),
        Ok(None) => Ok(()),
        Ok(Some(Ok(m))) => Err(Error::new(
            ErrorKind::Other,
            format!(
                "unexpected message: {:?}",
                String::from_utf8_lossy(m.body())
            ),
        )),
        Ok(Some(Err(e))) => Err(e),
    }
}

/// Publish, consume, ack; the queue is then empty.
pub async fn basic_publish_consume_ack(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let ex = Exchange::direct(clean.exchange(&unique("basic-ex")));
    let q = Queue::new(clean.queue(&unique("basic-q"))).bind(&ex, "rk");
    let mut c = consumer(conn, &q, 10).await?;
    let p = Producer::new(conn).exchange(ex);
    p.publish(
        json!({"hello": "world", "n": 1}),
        PublishOptions::new().routing_key("rk"),
    )
    .await?;
    let m = recv(&mut c).await?;
    expect_eq(
        m.decode::<Value>()?,
        json!({"hello": "world", "n": 1}),
        "body",
    )?;
    expect_eq(m.content_type(), Some("application/json"), "content type")?;
    expect_eq(m.delivery_info().routing_key.as_str(), "rk", "routing key")?;
    check(!m.redelivered(), "fresh message flagged redelivered")?;
    m.ack().await?;
    expect_eq(c.channel().queue_size(&q.name).await?, 0, "size after ack")?;
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// `Producer::publish_many` and concurrent `publish` calls on one
/// producer: every message gets its own `Ok`, and every one arrives once.
pub async fn publish_many_and_concurrent_publishes(conn: &Connection) -> Result<()> {
    const MANY: usize = 40;
    const CONCURRENT: usize = 20;
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("many-q")));
    let mut c = consumer(conn, &q, 100).await?;
    let p = Producer::new(conn);
    step(format!("publish_many of {MANY} bodies to {}", q.name));
    let results = p
        .publish_many(
            (0..MANY).map(|n| json!({"n": n})),
            PublishOptions::new().routing_key(q.name.as_str()),
        )
        .await;
    expect_eq(results.len(), MANY, "publish_many results")?;
    for result in results {
        result?;
    }
    step(format!(
        "{CONCURRENT} concurrent publishes on the same producer"
    ));
    let concurrent = (MANY..MANY + CONCURRENT).map(|n| {
        p.publish(
            json!({"n": n}),
            PublishOptions::new().routing_key(q.name.as_str()),
        )
    });
    for result in futures::future::join_all(concurrent).await {
        result?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for m in recv_n(&mut c, MANY + CONCURRENT).await? {
        let n = m.decode::<Value>()?["n"].as_u64().unwrap_or(u64::MAX);
        m.ack().await?;
        check(seen.insert(n), format!("message {n} arrived twice"))?;
    }
    let expected: std::collections::BTreeSet<u64> = (0..(MANY + CONCURRENT) as u64).collect();
    expect_eq(seen, expected, "the numbers received")?;
    expect_only_sentinel(conn, &mut c, &q.name).await?;
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// The nameless exchange routes to the queue named by the routing key.
pub async fn default_exchange_routes_by_queue_name(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("default-q")));
    let mut c = consumer(conn, &q, 10).await?;
    Producer::new(conn)
        .publish("via default", PublishOptions::new().routing_key(&q.name))
        .await?;
    let m = recv(&mut c).await?;
    expect_eq(m.delivery_info().exchange.as_str(), "", "exchange")?;
    m.ack().await?;
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// Direct: only the queue bound with the same key gets the message.
pub async fn direct_exchange(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let ex = Exchange::direct(clean.exchange(&unique("direct-ex")));
    let q1 = Queue::new(clean.queue(&unique("direct-q1"))).bind(&ex, "a");
    let q2 = Queue::new(clean.queue(&unique("direct-q2"))).bind(&ex, "b");
    let mut c1 = consumer(conn, &q1, 10).await?;
    let mut c2 = consumer(conn, &q2, 10).await?;
    let p = Producer::new(conn).exchange(ex);
    p.publish(json!("to-a"), PublishOptions::new().routing_key("a"))
        .await?;
    let m = recv(&mut c1).await?;
    expect_eq(m.decode::<String>()?, "to-a".into(), "body")?;
    m.ack().await?;
    expect_only_sentinel(conn, &mut c2, &q2.name).await?;
    clean.run(c1.channel().as_ref()).await;
    Ok(())
}

/// Topic: `*` is one word, `#` zero or more.
pub async fn topic_exchange(conn: &Connection) -> Result<()> {
    if !conn
        .capabilities()
        .await?
        .supports(kombu_core::ExchangeType::Topic)
    {
        return skip("topic_exchange", "no topic exchanges");
    }
    let mut clean = Cleanup::new();
    let ex = Exchange::topic(clean.exchange(&unique("topic-ex")));
    let q1 = Queue::new(clean.queue(&unique("tq1"))).bind(&ex, "a.*");
    let q2 = Queue::new(clean.queue(&unique("tq2"))).bind(&ex, "#.err");
    let q3 = Queue::new(clean.queue(&unique("tq3"))).bind(&ex, "a.#");
    let mut cs = Vec::new();
    for q in [&q1, &q2, &q3] {
        cs.push(consumer(conn, q, 10).await?);
    }
    let p = Producer::new(conn).exchange(ex);
    for rk in ["a.err", "b.c.err", "a.x.y"] {
        p.publish(json!(rk), PublishOptions::new().routing_key(rk))
            .await?;
    }
    let expected = [
        vec!["a.err"],
        vec!["a.err", "b.c.err"],
        vec!["a.err", "a.x.y"],
    ];
    let names = [&q1.name, &q2.name, &q3.name];
    for ((c, want), name) in cs.iter_mut().zip(expected).zip(names) {
        let mut got = Vec::new();
        for m in recv_n(c, want.len()).await? {
            got.push(m.decode::<String>()?);
            m.ack().await?;
        }
        got.sort();
        expect_eq(
            got,
            want.iter().map(|s| s.to_string()).collect(),
            "topic routing",
        )?;
        expect_only_sentinel(conn, c, name).await?;
    }
    clean.run(cs[0].channel().as_ref()).await;
    Ok(())
}

/// Fanout: every bound queue gets a copy, whatever the key.
pub async fn fanout_exchange(conn: &Connection) -> Result<()> {
    if !conn
        .capabilities()
        .await?
        .supports(kombu_core::ExchangeType::Fanout)
    {
        return skip("fanout_exchange", "no fanout exchanges");
    }
    let mut clean = Cleanup::new();
    let ex = Exchange::fanout(clean.exchange(&unique("fanout-ex")));
    let mut cs = Vec::new();
    for i in 0..3 {
        let q = Queue::new(clean.queue(&unique(&format!("fq{i}")))).bind(&ex, "");
        cs.push(consumer(conn, &q, 10).await?);
    }
    Producer::new(conn)
        .exchange(ex)
        .publish(
            json!({"to": "all"}),
            PublishOptions::new().routing_key("ignored"),
        )
        .await?;
    for c in &mut cs {
        let m = recv(c).await?;
        expect_eq(m.decode::<Value>()?, json!({"to": "all"}), "fanout body")?;
        m.ack().await?;
    }
    clean.run(cs[0].channel().as_ref()).await;
    Ok(())
}

/// Headers: `x-match` all and any.
pub async fn headers_exchange(conn: &Connection) -> Result<()> {
    if !conn
        .capabilities()
        .await?
        .supports(kombu_core::ExchangeType::Headers)
    {
        return skip("headers_exchange", "no headers exchanges");
    }
    let mut clean = Cleanup::new();
    let ex = Exchange::headers(clean.exchange(&unique("headers-ex")));
    let all = Queue::new(clean.queue(&unique("hq-all"))).binding(
        Binding::new(&ex.name, "")
            .argument("x-match", "all")
            .argument("format", "pdf")
            .argument("type", "report"),
    );
    let any = Queue::new(clean.queue(&unique("hq-any"))).binding(
        Binding::new(&ex.name, "")
            .argument("x-match", "any")
            .argument("format", "pdf")
            .argument("type", "report"),
    );
    let channel = conn.channel().await?;
    ex.declare(channel.as_ref()).await?;
    let mut c_all = consumer(conn, &all, 10).await?;
    let mut c_any = consumer(conn, &any, 10).await?;
    let p = Producer::new(conn).exchange(ex);
    p.publish(
        json!("both"),
        PublishOptions::new()
            .header("format", "pdf")
            .header("type", "report"),
    )
    .await?;
    p.publish(json!("one"), PublishOptions::new().header("format", "pdf"))
        .await?;
    p.publish(json!("none"), PublishOptions::new().header("format", "zip"))
        .await?;
    let m = recv(&mut c_all).await?;
    expect_eq(m.decode::<String>()?, "both".into(), "x-match all")?;
    m.ack().await?;
    expect_only_sentinel(conn, &mut c_all, &all.name).await?;
    let mut got = Vec::new();
    for m in recv_n(&mut c_any, 2).await? {
        got.push(m.decode::<String>()?);
        m.ack().await?;
    }
    got.sort();
    expect_eq(
        got,
        vec!["both".to_string(), "one".to_string()],
        "x-match any",
    )?;
    expect_only_sentinel(conn, &mut c_any, &any.name).await?;
    clean.run(channel.as_ref()).await;
    Ok(())
}

/// A mandatory publish no queue takes is an error.
pub async fn unroutable_mandatory_is_an_error(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let ex = Exchange::direct(clean.exchange(&unique("unroutable-ex")));
    let p = Producer::new(conn).exchange(ex);
    let result = p
        .publish(
            json!(1),
            PublishOptions::new().routing_key("nobody").mandatory(true),
        )
        .await;
    let channel = p.channel().await?.clone();
    clean.run(channel.as_ref()).await;
    match result {
        Err(e) if e.kind() == ErrorKind::Rejected => Ok(()),
        Err(e) => Err(e),
        Ok(()) => Err(Error::new(
            ErrorKind::Other,
            "mandatory unroutable publish succeeded",
        )),
    }
}

/// A requeued message comes back flagged redelivered.
pub async fn requeue_sets_redelivered(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("requeue-q")));
    let mut c = consumer(conn, &q, 1).await?;
    Producer::new(conn)
        .publish(json!("again"), PublishOptions::new().routing_key(&q.name))
        .await?;
    let first = recv(&mut c).await?;
    check(!first.redelivered(), "first delivery flagged redelivered")?;
    first.requeue().await?;
    let second = recv(&mut c).await?;
    expect_eq(second.decode::<String>()?, "again".into(), "requeued body")?;
    check(
        second.redelivered(),
        "requeued message not flagged redelivered",
    )?;
    second.ack().await?;
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// Rejecting without requeue removes the message (no dead-letter exchange).
pub async fn reject_without_requeue_removes(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("reject-q")));
    let mut c = consumer(conn, &q, 1).await?;
    let p = Producer::new(conn);
    p.publish(json!("bad"), PublishOptions::new().routing_key(&q.name))
        .await?;
    recv(&mut c).await?.reject().await?;
    p.publish(json!("good"), PublishOptions::new().routing_key(&q.name))
        .await?;
    let m = recv(&mut c).await?;
    expect_eq(m.decode::<String>()?, "good".into(), "next message")?;
    m.ack().await?;
    expect_eq(c.channel().queue_size(&q.name).await?, 0, "size")?;
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// A message is settled once: a second ack is an error.
pub async fn ack_twice_is_an_error(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("twice-q")));
    let mut c = consumer(conn, &q, 1).await?;
    Producer::new(conn)
        .publish(json!(1), PublishOptions::new().routing_key(&q.name))
        .await?;
    let m = recv(&mut c).await?;
    m.ack().await?;
    check(m.acknowledged(), "acknowledged() false after ack")?;
    let again = m.ack().await;
    clean.run(c.channel().as_ref()).await;
    match again {
        Err(e) if e.kind() == ErrorKind::PreconditionFailed => Ok(()),
        other => Err(Error::new(
            ErrorKind::Other,
            format!("second ack gave {other:?}"),
        )),
    }
}

/// With prefetch N, no more than N unacked messages are delivered.
pub async fn prefetch_limits_unacked(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("prefetch-q")));
    let mut c = consumer(conn, &q, 2).await?;
    let p = Producer::new(conn);
    for i in 0..5 {
        p.publish(json!(i), PublishOptions::new().routing_key(&q.name))
            .await?;
    }
    let held = recv_n(&mut c, 2).await?;
    expect_silence(&mut c, Duration::from_millis(500)).await?;
    held[0].ack().await?;
    let third = recv(&mut c).await?;
    expect_silence(&mut c, Duration::from_millis(300)).await?;
    held[1].ack().await?;
    third.ack().await?;
    for m in recv_n(&mut c, 2).await? {
        m.ack().await?;
    }
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// `queue_size` counts ready messages and `queue_purge` removes them.
pub async fn purge_and_size(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("purge-q")));
    let channel = conn.channel().await?;
    q.declare(channel.as_ref()).await?;
    let p = Producer::new(conn);
    for i in 0..7 {
        p.publish(json!(i), PublishOptions::new().routing_key(&q.name))
            .await?;
    }
    expect_eq(channel.queue_size(&q.name).await?, 7, "size")?;
    expect_eq(channel.queue_purge(&q.name).await?, 7, "purged")?;
    expect_eq(channel.queue_size(&q.name).await?, 0, "size after purge")?;
    clean.run(channel.as_ref()).await;
    Ok(())
}

/// json, msgpack and yaml bodies come back equal.
pub async fn serializers_round_trip(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("serial-q")));
    let mut c = consumer_builder(conn)
        .queue(q.clone())
        .accept(Accept::all())
        .build()
        .await?;
    let body = json!({"s": "h\u{e9}llo \u{1F600}", "n": 42, "f": 1.5, "l": [1, 2, 3], "b": true, "z": null});
    let p = Producer::new(conn);
    for name in ["json", "msgpack", "yaml"] {
        p.publish(
            body.clone(),
            PublishOptions::new().routing_key(&q.name).serializer(name),
        )
        .await?;
        let m = recv(&mut c).await?;
        expect_eq(m.decode::<Value>()?, body.clone(), name)?;
        m.ack().await?;
    }
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// Every compression method round-trips and sets kombu's header.
pub async fn compression_round_trip(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("compress-q")));
    let mut c = consumer(conn, &q, 10).await?;
    let body = json!({"text": "squeeze me ".repeat(100)});
    let p = Producer::new(conn);
    for name in ["zlib", "bzip2", "lzma", "brotli", "zstd"] {
        p.publish(
            body.clone(),
            PublishOptions::new().routing_key(&q.name).compression(name),
        )
        .await?;
        let m = recv(&mut c).await?;
        check(
            m.headers().contains_key("compression"),
            "no compression header",
        )?;
        check(
            m.body().len() < 1100,
            format!("{name}: body not compressed"),
        )?;
        expect_eq(m.decode::<Value>()?, body.clone(), name)?;
        m.ack().await?;
    }
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// Raw bytes and text keep their content types.
pub async fn raw_and_text_bodies(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("raw-q")));
    // json-only (the default) trusts application/data but not text/plain.
    let mut c = consumer_builder(conn)
        .queue(q.clone())
        .accept(Accept::new(["json", "text/plain"]))
        .build()
        .await?;
    let p = Producer::new(conn);
    let bytes: Vec<u8> = (0..=255u8).collect();
    p.publish(bytes.clone(), PublishOptions::new().routing_key(&q.name))
        .await?;
    p.publish(
        "plain text \u{e9}",
        PublishOptions::new().routing_key(&q.name),
    )
    .await?;
    let m = recv(&mut c).await?;
    expect_eq(
        m.content_type(),
        Some("application/data"),
        "raw content type",
    )?;
    expect_eq(m.body(), &bytes[..], "raw body")?;
    match m.payload()? {
        Payload::Bytes(b) => expect_eq(&b[..], &bytes[..], "raw payload")?,
        other => {
            return Err(Error::new(
                ErrorKind::Other,
                format!("raw payload: {other:?}"),
            ))
        }
    }
    m.ack().await?;
    let m = recv(&mut c).await?;
    expect_eq(m.content_type(), Some("text/plain"), "text content type")?;
    match m.payload()? {
        Payload::Text(t) => expect_eq(t.as_str(), "plain text \u{e9}", "text payload")?,
        other => {
            return Err(Error::new(
                ErrorKind::Other,
                format!("text payload: {other:?}"),
            ))
        }
    }
    m.ack().await?;
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// A consumer accepting json only refuses msgpack with a clear error on
/// that message, and goes on.
pub async fn accept_list_refuses_other_content(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("accept-q")));
    let mut c = consumer(conn, &q, 10).await?;
    let p = Producer::new(conn);
    p.publish(
        json!({"a": 1}),
        PublishOptions::new()
            .routing_key(&q.name)
            .serializer("msgpack"),
    )
    .await?;
    p.publish(json!({"a": 2}), PublishOptions::new().routing_key(&q.name))
        .await?;
    let refused = recv(&mut c).await?;
    match refused.decode::<Value>() {
        Err(e) if e.kind() == ErrorKind::ContentDisallowed => {}
        other => {
            return Err(Error::new(
                ErrorKind::Other,
                format!("msgpack body with json-only accept gave {other:?}"),
            ))
        }
    }
    refused.reject().await?;
    let ok = recv(&mut c).await?;
    expect_eq(ok.decode::<Value>()?, json!({"a": 2}), "next message")?;
    ok.ack().await?;
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// Headers and properties arrive as sent.
pub async fn headers_and_properties_round_trip(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("props-q")));
    let mut c = consumer(conn, &q, 10).await?;
    Producer::new(conn)
        .publish(
            json!(null),
            PublishOptions::new()
                .routing_key(&q.name)
                .header("x-origin", "testkit")
                .header("n", 7)
                .correlation_id("corr-1")
                .reply_to("replies")
                .message_id("mid-1")
                .delivery_mode(DeliveryMode::Transient),
        )
        .await?;
    let m = recv(&mut c).await?;
    expect_eq(
        m.headers().get("x-origin"),
        Some(&json!("testkit")),
        "header",
    )?;
    expect_eq(m.headers().get("n"), Some(&json!(7)), "numeric header")?;
    let props = m.properties();
    expect_eq(
        props.correlation_id.as_deref(),
        Some("corr-1"),
        "correlation_id",
    )?;
    expect_eq(props.reply_to.as_deref(), Some("replies"), "reply_to")?;
    expect_eq(props.message_id.as_deref(), Some("mid-1"), "message_id")?;
    expect_eq(
        props.delivery_mode,
        Some(DeliveryMode::Transient),
        "delivery_mode",
    )?;
    m.ack().await?;
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// With priorities, a higher priority is delivered first.
pub async fn priorities_higher_first(conn: &Connection) -> Result<()> {
    if !conn.capabilities().await?.priority {
        return skip("priorities_higher_first", "no priorities");
    }
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("prio-q"))).max_priority(10);
    let channel = conn.channel().await?;
    q.declare(channel.as_ref()).await?;
    let p = Producer::new(conn);
    for prio in [0u8, 9, 3, 6] {
        p.publish(
            json!(prio),
            PublishOptions::new().routing_key(&q.name).priority(prio),
        )
        .await?;
    }
    let mut c = consumer(conn, &q, 1).await?;
    let mut order = Vec::new();
    for _ in 0..4 {
        let m = recv(&mut c).await?;
        order.push(m.decode::<u8>()?);
        m.ack().await?;
    }
    expect_eq(order, vec![9, 6, 3, 0], "priority order")?;
    clean.run(channel.as_ref()).await;
    Ok(())
}

/// A delayed message ([`PublishOptions::delay`]) is not delivered before
/// its time and is delivered within a second after it; a message published
/// after it without a delay comes first. A transport without delayed
/// delivery refuses the publish with `Unsupported` (nothing is stored).
pub async fn delayed_message_waits_its_time(conn: &Connection) -> Result<()> {
    let caps = conn.capabilities().await?;
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("delay-q")));
    let channel = conn.channel().await?;
    q.declare(channel.as_ref()).await?;
    let p = Producer::new(conn);
    let delay = Duration::from_secs(2);
    step("publishing a message delayed 2 s, then one at once");
    let sent = std::time::Instant::now();
    let published = p
        .publish(
            json!("later"),
            PublishOptions::new().routing_key(&q.name).delay(delay),
        )
        .await;
    if !caps.delayed_delivery {
        let refused = matches!(&published, Err(e) if e.kind() == ErrorKind::Unsupported);
        check(
            refused,
            format!("no delayed delivery: the publish must be refused, got {published:?}"),
        )?;
        clean.run(channel.as_ref()).await;
        return Ok(());
    }
    published?;
    p.publish(json!("now"), PublishOptions::new().routing_key(&q.name))
        .await?;
    let mut c = consumer(conn, &q, 10).await?;
    let first = recv(&mut c).await?;
    expect_eq(
        first.decode::<String>()?,
        "now".into(),
        "the undelayed message first",
    )?;
    first.ack().await?;
    let second = recv_within(
        &mut c,
        delay + Duration::from_secs(10),
        "the delayed message",
    )
    .await?;
    let took = sent.elapsed();
    expect_eq(
        second.decode::<String>()?,
        "later".into(),
        "the delayed message",
    )?;
    second.ack().await?;
    check(
        took >= delay,
        format!("delivered {took:?} after the publish, before its {delay:?} delay"),
    )?;
    check(
        took <= delay + Duration::from_secs(1),
        format!("delivered {took:?} after the publish: over a second after its {delay:?} delay"),
    )?;
    clean.run(channel.as_ref()).await;
    Ok(())
}

/// A message whose lease is extended is not delivered again while it is,
/// even past its transport's `visibility_timeout`, while a message whose
/// lease is not extended comes back to another consumer (which shows the
/// broker restores in the time the check waits). `conn` must have a short
/// lease (a few seconds; the transport's test gives one with
/// `conformance_tests!(connect, lease: short_lease_connect)`). Where
/// deliveries stay reserved while the channel lives, extending is accepted
/// and does nothing; without lease extension it is refused with
/// `Unsupported`.
pub async fn lease_extension_keeps_a_message(conn: &Connection) -> Result<()> {
    let caps = conn.capabilities().await?;
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("lease-q")));
    let channel = conn.channel().await?;
    q.declare(channel.as_ref()).await?;
    let p = Producer::new(conn);
    for body in ["held", "let go"] {
        p.publish(json!(body), PublishOptions::new().routing_key(&q.name))
            .await?;
    }
    let mut a = consumer(conn, &q, 2).await?;
    let mut got = recv_n(&mut a, 2).await?;
    got.sort_by_key(|m| m.decode::<String>().unwrap_or_default());
    let let_go = got.pop().expect("two messages");
    let held = got.pop().expect("two messages");
    expect_eq(held.decode::<String>()?, "held".into(), "the held message")?;
    let lease = held.lease_duration();
    step(format!("extending a lease (lease {lease:?})"));
    let extended = held.extend_lease(Duration::from_secs(1)).await;
    if !caps.lease_extension {
        let refused = matches!(&extended, Err(e) if e.kind() == ErrorKind::Unsupported);
        check(
            refused,
            format!("no lease extension: extend_lease must be refused, got {extended:?}"),
        )?;
        held.ack().await?;
        let_go.ack().await?;
        clean.run(channel.as_ref()).await;
        return Ok(());
    }
    extended?;
    let Some(lease) = lease else {
        // Reserved while the channel lives: nothing to extend, accepted.
        held.ack().await?;
        let_go.ack().await?;
        clean.run(channel.as_ref()).await;
        return Ok(());
    };
    check(
        lease <= Duration::from_secs(5),
        format!(
            "the lease check needs a connection with a short lease (a few seconds), not \
             {lease:?}: give one with conformance_tests!(connect, lease: ...)"
        ),
    )?;
    let other = conn.new_like()?;
    let mut b = consumer(&other, &q, 10).await?;
    // Phase 1: until the unextended message comes back to `b`.
    let deadline = std::time::Instant::now() + lease * 4 + Duration::from_secs(10);
    let mut returned = None;
    while returned.is_none() {
        check(
            std::time::Instant::now() < deadline,
            format!("the unextended message never came back (lease {lease:?}): the check proves nothing"),
        )?;
        held.extend_lease(lease).await?;
        if let Ok(Some(m)) = tokio::time::timeout(lease / 3, b.next()).await {
            let m = m?;
            let body = m.decode::<String>()?;
            check(
                body == "let go",
                format!("{body:?} was delivered again while its lease was extended"),
            )?;
            m.ack().await?;
            returned = Some(());
        }
    }
    // Phase 2: two more leases, extended, and nothing comes.
    let until = std::time::Instant::now() + lease * 2;
    while std::time::Instant::now() < until {
        held.extend_lease(lease).await?;
        if let Ok(Some(m)) = tokio::time::timeout(lease / 3, b.next()).await {
            let body = m?.decode::<String>()?;
            return Err(Error::new(
                ErrorKind::Other,
                format!("{body:?} was delivered again while its lease was extended"),
            ));
        }
    }
    held.ack().await?;
    drop(let_go);
    let _ = other.close().await;
    clean.run(channel.as_ref()).await;
    Ok(())
}

/// A message its consumers keep putting back (a poison message) stops
/// coming once it was returned more often than its queue's
/// `x-delivery-limit` (RabbitMQ's rule: a limit of 3 allows 4 deliveries)
/// and lands in the queue's dead-letter queue, with its
/// `x-delivery-count`. The queue is declared as RabbitMQ's quorum queues
/// need (`Queue::quorum`); other transports keep the type as an argument.
pub async fn delivery_limit_dead_letters(conn: &Connection) -> Result<()> {
    let caps = conn.capabilities().await?;
    let mut clean = Cleanup::new();
    let channel = conn.channel().await?;
    let dead = Queue::new(clean.queue(&unique("limit-dead")));
    dead.declare(channel.as_ref()).await?;
    let q = Queue::new(clean.queue(&unique("limit-q")))
        .quorum()
        .delivery_limit(3)
        .dead_letter_exchange("")
        .dead_letter_routing_key(&dead.name);
    let declared = q.declare(channel.as_ref()).await;
    if !caps.delivery_limit {
        let refused = matches!(&declared, Err(e) if e.kind() == ErrorKind::Unsupported);
        check(
            refused,
            format!(
                "no delivery limit: declaring x-delivery-limit must be refused, got {declared:?}"
            ),
        )?;
        clean.run(channel.as_ref()).await;
        return Ok(());
    }
    declared?;
    Producer::new(conn)
        .publish(json!("poison"), PublishOptions::new().routing_key(&q.name))
        .await?;
    let mut c = consumer(conn, &q, 1).await?;
    let mut deliveries = 0;
    step("putting the message back until it stops coming");
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), c.next()).await {
        let m = m?;
        deliveries += 1;
        check(
            deliveries <= 4,
            "delivered past its limit (round and round)",
        )?;
        m.requeue().await?;
    }
    expect_eq(
        deliveries,
        4,
        "deliveries of a limit-3 message (1 + 3 returns)",
    )?;
    let mut d = consumer(conn, &dead, 1).await?;
    let m = recv_within(&mut d, Duration::from_secs(10), "the dead-lettered message").await?;
    expect_eq(
        m.decode::<String>()?,
        "poison".into(),
        "the dead-lettered message",
    )?;
    m.ack().await?;
    clean.run(channel.as_ref()).await;
    Ok(())
}

/// A message rejected from a queue without a dead-letter exchange is kept
/// in the queue's quarantine (`<queue>.quarantine`) with an `x-death`
/// saying why, its body intact; where the transport has no quarantine it
/// is gone.
pub async fn rejected_message_is_quarantined(conn: &Connection) -> Result<()> {
    let caps = conn.capabilities().await?;
    let mut clean = Cleanup::new();
    let channel = conn.channel().await?;
    let q = Queue::new(clean.queue(&unique("quar-q")));
    let quarantine = kombu_core::quarantine_of(&q.name);
    clean.queue(&quarantine);
    q.declare(channel.as_ref()).await?;
    Producer::new(conn)
        .publish(
            json!("unwanted"),
            PublishOptions::new().routing_key(&q.name),
        )
        .await?;
    let mut c = consumer(conn, &q, 1).await?;
    let m = recv(&mut c).await?;
    m.reject().await?;
    if !caps.quarantine {
        expect_only_sentinel(conn, &mut c, &q.name).await?;
        clean.run(channel.as_ref()).await;
        return Ok(());
    }
    let mut held = consumer(conn, &Queue::new(&quarantine), 1).await?;
    let kept = recv_within(
        &mut held,
        Duration::from_secs(10),
        "the quarantined message",
    )
    .await?;
    expect_eq(
        kept.decode::<String>()?,
        "unwanted".into(),
        "the quarantined body",
    )?;
    let reason = kept
        .headers()
        .get("x-death")
        .and_then(|d| d.get(0))
        .and_then(|d| d.get("reason"))
        .cloned();
    expect_eq(reason, Some(json!("rejected")), "x-death reason")?;
    kept.ack().await?;
    expect_only_sentinel(conn, &mut c, &q.name).await?;
    clean.run(channel.as_ref()).await;
    Ok(())
}

/// A message past its expiration is not delivered.
pub async fn message_ttl_expires(conn: &Connection) -> Result<()> {
    if !conn.capabilities().await?.ttl {
        return skip("message_ttl_expires", "no TTL");
    }
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("msgttl-q")));
    let channel = conn.channel().await?;
    q.declare(channel.as_ref()).await?;
    let p = Producer::new(conn);
    p.publish(
        json!("short"),
        PublishOptions::new()
            .routing_key(&q.name)
            .expiration(Duration::from_millis(100)),
    )
    .await?;
    p.publish(json!("long"), PublishOptions::new().routing_key(&q.name))
        .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut c = consumer(conn, &q, 10).await?;
    let m = recv(&mut c).await?;
    expect_eq(m.decode::<String>()?, "long".into(), "surviving message")?;
    m.ack().await?;
    expect_only_sentinel(conn, &mut c, &q.name).await?;
    clean.run(channel.as_ref()).await;
    Ok(())
}

/// A queue's message TTL expires old messages.
pub async fn queue_ttl_expires(conn: &Connection) -> Result<()> {
    if !conn.capabilities().await?.ttl {
        return skip("queue_ttl_expires", "no TTL");
    }
    let mut clean = Cleanup::new();
    // A TTL long enough for a slow store (pouchdb, SecantusDB under load)
    // to deliver the fresh message before it expires too.
    let ttl = Duration::from_secs(3);
    let q = Queue::new(clean.queue(&unique("qttl-q"))).message_ttl(ttl);
    let channel = conn.channel().await?;
    q.declare(channel.as_ref()).await?;
    let p = Producer::new(conn);
    p.publish(json!("old"), PublishOptions::new().routing_key(&q.name))
        .await?;
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    p.publish(json!("new"), PublishOptions::new().routing_key(&q.name))
        .await?;
    let mut c = consumer(conn, &q, 10).await?;
    let m = recv(&mut c).await?;
    expect_eq(m.decode::<String>()?, "new".into(), "fresh message")?;
    m.ack().await?;
    clean.run(channel.as_ref()).await;
    Ok(())
}

/// A rejected message goes to the dead-letter exchange with `x-death`.
pub async fn dead_letter_on_reject(conn: &Connection) -> Result<()> {
    if !conn.capabilities().await?.dead_letter {
        return skip("dead_letter_on_reject", "no dead-lettering");
    }
    let mut clean = Cleanup::new();
    let dlx = Exchange::direct(clean.exchange(&unique("dlx")));
    let dead = Queue::new(clean.queue(&unique("dead-q"))).bind(&dlx, "dead");
    let work = Queue::new(clean.queue(&unique("work-q")))
        .dead_letter_exchange(&dlx.name)
        .dead_letter_routing_key("dead");
    let mut c_dead = consumer(conn, &dead, 10).await?;
    let mut c_work = consumer(conn, &work, 10).await?;
    Producer::new(conn)
        .publish(
            json!("doomed"),
            PublishOptions::new().routing_key(&work.name),
        )
        .await?;
    recv(&mut c_work).await?.reject().await?;
    let m = recv(&mut c_dead).await?;
    expect_eq(m.decode::<String>()?, "doomed".into(), "dead-lettered body")?;
    check(m.headers().contains_key("x-death"), "no x-death header")?;
    m.ack().await?;
    clean.run(c_work.channel().as_ref()).await;
    Ok(())
}

/// A queue with max_length keeps the newest messages.
pub async fn max_length_drops_oldest(conn: &Connection) -> Result<()> {
    if !conn.capabilities().await?.max_length {
        return skip("max_length_drops_oldest", "no max length");
    }
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("maxlen-q"))).max_length(3);
    let channel = conn.channel().await?;
    q.declare(channel.as_ref()).await?;
    let p = Producer::new(conn);
    for i in 0..5 {
        p.publish(json!(i), PublishOptions::new().routing_key(&q.name))
            .await?;
    }
    expect_eq(channel.queue_size(&q.name).await?, 3, "size")?;
    let mut c = consumer(conn, &q, 10).await?;
    let mut got = Vec::new();
    for m in recv_n(&mut c, 3).await? {
        got.push(m.decode::<i64>()?);
        m.ack().await?;
    }
    expect_eq(got, vec![2, 3, 4], "kept messages")?;
    clean.run(channel.as_ref()).await;
    Ok(())
}

/// A 1 MiB body arrives intact (on a transport with a smaller size limit:
/// publishing it is a `LimitExceeded` error and nothing is queued).
pub async fn large_body_1mib(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("large-q")));
    let mut c = consumer(conn, &q, 1).await?;
    let body: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    if let Some(limit) = conn.capabilities().await?.max_body_size {
        if limit < body.len() as u64 {
            let result = Producer::new(conn)
                .publish(body.clone(), PublishOptions::new().routing_key(&q.name))
                .await;
            let refused = matches!(&result, Err(e) if e.kind() == ErrorKind::LimitExceeded);
            check(
                refused,
                format!("1 MiB over a {limit}-byte limit: {result:?}"),
            )?;
            expect_eq(c.channel().queue_size(&q.name).await?, 0, "queued")?;
            clean.run(c.channel().as_ref()).await;
            return Ok(());
        }
    }
    Producer::new(conn)
        .publish(body.clone(), PublishOptions::new().routing_key(&q.name))
        .await?;
    let m = recv(&mut c).await?;
    check(m.body() == &body[..], "1 MiB body changed in transit")?;
    m.ack().await?;
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// 8 producers and 8 consumers: every message delivered (checked by id).
pub async fn many_producers_many_consumers(conn: &Connection) -> Result<()> {
    const PRODUCERS: usize = 8;
    const CONSUMERS: usize = 8;
    const EACH: usize = 25;
    /// All messages are in within this time, or the check fails.
    const ALL_IN: Duration = Duration::from_secs(60);
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("mpmc-q")));
    let channel = conn.channel().await?;
    q.declare(channel.as_ref()).await?;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let total = PRODUCERS * EACH;
    let deadline = tokio::time::Instant::now() + ALL_IN;
    let count = |seen: &std::sync::Mutex<Vec<String>>| seen.lock().map_or(0, |s| s.len());
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let conn = conn.clone();
        let q = q.clone();
        let seen = seen.clone();
        consumers.push(tokio::spawn(async move {
            let mut c = consumer(&conn, &q, 5).await?;
            // Each consumer stops once all are in or at the deadline; an
            // error (a dead server, say) ends it at once.
            while count(&seen) < total && tokio::time::Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(500), c.next()).await {
                    Ok(Some(m)) => {
                        let m = m?;
                        let id: String = m.decode()?;
                        m.ack().await?;
                        if let Ok(mut seen) = seen.lock() {
                            seen.push(id);
                        }
                    }
                    Ok(None) => {
                        return Err(Error::new(ErrorKind::Closed, "a consumer's stream ended"))
                    }
                    Err(_) => {}
                }
            }
            Ok::<(), Error>(())
        }));
    }
    step(format!(
        "{PRODUCERS} producers publishing {EACH} messages each"
    ));
    let mut producers = Vec::new();
    for p_index in 0..PRODUCERS {
        let conn = conn.clone();
        let name = q.name.clone();
        producers.push(tokio::spawn(async move {
            let p = Producer::new(&conn);
            for i in 0..EACH {
                p.publish(
                    json!(format!("{p_index}-{i}")),
                    PublishOptions::new().routing_key(&name),
                )
                .await?;
            }
            Ok::<(), Error>(())
        }));
    }
    let join = |e: tokio::task::JoinError| Error::new(ErrorKind::Other, e.to_string());
    for p in producers {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::timeout(left, p)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!("producers still publishing after {ALL_IN:?}"),
                )
            })?
            .map_err(join)??;
    }
    step(format!("{CONSUMERS} consumers receiving {total} messages"));
    for c in consumers {
        // A consumer ends by the deadline (plus one receive and its ack).
        let left = deadline.saturating_duration_since(tokio::time::Instant::now())
            + Duration::from_secs(10);
        tokio::time::timeout(left, c)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    "a consumer did not stop by the deadline",
                )
            })?
            .map_err(join)??;
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let unique_ids: HashSet<&String> = seen.iter().collect();
    expect_eq(
        unique_ids.len(),
        total,
        &format!("distinct messages received within {ALL_IN:?}"),
    )?;
    expect_eq(
        seen.len(),
        total,
        "deliveries (no duplicates without failures)",
    )?;
    clean.run(channel.as_ref()).await;
    Ok(())
}

/// A consumer dropped without acking: its message is delivered again.
pub async fn dropped_consumer_redelivers(conn: &Connection) -> Result<()> {
    if !conn.capabilities().await?.redelivers_unacked {
        return skip(
            "dropped_consumer_redelivers",
            "unacked messages are not redelivered",
        );
    }
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("drop-q")));
    {
        let mut c = consumer(conn, &q, 1).await?;
        Producer::new(conn)
            .publish(
                json!("survivor"),
                PublishOptions::new().routing_key(&q.name),
            )
            .await?;
        let m = recv(&mut c).await?;
        expect_eq(m.decode::<String>()?, "survivor".into(), "first delivery")?;
        // Dropped here: consumer and message, no ack.
    }
    let mut c = consumer(conn, &q, 1).await?;
    let m = recv(&mut c).await?;
    expect_eq(m.decode::<String>()?, "survivor".into(), "redelivered body")?;
    check(m.redelivered(), "redelivery not flagged")?;
    m.ack().await?;
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// One consumer reads several queues.
pub async fn consumer_on_several_queues(conn: &Connection) -> Result<()> {
    let mut clean = Cleanup::new();
    let q1 = Queue::new(clean.queue(&unique("multi-q1")));
    let q2 = Queue::new(clean.queue(&unique("multi-q2")));
    let mut c = consumer_builder(conn)
        .queues([q1.clone(), q2.clone()])
        .prefetch_count(10)
        .build()
        .await?;
    let p = Producer::new(conn);
    p.publish(json!("one"), PublishOptions::new().routing_key(&q1.name))
        .await?;
    p.publish(json!("two"), PublishOptions::new().routing_key(&q2.name))
        .await?;
    let mut got = Vec::new();
    for m in recv_n(&mut c, 2).await? {
        got.push(m.decode::<String>()?);
        m.ack().await?;
    }
    got.sort();
    expect_eq(got, vec!["one".to_string(), "two".to_string()], "bodies")?;
    clean.run(c.channel().as_ref()).await;
    Ok(())
}

/// SimpleQueue: put, qsize, get, get_nowait on empty, clear.
pub async fn simple_queue_put_get(conn: &Connection) -> Result<()> {
    let name = unique("simple");
    let sq = conn.simple_queue(&name);
    sq.put(json!({"n": 1})).await?;
    sq.put(json!({"n": 2})).await?;
    expect_eq(sq.qsize().await?, 2, "qsize")?;
    let m = sq
        .get(Some(Duration::from_secs(10)))
        .await?
        .ok_or_else(|| Error::new(ErrorKind::Timeout, "get timed out"))?;
    expect_eq(m.decode::<Value>()?, json!({"n": 1}), "first")?;
    m.ack().await?;
    expect_eq(sq.clear().await?, 1, "cleared")?;
    check(
        sq.get_nowait().await?.is_none(),
        "get_nowait on empty queue",
    )?;
    let t0 = std::time::Instant::now();
    check(
        sq.get(Some(Duration::from_millis(200))).await?.is_none(),
        "get with timeout on empty queue",
    )?;
    check(
        t0.elapsed() >= Duration::from_millis(150),
        "get returned before its timeout",
    )?;
    sq.close().await?;
    let channel = conn.channel().await?;
    let _ = channel.queue_delete(&name).await;
    let _ = channel.exchange_delete(&name).await;
    Ok(())
}
