//! Reading option values: the conversions shared by [`TransportOptions`]
//! and the URL query (strings such as `"10"` or `"yes"` count), the errors
//! that name a bad value, and the masking of secret-looking keys.
//!
//! [`TransportOptions`]: super::TransportOptions

use std::time::Duration;

use serde_json::Value;

use crate::error::Error;
use crate::url::is_sensitive_key;

/// How a value is shown in an error: masked for a sensitive key.
fn shown(key: &str, value: &Value) -> String {
    if is_sensitive_key(key) {
        "\"**\"".to_string()
    } else {
        value.to_string()
    }
}

/// The error for a bad value: `connect_timeout: "abc" is not a number of seconds`.
pub(super) fn invalid_value(key: &str, value: &Value, expected: &str) -> Error {
    Error::invalid_option(format!("{key}: {} is not {expected}", shown(key, value)))
}

pub(super) fn as_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

pub(super) fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(super) fn as_f64(value: &Value) -> Option<f64> {
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    number.filter(|n| n.is_finite())
}

pub(super) fn as_duration(value: &Value) -> Option<Duration> {
    as_f64(value).and_then(|secs| Duration::try_from_secs_f64(secs).ok())
}

pub(super) const BOOL: &str = "a boolean (1/0, true/false, yes/no, on/off)";
pub(super) const SECONDS: &str = "a number of seconds";
