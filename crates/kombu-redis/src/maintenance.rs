//! Background work of a transport: restoring messages unacked past
//! `visibility_timeout` (every `unacked_restore_interval`), keeping binding
//! tables of expiring queues alive, moving due delayed messages of the
//! queues this connection delayed messages in, and the health check PING.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::backend::Shared;

pub(crate) fn spawn(shared: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let weak = Arc::downgrade(shared);
    let every = shared
        .config
        .unacked_restore_interval
        .max(Duration::from_millis(100));
    tasks.push(tokio::spawn(restore_loop(weak.clone(), every)));
    let health = shared.config.health_check_interval;
    if !health.is_zero() {
        tasks.push(tokio::spawn(health_loop(weak.clone(), health)));
    }
    tasks.push(tokio::spawn(delayed_loop(weak.clone())));
    tasks.push(tokio::spawn(binding_loop(weak)));
    tasks
}

/// How often the delayed messages this connection stored are looked at
/// (a consumer's fetch moves them too, at once).
const DELAYED_EVERY: Duration = Duration::from_millis(200);

async fn delayed_loop(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(DELAYED_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(err) = shared.move_due_delayed().await {
            tracing::debug!(error = %err, "moving due delayed messages failed");
        }
    }
}

async fn restore_loop(shared: Weak<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match shared.restore_visible().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                restored = n,
                "restored messages unacked past visibility_timeout"
            ),
            Err(err) => tracing::warn!(error = %err, "restoring unacked messages failed"),
        }
    }
}

async fn health_loop(shared: Weak<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut conn = shared.conn.clone();
        if let Err(err) = conn.ping().await {
            tracing::warn!(error = %err, "redis health check failed (the connection reconnects)");
        }
    }
}

async fn binding_loop(shared: Weak<Shared>) {
    loop {
        let wait = match shared.upgrade() {
            Some(s) => s.refresh_interval().unwrap_or(Duration::from_secs(60)),
            None => return,
        };
        tokio::time::sleep(wait.clamp(Duration::from_secs(1), Duration::from_secs(60))).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(err) = shared.refresh_bindings().await {
            tracing::warn!(error = %err, "refreshing expiring binding tables failed");
        }
    }
}
