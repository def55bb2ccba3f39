//! The conformance suite on `amqp://` (RabbitMQ at `KOMBU_TEST_AMQP_URL`).

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("amqp", kombu_amqp::register)
}

kombu_testkit::conformance_tests!(connect);
