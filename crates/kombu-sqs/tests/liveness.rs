//! The shared liveness suite: heartbeats (`ListQueues`) and an endpoint
//! that stops answering (a frozen proxy), found within the 1 s socket
//! timeout (the heartbeat after about 1 s, a publish after the SDK's
//! three attempts).

kombu_testkit::liveness_tests!("sqs", kombu_sqs::register, query = "socket_timeout=1");
