//! The kombu-rs conformance suite on `sqs://` (moto in CI:
//! `KOMBU_TEST_SQS_URL=sqs://test:test@127.0.0.1:4566`).

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("sqs", kombu_sqs::register)
}

kombu_testkit::conformance_tests!(connect);
