//! The shared liveness suite: heartbeats (JetStream account info) and a
//! server that stops answering (a frozen proxy), found within the 1 s
//! request timeout.

kombu_testkit::liveness_tests!("nats", kombu_nats::register, query = "request_timeout=1");
