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
    use lapin::ErrorKind as L;
    let kind = match err.kind() {
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
    };
    Error::new(kind, format!("{operation}: {err}")).with_source(err)
}

/// Shorthand for an error while operating on an open connection.
pub(crate) fn op(operation: &'static str) -> impl Fn(lapin::Error) -> Error {
    move |err| map_error(err, operation, Phase::Operate)
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
}
