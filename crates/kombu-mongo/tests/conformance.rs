//! The conformance suite on `mongodb://` (KOMBU_TEST_MONGODB_URL).
//!
//! The checks run one at a time: the test server (SecantusDB) serves one
//! request at a time and scans a queue on every claim, so a check with a
//! 200-message backlog running beside `queue_ttl_expires` (150 ms TTL)
//! slows it past its TTL. A check waits for its turn before it makes its
//! connection (not inside `connect`, which kombu bounds by
//! `connect_timeout`), and its transport gives the turn back when it
//! closes or is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kombu_core::spi::{async_trait, Transport, TransportFactory, VirtualFactory};
use kombu_core::{
    BrokerUrl, Capabilities, Channel, Connection, ConnectionOptions, Registry, Result,
    TransportInfo,
};

/// True while a check's transport is open.
static BUSY: Mutex<bool> = Mutex::new(false);
static TURN_ENDED: Condvar = Condvar::new();

/// Wait (at most 2 minutes: a check that never closes must not stall the
/// others forever) until no other check runs, then take the turn.
fn take_turn() {
    let busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
    let (mut busy, _) = TURN_ENDED
        .wait_timeout_while(busy, Duration::from_secs(120), |busy| *busy)
        .unwrap_or_else(|e| e.into_inner());
    *busy = true;
}

fn end_turn() {
    *BUSY.lock().unwrap_or_else(|e| e.into_inner()) = false;
    TURN_ENDED.notify_one();
}

/// `mongodb://` whose transports take turns.
struct TakingTurns;

struct Turn {
    inner: Arc<dyn Transport>,
    ended: AtomicBool,
}

impl Turn {
    /// Give the turn back, once.
    fn end(&self) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            end_turn();
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.end();
    }
}

#[async_trait]
impl TransportFactory for TakingTurns {
    fn info(&self) -> &'static TransportInfo {
        &kombu_mongo::INFO
    }
    async fn connect(
        &self,
        url: &BrokerUrl,
        options: &ConnectionOptions,
    ) -> Result<Arc<dyn Transport>> {
        match VirtualFactory::new(&kombu_mongo::INFO, kombu_mongo::open)
            .connect(url, options)
            .await
        {
            Ok(inner) => Ok(Arc::new(Turn {
                inner,
                ended: AtomicBool::new(false),
            })),
            Err(err) => {
                end_turn();
                Err(err)
            }
        }
    }
}

#[async_trait]
impl Transport for Turn {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn create_channel(&self) -> Result<Arc<dyn Channel>> {
        self.inner.create_channel().await
    }
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
    async fn heartbeat_check(&self) -> Result<()> {
        self.inner.heartbeat_check().await
    }
    async fn close(&self) -> Result<()> {
        let result = self.inner.close().await;
        self.end();
        result
    }
}

fn connect() -> Option<Connection> {
    let url = kombu_testkit::test_url("mongodb")?;
    take_turn();
    let mut registry = Registry::new();
    registry.register(Arc::new(TakingTurns));
    Some(Connection::with_registry(&url, Arc::new(registry)).expect("KOMBU_TEST_MONGODB_URL"))
}

kombu_testkit::conformance_tests!(connect);
