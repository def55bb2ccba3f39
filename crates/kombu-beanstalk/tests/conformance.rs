//! The conformance suite on `beanstalk://` (KOMBU_TEST_BEANSTALK_URL).

fn connect() -> Option<kombu_core::Connection> {
    kombu_testkit::connection_for("beanstalk", kombu_beanstalk::register)
}

/// The lease check's connection: jobs put with a 2 s ttr (beanstalkd
/// releases a job whose ttr ran out by itself).
fn short_lease() -> Option<kombu_core::Connection> {
    let url = kombu_testkit::test_url("beanstalk")?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}ttr=2");
    let mut registry = kombu_core::Registry::new();
    kombu_beanstalk::register(&mut registry);
    Some(
        kombu_core::Connection::with_registry(&url, std::sync::Arc::new(registry))
            .expect("KOMBU_TEST_BEANSTALK_URL"),
    )
}

kombu_testkit::conformance_tests!(connect, lease: short_lease);
