//! Where a kombu queue lives in JetStream: its stream, subject and
//! consumer names, and the keys of the topology bucket.
//!
//! Queue and exchange names may hold any character (`celery@host.dq2`,
//! `a b`); stream names, subject tokens and key-value keys may not hold
//! `.`, `*`, `>` or spaces. A name is escaped: ASCII letters, digits and
//! `-` stay, every other byte becomes `_` and two uppercase hex digits, so
//! the mapping is one-to-one and readable for plain names.

use kombu_core::{Error, ErrorKind, Result};

/// Longest escaped name: a stream is a directory of the server's file
/// store, and its name is at most 255 bytes with the prefix.
const MAX_ESCAPED: usize = 200;

/// `name` escaped for a stream name, a subject token and a key:
/// `celery` stays `celery`, `a.b c_d` becomes `a_2Eb_20c_5Fd`.
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            out.push(byte as char);
        } else {
            out.push('_');
            out.push_str(&format!("{byte:02X}"));
        }
    }
    out
}

/// The name `escaped` came from (`None` when it is not an escaped name).
pub(crate) fn unescape(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = escaped.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Check a queue or exchange name can be stored.
pub(crate) fn check(what: &str, name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidOption,
            format!("nats: a {what} name cannot be empty"),
        ));
    }
    let escaped = escape(name);
    if escaped.len() > MAX_ESCAPED {
        return Err(Error::new(
            ErrorKind::InvalidOption,
            format!(
                "nats: {what} name {name:?} is too long ({} bytes escaped, at most {MAX_ESCAPED})",
                escaped.len()
            ),
        ));
    }
    Ok(escaped)
}

/// The JetStream names of this transport's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    /// Stream names are `<stream_prefix>_<escaped queue>`.
    pub(crate) stream_prefix: String,
    /// Subjects are `<subject_prefix>.<escaped queue>`.
    pub(crate) subject_prefix: String,
    /// The durable pull consumer of every queue's stream.
    pub(crate) consumer: String,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            stream_prefix: "KOMBU".into(),
            subject_prefix: "kombu.q".into(),
            consumer: "kombu".into(),
        }
    }
}

impl Names {
    /// The stream of `queue`.
    pub(crate) fn stream(&self, queue: &str) -> Result<String> {
        Ok(format!("{}_{}", self.stream_prefix, check("queue", queue)?))
    }

    /// The stream of `queue`'s delayed messages (see `delayed.rs`): no
    /// queue's stream (those are `<prefix>_...`).
    pub(crate) fn delay_stream(&self, queue: &str) -> Result<String> {
        Ok(format!(
            "{}-delayed_{}",
            self.stream_prefix,
            check("queue", queue)?
        ))
    }

    /// The subject `queue`'s delayed messages are published on.
    pub(crate) fn delay_subject(&self, queue: &str) -> Result<String> {
        Ok(format!(
            "{}-delayed.{}",
            self.subject_prefix,
            check("queue", queue)?
        ))
    }

    /// The subject messages of `queue` are published on.
    pub(crate) fn subject(&self, queue: &str) -> Result<String> {
        Ok(format!(
            "{}.{}",
            self.subject_prefix,
            check("queue", queue)?
        ))
    }
}

/// A key of the topology bucket: `<kind>.<escaped name>`.
pub(crate) fn key(kind: &str, name: &str) -> Result<String> {
    Ok(format!("{kind}.{}", check(kind, name)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_one_to_one() {
        for name in ["celery", "a.b c_d", "x*>y", "é", "_5F", "a-b", "q:1@h/2"] {
            let escaped = escape(name);
            assert!(
                escaped
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{escaped}"
            );
            assert_eq!(unescape(&escaped).as_deref(), Some(name));
        }
        assert_eq!(escape("a.b c_d"), "a_2Eb_20c_5Fd");
        assert_ne!(escape("_5F"), escape("_"));
    }

    #[test]
    fn names_of_a_queue() {
        let names = Names::default();
        assert_eq!(names.stream("tasks.high").unwrap(), "KOMBU_tasks_2Ehigh");
        assert_eq!(names.subject("tasks.high").unwrap(), "kombu.q.tasks_2Ehigh");
        assert_eq!(key("queue", "a b").unwrap(), "queue.a_20b");
        assert_eq!(
            names.delay_stream("tasks.high").unwrap(),
            "KOMBU-delayed_tasks_2Ehigh"
        );
        assert_eq!(
            names.delay_subject("tasks.high").unwrap(),
            "kombu.q-delayed.tasks_2Ehigh"
        );
        assert_eq!(
            names.stream("").unwrap_err().kind(),
            ErrorKind::InvalidOption
        );
        assert!(names.stream(&"x.".repeat(100)).is_err());
    }
}
