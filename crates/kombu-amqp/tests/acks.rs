//! Ack coalescing on a real RabbitMQ: in-order acks go out as multiple-acks,
//! and never ack a message the user did not ack.

mod common;

use std::time::Duration;

use futures::StreamExt;
use kombu_amqp::{AmqpChannel, AmqpTransport};
use kombu_core::spi::Transport;
use kombu_core::{BrokerUrl, Channel, ConnectionOptions, Delivery, Queue, RawMessage};
use kombu_testkit::unique;

/// Every test here is bounded by this.
const LIMIT: Duration = Duration::from_secs(30);

async fn transport(url: &str) -> AmqpTransport {
    let url = BrokerUrl::parse(url).unwrap();
    AmqpTransport::open(&url, &ConnectionOptions::new())
        .await
        .unwrap()
}

/// A fresh non-durable queue holding `count` messages with bodies "1", "2", ...
async fn queue_with(channel: &AmqpChannel, count: usize) -> String {
    let queue = Queue::new(unique("acks-q")).durable(false);
    channel.queue_declare(&queue).await.unwrap();
    for i in 1..=count {
        channel
            .basic_publish(
                RawMessage::new(bytes::Bytes::from(i.to_string())),
                "",
                &queue.name,
                false,
            )
            .await
            .unwrap();
    }
    // Read-your-writes: the size waits until they are all in the queue.
    assert_eq!(channel.queue_size(&queue.name).await.unwrap(), count as u64);
    queue.name
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8(delivery.message.body.to_vec()).unwrap()
}

/// Take `count` deliveries from a consumer on `channel` (prefetch as given).
async fn consume(
    channel: &AmqpChannel,
    queue: &str,
    prefetch: u16,
    count: usize,
) -> (kombu_core::DeliveryStream, Vec<Delivery>) {
    channel.basic_qos(prefetch).await.unwrap();
    let mut stream = channel
        .basic_consume(queue, &unique("ctag"), false)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a delivery within 10 s")
            .expect("the stream goes on")
            .unwrap();
        got.push(*next);
    }
    (stream, got)
}

/// What is left in `queue`, read with basic.get on a fresh channel and
/// acked: (body, redelivered) pairs.
async fn drain(transport: &AmqpTransport, queue: &str) -> Vec<(String, bool)> {
    let channel = transport.open_channel().await.unwrap();
    let mut left = Vec::new();
    while let Some(d) = channel.basic_get(queue, true).await.unwrap() {
        left.push((body(&d), d.info.redelivered));
    }
    channel.queue_delete(queue).await.unwrap();
    channel.close().await.unwrap();
    left
}

#[tokio::test]
async fn acks_1_2_4_then_close_redeliver_only_3() {
    let Some(url) = common::url() else { return };
    tokio::time::timeout(LIMIT, async {
        let transport = transport(&url).await;
        let channel = transport.open_channel().await.unwrap();
        let queue = queue_with(&channel, 4).await;
        let (_stream, got) = consume(&channel, &queue, 100, 4).await;
        let tags: Vec<u64> = got.iter().map(|d| d.delivery_tag).collect();
        assert_eq!(tags, [1, 2, 3, 4]);
        for i in [0, 1, 3] {
            channel.basic_ack(got[i].delivery_tag, false).await.unwrap();
        }
        channel.close().await.unwrap();
        let left = drain(&transport, &queue).await;
        assert_eq!(left, [("3".to_owned(), true)]);
        transport.close().await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn deferred_acks_go_out_on_their_own_within_milliseconds() {
    let Some(url) = common::url() else { return };
    tokio::time::timeout(LIMIT, async {
        let transport = transport(&url).await;
        let channel = transport.open_channel().await.unwrap();
        let queue = queue_with(&channel, 3).await;
        let (_stream, got) = consume(&channel, &queue, 100, 3).await;
        for d in &got {
            channel.basic_ack(d.delivery_tag, false).await.unwrap();
        }
        // No close, no flush: the timer sends them. Then the connection is
        // closed under the channel, bypassing every flush.
        tokio::time::sleep(Duration::from_millis(300)).await;
        transport
            .lapin_connection()
            .close(200, "OK".into())
            .await
            .unwrap();
        let again = self::transport(&url).await;
        assert_eq!(drain(&again, &queue).await, []);
        again.close().await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn rejects_and_requeues_between_acks_are_kept() {
    let Some(url) = common::url() else { return };
    tokio::time::timeout(LIMIT, async {
        let transport = transport(&url).await;
        let channel = transport.open_channel().await.unwrap();
        let queue = queue_with(&channel, 7).await;
        // prefetch 7: every message is out at once, and nothing comes back
        // on this consumer while it holds them.
        let (_stream, got) = consume(&channel, &queue, 7, 7).await;
        let tag = |i: usize| got[i].delivery_tag;
        channel.basic_ack(tag(0), false).await.unwrap(); // 1 acked
        channel.basic_ack(tag(1), false).await.unwrap(); // 2 acked
        channel.basic_reject(tag(2), true).await.unwrap(); // 3 requeued
        channel.basic_ack(tag(3), false).await.unwrap(); // 4 acked
        channel.basic_reject(tag(4), false).await.unwrap(); // 5 quarantined
        channel.basic_ack(tag(5), false).await.unwrap(); // 6 acked
                                                         // 7 is left unacked.
        channel.close().await.unwrap();
        let mut left = drain(&transport, &queue).await;
        left.sort();
        assert_eq!(left, [("3".to_owned(), true), ("7".to_owned(), true)]);
        let quarantined = drain(&transport, &kombu_core::quarantine_of(&queue)).await;
        assert_eq!(quarantined, [("5".to_owned(), false)]);
        transport.close().await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn the_prefetch_window_never_stalls_when_each_message_is_acked() {
    let Some(url) = common::url() else { return };
    tokio::time::timeout(LIMIT, async {
        let transport = transport(&url).await;
        for prefetch in [1u16, 2, 3, 4, 10, 100] {
            let channel = transport.open_channel().await.unwrap();
            let total = 4 * usize::from(prefetch) + 7;
            let queue = queue_with(&channel, total).await;
            channel.basic_qos(prefetch).await.unwrap();
            let mut stream = channel
                .basic_consume(&queue, &unique("ctag"), false)
                .await
                .unwrap();
            for n in 1..=total {
                // With the window held full by deferred acks, the next
                // delivery would only come after the flush timer: it must
                // come at once, far within this bound.
                let d = tokio::time::timeout(Duration::from_secs(5), stream.next())
                    .await
                    .unwrap_or_else(|_| panic!("prefetch {prefetch}: stalled at message {n}"))
                    .unwrap()
                    .unwrap();
                assert_eq!(body(&d), n.to_string());
                channel.basic_ack(d.delivery_tag, false).await.unwrap();
            }
            channel.close().await.unwrap();
            assert_eq!(drain(&transport, &queue).await, [], "prefetch {prefetch}");
        }
        transport.close().await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn acks_out_of_order_and_user_multiple_acks_are_exact() {
    let Some(url) = common::url() else { return };
    tokio::time::timeout(LIMIT, async {
        let transport = transport(&url).await;
        let channel = transport.open_channel().await.unwrap();
        let queue = queue_with(&channel, 8).await;
        let (_stream, got) = consume(&channel, &queue, 100, 8).await;
        let tag = |i: usize| got[i].delivery_tag;
        // 5 and 3 first (out of order, sent alone), then 1, 2 (in order):
        // 1..=3 settled, 4 open, 5 settled.
        for i in [4, 2, 0, 1] {
            channel.basic_ack(tag(i), false).await.unwrap();
        }
        // The user's own multiple-ack of 7 takes 4, 6 and 7 as asked.
        channel.basic_ack(tag(6), true).await.unwrap();
        // 8 is left.
        channel.close().await.unwrap();
        assert_eq!(drain(&transport, &queue).await, [("8".to_owned(), true)]);
        transport.close().await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn transport_close_sends_deferred_acks_and_coalescing_can_be_off() {
    let Some(url) = common::url() else { return };
    tokio::time::timeout(LIMIT, async {
        for coalescing in [true, false] {
            let sep = if url.contains('?') { '&' } else { '?' };
            let transport =
                self::transport(&format!("{url}{sep}ack_coalescing={coalescing}")).await;
            let channel = transport.open_channel().await.unwrap();
            let queue = queue_with(&channel, 5).await;
            let (_stream, got) = consume(&channel, &queue, 100, 5).await;
            for d in &got[..4] {
                channel.basic_ack(d.delivery_tag, false).await.unwrap();
            }
            // Closing the transport (not the channel) sends what was deferred.
            transport.close().await.unwrap();
            let again = self::transport(&url).await;
            assert_eq!(
                drain(&again, &queue).await,
                [("5".to_owned(), true)],
                "ack_coalescing={coalescing}"
            );
            again.close().await.unwrap();
        }
    })
    .await
    .expect("bounded");
}
