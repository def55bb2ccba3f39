//! The shared liveness suite: heartbeats (`GET /`) and a server that stops
//! answering, found within the 1 s request timeout.

kombu_testkit::liveness_tests!(
    "couchdb",
    kombu_couchdb::register,
    query = "request_timeout=1"
);
