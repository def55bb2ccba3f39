//! The conformance suite every kombu-rs transport runs.
//!
//! Each check is a plain `pub async fn(&Connection) -> Result<()>` in
//! [`checks`]; [`conformance_tests!`] expands them into one `#[tokio::test]`
//! each. A check the transport's [`Capabilities`](kombu_core::Capabilities)
//! rule out prints a `SKIP` line and passes.
//!
//! Every check ends: it runs within [`CHECK_DEADLINE`] (120 s;
//! `KOMBU_TEST_CHECK_SECS` overrides it), each wait for a message within
//! [`RECV_TIMEOUT`], and its consumers reconnect a few times only
//! ([`test_reconnect_policy`]), so a dead server fails the check with the
//! connection error, the check's name and its last [`step`]. A "nothing
//! else arrived" check publishes a sentinel message and reads up to it
//! rather than waiting out a fixed window.
//!
//! A test that needs a server reads `KOMBU_TEST_<NAME>_URL` through
//! [`test_url`]. Without it the test prints a skip line naming the
//! variable; with `KOMBU_TEST_REQUIRE=1` (CI sets it) a missing URL fails.
//!
//! ```
//! // In crates/kombu-foo/tests/conformance.rs:
//! // fn connect() -> Option<kombu_core::Connection> {
//! //     kombu_testkit::connection_for("foo", kombu_foo::register)
//! // }
//! // kombu_testkit::conformance_tests!(connect);
//! assert!(kombu_testkit::unique("q").starts_with("q-"));
//! ```

pub mod checks;
mod garbage;
pub mod liveness;
pub mod raw_bench;
mod support;
pub mod tls;

pub use garbage::{GarbagePath, HookError, GARBAGE};
#[doc(hidden)]
pub use kombu_core as __kombu_core;
pub use liveness::{with_query, FrozenProxy};
pub use support::{
    connection_for, consumer_builder, python_peer, recv, recv_n, recv_within, require_env,
    run_check, run_python, skip, step, test_reconnect_policy, test_url, unique, ChildLines,
    Cleanup, CHECK_DEADLINE, RECV_TIMEOUT,
};

/// Expand the conformance checks into `#[tokio::test]`s. `$connect` is a
/// function `fn() -> Option<kombu_core::Connection>`; `None` means the
/// server is not configured (the test prints why and passes, or fails under
/// `KOMBU_TEST_REQUIRE=1`).
///
/// `garbage: $write` is required (a transport without it does not
/// compile): an `async fn(&Connection, &str, &[u8]) -> Result<GarbagePath,
/// HookError>` that writes the bytes, with the transport's raw client,
/// where the transport keeps the messages of the queue named by the second
/// argument, for [`checks::garbage_value_is_quarantined`].
///
/// `lease: $short` names a second function giving a connection whose lease
/// (`visibility_timeout`) is a few seconds and whose broker restores
/// promptly, for the lease-extension check; without it that check runs on
/// `$connect` (enough where deliveries stay reserved while the channel
/// lives, or where lease extension is refused).
///
/// ```
/// use kombu_testkit::{GarbagePath, HookError};
///
/// /// LPUSH, SendMessage, put... with the transport's own client.
/// async fn write_garbage(
///     conn: &kombu_core::Connection,
///     queue: &str,
///     bytes: &[u8],
/// ) -> Result<GarbagePath, HookError> {
///     let _ = (conn, queue, bytes);
///     Err("this example has no raw client".into())
/// }
///
/// fn connect() -> Option<kombu_core::Connection> {
///     None // no server configured: every test prints a skip line
/// }
///
/// kombu_testkit::conformance_tests!(connect, garbage: write_garbage);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($connect:path, lease: $short:path, garbage: $write:path $(,)?) => {
        $crate::conformance_tests!(@checks $connect);
        $crate::conformance_tests!(@each $short; lease_extension_keeps_a_message);
        $crate::conformance_tests!(@garbage $connect, $write);
    };
    ($connect:path, garbage: $write:path $(,)?) => {
        $crate::conformance_tests!(@checks $connect);
        $crate::conformance_tests!(@each $connect; lease_extension_keeps_a_message);
        $crate::conformance_tests!(@garbage $connect, $write);
    };
    (@garbage $connect:path, $write:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn garbage_value_is_quarantined() {
            let Some(conn) = $connect() else { return };
            let raw: &$crate::__kombu_core::Connection = &conn;
            $crate::run_check(
                "garbage_value_is_quarantined",
                &conn,
                $crate::checks::garbage_value_is_quarantined(
                    &conn,
                    |queue: String, bytes: Vec<u8>| async move { $write(raw, &queue, &bytes).await },
                ),
            )
            .await;
        }
    };
    (@checks $connect:path) => {
        $crate::conformance_tests!(@each $connect;
            basic_publish_consume_ack,
            publish_many_and_concurrent_publishes,
            default_exchange_routes_by_queue_name,
            direct_exchange,
            topic_exchange,
            fanout_exchange,
            headers_exchange,
            unroutable_mandatory_is_an_error,
            requeue_sets_redelivered,
            reject_without_requeue_removes,
            ack_twice_is_an_error,
            prefetch_limits_unacked,
            purge_and_size,
            serializers_round_trip,
            compression_round_trip,
            raw_and_text_bodies,
            accept_list_refuses_other_content,
            headers_and_properties_round_trip,
            priorities_higher_first,
            message_ttl_expires,
            delayed_message_waits_its_time,
            queue_ttl_expires,
            dead_letter_on_reject,
            delivery_limit_dead_letters,
            rejected_message_is_quarantined,
            max_length_drops_oldest,
            large_body_1mib,
            many_producers_many_consumers,
            dropped_consumer_redelivers,
            consumer_on_several_queues,
            simple_queue_put_get
        );
    };
    (@each $connect:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(conn) = $connect() else { return };
                $crate::run_check(stringify!($name), &conn, $crate::checks::$name(&conn)).await;
            }
        )*
    };
}
