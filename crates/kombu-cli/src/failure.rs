//! How a command fails: a one-line message for stderr and an exit status.

use kombu::{Error, ErrorKind};

/// Exit status of bad input: usage, URL, scheme, option, unreachable broker.
pub const USAGE: u8 = 2;
/// Exit status of a command that ran and did not get what it needed
/// (`consume --timeout` with fewer messages than `--count`, a broker error).
pub const FAILED: u8 = 1;
/// Exit status after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const INTERRUPTED: u8 = 130;

/// A failed command: printed as `kombu: <message>` on stderr, then the
/// process exits with `code`.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Bad input (exit status 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: USAGE,
            message: message.into(),
        }
    }

    /// The command ran but failed (exit status 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Failure {
            code: FAILED,
            message: message.into(),
        }
    }

    /// Stopped by a signal (exit status 130).
    pub fn interrupted(message: impl Into<String>) -> Self {
        Failure {
            code: INTERRUPTED,
            message: message.into(),
        }
    }
}

/// True for errors that mean the user's input is wrong (exit status 2).
pub fn is_bad_input(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidUrl
            | ErrorKind::UnknownScheme
            | ErrorKind::FeatureDisabled
            | ErrorKind::InvalidOption
    )
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let code = if is_bad_input(err.kind()) {
            USAGE
        } else {
            FAILED
        };
        Failure {
            code,
            message: err.to_string(),
        }
    }
}

/// The result of a command.
pub type Outcome<T = ()> = Result<T, Failure>;

/// Turn a clap error into one line: its message, without the usage block
/// and the "for more information" hint.
pub fn clap_one_line(rendered: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() {
            continue;
        }
        parts.push(line.strip_prefix("error: ").unwrap_or(line).to_owned());
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --queue <QUEUE>\n\nUsage: kombu consume --queue <QUEUE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_one_line(rendered),
            "the following required arguments were not provided: --queue <QUEUE>"
        );
    }

    #[test]
    fn kinds_map_to_exit_status() {
        let bad = Failure::from(Error::new(ErrorKind::InvalidUrl, "port"));
        assert_eq!(bad.code, USAGE);
        let failed = Failure::from(Error::new(ErrorKind::NotFound, "queue"));
        assert_eq!(failed.code, FAILED);
        assert_eq!(failed.message, "not found: queue");
    }
}
