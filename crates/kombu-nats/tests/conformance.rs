//! The conformance suite on `nats://` (KOMBU_TEST_NATS_URL).

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("nats", kombu_nats::register)
}

kombu_testkit::conformance_tests!(connect);
