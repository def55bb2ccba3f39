//! What a connection has declared (kombu's `maybe_declare` cache), so that
//! it can be declared again after a reconnect.

use std::sync::Mutex;

use crate::entity::{Exchange, Queue};
use crate::error::Result;
use crate::transport::Transport;

/// Exchanges and queues (with their bindings) declared through a
/// connection, in the order they were first declared.
#[derive(Default)]
pub(crate) struct Topology {
    entities: Mutex<Entities>,
}

#[derive(Default, Clone)]
struct Entities {
    exchanges: Vec<Exchange>,
    queues: Vec<Queue>,
}

impl Topology {
    fn entities(&self) -> std::sync::MutexGuard<'_, Entities> {
        self.entities.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when an exchange of this name was declared already.
    pub(crate) fn has_exchange(&self, name: &str) -> bool {
        self.entities().exchanges.iter().any(|e| e.name == name)
    }

    /// Remember an exchange (replacing one of the same name).
    pub(crate) fn remember_exchange(&self, exchange: &Exchange) {
        if exchange.is_default() || exchange.passive {
            return;
        }
        let mut entities = self.entities();
        match entities
            .exchanges
            .iter_mut()
            .find(|e| e.name == exchange.name)
        {
            Some(known) => *known = exchange.clone(),
            None => entities.exchanges.push(exchange.clone()),
        }
    }

    /// Remember a queue with its exchanges and bindings (replacing one of
    /// the same name). Server-named queues are not remembered: a reconnect
    /// gets a new name.
    pub(crate) fn remember_queue(&self, queue: &Queue) {
        if queue.name.is_empty() {
            return;
        }
        let mut entities = self.entities();
        match entities.queues.iter_mut().find(|q| q.name == queue.name) {
            Some(known) => *known = queue.clone(),
            None => entities.queues.push(queue.clone()),
        }
    }

    /// Forget an exchange or queue of this name; true if one was known.
    pub(crate) fn forget(&self, name: &str) -> bool {
        let mut entities = self.entities();
        let before = entities.exchanges.len() + entities.queues.len();
        entities.exchanges.retain(|e| e.name != name);
        entities.queues.retain(|q| q.name != name);
        before != entities.exchanges.len() + entities.queues.len()
    }

    /// The names of what is remembered: exchanges, then queues.
    pub(crate) fn names(&self) -> (Vec<String>, Vec<String>) {
        let entities = self.entities();
        (
            entities.exchanges.iter().map(|e| e.name.clone()).collect(),
            entities.queues.iter().map(|q| q.name.clone()).collect(),
        )
    }

    /// Declare everything remembered on a new transport: exchanges first,
    /// then queues with their bindings. A connection error fails the whole
    /// recovery (the caller tries again); any other error is logged and
    /// that entity forgotten, so one bad declaration does not keep the
    /// connection down.
    pub(crate) async fn recover(&self, transport: &dyn Transport) -> Result<()> {
        let snapshot = self.entities().clone();
        if snapshot.exchanges.is_empty() && snapshot.queues.is_empty() {
            return Ok(());
        }
        let channel = transport.create_channel().await?;
        let mut failed = Vec::new();
        for exchange in &snapshot.exchanges {
            if let Err(err) = exchange.declare(channel.as_ref()).await {
                if err.is_connection_error() {
                    return Err(err);
                }
                tracing::warn!(exchange = %exchange.name, error = %err, "could not declare the exchange again after reconnecting; forgetting it");
                failed.push(exchange.name.clone());
            }
        }
        for queue in &snapshot.queues {
            if let Err(err) = queue.declare(channel.as_ref()).await {
                if err.is_connection_error() {
                    return Err(err);
                }
                tracing::warn!(queue = %queue.name, error = %err, "could not declare the queue again after reconnecting; forgetting it");
                failed.push(queue.name.clone());
            }
        }
        for name in failed {
            self.forget(&name);
        }
        tracing::debug!(
            exchanges = snapshot.exchanges.len(),
            queues = snapshot.queues.len(),
            "declarations recovered"
        );
        if let Err(err) = channel.close().await {
            tracing::debug!(error = %err, "closing the recovery channel failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_by_name_and_forgets() {
        let topology = Topology::default();
        let logs = Exchange::topic("logs");
        topology.remember_exchange(&logs);
        topology.remember_exchange(&Exchange::default_exchange());
        topology.remember_queue(&Queue::new("errors").bind(&logs, "*.error"));
        topology.remember_queue(&Queue::new("errors").bind(&logs, "#"));
        topology.remember_queue(&Queue::new(""));
        assert!(topology.has_exchange("logs"));
        assert_eq!(
            topology.names(),
            (vec!["logs".to_owned()], vec!["errors".to_owned()])
        );
        assert!(topology.forget("errors"));
        assert!(!topology.forget("errors"));
        assert_eq!(topology.names().1, Vec::<String>::new());
    }
}
