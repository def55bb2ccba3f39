//! lapin errors as kombu [`Error`]s of the right [`ErrorKind`].
//!
//! Messages name the operation and what the broker said; they never hold a
//! password (lapin's errors do not carry the URI, and we never format it).

use std::io;

use kombu_core::{Error, ErrorKind};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// Where an error happened: while connecting, a failed socket means the
/// broker could not be reached; later it means the connection was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Connect,
    Operate,
}

/// The kind for an AMQP reply code (channel or connection close).
fn amqp_kind(kind: &AMQPErrorKind, text: &str, phase: Phase) -> ErrorKind {
    match kind {
        AMQPErrorKind::Soft(soft) => match soft {
            AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::RESOURCELOCKED => {
                ErrorKind::PreconditionFailed
            }
            AMQPSoftError::NOTFOUND => ErrorKind::NotFound,
            AMQPSoftError::ACCESSREFUSED => ErrorKind::Auth,
            AMQPSoftError::NOROUTE
            | AMQPSoftError::NOCONSUMERS
            | AMQPSoftError::CONTENTTOOLARGE => ErrorKind::Rejected,
        },
        AMQPErrorKind::Hard(hard) => match hard {
            AMQPHardError::NOTALLOWED if text.contains("not found") => ErrorKind::NotFound,
            AMQPHardError::NOTALLOWED => ErrorKind::Auth,
            AMQPHardError::CONNECTIONFORCED if phase == Phase::Connect => {
                ErrorKind::ConnectionRefused
            }
            AMQPHardError::CONNECTIONFORCED => ErrorKind::ConnectionLost,
            AMQPHardError::RESOURCEERROR => ErrorKind::LimitExceeded,
            _ => ErrorKind::Protocol,
        },
    }
}

fn io_kind(err: &io::Error, phase: Phase) -> ErrorKind {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => ErrorKind::ConnectionRefused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
        _ if phase == Phase::Connect => ErrorKind::ConnectionRefused,
        _ => ErrorKind::ConnectionLost,
    }
}

/// The kombu error for a lapin error raised by `operation`.
pub(crate) fn map_error(err: lapin::Error, operation: &str, phase: Phase) -> Error {
    let kind = kind_of(&err, phase);
    Error::new(kind, format!("{operation}: {err}")).with_source(err)
}

fn kind_of(err: &lapin::Error, phase: Phase) -> ErrorKind {
    use lapin::ErrorKind as L;
    match err.kind() {
        L::ProtocolError(amqp) => amqp_kind(amqp.kind(), amqp.get_message().as_str(), phase),
        L::IOError(io) | L::RuntimeShutdownError(io) => io_kind(io, phase),
        L::InvalidChannelState(..) | L::InvalidChannel(_) => ErrorKind::ChannelClosed,
        L::InvalidConnectionState(_) if phase == Phase::Connect => ErrorKind::ConnectionRefused,
        L::InvalidConnectionState(_) | L::MissingHeartbeatError => ErrorKind::ConnectionLost,
        L::ChannelsLimitReached => ErrorKind::LimitExceeded,
        L::AuthProviderError(_) => ErrorKind::Auth,
        L::InvalidProtocolVersion(_) | L::ParsingError(_) | L::SerialisationError(_) => {
            ErrorKind::Protocol
        }
        _ => ErrorKind::Other,
    }
}

/// Shorthand for an error while operating on an open connection.
pub(crate) fn op(operation: &'static str) -> impl Fn(lapin::Error) -> Error {
    move |err| map_error(err, operation, Phase::Operate)
}

/// What became of the connection an operation failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// Still up: the error is the operation's own.
    Up,
    /// Lost (closed by the broker, a dead socket, a missed heartbeat).
    Lost,
    /// Closed by us.
    Closed,
}

/// The kombu error for `err` raised by `operation` on a connection in
/// `state`: on a lost connection every failure is a
/// [`ErrorKind::ConnectionLost`] (the channel's own state errors included),
/// on one we closed an [`ErrorKind::Closed`].
pub(crate) fn map_error_on(err: lapin::Error, operation: &str, state: LinkState) -> Error {
    let kind = kind_of(&err, Phase::Operate);
    let connection_kind = matches!(
        kind,
        ErrorKind::ConnectionLost | ErrorKind::ConnectionRefused | ErrorKind::Timeout
    );
    let (kind, note) = match state {
        LinkState::Up => (kind, ""),
        _ if connection_kind => (kind, ""),
        LinkState::Lost => (ErrorKind::ConnectionLost, " (the connection was lost)"),
        LinkState::Closed => (ErrorKind::Closed, " (the connection was closed)"),
    };
    Error::new(kind, format!("{operation}: {err}{note}")).with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn protocol(kind: AMQPErrorKind, text: &str) -> lapin::Error {
        lapin::Error::from(lapin::ErrorKind::ProtocolError(AMQPError::new(
            kind,
            text.into(),
        )))
    }

    #[test]
    fn reply_codes_map_to_kinds() {
        let cases = [
            (
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
                ErrorKind::PreconditionFailed,
            ),
            (
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
                ErrorKind::NotFound,
            ),
            (
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
                ErrorKind::Auth,
            ),
            (
                AMQPErrorKind::Soft(AMQPSoftError::NOROUTE),
                ErrorKind::Rejected,
            ),
            (
                AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
                ErrorKind::Auth,
            ),
            (
                AMQPErrorKind::Hard(AMQPHardError::FRAMEERROR),
                ErrorKind::Protocol,
            ),
        ];
        for (amqp, kind) in cases {
            let err = map_error(protocol(amqp, "x"), "op", Phase::Operate);
            assert_eq!(err.kind(), kind);
            assert!(err.to_string().starts_with(&format!("{kind}: op: ")));
        }
    }

    #[test]
    fn socket_errors_depend_on_the_phase() {
        let reset = || lapin::Error::from(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(
            map_error(reset(), "c", Phase::Connect).kind(),
            ErrorKind::ConnectionRefused
        );
        assert_eq!(
            map_error(reset(), "c", Phase::Operate).kind(),
            ErrorKind::ConnectionLost
        );
        let refused = lapin::Error::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            map_error(refused, "c", Phase::Operate).kind(),
            ErrorKind::ConnectionRefused
        );
    }

    #[test]
    fn failures_on_a_lost_connection_are_connection_errors() {
        let state = || {
            lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                lapin::ChannelState::Error,
                "basic.ack",
            ))
        };
        let up = map_error_on(state(), "basic.ack", LinkState::Up);
        assert_eq!(up.kind(), ErrorKind::ChannelClosed);
        let lost = map_error_on(state(), "basic.ack", LinkState::Lost);
        assert_eq!(lost.kind(), ErrorKind::ConnectionLost);
        assert!(lost.is_connection_error());
        assert!(lost.to_string().contains("connection was lost"), "{lost}");
        let closed = map_error_on(state(), "basic.ack", LinkState::Closed);
        assert_eq!(closed.kind(), ErrorKind::Closed);
        // A connection-level kind stays as it is.
        let timeout = lapin::Error::from(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(
            map_error_on(timeout, "x", LinkState::Lost).kind(),
            ErrorKind::Timeout
        );
    }
}
