//! kombu's JSON: Python's `json.dumps` layout ([`to_kombu_json`]), kombu's
//! type tags and the `json` serializer.

use std::io;

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

use super::Serializer;
use crate::error::Result;

/// Encode `value` exactly as kombu's `json.dumps` does (Python's defaults).
///
/// `", "` and `": "` separators, non-ASCII characters escaped as `\uXXXX`
/// (surrogate pairs above U+FFFF, DEL as `\u007f`), and floats written like
/// Python's `repr` (`1.0`, `1e+16`, `1e-05`). Object keys keep their order.
///
/// ```
/// use kombu_core::serialization::to_kombu_json;
/// let v = serde_json::json!({"hello": "wörld", "n": [1, 1.0, 1e16]});
/// assert_eq!(
///     to_kombu_json(&v),
///     br#"{"hello": "w\u00f6rld", "n": [1, 1.0, 1e+16]}"#
/// );
/// ```
pub fn to_kombu_json(value: &Value) -> Vec<u8> {
    to_kombu_json_of(value)
}

/// [`to_kombu_json`] of anything serializable (a view that writes the
/// bytes without building a `Value` first).
pub(crate) fn to_kombu_json_of<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, KombuFormatter);
    // Writing a `Value` into a `Vec` cannot fail: keys are strings and the
    // writer is infallible.
    if value.serialize(&mut serializer).is_err() {
        out.clear();
    }
    out
}

/// Append `value` to `out` as [`to_kombu_json`] writes it (for writers that
/// put a document together piece by piece).
pub(crate) fn write_kombu_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let mut serializer = serde_json::Serializer::with_formatter(&mut *out, KombuFormatter);
    // Strings and `Value`s into a `Vec` cannot fail (keys are strings).
    let _ = value.serialize(&mut serializer);
}

/// A `serde_json` formatter that writes Python's `json.dumps` default layout.
struct KombuFormatter;

impl serde_json::ser::Formatter for KombuFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(python_float_repr(value).as_bytes())
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // Mostly ASCII: find the first byte to escape without decoding chars.
        let Some(first) = fragment.bytes().position(|b| b >= 0x7f) else {
            return w.write_all(fragment.as_bytes());
        };
        w.write_all(&fragment.as_bytes()[..first])?;
        // Bytes before `first` are ASCII, so `first` starts a char.
        let fragment = &fragment[first..];
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() && c != '\x7f' {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

/// Python's `repr(float)`: shortest round-trip digits, scientific notation
/// when the decimal exponent is below -4 or at least 16.
fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.5e-5", "1e16".
    let sci = format!("{value:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let point = exp + 1; // digits before the decimal point
    let body = if -4 < point && point <= 16 {
        let len = digits.len() as i32;
        if point <= 0 {
            format!("0.{}{digits}", "0".repeat(-point as usize))
        } else if point >= len {
            format!("{digits}{}.0", "0".repeat((point - len) as usize))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{first}{frac}e{exp_sign}{:02}", exp.unsigned_abs())
    };
    format!("{sign}{body}")
}

/// A kombu type tag: `{"__type__": type_name, "__value__": value}`.
///
/// ```
/// use kombu_core::serialization::{tag, to_kombu_json};
/// let d = tag("decimal", "1.10".into());
/// assert_eq!(to_kombu_json(&d), br#"{"__type__": "decimal", "__value__": "1.10"}"#);
/// ```
pub fn tag(type_name: &str, value: Value) -> Value {
    let mut map = Map::new();
    map.insert("__type__".into(), Value::String(type_name.into()));
    map.insert("__value__".into(), value);
    Value::Object(map)
}

/// kombu's tag for a `datetime`; `iso` is its ISO 8601 form.
///
/// ```
/// use kombu_core::serialization::{tagged_datetime, to_kombu_json};
/// let v = tagged_datetime("2024-01-02T03:04:05.678901+00:00");
/// assert_eq!(
///     to_kombu_json(&v),
///     br#"{"__type__": "datetime", "__value__": "2024-01-02T03:04:05.678901+00:00"}"#
/// );
/// ```
pub fn tagged_datetime(iso: &str) -> Value {
    tag("datetime", Value::String(iso.into()))
}

/// kombu's tag for `bytes`: `bytes` with the text when they are UTF-8,
/// otherwise `base64`, exactly as kombu's JSON encoder chooses.
///
/// ```
/// use kombu_core::serialization::{tagged_bytes, untag_bytes};
/// assert_eq!(tagged_bytes(b"ab")["__type__"], "bytes");
/// let v = tagged_bytes(&[0, 255, b'a', b'b']);
/// assert_eq!(v["__value__"], "AP9hYg==");
/// assert_eq!(untag_bytes(&v).unwrap(), vec![0, 255, b'a', b'b']);
/// ```
pub fn tagged_bytes(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => tag("bytes", Value::String(text.into())),
        Err(_) => tag(
            "base64",
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

/// The bytes of a `bytes` or `base64` tag; `None` for any other value.
///
/// ```
/// use kombu_core::serialization::{tag, untag_bytes};
/// assert_eq!(untag_bytes(&tag("bytes", "hi".into())).unwrap(), b"hi");
/// assert!(untag_bytes(&serde_json::json!({"a": 1})).is_none());
/// ```
pub fn untag_bytes(value: &Value) -> Option<Vec<u8>> {
    let map = value.as_object()?;
    if map.len() != 2 {
        return None;
    }
    let text = map.get("__value__")?.as_str()?;
    match map.get("__type__")?.as_str()? {
        "bytes" => Some(text.as_bytes().to_vec()),
        "base64" => base64::engine::general_purpose::STANDARD.decode(text).ok(),
        _ => None,
    }
}

/// kombu's `json` serializer (`application/json`, `utf-8`), byte-for-byte
/// compatible with kombu's `json.dumps` (see [`to_kombu_json`]).
///
/// Decoding keeps kombu's type tags as plain objects (see the module docs).
///
/// ```
/// use kombu_core::serialization::{JsonSerializer, Serializer};
/// let body = JsonSerializer.encode(&serde_json::json!({"hello": "world", "n": 1})).unwrap();
/// assert_eq!(body, br#"{"hello": "world", "n": 1}"#);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonSerializer;

impl Serializer for JsonSerializer {
    fn name(&self) -> &str {
        "json"
    }
    fn content_type(&self) -> &str {
        "application/json"
    }
    fn content_encoding(&self) -> &str {
        "utf-8"
    }
    fn encode(&self, value: &Value) -> Result<Vec<u8>> {
        Ok(to_kombu_json(value))
    }
    fn decode(&self, body: &[u8]) -> Result<Value> {
        Ok(serde_json::from_slice(body)?)
    }
}

/// A map key as kombu's JSON would write it (`1` -> `"1"`, `null` -> `"null"`,
/// bytes as their tag's text).
///
/// A list or a map cannot be a key: Python refuses them (unhashable), and
/// their JSON text would nest, each level escaping the one inside it, so
/// that a few dozen levels of keys in a short body would make a text of
/// terabytes (found by fuzzing).
pub(super) fn key_to_string(key: Value) -> Result<String> {
    let refused = |what: &str| {
        Err(super::serialization_error(format!(
            "a map key is {what}: only strings, numbers, booleans, null and bytes can be keys"
        )))
    };
    match key {
        Value::String(s) => Ok(s),
        Value::Array(_) => refused("a list"),
        Value::Object(_) if untag_bytes(&key).is_none() => refused("a map"),
        other => Ok(String::from_utf8_lossy(&to_kombu_json(&other)).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Golden values below were produced by Python 3.11.7, kombu 5.7.0,
    // msgpack 1.2.4 and PyYAML 6.0.4 (kombu.utils.json.dumps, msgpack.packb
    // with use_bin_type=True, yaml.safe_dump).

    #[test]
    fn json_matches_kombu_strings() {
        let v = json!({"s": "h\u{e9}llo \u{4e16}\u{754c} \u{1F600} \u{0}\u{1f}\u{7f}\"\\/\n\r\t\u{8}\u{c}"});
        assert_eq!(
            String::from_utf8(to_kombu_json(&v)).unwrap(),
            r#"{"s": "h\u00e9llo \u4e16\u754c \ud83d\ude00 \u0000\u001f\u007f\"\\/\n\r\t\b\f"}"#
        );
    }

    #[test]
    fn json_matches_kombu_floats() {
        let v = json!([
            1.0,
            1e16,
            1e15,
            1e-5,
            0.0001,
            0.1,
            -0.0,
            123456789.123,
            1e300,
            5e-324,
            2.5e-7,
            1.7976931348623157e308,
            12345678901234567.0,
            0.5,
            100.0
        ]);
        assert_eq!(
            String::from_utf8(to_kombu_json(&v)).unwrap(),
            "[1.0, 1e+16, 1000000000000000.0, 1e-05, 0.0001, 0.1, -0.0, 123456789.123, 1e+300, \
             5e-324, 2.5e-07, 1.7976931348623157e+308, 1.2345678901234568e+16, 0.5, 100.0]"
        );
        assert_eq!(python_float_repr(f64::NAN), "NaN");
        assert_eq!(python_float_repr(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn json_matches_kombu_ints_and_empties() {
        let v = json!([0, -1, u64::MAX, i64::MIN]);
        assert_eq!(
            to_kombu_json(&v),
            b"[0, -1, 18446744073709551615, -9223372036854775808]"
        );
        let v = json!({"a": {}, "b": [], "c": null, "d": true, "e": false, "": ""});
        assert_eq!(
            to_kombu_json(&v),
            br#"{"a": {}, "b": [], "c": null, "d": true, "e": false, "": ""}"#
        );
    }

    #[test]
    fn json_type_tags_match_kombu() {
        let mut m = Map::new();
        m.insert(
            "dt".into(),
            tagged_datetime("2024-01-02T03:04:05.678901+00:00"),
        );
        m.insert("d".into(), tag("date", "2024-01-02".into()));
        m.insert("t".into(), tag("time", "03:04:05".into()));
        m.insert("dec".into(), tag("decimal", "1.10".into()));
        m.insert(
            "u".into(),
            tag("uuid", json!({"hex": "12345678123456781234567812345678"})),
        );
        m.insert("b".into(), tagged_bytes(b"ab"));
        m.insert("b64".into(), tagged_bytes(b"\x00\xffab"));
        let golden = r#"{"dt": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05.678901+00:00"}, "d": {"__type__": "date", "__value__": "2024-01-02"}, "t": {"__type__": "time", "__value__": "03:04:05"}, "dec": {"__type__": "decimal", "__value__": "1.10"}, "u": {"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}}, "b": {"__type__": "bytes", "__value__": "ab"}, "b64": {"__type__": "base64", "__value__": "AP9hYg=="}}"#;
        let v = Value::Object(m);
        assert_eq!(String::from_utf8(to_kombu_json(&v)).unwrap(), golden);
        // Decoding keeps the tags as plain objects.
        assert_eq!(JsonSerializer.decode(golden.as_bytes()).unwrap(), v);
        assert_eq!(untag_bytes(&v["b64"]).unwrap(), b"\x00\xffab");
    }

    proptest::proptest! {
        #[test]
        fn kombu_json_strings_round_trip(s in ".*") {
            let v = json!({"s": s});
            let text = to_kombu_json(&v);
            proptest::prop_assert!(text.is_ascii());
            proptest::prop_assert_eq!(serde_json::from_slice::<Value>(&text).unwrap(), v);
        }

        #[test]
        fn python_float_repr_round_trips(f in proptest::num::f64::ANY) {
            let text = python_float_repr(f);
            if f.is_finite() {
                proptest::prop_assert_eq!(text.parse::<f64>().unwrap().to_bits(), f.to_bits());
                proptest::prop_assert!(text.contains('.') || text.contains('e'));
            }
        }
    }
}
