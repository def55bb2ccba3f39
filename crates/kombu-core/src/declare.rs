//! Declaring entities on a channel: the methods of [`Exchange`] and [`Queue`]
//! that talk to a [`Channel`].
//!
//! They live here rather than in `entity.rs` so that the entities, which
//! `transport.rs` uses in the `Channel` trait, do not depend on the transport
//! module in turn.

use crate::entity::{Exchange, Queue};
use crate::error::Result;
use crate::transport::{Channel, QueueInfo};

impl Exchange {
    /// Declare this exchange on `channel` (the default exchange needs nothing).
    pub async fn declare(&self, channel: &dyn Channel) -> Result<()> {
        if self.is_default() {
            return Ok(());
        }
        channel.exchange_declare(self).await
    }
}

impl Queue {
    /// Declare the queue's exchanges, the queue and its bindings on `channel`.
    pub async fn declare(&self, channel: &dyn Channel) -> Result<QueueInfo> {
        for exchange in &self.exchanges {
            exchange.declare(channel).await?;
        }
        let info = channel.queue_declare(self).await?;
        for binding in &self.bindings {
            if !binding.exchange.is_empty() {
                channel.queue_bind(&self.name, binding).await?;
            }
        }
        Ok(info)
    }
}
