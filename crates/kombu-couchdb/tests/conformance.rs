//! The conformance suite on `couchdb://` (pouchdb-server or CouchDB 3,
//! `KOMBU_TEST_COUCHDB_URL`).
//!
//! The checks run one at a time: pouchdb-server (the stand-in used here)
//! has crashed under many concurrent writers ("Cannot read properties of
//! undefined (reading 'id')" inside pouchdb-core). Each check's test thread
//! takes a process-wide lock in `connect` and keeps it until the thread
//! ends (libtest runs each test on its own thread).

use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use kombu_core::Connection;
use kombu_testkit::{GarbagePath, HookError};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

thread_local! {
    static TURN: RefCell<Option<MutexGuard<'static, ()>>> = const { RefCell::new(None) };
}

fn connect() -> Option<Connection> {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    TURN.with(|slot| *slot.borrow_mut() = Some(turn));
    kombu_testkit::connection_for("couchdb", kombu_couchdb::register)
}

/// The lease check's connection: a 2 s lease (`visibility_timeout`),
/// claimed again by the next claim after it ran out.
fn short_lease() -> Option<Connection> {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    TURN.with(|slot| *slot.borrow_mut() = Some(turn));
    let url = kombu_testkit::test_url("couchdb")?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}visibility_timeout=2");
    let mut registry = kombu_core::Registry::new();
    kombu_couchdb::register(&mut registry);
    Some(
        Connection::with_registry(&url, std::sync::Arc::new(registry))
            .expect("KOMBU_TEST_COUCHDB_URL"),
    )
}

/// The garbage check's raw write: a message document for the queue (id
/// and fields as the transport lays them out) whose `payload` is the bytes
/// (as text: kombu stores the envelope as a JSON string), not an envelope;
/// PUT with plain HTTP.
async fn write_garbage(
    _conn: &Connection,
    queue: &str,
    bytes: &[u8],
) -> Result<GarbagePath, HookError> {
    let url = kombu_testkit::test_url("couchdb").ok_or("KOMBU_TEST_COUCHDB_URL")?;
    let (_, rest) = url.split_once("://").ok_or("a couchdb:// URL")?;
    let mut document_url = url::Url::parse(&format!("http://{rest}"))?;
    let seq = "0000000000000000-000000-garbage0";
    let id = kombu_couchdb::layout::message_id(queue, 0, seq);
    document_url
        .path_segments_mut()
        .map_err(|()| "a base URL")?
        .push(&id);
    let document = serde_json::json!({
        "kombu": "message",
        "queue": queue,
        "payload": String::from_utf8(bytes.to_vec())?,
        "priority": 0,
        "rank": kombu_couchdb::layout::rank(0),
        "seq": seq,
        "published_at": 0,
        "lease_owner": null,
        "lease_id": null,
        "leased_at": null,
        "lease_until": 0,
        "deliveries": 0,
    });
    let put = reqwest::Client::new()
        .put(document_url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&document)?)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    if !put.status().is_success() {
        return Err(format!("CouchDB answered {} to the PUT", put.status()).into());
    }
    Ok(GarbagePath::Unreadable)
}

kombu_testkit::conformance_tests!(connect, lease: short_lease, garbage: write_garbage);
