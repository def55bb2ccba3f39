//! SQS-specific behaviour against a real SQS API (moto in CI).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::{
    Connection, ConnectionOptions, Consumer, ErrorKind, Exchange, Producer, PublishOptions, Queue,
    Registry, TransportOptions,
};
use kombu_testkit::{recv, test_url, unique, Cleanup};
use serde_json::json;

fn connection(options: TransportOptions) -> Option<Connection> {
    let url = test_url("sqs")?;
    let mut registry = Registry::new();
    kombu_sqs::register(&mut registry);
    let options = ConnectionOptions::new().transport_options(options);
    Some(
        Connection::with_registry_options(&url, options, Arc::new(registry)).expect("a usable URL"),
    )
}

async fn consumer(conn: &Connection, queue: &Queue) -> Consumer {
    Consumer::builder(conn)
        .queue(queue.clone())
        .prefetch_count(10)
        .build()
        .await
        .expect("consumer")
}

/// The raw SQS client of the test server, for checks behind kombu's back.
async fn raw_sqs() -> Option<aws_sdk_sqs::Client> {
    let url = kombu_core::BrokerUrl::parse(&test_url("sqs")?).ok()?;
    let endpoint = format!("http://{}:{}", url.hostname()?, url.port()?);
    let creds =
        aws_credential_types::Credentials::new(url.userid()?, url.password()?, None, None, "test");
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(endpoint)
        .http_client(http)
        .build();
    Some(aws_sdk_sqs::Client::from_conf(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_are_sanitized_like_kombu() {
    let Some(conn) = connection(TransportOptions::new()) else {
        return;
    };
    let Some(sqs) = raw_sqs().await else { return };
    let mut clean = Cleanup::new();
    let name = clean.queue(&format!("{}.a:b@c", unique("names")));
    let channel = conn.channel().await.unwrap();
    Queue::new(&name).declare(channel.as_ref()).await.unwrap();
    let sqs_name = kombu_sqs::entity_name(&name);
    assert!(sqs_name.ends_with("-a_b_c"), "{sqs_name}");
    let url = sqs
        .get_queue_url()
        .queue_name(&sqs_name)
        .send()
        .await
        .unwrap();
    assert!(url.queue_url().unwrap().ends_with(&sqs_name));
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_is_base64_of_the_envelope_as_kombu_writes() {
    let Some(conn) = connection(TransportOptions::new()) else {
        return;
    };
    let Some(sqs) = raw_sqs().await else { return };
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("wire")));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    Producer::new(&conn)
        .publish(
            json!({"hello": "world"}),
            PublishOptions::new()
                .routing_key(&q.name)
                .header("x-origin", "rust"),
        )
        .await
        .unwrap();
    let url = sqs
        .get_queue_url()
        .queue_name(kombu_sqs::entity_name(&q.name))
        .send()
        .await
        .unwrap();
    let out = sqs
        .receive_message()
        .queue_url(url.queue_url().unwrap())
        .wait_time_seconds(5)
        .send()
        .await
        .unwrap();
    let body = out.messages()[0].body().unwrap();
    use base64::Engine as _;
    let json = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(envelope["body"], "eyJoZWxsbyI6ICJ3b3JsZCJ9");
    assert_eq!(envelope["content-type"], "application/json");
    assert_eq!(envelope["headers"]["x-origin"], "rust");
    assert_eq!(envelope["properties"]["body_encoding"], "base64");
    assert!(out.messages()[0]
        .message_attributes()
        .is_none_or(|a| a.is_empty()));
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_deduplicates_by_message_id() {
    let Some(conn) = connection(TransportOptions::new()) else {
        return;
    };
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&format!("{}.fifo", unique("fifo"))));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let p = Producer::new(&conn);
    for (body, id) in [
        ("first", "m-1"),
        ("again", "m-1"),
        ("second", "m-2"),
        ("third", "m-3"),
    ] {
        p.publish(
            json!(body),
            PublishOptions::new()
                .routing_key(&q.name)
                .message_id(id)
                .header("MessageGroupId", "g1"),
        )
        .await
        .unwrap();
    }
    let mut c = consumer(&conn, &q).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = recv(&mut c).await.unwrap();
        got.push(m.decode::<String>().unwrap());
        m.ack().await.unwrap();
    }
    // The duplicate id was dropped by SQS, and one group keeps its order.
    assert_eq!(got, ["first", "second", "third"]);
    assert!(tokio::time::timeout(
        Duration::from_millis(1500),
        futures::StreamExt::next(&mut c)
    )
    .await
    .is_err());
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_is_refused_before_sending() {
    let Some(conn) = connection(TransportOptions::new()) else {
        return;
    };
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("large")));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let big = vec![7u8; 200 * 1024];
    let err = Producer::new(&conn)
        .publish(big, PublishOptions::new().routing_key(&q.name))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded);
    assert!(err.to_string().contains("262144"), "{err}");
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);
    // Just under the limit goes through.
    let ok = vec![7u8; 130 * 1024];
    Producer::new(&conn)
        .publish(ok, PublishOptions::new().routing_key(&q.name))
        .await
        .unwrap();
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 1);
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_goes_through_an_sns_topic() {
    let Some(conn) = connection(TransportOptions::new()) else {
        return;
    };
    let Some(sqs) = raw_sqs().await else { return };
    let mut clean = Cleanup::new();
    let ex = Exchange::fanout(clean.exchange(&unique("sns-ex")));
    let q1 = Queue::new(clean.queue(&unique("sns-q1"))).bind(&ex, "");
    let q2 = Queue::new(clean.queue(&unique("sns-q2"))).bind(&ex, "");
    let mut c1 = consumer(&conn, &q1).await;
    let mut c2 = consumer(&conn, &q2).await;
    Producer::new(&conn)
        .exchange(ex.clone())
        .publish(json!({"to": "all"}), PublishOptions::new().header("h", 1))
        .await
        .unwrap();
    for c in [&mut c1, &mut c2] {
        let m = recv(c).await.unwrap();
        assert_eq!(
            m.decode::<serde_json::Value>().unwrap(),
            json!({"to": "all"})
        );
        assert_eq!(m.headers()["h"], 1);
        m.ack().await.unwrap();
    }
    // The queue's policy lets the topic send to it.
    let url = sqs
        .get_queue_url()
        .queue_name(kombu_sqs::entity_name(&q1.name))
        .send()
        .await
        .unwrap();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url.queue_url().unwrap())
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::Policy)
        .send()
        .await
        .unwrap();
    let policy =
        attrs.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::Policy].clone();
    assert!(policy.contains("KombuManaged") && policy.contains(&kombu_sqs::entity_name(&ex.name)));
    clean.run(c1.channel().as_ref()).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_switched_off_is_unsupported() {
    let Some(conn) = connection(TransportOptions::new().set("supports_fanout", false)) else {
        return;
    };
    let caps = conn.capabilities().await.unwrap();
    assert!(!caps.supports(kombu_core::ExchangeType::Fanout));
    assert!(caps.supports(kombu_core::ExchangeType::Topic));
    let channel = conn.channel().await.unwrap();
    let err = channel
        .exchange_declare(&Exchange::fanout(unique("nofan")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    conn.close().await.unwrap();
}

/// What the connection reports follows `supports_fanout`, and so does the
/// conformance suite: with fanout off `fanout_exchange` skips (it prints
/// SKIP and returns Ok; had it run, declaring the fanout exchange would
/// have failed with `Unsupported`), with the default it runs and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_follows_supports_fanout() {
    let Some(off) = connection(TransportOptions::new().set("supports_fanout", false)) else {
        return;
    };
    let caps = off.capabilities().await.unwrap();
    assert!(!caps.supports(kombu_core::ExchangeType::Fanout), "{caps:?}");
    // The registry's static description still shows fanout (the README's
    // table): only the connected transport knows the option.
    assert!(kombu_sqs::INFO
        .static_capabilities()
        .supports(kombu_core::ExchangeType::Fanout));
    kombu_testkit::checks::fanout_exchange(&off)
        .await
        .expect("fanout_exchange is skipped with supports_fanout=false");
    off.close().await.unwrap();

    let on = connection(TransportOptions::new()).expect("the same URL");
    let caps = on.capabilities().await.unwrap();
    assert!(caps.supports(kombu_core::ExchangeType::Fanout), "{caps:?}");
    let ran = tokio::time::timeout(
        Duration::from_secs(90),
        kombu_testkit::checks::fanout_exchange(&on),
    )
    .await
    .expect("fanout_exchange ends");
    ran.expect("fanout_exchange runs and passes over SNS");
    on.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_are_seen_by_another_connection() {
    let Some(a) = connection(TransportOptions::new()) else {
        return;
    };
    let Some(b) = connection(TransportOptions::new()) else {
        return;
    };
    let mut clean = Cleanup::new();
    let ex = Exchange::topic(clean.exchange(&unique("shared-ex")));
    let q = Queue::new(clean.queue(&unique("shared-q"))).bind(&ex, "orders.#");
    let mut c = consumer(&a, &q).await;
    // `b` never declared anything: it reads the type and bindings from SQS.
    Producer::new(&b)
        .exchange(Exchange::topic(&ex.name))
        .auto_declare(false)
        .publish(
            json!("routed"),
            PublishOptions::new().routing_key("orders.eu.new"),
        )
        .await
        .unwrap();
    let m = recv(&mut c).await.unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "routed");
    m.ack().await.unwrap();
    clean.run(c.channel().as_ref()).await;
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_moves_to_the_redrive_dead_letter_queue() {
    let Some(conn) = connection(TransportOptions::new()) else {
        return;
    };
    let Some(sqs) = raw_sqs().await else { return };
    let mut clean = Cleanup::new();
    let dlq = Queue::new(clean.queue(&unique("redrive-dlq")));
    let work = Queue::new(clean.queue(&unique("redrive-work")));
    let channel = conn.channel().await.unwrap();
    dlq.declare(channel.as_ref()).await.unwrap();
    work.declare(channel.as_ref()).await.unwrap();
    let dlq_url = sqs
        .get_queue_url()
        .queue_name(kombu_sqs::entity_name(&dlq.name))
        .send()
        .await
        .unwrap();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(dlq_url.queue_url().unwrap())
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let work_url = sqs
        .get_queue_url()
        .queue_name(kombu_sqs::entity_name(&work.name))
        .send()
        .await
        .unwrap();
    sqs.set_queue_attributes()
        .queue_url(work_url.queue_url().unwrap())
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    Producer::new(&conn)
        .publish(json!("bad"), PublishOptions::new().routing_key(&work.name))
        .await
        .unwrap();
    let mut c = consumer(&conn, &work).await;
    recv(&mut c).await.unwrap().reject().await.unwrap();
    let mut d = consumer(&conn, &dlq).await;
    let m = recv(&mut d).await.unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "bad");
    m.ack().await.unwrap();
    assert_eq!(channel.queue_size(&work.name).await.unwrap(), 0);
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_keeps_a_message_from_other_consumers() {
    let Some(conn) = connection(TransportOptions::new().set("visibility_timeout", 2)) else {
        return;
    };
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("lease")));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    Producer::new(&conn)
        .publish(json!("held"), PublishOptions::new().routing_key(&q.name))
        .await
        .unwrap();
    let mut c = consumer(&conn, &q).await;
    let m = recv(&mut c).await.unwrap();
    kombu_sqs::extend_visibility(m.delivery_info(), Duration::from_secs(30))
        .await
        .unwrap();
    // Past the queue's 2 s visibility timeout, nobody else gets it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(channel.basic_get(&q.name, true).await.unwrap().is_none());
    m.ack().await.unwrap();
    // Acks are coalesced: closing the consumer sends what is queued.
    c.close().await.unwrap();
    let err = kombu_sqs::extend_visibility(m.delivery_info(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed);
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_seconds_hides_a_message() {
    let Some(conn) = connection(TransportOptions::new()) else {
        return;
    };
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("delay")));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    Producer::new(&conn)
        .publish(
            json!("later"),
            PublishOptions::new()
                .routing_key(&q.name)
                .header("delay_seconds", 2),
        )
        .await
        .unwrap();
    assert!(channel.basic_get(&q.name, true).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = channel.basic_get(&q.name, true).await.unwrap();
    assert!(got.is_some(), "the delayed message did not appear");
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

/// Publish `body` delayed by `delay` to `q` and return when it was sent.
async fn publish_delayed(conn: &Connection, q: &Queue, body: &str, delay: Duration) -> Instant {
    let sent = Instant::now();
    Producer::new(conn)
        .publish(
            json!(body),
            PublishOptions::new().routing_key(&q.name).delay(delay),
        )
        .await
        .unwrap();
    sent
}

/// A delay within one `DelaySeconds` step: SQS hides the message, no
/// attribute is added (a Python consumer gets it on time too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_delay_is_delay_seconds() {
    let Some(conn) = connection(TransportOptions::new()) else {
        return;
    };
    let Some(sqs) = raw_sqs().await else { return };
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("delay-short")));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let delay = Duration::from_millis(1500);
    let sent = publish_delayed(&conn, &q, "later", delay).await;
    assert!(channel.basic_get(&q.name, true).await.unwrap().is_none());
    let url = sqs
        .get_queue_url()
        .queue_name(&q.name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    // Read behind kombu's back once visible: no due-time attribute.
    let raw = loop {
        let out = sqs
            .receive_message()
            .queue_url(&url)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if let Some(m) = out.messages().first() {
            break m.clone();
        }
        assert!(
            sent.elapsed() < delay + Duration::from_secs(5),
            "nothing came"
        );
    };
    let took = sent.elapsed();
    println!("delay {delay:?} (DelaySeconds 2): visible after {took:?}");
    assert!(took >= delay, "visible after {took:?}");
    assert!(raw
        .message_attributes()
        .is_none_or(|a| !a.contains_key(kombu_sqs::NOT_BEFORE_ATTRIBUTE)));
    // Through a kombu-rs consumer (long polling), as the conformance check.
    let mut c = consumer(&conn, &q).await;
    for delay in [Duration::from_millis(1200), Duration::from_secs(2)] {
        let sent = publish_delayed(&conn, &q, "later", delay).await;
        let m = kombu_testkit::recv_within(
            &mut c,
            delay + Duration::from_secs(10),
            "the delayed message",
        )
        .await
        .unwrap();
        let took = sent.elapsed();
        println!("delay {delay:?}: delivered to a consumer after {took:?}");
        assert!(took >= delay, "delivered after {took:?}");
        assert!(
            took <= delay + Duration::from_secs(1),
            "delivered after {took:?}"
        );
        m.ack().await.unwrap();
    }
    drop(c);
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

/// A delay longer than `max_delay_seconds` (900 s; 1 s here so it runs
/// in real time) goes in steps: the message carries its due time, and a
/// consumer that receives it early sends it again with the delay left and
/// deletes the early copy, handing nothing over. It arrives once, not
/// before its time, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_delay_is_re_delayed_in_steps() {
    let Some(conn) = connection(TransportOptions::new().set("max_delay_seconds", 1)) else {
        return;
    };
    let Some(sqs) = raw_sqs().await else { return };
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&unique("delay-long")));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let mut c = consumer(&conn, &q).await;
    let delay = Duration::from_millis(3200);
    let sent = publish_delayed(&conn, &q, "much later", delay).await;
    let m = kombu_testkit::recv_within(
        &mut c,
        delay + Duration::from_secs(10),
        "the delayed message",
    )
    .await
    .unwrap();
    let took = sent.elapsed();
    println!("delay {delay:?} in steps of 1 s: delivered after {took:?}");
    assert_eq!(m.decode::<String>().unwrap(), "much later");
    assert!(!m.redelivered());
    assert!(
        took >= delay,
        "delivered after {took:?}, before its {delay:?}"
    );
    assert!(
        took <= delay + Duration::from_secs(2),
        "delivered after {took:?}, long after its {delay:?}"
    );
    m.ack().await.unwrap();
    // Every early copy was deleted: nothing visible, in flight or delayed.
    let url = sqs
        .get_queue_url()
        .queue_name(&q.name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let count = |name: aws_sdk_sqs::types::QueueAttributeName| {
            attrs
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let left = count(A::ApproximateNumberOfMessages)
            + count(A::ApproximateNumberOfMessagesNotVisible)
            + count(A::ApproximateNumberOfMessagesDelayed);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} copies of the re-delayed message left in the queue"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(c);
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

/// SQS FIFO queues take no per-message delay: a delayed publish is
/// refused, nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_publish_to_a_fifo_queue_is_refused() {
    let Some(conn) = connection(TransportOptions::new()) else {
        return;
    };
    let mut clean = Cleanup::new();
    let q = Queue::new(clean.queue(&format!("{}.fifo", unique("delay-fifo"))));
    let channel = conn.channel().await.unwrap();
    q.declare(channel.as_ref()).await.unwrap();
    let err = Producer::new(&conn)
        .publish(
            json!("later"),
            PublishOptions::new()
                .routing_key(&q.name)
                .delay(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("FIFO"), "{err}");
    assert_eq!(channel.queue_size(&q.name).await.unwrap(), 0);
    clean.run(channel.as_ref()).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_a_missing_queue_is_not_found() {
    let Some(conn) = connection(TransportOptions::new()) else {
        return;
    };
    let channel = conn.channel().await.unwrap();
    let err = channel
        .queue_declare(&Queue::new(unique("absent")).passive(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    conn.close().await.unwrap();
}

/// A dead endpoint (nothing listens) fails calls and the heartbeat with
/// connection kinds, so the connection is replaced; the backend is reached
/// through the connection. Needs no SQS server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_gives_connection_errors() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut registry = Registry::new();
    kombu_sqs::register(&mut registry);
    let url = format!("sqs://k:s@127.0.0.1:{port}?socket_timeout=1&region=us-east-1");
    let conn = Connection::with_registry(&url, Arc::new(registry)).unwrap();
    let backend = conn.extension::<kombu_sqs::SqsBackend>().await.unwrap();
    let bound = Duration::from_secs(20);
    let err = tokio::time::timeout(bound, backend.ping())
        .await
        .expect("ping ends")
        .unwrap_err();
    assert!(err.is_connection_error(), "{err}");
    let transport = conn.transport().await.unwrap();
    let err = tokio::time::timeout(bound, transport.heartbeat_check())
        .await
        .expect("heartbeat ends")
        .unwrap_err();
    assert!(err.is_connection_error(), "{err}");
    assert!(
        !transport.is_connected(),
        "a failed heartbeat marks it lost"
    );
    let channel = conn.channel().await.unwrap();
    let err = tokio::time::timeout(bound, channel.queue_declare(&Queue::new(unique("dead"))))
        .await
        .expect("declare ends")
        .unwrap_err();
    assert!(err.is_connection_error(), "{err}");
    let _ = conn.close().await;
}
