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
use kombu_testkit::{GarbagePath, HookError};

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

/// The garbage check's raw write: a document in `messages` for the queue
/// whose `payload` is the bytes (as text: kombu stores a string), not a
/// kombu message; priority 9 is kombu's stored form of priority 0.
async fn write_garbage(
    _conn: &Connection,
    queue: &str,
    bytes: &[u8],
) -> Result<GarbagePath, HookError> {
    let url = kombu_testkit::test_url("mongodb").ok_or("KOMBU_TEST_MONGODB_URL")?;
    let payload = String::from_utf8(bytes.to_vec())?;
    let insert = async {
        let client = mongodb::Client::with_uri_str(&url).await?;
        let database = client
            .default_database()
            .unwrap_or_else(|| client.database("kombu_default"));
        database
            .collection::<mongodb::bson::Document>("messages")
            .insert_one(mongodb::bson::doc! {
                "payload": payload,
                "queue": queue,
                "priority": 9,
            })
            .await?;
        Ok::<_, HookError>(())
    };
    tokio::time::timeout(Duration::from_secs(10), insert).await??;
    Ok(GarbagePath::Unreadable)
}

kombu_testkit::conformance_tests!(connect, lease: short_lease, garbage: write_garbage);
