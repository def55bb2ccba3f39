//! W3C Trace Context (`traceparent` and `tracestate`) carried in message
//! headers, so a consumer's work joins the trace of the publish that
//! caused it.
//!
//! The two values travel as ordinary application headers named
//! `traceparent` and `tracestate`, where OpenTelemetry's messaging
//! instrumentations (RabbitMQ's, Celery's) and Celery's own task headers
//! put them: every transport and a Python kombu/Celery peer carry them
//! unchanged, and kombu-rs's wire format does not change.
//!
//! ```
//! use kombu_core::{PublishOptions, TraceContext};
//! let ctx = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
//! let options = PublishOptions::new().routing_key("tasks").trace_context(&ctx);
//! assert_eq!(
//!     options.headers["traceparent"],
//!     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
//! );
//! // The consumer reads it back with `Message::trace_context()`.
//! assert_eq!(TraceContext::from_headers(&options.headers), Some(ctx));
//! ```

use std::fmt;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::message::Headers;

/// The header holding the W3C `traceparent`.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The header holding the W3C `tracestate`.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Most list members a `tracestate` may have (W3C).
const TRACESTATE_MAX_MEMBERS: usize = 32;
/// Length of a version 00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// A W3C trace context: the trace, the span that sent the message, the
/// trace flags and the vendors' `tracestate`.
///
/// ```
/// use kombu_core::TraceContext;
/// let ctx = TraceContext::new(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, true)
///     .unwrap()
///     .with_tracestate("congo=t61rcWkgMzE")
///     .unwrap();
/// assert_eq!(ctx.traceparent(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// assert!(ctx.sampled());
/// assert_eq!(ctx.tracestate(), Some("congo=t61rcWkgMzE"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
    tracestate: Option<String>,
}

impl TraceContext {
    /// A context for span `parent_id` of trace `trace_id`; `None` when
    /// either is zero (W3C: an invalid id).
    pub fn new(trace_id: u128, parent_id: u64, sampled: bool) -> Option<Self> {
        (trace_id != 0 && parent_id != 0).then_some(TraceContext {
            trace_id,
            parent_id,
            flags: u8::from(sampled),
            tracestate: None,
        })
    }

    /// Parse a `traceparent` value; `None` when it is not valid W3C
    /// (wrong length, upper-case or non-hex digits, an all-zero id,
    /// version `ff`). A later version's value is read for its first four
    /// fields, as the specification says.
    ///
    /// ```
    /// use kombu_core::TraceContext;
    /// assert!(TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
    /// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    /// assert!(TraceContext::parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none());
    /// assert!(TraceContext::parse("garbage").is_none());
    /// ```
    pub fn parse(traceparent: &str) -> Option<Self> {
        let value = traceparent.trim_matches([' ', '\t']);
        let bytes = value.as_bytes();
        if bytes.len() < TRACEPARENT_LEN || !bytes[..TRACEPARENT_LEN].is_ascii() {
            return None;
        }
        let version = hex_field(&value[0..2])? as u8;
        if version == 0xff || (version == 0 && bytes.len() != TRACEPARENT_LEN) {
            return None;
        }
        if bytes.len() > TRACEPARENT_LEN && bytes[TRACEPARENT_LEN] != b'-' {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let trace_id = hex_field(&value[3..35])?;
        let parent_id = hex_field(&value[36..52])? as u64;
        let flags = hex_field(&value[53..55])? as u8;
        let mut ctx = TraceContext::new(trace_id, parent_id, false)?;
        ctx.flags = flags;
        Some(ctx)
    }

    /// The context in `headers` (`traceparent`, and `tracestate` when it
    /// is valid too); `None` when there is no valid `traceparent`. A
    /// malformed value is ignored, never an error: the message is as
    /// good without it.
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        let traceparent = headers.get(TRACEPARENT_HEADER)?.as_str()?;
        let mut ctx = Self::parse(traceparent)?;
        if let Some(tracestate) = headers.get(TRACESTATE_HEADER).and_then(Value::as_str) {
            ctx = ctx.clone().with_tracestate(tracestate).unwrap_or(ctx);
        }
        Some(ctx)
    }

    /// The same context with this `tracestate` (an error when it is not a
    /// valid W3C list: at most 32 `key=value` members, keys in lower case,
    /// values printable ASCII without `,` or `=`, no key twice). An empty
    /// list means none.
    pub fn with_tracestate(mut self, tracestate: &str) -> Result<Self> {
        let members = tracestate_members(tracestate).ok_or_else(|| {
            Error::invalid_option("tracestate is not a valid W3C list of key=value members")
        })?;
        self.tracestate = (!members.is_empty()).then(|| members.join(","));
        Ok(self)
    }

    /// The trace's id.
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The id of the span that sent the message (W3C `parent-id`).
    pub fn parent_id(&self) -> u64 {
        self.parent_id
    }

    /// The trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// True when the sender recorded its span (flag `01`).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The vendors' `tracestate`, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The `traceparent` value (version 00).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }

    /// Write `traceparent` (and `tracestate`, or remove a stale one) into
    /// `headers`.
    pub fn write_headers(&self, headers: &mut Headers) {
        headers.insert(TRACEPARENT_HEADER.into(), self.traceparent().into());
        match &self.tracestate {
            Some(state) => {
                headers.insert(TRACESTATE_HEADER.into(), state.clone().into());
            }
            None => {
                headers.remove(TRACESTATE_HEADER);
            }
        }
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

/// A fixed-width field of lower-case hex digits.
fn hex_field(field: &str) -> Option<u128> {
    if !field
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(field, 16).ok()
}

/// The members of a `tracestate` list, trimmed, empty ones dropped;
/// `None` when it is not valid W3C.
fn tracestate_members(list: &str) -> Option<Vec<&str>> {
    let mut members = Vec::new();
    let mut keys = Vec::new();
    for member in list.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=')?;
        if !valid_tracestate_key(key) || !valid_tracestate_value(value) || keys.contains(&key) {
            return None;
        }
        keys.push(key);
        members.push(member);
    }
    (members.len() <= TRACESTATE_MAX_MEMBERS).then_some(members)
}

/// `lcalpha 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/")`, or
/// `tenant@system` with a tenant of at most 241 and a system of at most
/// 14 such characters.
fn valid_tracestate_key(key: &str) -> bool {
    let rest = |s: &str| {
        s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
        })
    };
    match key.split_once('@') {
        None => {
            key.len() <= 256
                && key.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && rest(key)
        }
        Some((tenant, system)) => {
            (1..=241).contains(&tenant.len())
                && tenant
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && rest(tenant)
                && (1..=14).contains(&system.len())
                && system
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase())
                && rest(system)
        }
    }
}

/// `0*255(chr) nblk-chr`: 1 to 256 printable ASCII characters other than
/// `,` and `=`, not ending in a space.
fn valid_tracestate_value(value: &str) -> bool {
    (1..=256).contains(&value.len())
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && !value.ends_with(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_w3c_example() {
        let ctx = TraceContext::parse(VALID).unwrap();
        assert_eq!(ctx.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(ctx.parent_id(), 0x00f067aa0ba902b7);
        assert!(ctx.sampled());
        assert_eq!(ctx.traceparent(), VALID);
        assert_eq!(ctx.to_string(), VALID);
    }

    #[test]
    fn refuses_what_w3c_calls_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_a_later_version_for_its_first_fields() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        let ctx = TraceContext::parse(later).unwrap();
        assert_eq!(ctx.traceparent(), VALID);
    }

    #[test]
    fn tracestate_is_validated_and_a_bad_one_ignored_on_receipt() {
        let ctx = TraceContext::parse(VALID).unwrap();
        let ok = ctx
            .clone()
            .with_tracestate("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE,, t@sys=x")
            .unwrap();
        assert_eq!(
            ok.tracestate(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,t@sys=x")
        );
        for bad in [
            "Rojo=1",
            "rojo",
            "rojo=1,rojo=2",
            "rojo=a,b",
            "rojo=",
            "rojo=a\tb",
            "1abc=x",
            "rojo=caf\u{e9}",
        ] {
            assert!(ctx.clone().with_tracestate(bad).is_err(), "{bad:?}");
        }
        let many = (0..33)
            .map(|n| format!("k{n}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(ctx.clone().with_tracestate(&many).is_err());

        let mut headers = Headers::new();
        headers.insert(TRACEPARENT_HEADER.into(), VALID.into());
        headers.insert(TRACESTATE_HEADER.into(), "Not Valid".into());
        assert_eq!(TraceContext::from_headers(&headers), Some(ctx.clone()));
        headers.insert(TRACEPARENT_HEADER.into(), 42.into());
        assert_eq!(TraceContext::from_headers(&headers), None);
    }

    #[test]
    fn writes_both_headers_and_drops_a_stale_tracestate() {
        let ctx = TraceContext::parse(VALID)
            .unwrap()
            .with_tracestate("rojo=1")
            .unwrap();
        let mut headers = Headers::new();
        ctx.write_headers(&mut headers);
        assert_eq!(headers[TRACESTATE_HEADER], "rojo=1");
        TraceContext::parse(VALID)
            .unwrap()
            .write_headers(&mut headers);
        assert!(!headers.contains_key(TRACESTATE_HEADER));
        assert_eq!(headers[TRACEPARENT_HEADER], VALID);
    }
}
