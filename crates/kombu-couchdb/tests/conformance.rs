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

use kombu_core::Connection;

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

kombu_testkit::conformance_tests!(connect, lease: short_lease);
