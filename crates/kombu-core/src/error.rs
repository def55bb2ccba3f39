//! The one error type of kombu-rs, with a kind to match on.
//!
//! Every fallible call returns [`Result<T>`]. An [`Error`] carries an
//! [`ErrorKind`], a human message (never a password: URLs are masked before
//! they reach an error) and, where there is one, the underlying error as its
//! [`source`](std::error::Error::source) for downcasting.

use std::fmt;

/// What went wrong, broadly. Match on it; new kinds may be added.
///
/// ```
/// use kombu_core::{Error, ErrorKind};
/// let err = Error::new(ErrorKind::Timeout, "no answer in 5 s");
/// assert_eq!(err.kind(), ErrorKind::Timeout);
/// assert!(err.is_recoverable());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A broker URL could not be parsed; the message names the wrong part.
    InvalidUrl,
    /// No transport is registered for the URL's scheme.
    UnknownScheme,
    /// The scheme is known, but the cargo feature that provides it is off.
    FeatureDisabled,
    /// An option (keyword or transport option) has a bad name or value.
    InvalidOption,
    /// The broker refused the connection (nothing listens, or it said no).
    ConnectionRefused,
    /// An established connection was lost.
    ConnectionLost,
    /// The channel was closed by the broker or by us.
    ChannelClosed,
    /// An operation did not complete in time.
    Timeout,
    /// Authentication or authorisation failed.
    Auth,
    /// A queue, exchange or message does not exist.
    NotFound,
    /// A declaration conflicts with an existing one (AMQP PRECONDITION_FAILED).
    PreconditionFailed,
    /// The transport cannot do this (for example fanout with fanout switched off).
    Unsupported,
    /// A body could not be serialized or deserialized.
    Serialization,
    /// A body could not be compressed or decompressed.
    Compression,
    /// A message's content type is not in the consumer's accept list.
    ContentDisallowed,
    /// The broker or the peer broke the protocol (or sent an envelope we cannot read).
    Protocol,
    /// A message was refused by the broker (nack, unroutable with mandatory, too large).
    Rejected,
    /// A pool or a queue is at its limit.
    LimitExceeded,
    /// The object was closed before the call.
    Closed,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// A short lowercase name, as used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidUrl => "invalid URL",
            ErrorKind::UnknownScheme => "unknown scheme",
            ErrorKind::FeatureDisabled => "feature disabled",
            ErrorKind::InvalidOption => "invalid option",
            ErrorKind::ConnectionRefused => "connection refused",
            ErrorKind::ConnectionLost => "connection lost",
            ErrorKind::ChannelClosed => "channel closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Auth => "authentication failed",
            ErrorKind::NotFound => "not found",
            ErrorKind::PreconditionFailed => "precondition failed",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Serialization => "serialization error",
            ErrorKind::Compression => "compression error",
            ErrorKind::ContentDisallowed => "content disallowed",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Rejected => "rejected",
            ErrorKind::LimitExceeded => "limit exceeded",
            ErrorKind::Closed => "closed",
            ErrorKind::Other => "error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every kombu-rs operation.
///
/// ```
/// use kombu_core::{Error, ErrorKind};
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
/// let err = Error::new(ErrorKind::ConnectionRefused, "cannot reach localhost:5672").with_source(io);
/// assert!(err.is_connection_error());
/// assert_eq!(err.to_string(), "connection refused: cannot reach localhost:5672");
/// ```
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind` with a message for people.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attach the underlying error (kept for [`std::error::Error::source`]).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when the connection is gone or could not be made: reconnecting may help
    /// (kombu's `connection_errors`).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ConnectionRefused | ErrorKind::ConnectionLost | ErrorKind::Timeout
        )
    }

    /// True when the channel failed but the connection may be fine: a new
    /// channel may help (kombu's `channel_errors`).
    pub fn is_channel_error(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ChannelClosed | ErrorKind::PreconditionFailed | ErrorKind::NotFound
        )
    }

    /// True when retrying the same operation (after reconnecting) may succeed.
    pub fn is_recoverable(&self) -> bool {
        self.is_connection_error() || matches!(self.kind, ErrorKind::ChannelClosed)
    }

    /// Downcast the source to a concrete error type.
    pub fn source_as<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.source.as_deref().and_then(|s| s.downcast_ref::<E>())
    }

    /// Shorthand for an [`ErrorKind::InvalidOption`] error.
    pub fn invalid_option(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidOption, message)
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// Shorthand for an [`ErrorKind::Protocol`] error.
    pub fn protocol(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Protocol, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.message)
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::new(ErrorKind::Serialization, err.to_string()).with_source(err)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_kind_and_message() {
        let e = Error::new(ErrorKind::NotFound, "queue `q` does not exist");
        assert_eq!(e.to_string(), "not found: queue `q` does not exist");
        assert!(e.is_channel_error());
        assert!(!e.is_connection_error());
    }

    #[test]
    fn source_is_kept_for_downcasting() {
        let io = std::io::Error::other("boom");
        let e = Error::new(ErrorKind::ConnectionLost, "lost").with_source(io);
        assert!(e.source_as::<std::io::Error>().is_some());
        assert!(e.is_recoverable());
    }
}
