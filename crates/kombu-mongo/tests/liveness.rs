//! The shared liveness suite: heartbeats (`ping`) and a server that stops
//! answering (a frozen proxy), found within the 1 s socket timeout (`directConnection`: the driver keeps
//! to the proxy rather than the address the server reports).

kombu_testkit::liveness_tests!(
    "mongodb",
    kombu_mongo::register,
    query = "socket_timeout=1&directConnection=true"
);
