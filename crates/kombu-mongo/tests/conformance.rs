//! The conformance suite on `mongodb://` (KOMBU_TEST_MONGODB_URL).
//!
//! The checks run one at a time: the test server (SecantusDB) serves one
//! request at a time and scans a queue on every claim, so a check with a
//! 200-message backlog running beside `queue_ttl_expires` (150 ms TTL)
//! slows it past its TTL. A check takes its turn before it makes its
//! connection and gives it back when the test drops the connection (the
//! connection is the transport's own: nothing wraps it).

use std::ops::Deref;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kombu_core::{Connection, Registry};

/// True while a check runs.
static BUSY: Mutex<bool> = Mutex::new(false);
static TURN_ENDED: Condvar = Condvar::new();

/// A check's turn: taken when made (waiting at most 2 minutes, so a check
/// that never ends does not stall the others forever), given back when
/// dropped.
struct Turn;

impl Turn {
    fn take() -> Turn {
        let busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        let (mut busy, _) = TURN_ENDED
            .wait_timeout_while(busy, Duration::from_secs(120), |busy| *busy)
            .unwrap_or_else(|e| e.into_inner());
        *busy = true;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(|e| e.into_inner()) = false;
        TURN_ENDED.notify_one();
    }
}

/// A check's connection and its turn (fields drop in order: the
/// connection first).
struct Taken {
    conn: Connection,
    _turn: Turn,
}

impl Deref for Taken {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

fn connect() -> Option<Taken> {
    let url = kombu_testkit::test_url("mongodb")?;
    let turn = Turn::take();
    let mut registry = Registry::new();
    kombu_mongo::register(&mut registry);
    let conn = Connection::with_registry(&url, Arc::new(registry)).expect("KOMBU_TEST_MONGODB_URL");
    Some(Taken { conn, _turn: turn })
}

/// The lease check's connection: a 2 s lease, not renewed (so an
/// unextended one lapses), claimable again at once (polling every 100 ms).
fn short_lease() -> Option<Taken> {
    let url = kombu_testkit::test_url("mongodb")?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}lease_timeout=2&lease_renew_interval=0");
    let turn = Turn::take();
    let mut registry = Registry::new();
    kombu_mongo::register(&mut registry);
    let conn = Connection::with_registry(&url, Arc::new(registry)).expect("KOMBU_TEST_MONGODB_URL");
    Some(Taken { conn, _turn: turn })
}

kombu_testkit::conformance_tests!(connect, lease: short_lease);
