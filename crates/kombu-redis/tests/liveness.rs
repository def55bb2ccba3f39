//! The shared liveness suite: heartbeats (PING) and a server that stops
//! answering (a frozen proxy), found within the 1 s response timeout.

kombu_testkit::liveness_tests!("redis", kombu_redis::register, query = "socket_timeout=1");
