//! The conformance suite on `beanstalk://` (KOMBU_TEST_BEANSTALK_URL).

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("beanstalk", kombu_beanstalk::register)
}

kombu_testkit::conformance_tests!(connect);
