//! Transport options of `nats://`.

use std::time::Duration;

use kombu_core::{Error, ErrorKind, Result, TransportOptions};

use crate::names::Names;

/// Transport options `nats://` understands (besides the core's
/// [`VIRTUAL_OPTIONS`](kombu_core::spi::VIRTUAL_OPTIONS)).
///
/// ```
/// assert!(kombu_nats::KNOWN_OPTIONS.contains(&"visibility_timeout"));
/// ```
pub const KNOWN_OPTIONS: &[&str] = &[
    "visibility_timeout",
    "polling_interval",
    "request_timeout",
    "max_ack_pending",
    "storage",
    "replicas",
    "stream_prefix",
    "subject_prefix",
    "consumer_name",
    "topology_bucket",
];

/// Where JetStream keeps the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    File,
    Memory,
}

impl Storage {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Storage::File => "file",
            Storage::Memory => "memory",
        }
    }
}

/// Settings of one connection, read from its transport options.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The consumer's ack wait: an unacked message is delivered again
    /// after it (kombu's `visibility_timeout`).
    pub(crate) visibility_timeout: Duration,
    /// Whether the user gave `visibility_timeout` (then an existing
    /// consumer is updated to it).
    pub(crate) visibility_given: bool,
    pub(crate) polling_interval: Duration,
    /// How long one request (publish, ack, API call) waits for its answer.
    pub(crate) request_timeout: Duration,
    /// The consumer's `max_ack_pending`: unacked messages of a queue,
    /// across every client.
    pub(crate) max_ack_pending: i64,
    pub(crate) storage: Storage,
    pub(crate) replicas: u64,
    pub(crate) names: Names,
    pub(crate) topology_bucket: String,
}

fn bad(key: &str, why: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidOption, format!("nats: {key}: {why}"))
}

/// A prefix or name that must be one stream-name or subject token.
fn token(options: &TransportOptions, key: &str, default: &str, dots: bool) -> Result<String> {
    let value = options.get_str(key)?.unwrap_or(default);
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (dots && b == b'.'))
        && !value.starts_with('.')
        && !value.ends_with('.');
    if ok {
        Ok(value.to_owned())
    } else {
        let allowed = if dots {
            "letters, digits, '-', '_' and inner '.'"
        } else {
            "letters, digits, '-' and '_'"
        };
        Err(bad(key, format!("{value:?} may hold only {allowed}")))
    }
}

impl Settings {
    pub(crate) fn from_options(options: &TransportOptions) -> Result<Settings> {
        options.check_known(
            &[KNOWN_OPTIONS, kombu_core::spi::VIRTUAL_OPTIONS].concat(),
            "nats",
        )?;
        let given = options.get_duration_secs("visibility_timeout")?;
        let visibility_timeout = given.unwrap_or(Duration::from_secs(3600));
        if visibility_timeout < Duration::from_secs(1) {
            return Err(bad("visibility_timeout", "must be at least 1 second"));
        }
        let polling_interval = options
            .get_duration_secs("polling_interval")?
            .unwrap_or(Duration::from_secs(1));
        if polling_interval < Duration::from_millis(10) {
            return Err(bad("polling_interval", "must be at least 0.01 seconds"));
        }
        let request_timeout = options
            .get_duration_secs("request_timeout")?
            .unwrap_or(Duration::from_secs(10));
        if request_timeout.is_zero() {
            return Err(bad("request_timeout", "must be more than 0"));
        }
        let max_ack_pending = match options.get_u64("max_ack_pending")? {
            None => 20_000,
            Some(0) => -1,
            Some(n) => i64::try_from(n).map_err(|_| bad("max_ack_pending", "too large"))?,
        };
        let storage = match options.get_str("storage")? {
            None | Some("file") => Storage::File,
            Some("memory") => Storage::Memory,
            Some(other) => {
                return Err(bad(
                    "storage",
                    format!("{other:?} is not \"file\" or \"memory\""),
                ))
            }
        };
        let replicas = options.get_u64("replicas")?.unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            return Err(bad("replicas", "must be between 1 and 5"));
        }
        let names = Names {
            stream_prefix: token(options, "stream_prefix", "KOMBU", false)?,
            subject_prefix: token(options, "subject_prefix", "kombu.q", true)?,
            consumer: token(options, "consumer_name", "kombu", false)?,
        };
        let topology_bucket = token(options, "topology_bucket", "KOMBU_TOPOLOGY", false)?;
        Ok(Settings {
            visibility_timeout,
            visibility_given: given.is_some(),
            polling_interval,
            request_timeout,
            max_ack_pending,
            storage,
            replicas,
            names,
            topology_bucket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let s = Settings::from_options(&TransportOptions::new()).unwrap();
        assert_eq!(s.visibility_timeout, Duration::from_secs(3600));
        assert!(!s.visibility_given);
        assert_eq!(s.storage, Storage::File);
        assert_eq!(s.names, Names::default());
        assert_eq!(s.topology_bucket, "KOMBU_TOPOLOGY");
        let s = Settings::from_options(
            &TransportOptions::new()
                .set("visibility_timeout", 2)
                .set("storage", "memory")
                .set("subject_prefix", "app.kombu"),
        )
        .unwrap();
        assert_eq!(s.visibility_timeout, Duration::from_secs(2));
        assert!(s.visibility_given);
        assert_eq!(s.storage, Storage::Memory);
        assert_eq!(s.names.subject_prefix, "app.kombu");
        for bad in [
            TransportOptions::new().set("visibility_timeout", 0.5),
            TransportOptions::new().set("storage", "disk"),
            TransportOptions::new().set("replicas", 7),
            TransportOptions::new().set("stream_prefix", "a.b"),
            TransportOptions::new().set("subject_prefix", "a.*"),
            TransportOptions::new().set("nosuch", 1),
        ] {
            let err = Settings::from_options(&bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidOption, "{err}");
        }
    }
}
