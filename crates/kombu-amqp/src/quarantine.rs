//! The quarantine of `amqp://` queues: a message rejected without requeue
//! from a queue that has no dead-letter exchange would be dropped by
//! RabbitMQ; instead it is published (with publisher confirms) to the
//! queue's quarantine, `<queue>.quarantine` (declared durable), through
//! the default exchange, and then acked, as the virtual transports do.
//!
//! Whether a queue has a dead-letter exchange is known for the queues this
//! connection declared (their `x-dead-letter-exchange` argument). A queue
//! this connection did not declare (made by another client, or only
//! declared passively) is left to RabbitMQ: a reject is a plain
//! `basic.reject`, so a dead-letter exchange set by the other client or
//! by a policy still applies. The `quarantine=false` transport option
//! turns the quarantine off.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use kombu_core::{
    add_x_death, quarantine_of, Delivery, DeliveryMode, Error, ErrorKind, Queue, Result,
};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Confirmation};

use crate::errors::op;
use crate::field_table::short_string;
use crate::properties::{no_arguments, to_basic_properties, to_delivery, to_raw_message};

/// What `x-kombu-error` says of a message quarantined after a reject.
pub(crate) const REJECTED_ERROR: &str =
    "rejected without requeue; its queue has no dead-letter exchange";

/// A delivery kept by its channel until it is settled, in case it is
/// rejected: what the quarantine needs to publish it again (its AMQP
/// properties, moved here, and its body, shared with the delivery).
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) queue: String,
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) properties: BasicProperties,
    pub(crate) body: Bytes,
}

/// The held deliveries of one channel, by delivery tag.
#[derive(Debug, Default)]
pub(crate) struct HeldDeliveries(Mutex<BTreeMap<u64, Held>>);

impl HeldDeliveries {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Held>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn hold(&self, tag: u64, held: Held) {
        self.lock().insert(tag, held);
    }

    /// Forget `tag` (or every tag up to it): acked.
    pub(crate) fn forget(&self, tag: u64, multiple: bool) {
        let mut held = self.lock();
        if held.is_empty() {
            return;
        }
        if multiple {
            let kept = held.split_off(&(tag + 1));
            *held = kept;
        } else {
            held.remove(&tag);
        }
    }

    pub(crate) fn take(&self, tag: u64) -> Option<Held> {
        self.lock().remove(&tag)
    }
}

/// The quarantine of one connection: what it declared, and the confirmed
/// channel it publishes to quarantines on.
pub(crate) struct Quarantine {
    enabled: bool,
    /// Queues declared on this connection: true when they have a
    /// dead-letter exchange.
    declared: Mutex<HashMap<String, bool>>,
    /// The publishing channel (confirm mode) and the quarantines declared
    /// on it.
    publisher: tokio::sync::Mutex<Option<(lapin::Channel, HashSet<String>)>>,
}

impl Quarantine {
    pub(crate) fn new(enabled: bool) -> Self {
        Quarantine {
            enabled,
            declared: Mutex::default(),
            publisher: tokio::sync::Mutex::new(None),
        }
    }

    fn declared(&self) -> MutexGuard<'_, HashMap<String, bool>> {
        self.declared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Note a queue this connection declared (not passively).
    pub(crate) fn note_declared(&self, queue: &Queue) {
        if self.enabled && !queue.passive {
            let dlx = queue
                .declare_arguments()
                .contains_key("x-dead-letter-exchange");
            self.declared().insert(queue.name.clone(), dlx);
        }
    }

    pub(crate) fn note_deleted(&self, queue: &str) {
        if self.enabled {
            self.declared().remove(queue);
        }
    }

    /// True when a message rejected from `queue` goes to its quarantine:
    /// the quarantine is on, this connection declared `queue` without a
    /// dead-letter exchange, and `queue` is no quarantine itself.
    pub(crate) fn keeps(&self, queue: &str) -> bool {
        self.enabled
            && !queue.ends_with(kombu_core::QUARANTINE_SUFFIX)
            && self.declared().get(queue) == Some(&false)
    }

    /// Publish `held` to its queue's quarantine and wait for the broker's
    /// confirm. On an error nothing is lost: the caller leaves the
    /// delivery unacked.
    pub(crate) async fn put(&self, connection: &lapin::Connection, held: Held) -> Result<()> {
        let target = quarantine_of(&held.queue);
        let mut message = to_raw_message(&held.properties, held.body);
        add_x_death(
            &mut message.headers,
            &held.queue,
            "rejected",
            &held.exchange,
            &held.routing_key,
        );
        message
            .headers
            .insert("x-kombu-error".into(), REJECTED_ERROR.into());
        // Kept for good: persistent, no expiration.
        message.properties.expiration = None;
        message.properties.delivery_mode = Some(DeliveryMode::Persistent);
        let properties = to_basic_properties(&message)?;
        let routing_key = short_string("queue name", &target)?;
        let mut publisher = self.publisher.lock().await;
        if !publisher
            .as_ref()
            .is_some_and(|(channel, _)| channel.status().connected())
        {
            let channel = connection
                .create_channel()
                .await
                .map_err(op("opening the quarantine channel"))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(op("confirm.select"))?;
            *publisher = Some((channel, HashSet::new()));
        }
        let (channel, made) = publisher.as_mut().expect("opened above");
        if !made.contains(&target) {
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(routing_key.clone(), durable, no_arguments())
                .await
                .map_err(op("declaring the quarantine"))?;
            made.insert(target.clone());
        }
        let confirmation = channel
            .basic_publish(
                "".into(),
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                properties,
            )
            .await
            .map_err(op("publishing to the quarantine"))?
            .await
            .map_err(op("waiting for the quarantine's confirm"))?;
        match confirmation {
            Confirmation::Ack(None) => {
                tracing::warn!(queue = %held.queue, quarantine = %target, "message quarantined (rejected; no dead-letter exchange)");
                Ok(())
            }
            _ => Err(Error::new(
                ErrorKind::Rejected,
                format!("the broker did not take the message into {target}: it stays unacked"),
            )),
        }
    }
}

/// A lapin delivery from `queue` as a kombu delivery, held in `held` when
/// it is acked by the user (not `no_ack`) and `queue` has a quarantine.
pub(crate) fn receive(
    quarantine: &Quarantine,
    held: &HeldDeliveries,
    delivery: lapin::message::Delivery,
    consumer_tag: Option<&str>,
    queue: &str,
    no_ack: bool,
) -> Delivery {
    let (delivery, properties, body) = to_delivery(delivery, consumer_tag, queue);
    if !no_ack && quarantine.keeps(queue) {
        held.hold(
            delivery.delivery_tag,
            Held {
                queue: queue.to_owned(),
                exchange: delivery.info.exchange.clone(),
                routing_key: delivery.info.routing_key.clone(),
                properties,
                body,
            },
        );
    }
    delivery
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn x_death_counts_repeated_rejects() {
        let mut headers = Map::new();
        add_x_death(&mut headers, "q", "rejected", "ex", "rk");
        add_x_death(&mut headers, "q", "rejected", "ex", "rk");
        let death = &headers["x-death"][0];
        assert_eq!(death["count"], 2);
        assert_eq!(death["reason"], "rejected");
        assert_eq!(death["routing-keys"][0], "rk");
        assert_eq!(headers["x-first-death-queue"], "q");
    }

    #[test]
    fn held_deliveries_are_forgotten_when_acked() {
        let held = HeldDeliveries::default();
        let one = Held {
            queue: "q".into(),
            exchange: String::new(),
            routing_key: "q".into(),
            properties: BasicProperties::default(),
            body: Bytes::from_static(b"x"),
        };
        for tag in 1..=4 {
            held.hold(tag, one.clone());
        }
        held.forget(2, true);
        assert!(held.take(1).is_none() && held.take(2).is_none());
        held.forget(3, false);
        assert!(held.take(3).is_none());
        assert!(held.take(4).is_some());
    }

    #[test]
    fn only_declared_queues_without_a_dead_letter_exchange_are_kept() {
        let quarantine = Quarantine::new(true);
        quarantine.note_declared(&Queue::new("plain"));
        quarantine.note_declared(&Queue::new("dlx").dead_letter_exchange(""));
        quarantine.note_declared(&Queue::new("plain.quarantine"));
        assert!(quarantine.keeps("plain"));
        assert!(!quarantine.keeps("dlx"));
        assert!(!quarantine.keeps("plain.quarantine"));
        assert!(!quarantine.keeps("declared-elsewhere"));
        quarantine.note_deleted("plain");
        assert!(!quarantine.keeps("plain"));
        let off = Quarantine::new(false);
        off.note_declared(&Queue::new("plain"));
        assert!(!off.keeps("plain"));
    }
}
