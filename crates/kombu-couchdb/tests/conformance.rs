//! The conformance suite on `couchdb://` (pouchdb-server or CouchDB 3,
//! `KOMBU_TEST_COUCHDB_URL`).

use kombu_core::Connection;

fn connect() -> Option<Connection> {
    kombu_testkit::connection_for("couchdb", kombu_couchdb::register)
}

kombu_testkit::conformance_tests!(connect);
