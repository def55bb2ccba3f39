//! The conformance suite on `mongodb://` (KOMBU_TEST_MONGODB_URL).

use kombu_core::Connection;

fn connect() -> Option<Connection> {
    kombu_testkit::connection_for("mongodb", kombu_mongo::register)
}

kombu_testkit::conformance_tests!(connect);
