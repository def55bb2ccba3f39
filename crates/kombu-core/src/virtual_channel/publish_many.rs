//! A batch publish on a virtual transport: every message routed, then each
//! queue's share stored with one [`VirtualBackend::put_many`] call.

use std::collections::HashMap;

use super::{now_ms, State, StoredMessage, VirtualBackend};
use crate::entity::ExchangeType;
use crate::error::{Error, Result};
use crate::routing::route;

/// The same error again (an [`Error`] is not `Clone`: its source is not).
pub(super) fn copy_error(error: &Error) -> Error {
    Error::new(error.kind(), error.message().to_owned())
}

/// The messages bound for one queue: (index in the batch, message, priority).
type Share = Vec<(usize, StoredMessage, u8)>;

impl<B: VirtualBackend> State<B> {
    /// Route each message through `exchange` with `routing_key` and store
    /// them, one `put_messages` per queue; one result per message, in order.
    pub(super) async fn route_and_put_many(
        &self,
        exchange: &str,
        routing_key: &str,
        messages: Vec<(StoredMessage, u8)>,
        mandatory: bool,
    ) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = messages.iter().map(|_| Ok(())).collect();
        let shares = match self
            .share_out(exchange, routing_key, messages, mandatory, &mut results)
            .await
        {
            Ok(shares) => shares,
            Err(err) => {
                return results.iter().map(|_| Err(copy_error(&err))).collect();
            }
        };
        for (queue, share) in shares {
            let indexes: Vec<usize> = share.iter().map(|(index, _, _)| *index).collect();
            if let Err(err) = self.put_share(&queue, share).await {
                for index in indexes {
                    results[index] = Err(copy_error(&err));
                }
            }
        }
        results
    }

    /// Which queue gets which envelopes; unroutable ones are handled here
    /// (their outcome written into `results`).
    async fn share_out(
        &self,
        exchange: &str,
        routing_key: &str,
        messages: Vec<(StoredMessage, u8)>,
        mandatory: bool,
        results: &mut [Result<()>],
    ) -> Result<Vec<(String, Share)>> {
        if exchange.is_empty() {
            let share = messages
                .into_iter()
                .enumerate()
                .map(|(index, (message, priority))| (index, message, priority))
                .collect();
            return Ok(vec![(routing_key.to_owned(), share)]);
        }
        let kind = self
            .backend
            .exchange(exchange)
            .await?
            .map(|e| e.kind)
            .unwrap_or(ExchangeType::Direct);
        let bindings = self.backend.bindings(exchange).await?;
        let mut order: Vec<String> = Vec::new();
        let mut shares: HashMap<String, Share> = HashMap::new();
        for (index, (message, priority)) in messages.into_iter().enumerate() {
            if kind == ExchangeType::Fanout {
                match self
                    .backend
                    .put_fanout(exchange, routing_key, &message.to_envelope())
                    .await
                {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(err) => {
                        results[index] = Err(err);
                        continue;
                    }
                }
            }
            let queues = route(kind, &bindings, routing_key, message.headers());
            if queues.is_empty() {
                results[index] = self
                    .unroutable(exchange, routing_key, message, priority, mandatory)
                    .await;
                continue;
            }
            let Some((last, others)) = queues.split_last() else {
                continue;
            };
            for queue in others.iter().chain(std::iter::once(last)) {
                if !shares.contains_key(*queue) {
                    order.push((*queue).to_owned());
                }
            }
            for queue in others {
                shares.entry((*queue).to_owned()).or_default().push((
                    index,
                    message.clone(),
                    priority,
                ));
            }
            shares
                .entry((*last).to_owned())
                .or_default()
                .push((index, message, priority));
        }
        Ok(order
            .into_iter()
            .filter_map(|queue| shares.remove(&queue).map(|share| (queue, share)))
            .collect())
    }

    /// Store one queue's share: the publish time where a TTL needs it,
    /// then one `put_messages`, then the queue's max length.
    async fn put_share(&self, queue: &str, share: Share) -> Result<()> {
        let declaration = self.declaration(queue).await?;
        let queue_ttl = declaration.as_ref().and_then(|q| q.message_ttl);
        let now = now_ms();
        let messages = share
            .into_iter()
            .map(|(_, mut message, priority)| {
                if queue_ttl.is_some() || message.has_expiration() {
                    message.stamp_published(now);
                }
                (message, priority)
            })
            .collect();
        self.backend.put_messages(queue, messages).await?;
        if let Some(max) = declaration.as_ref().and_then(|q| q.max_length) {
            Box::pin(self.enforce_max_length(queue, max)).await?;
        }
        Ok(())
    }
}
