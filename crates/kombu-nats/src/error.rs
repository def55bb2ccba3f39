//! async-nats errors as kombu-rs errors, with the kind the core acts on.
//! No password reaches them: the login goes to async-nats through its
//! options, never in the address it prints.

use async_nats::client::RequestErrorKind;
use kombu_core::{Error, ErrorKind};
use serde::Deserialize;

/// JetStream's error for a stream that does not exist.
const STREAM_NOT_FOUND: u64 = 10059;
/// JetStream's error for a consumer that does not exist.
const CONSUMER_NOT_FOUND: u64 = 10014;
/// A stream of that name exists with another configuration.
const STREAM_NAME_EXIST: u64 = 10058;
/// A consumer of that name exists with another configuration.
const CONSUMER_NAME_EXIST: u64 = 10013;

/// An error JetStream's API answered with (`{"error": {...}}`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ApiError {
    /// HTTP-like status (404, 503...).
    pub(crate) code: u16,
    /// JetStream's own error code (10059: stream not found...).
    #[serde(default)]
    pub(crate) err_code: u64,
    #[serde(default)]
    pub(crate) description: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (status {}, JetStream error {})",
            self.description, self.code, self.err_code
        )
    }
}

impl std::error::Error for ApiError {}

/// A request that got no answer or could not be sent.
pub(crate) fn request(doing: &str, err: async_nats::RequestError) -> Error {
    let kind = match err.kind() {
        RequestErrorKind::TimedOut => ErrorKind::Timeout,
        RequestErrorKind::NoResponders => ErrorKind::NotFound,
        RequestErrorKind::InvalidSubject => ErrorKind::InvalidOption,
        RequestErrorKind::MaxPayloadExceeded => ErrorKind::LimitExceeded,
        _ => other_kind(&err.to_string()),
    };
    Error::new(kind, format!("nats: {doing}: {err}")).with_source(err)
}

/// An error JetStream answered with.
pub(crate) fn jetstream(doing: &str, err: ApiError) -> Error {
    let kind = match err.err_code {
        STREAM_NOT_FOUND | CONSUMER_NOT_FOUND => ErrorKind::NotFound,
        STREAM_NAME_EXIST | CONSUMER_NAME_EXIST => ErrorKind::PreconditionFailed,
        _ if err.code == 503 => ErrorKind::ConnectionLost,
        _ if err.code == 401 || err.code == 403 => ErrorKind::Auth,
        _ => ErrorKind::Other,
    };
    Error::new(kind, format!("nats: {doing}: {err}")).with_source(err)
}

/// Any other client error (the key-value store's, a subscribe's).
pub(crate) fn client<E>(doing: &str, err: E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let text = err.to_string();
    Error::new(other_kind(&text), format!("nats: {doing}: {text}")).with_source(err)
}

/// The kind of an error known only by its text: a timeout or a broken
/// connection are connection errors (the core then replaces the
/// connection), the rest is `Other`.
fn other_kind(text: &str) -> ErrorKind {
    let text = text.to_ascii_lowercase();
    if text.contains("timed out") || text.contains("timeout") {
        ErrorKind::Timeout
    } else if text.contains("broken pipe")
        || text.contains("disconnected")
        || text.contains("connection")
        || text.contains("subscription dropped")
    {
        ErrorKind::ConnectionLost
    } else if text.contains("authoriz") || text.contains("permission") {
        ErrorKind::Auth
    } else {
        ErrorKind::Other
    }
}

/// A connect that failed.
pub(crate) fn connect(server: &str, err: async_nats::ConnectError) -> Error {
    use async_nats::ConnectErrorKind as K;
    let kind = match err.kind() {
        K::Authentication | K::AuthorizationViolation => ErrorKind::Auth,
        K::TimedOut => ErrorKind::Timeout,
        K::ServerParse => ErrorKind::InvalidUrl,
        K::Tls => ErrorKind::ConnectionRefused,
        _ => ErrorKind::ConnectionRefused,
    };
    Error::new(kind, format!("nats: cannot connect to {server}: {err}")).with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_text() {
        assert_eq!(other_kind("request timed out"), ErrorKind::Timeout);
        assert_eq!(other_kind("broken pipe"), ErrorKind::ConnectionLost);
        assert_eq!(other_kind("wrong last revision"), ErrorKind::Other);
    }
}
