//! Redis client errors as kombu-rs errors (never with a password: the
//! redis crate's errors do not carry the connection info).

use kombu_core::{Error, ErrorKind};
use redis::{ErrorKind as RedisKind, RedisError, ServerErrorKind};

/// The kombu-rs error for a Redis client error.
pub fn map_redis(err: RedisError) -> Error {
    let kind = if err.is_timeout() {
        ErrorKind::Timeout
    } else if err.is_connection_refusal() {
        ErrorKind::ConnectionRefused
    } else if err.is_connection_dropped() || err.is_io_error() {
        ErrorKind::ConnectionLost
    } else {
        match err.kind() {
            RedisKind::AuthenticationFailed => ErrorKind::Auth,
            RedisKind::Server(ServerErrorKind::NoPerm) => ErrorKind::Auth,
            RedisKind::InvalidClientConfig => ErrorKind::InvalidOption,
            RedisKind::Parse | RedisKind::UnexpectedReturnType => ErrorKind::Protocol,
            _ if is_auth_code(err.code()) => ErrorKind::Auth,
            // A master demoted to a replica (a Sentinel failover, this
            // connection still on the old address): connect again, through
            // the sentinels.
            _ if matches!(err.code(), Some("READONLY" | "MASTERDOWN")) => ErrorKind::ConnectionLost,
            // A cluster moving a slot or failing over, seen where the
            // client does not follow it (a pipeline, a script load): a
            // new connection reads the slot map afresh.
            RedisKind::Server(
                ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown,
            ) => ErrorKind::ConnectionLost,
            _ => ErrorKind::Other,
        }
    };
    Error::new(kind, format!("redis: {err}")).with_source(err)
}

fn is_auth_code(code: Option<&str>) -> bool {
    matches!(code, Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// True when the server wants a login (or refused the one sent).
pub(crate) fn needs_auth(err: &RedisError) -> bool {
    matches!(err.kind(), RedisKind::AuthenticationFailed) || is_auth_code(err.code())
}
