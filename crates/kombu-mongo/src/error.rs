//! MongoDB driver errors as kombu-rs errors, with the right kind and
//! never a password in the message.

use kombu_core::{Error, ErrorKind};
use mongodb::error::{Error as DriverError, ErrorKind as DriverKind, WriteFailure};

/// Server error codes that mean "log in" or "not allowed".
const AUTH_CODES: &[i32] = &[
    13, // Unauthorized
    18, // AuthenticationFailed
    11, // UserNotFound
    33, // NoSuchKey (unknown auth mechanism on some servers)
];

/// Server error codes of a server that is going away or no longer the one
/// to talk to (shutting down, stepped down, not primary): a new connection
/// (a new client, a new server selection) is the remedy.
const GONE_CODES: &[i32] = &[
    91,    // ShutdownInProgress
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    189,   // PrimarySteppedDown
    10107, // NotWritablePrimary
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
    6,     // HostUnreachable
    7,     // HostNotFound
    9001,  // SocketException
];

/// Server error code of a network timeout between servers.
const NETWORK_TIMEOUT: i32 = 89;

/// The kind of a driver error: a server that is gone, refuses or does not
/// answer is a connection kind, so the core marks the connection lost.
pub(crate) fn kind_of(error: &DriverError) -> ErrorKind {
    match error.kind.as_ref() {
        DriverKind::InvalidArgument { .. } | DriverKind::InvalidTlsConfig { .. } => {
            ErrorKind::InvalidOption
        }
        DriverKind::Authentication { .. } => ErrorKind::Auth,
        DriverKind::Command(command) if AUTH_CODES.contains(&command.code) => ErrorKind::Auth,
        DriverKind::Command(command) if command.code == 50 => ErrorKind::Timeout,
        DriverKind::Command(command) if command.code == NETWORK_TIMEOUT => ErrorKind::Timeout,
        DriverKind::Command(command) if GONE_CODES.contains(&command.code) => {
            ErrorKind::ConnectionLost
        }
        DriverKind::Command(_) => ErrorKind::Other,
        DriverKind::Write(WriteFailure::WriteError(write)) if AUTH_CODES.contains(&write.code) => {
            ErrorKind::Auth
        }
        DriverKind::Write(_) | DriverKind::InsertMany(_) | DriverKind::BulkWrite(_) => {
            ErrorKind::Other
        }
        DriverKind::DnsResolve { .. } => ErrorKind::ConnectionRefused,
        DriverKind::ServerSelection { .. } => ErrorKind::ConnectionRefused,
        DriverKind::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => ErrorKind::ConnectionRefused,
            std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::ConnectionLost,
        },
        DriverKind::ConnectionPoolCleared { .. } => ErrorKind::ConnectionLost,
        DriverKind::Shutdown => ErrorKind::Closed,
        DriverKind::BsonDeserialization(_)
        | DriverKind::BsonSerialization(_)
        | DriverKind::InvalidResponse { .. }
        | DriverKind::IncompatibleServer { .. } => ErrorKind::Protocol,
        _ => ErrorKind::Other,
    }
}

/// A kombu-rs error for `error`, saying what was being done. `secret` (the
/// password) is scrubbed from the driver's text.
pub(crate) fn map_driver(error: DriverError, doing: &str, secret: Option<&str>) -> Error {
    let kind = kind_of(&error);
    let mut text = error.to_string();
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        text = text.replace(secret, "**");
    }
    let message = format!("mongodb: {doing}: {text}");
    // The driver's error keeps what it was given; drop it when it could
    // hold the password.
    if secret.is_some_and(|s| !s.is_empty() && error.to_string().contains(s)) {
        Error::new(kind, message)
    } else {
        Error::new(kind, message).with_source(error)
    }
}

/// A closure for `map_err` that maps a driver error.
pub(crate) fn driver(doing: &'static str) -> impl Fn(DriverError) -> Error {
    move |error| map_driver(error, doing, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_connection_errors() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = map_driver(DriverError::from(io), "ping", None);
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
        assert!(err.is_connection_error());
        assert!(err
            .to_string()
            .starts_with("connection refused: mongodb: ping:"));
    }

    fn command_error(code: i32) -> DriverError {
        let command: mongodb::error::CommandError = mongodb::bson::from_document(
            mongodb::bson::doc! { "code": code, "codeName": "X", "errmsg": "x" },
        )
        .expect("a command error");
        DriverError::from(DriverKind::Command(command))
    }

    #[test]
    fn a_server_going_away_is_a_connection_error() {
        for code in [91, 11600, 10107] {
            assert_eq!(kind_of(&command_error(code)), ErrorKind::ConnectionLost);
        }
        assert_eq!(kind_of(&command_error(89)), ErrorKind::Timeout);
        assert_eq!(kind_of(&command_error(18)), ErrorKind::Auth);
        assert_eq!(kind_of(&command_error(2)), ErrorKind::Other);
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(kind_of(&DriverError::from(eof)), ErrorKind::ConnectionLost);
    }

    #[test]
    fn secrets_are_scrubbed() {
        let io = std::io::Error::other("bad s3cret here");
        let err = map_driver(DriverError::from(io), "connect", Some("s3cret"));
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(err.source_as::<DriverError>().is_none());
    }
}
