//! The shared liveness suite: heartbeats (`list-tube-used`) and a server
//! that stops answering (a frozen proxy), found within the 1 s socket timeout.

kombu_testkit::liveness_tests!(
    "beanstalk",
    kombu_beanstalk::register,
    query = "socket_timeout=1"
);
