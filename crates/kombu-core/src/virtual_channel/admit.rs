//! Turning fetched messages into deliveries: the quick way (a batch, no
//! awaits, one lock for the lot) and the slow way (a declaration to read,
//! an expired message to dead-letter, an unreadable one to reject, a
//! no-ack delivery to settle at once).

use bytes::Bytes;
use serde_json::Map;

use super::convert::{from_envelope_with_body, priority_and_expiration, published_ms};
use super::unacked::{Held, Unacked};
use super::{Fetched, FetchedBody, Receipt, State, StoredMessage, VirtualBackend};
use crate::entity::Queue;
use crate::envelope::delivery_count;
use crate::error::{Error, Result};
use crate::message::{Delivery, DeliveryInfo, RawMessage};

/// True when a message put back `returned` times is over its queue's
/// `x-delivery-limit` (RabbitMQ's rule: dead-lettered once it was returned
/// more often than the limit, so a limit of 3 allows 4 deliveries).
fn over_delivery_limit(returned: u64, declaration: Option<&Queue>) -> bool {
    declaration
        .and_then(|q| q.arguments.get("x-delivery-limit"))
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .is_some_and(|limit| returned > limit)
}

/// How a fetched message was admitted.
pub(super) enum Admitted {
    /// Hand it to the caller.
    Deliver(Box<Delivery>),
    /// Expired (dead-lettered or dropped): nothing to hand out.
    Skipped,
    /// Unreadable: rejected, and this says why.
    Corrupt(Error),
}

/// A fetched message made ready to hand out, before its delivery tag.
pub(super) struct Prepared {
    queue: String,
    receipt: Receipt,
    held: Held,
    message: RawMessage,
    info: DeliveryInfo,
}

impl<B: VirtualBackend> State<B> {
    /// The queue's declaration if this channel has it at hand (`None`:
    /// not read yet).
    pub(super) fn known_declaration(&self, queue: &str) -> Option<Option<std::sync::Arc<Queue>>> {
        self.lock().declarations.get(queue).cloned()
    }

    /// Ready `fetched` for delivery without waiting for anything; hands it
    /// back when it needs the slow way ([`admit`](Self::admit)): expired
    /// or unreadable.
    #[allow(clippy::result_large_err)] // the Err is the input, handed back
    pub(super) fn prepare(
        &self,
        fetched: Fetched,
        declaration: Option<&Queue>,
    ) -> std::result::Result<Prepared, Fetched> {
        let Fetched {
            queue,
            receipt,
            body,
            returned,
        } = fetched;
        let broker_returned = returned.unwrap_or(0);
        let (message, info, held) = match body {
            FetchedBody::Envelope(mut envelope) => {
                let ttl = priority_and_expiration(&envelope).1;
                if self.expired(published_ms(&envelope), ttl, declaration)
                    || over_delivery_limit(
                        delivery_count(&envelope.headers).max(broker_returned),
                        declaration,
                    )
                {
                    let body = FetchedBody::Envelope(envelope);
                    return Err(Fetched {
                        queue,
                        receipt,
                        body,
                        returned,
                    });
                }
                let body = Bytes::from(std::mem::take(&mut envelope.body));
                let (message, info) = from_envelope_with_body(&envelope, body.clone());
                (message, info, Held::Envelope { envelope, body })
            }
            FetchedBody::Message(stored) => {
                if self.expired(stored.published_ms(), stored.expiration(), declaration)
                    || over_delivery_limit(
                        stored.delivery_count().max(broker_returned),
                        declaration,
                    )
                {
                    let body = FetchedBody::Message(stored);
                    return Err(Fetched {
                        queue,
                        receipt,
                        body,
                        returned,
                    });
                }
                let (message, info) = (stored.to_raw_message(), stored.delivery_info());
                (message, info, Held::Message(stored))
            }
            body => {
                return Err(Fetched {
                    queue,
                    receipt,
                    body,
                    returned,
                })
            }
        };
        Ok(Prepared {
            queue,
            receipt,
            held,
            message,
            info,
        })
    }

    /// Give each prepared message its delivery tag and hold it as unacked
    /// (one lock for the lot, tags in order); `no_ack` messages are not
    /// held (the caller settles them). Boxed: a delivery is handed along
    /// to its [`Message`](crate::Message) without being copied.
    #[allow(clippy::vec_box)]
    pub(super) fn hand_out(
        &self,
        prepared: Vec<Prepared>,
        consumer_tag: Option<&str>,
        no_ack: bool,
    ) -> Vec<Box<Delivery>> {
        let mut out = Vec::with_capacity(prepared.len());
        let mut inner = self.lock();
        for item in prepared {
            let Prepared {
                queue,
                receipt,
                held,
                message,
                mut info,
            } = item;
            let tag = inner.next_tag;
            inner.next_tag += 1;
            info.consumer_tag = consumer_tag.map(str::to_owned);
            info.queue = Some(queue.clone());
            info.receipt = Some(receipt.clone());
            if !no_ack {
                inner.unacked.insert(
                    tag,
                    Unacked {
                        queue,
                        receipt,
                        held,
                    },
                );
            }
            out.push(Box::new(Delivery::new(tag, message, info)));
        }
        out
    }

    /// Turn a fetched message into a delivery the slow way (or skip it
    /// when expired, or reject it when unreadable).
    pub(super) async fn admit(
        &self,
        fetched: Fetched,
        no_ack: bool,
        consumer_tag: Option<&str>,
    ) -> Result<Admitted> {
        let declaration = self.declaration(&fetched.queue).await?;
        let prepared = match self.prepare(fetched, declaration.as_deref()) {
            Ok(prepared) => prepared,
            Err(Fetched {
                queue,
                receipt,
                body,
                returned,
                ..
            }) => {
                return match body {
                    FetchedBody::Corrupt { raw, error } => {
                        self.reject_corrupt(&queue, &receipt, raw, &error).await?;
                        Ok(Admitted::Corrupt(error))
                    }
                    body => {
                        let Some(item) = Unacked::fetched(queue, receipt, body) else {
                            return Ok(Admitted::Skipped);
                        };
                        let message = item.held.into_stored();
                        let returned = message.delivery_count().max(returned.unwrap_or(0));
                        // RabbitMQ's x-death reasons.
                        let reason = if over_delivery_limit(returned, declaration.as_deref()) {
                            tracing::warn!(
                                queue = %item.queue,
                                deliveries = returned + 1,
                                "message over its queue's x-delivery-limit: dead-lettered"
                            );
                            "delivery_limit"
                        } else {
                            "expired"
                        };
                        self.dead_letter(&item.queue, message, reason).await?;
                        self.backend.ack(&item.queue, &item.receipt).await?;
                        Ok(Admitted::Skipped)
                    }
                };
            }
        };
        let settle = no_ack.then(|| (prepared.queue.clone(), prepared.receipt.clone()));
        let delivery = self
            .hand_out(vec![prepared], consumer_tag, no_ack)
            .pop()
            .expect("one delivery per prepared message");
        if let Some((queue, receipt)) = settle {
            self.backend.ack(&queue, &receipt).await?;
        }
        Ok(Admitted::Deliver(delivery))
    }

    async fn reject_corrupt(
        &self,
        queue: &str,
        receipt: &Receipt,
        raw: Vec<u8>,
        error: &Error,
    ) -> Result<()> {
        tracing::warn!(queue, error = %error, "unreadable message rejected");
        let mut headers = Map::new();
        headers.insert("x-kombu-error".into(), error.to_string().into());
        let wrapped = StoredMessage::new(
            RawMessage {
                body: raw.into(),
                content_type: Some("application/data".into()),
                content_encoding: Some("binary".into()),
                headers,
                properties: Default::default(),
                not_before: None,
            },
            "",
            queue,
        );
        self.dead_letter(queue, wrapped, "rejected").await?;
        self.backend.ack(queue, receipt).await
    }
}
