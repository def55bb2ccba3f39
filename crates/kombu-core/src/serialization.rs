//! Message body serializers, as in Python kombu's `kombu.serialization`.
//!
//! A body travels as bytes plus a content type and a content encoding. The
//! built-in [`Serializer`]s use kombu's names and content types:
//!
//! | name      | content type            | content encoding |
//! |-----------|-------------------------|------------------|
//! | `json`    | `application/json`      | `utf-8`          |
//! | `msgpack` | `application/x-msgpack` | `binary`         |
//! | `yaml`    | `application/x-yaml`    | `utf-8`          |
//!
//! Two content types never need a serializer: raw bytes are sent as
//! `application/data` + `binary`, text as `text/plain` + `utf-8` (see
//! [`SerializerRegistry::encode_payload`]). `pickle`
//! (`application/x-python-serialize`) is not supported: encoding or decoding
//! it is an [`ErrorKind::Serialization`] error that says so.
//!
//! # kombu's JSON type tags
//!
//! kombu's JSON encoder writes some Python types as tagged objects, and its
//! decoder turns them back into Python objects. Here they stay plain objects
//! `{"__type__": T, "__value__": V}` in the decoded [`Value`]:
//!
//! | `__type__`  | `__value__`                                   | build it with        |
//! |-------------|-----------------------------------------------|----------------------|
//! | `datetime`  | ISO 8601, `"2024-01-02T03:04:05.678901+00:00"` | [`tagged_datetime`] |
//! | `date`      | `"2024-01-02"`                                | [`tag`]              |
//! | `time`      | `"03:04:05"`                                  | [`tag`]              |
//! | `decimal`   | `"1.10"`                                      | [`tag`]              |
//! | `uuid`      | `{"hex": "12345678123456781234567812345678"}` | [`tag`]              |
//! | `bytes`     | the bytes as a UTF-8 string                   | [`tagged_bytes`]     |
//! | `base64`    | the bytes in base64 (bytes that are not UTF-8) | [`tagged_bytes`]    |
//!
//! [`untag_bytes`] reads the two bytes tags back. msgpack carries bytes natively
//! (`bin`): a decoded `bin` becomes a bytes tag and a bytes tag is encoded as
//! `bin`, so the same [`Value`] works with both serializers.

use std::fmt;
use std::io;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};

/// kombu's content type for raw bytes.
pub const CONTENT_TYPE_DATA: &str = "application/data";
/// The content type of a text body published without a serializer.
pub const CONTENT_TYPE_TEXT: &str = "text/plain";
/// The content type of Python pickle, which kombu-rs refuses to handle.
pub const CONTENT_TYPE_PICKLE: &str = "application/x-python-serialize";

/// Content types kombu decodes whatever the accept list says
/// (`kombu.serialization.TRUSTED_CONTENT`).
const TRUSTED_CONTENT: [&str; 2] = [CONTENT_TYPE_DATA, "application/text"];
/// Content encodings that mean "bytes, do not decode to text".
const SKIP_DECODE: [&str; 2] = ["binary", "ascii-8bit"];

fn serialization_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Serialization, message)
}

fn pickle_unsupported() -> Error {
    serialization_error(
        "pickle (application/x-python-serialize) is not supported by kombu-rs; \
         use json, msgpack or yaml",
    )
}

/// Turns values into body bytes and back.
///
/// Implement it to add a serializer, then [`SerializerRegistry::register`] it.
///
/// ```
/// use kombu_core::serialization::{JsonSerializer, Serializer};
/// let json = JsonSerializer;
/// let body = json.encode(&serde_json::json!({"n": 1.0})).unwrap();
/// assert_eq!(body, br#"{"n": 1.0}"#);
/// assert_eq!(json.decode(&body).unwrap(), serde_json::json!({"n": 1.0}));
/// ```
pub trait Serializer: Send + Sync {
    /// The name used to pick it (`serializer="json"` in kombu).
    fn name(&self) -> &str;
    /// The MIME type written in the message's `content-type`.
    fn content_type(&self) -> &str;
    /// The `content-encoding`: a charset such as `utf-8`, or `binary`.
    fn content_encoding(&self) -> &str;
    /// Serialize a value into body bytes.
    fn encode(&self, value: &Value) -> Result<Vec<u8>>;
    /// Deserialize body bytes.
    fn decode(&self, body: &[u8]) -> Result<Value>;
}

// ---------------------------------------------------------------------------
// JSON

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
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, KombuFormatter);
    // Writing a `Value` into a `Vec` cannot fail: keys are strings and the
    // writer is infallible.
    if value.serialize(&mut serializer).is_err() {
        out.clear();
    }
    out
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

// ---------------------------------------------------------------------------
// msgpack

/// kombu's `msgpack` serializer (`application/x-msgpack`, `binary`), the same
/// bytes as Python's `msgpack.packb(value, use_bin_type=True)`.
///
/// Bytes tags (see [`tagged_bytes`]) are written as msgpack `bin`, and `bin`
/// is read back as a bytes tag. Non-string map keys are read as their JSON
/// text (`1` becomes `"1"`), as kombu's JSON would write them.
///
/// ```
/// use kombu_core::serialization::{MsgpackSerializer, Serializer};
/// let body = MsgpackSerializer.encode(&serde_json::json!({"k": [1, "x"]})).unwrap();
/// assert_eq!(body, b"\x81\xa1k\x92\x01\xa1x");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MsgpackSerializer;

impl Serializer for MsgpackSerializer {
    fn name(&self) -> &str {
        "msgpack"
    }
    fn content_type(&self) -> &str {
        "application/x-msgpack"
    }
    fn content_encoding(&self) -> &str {
        "binary"
    }
    fn encode(&self, value: &Value) -> Result<Vec<u8>> {
        rmp_serde::to_vec(&MsgpackValue(value))
            .map_err(|e| serialization_error(format!("cannot encode msgpack: {e}")).with_source(e))
    }
    fn decode(&self, body: &[u8]) -> Result<Value> {
        let mut rest = body;
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        let value = ValueSeed.deserialize(&mut de).map_err(|e| {
            serialization_error(format!("cannot decode msgpack: {e}")).with_source(e)
        })?;
        if !rest.is_empty() {
            return Err(serialization_error(format!(
                "cannot decode msgpack: {} bytes of extra data",
                rest.len()
            )));
        }
        Ok(value)
    }
}

/// Serializes a [`Value`] with bytes tags as msgpack `bin`.
struct MsgpackValue<'a>(&'a Value);

impl Serialize for MsgpackValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                if let Some(bytes) = untag_bytes(self.0) {
                    return s.serialize_bytes(&bytes);
                }
                let mut out = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    out.serialize_entry(k, &MsgpackValue(v))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    out.serialize_element(&MsgpackValue(v))?;
                }
                out.end()
            }
            other => other.serialize(s),
        }
    }
}

/// Deserializes any self-describing data into a [`Value`], turning bytes
/// into bytes tags and non-string map keys into their JSON text.
struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a msgpack value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        // NaN and infinities have no JSON form: they become null.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.into()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<Value, E> {
        Ok(tagged_bytes(v))
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        ValueSeed.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(ValueSeed)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(ValueSeed)? {
            let value = map.next_value_seed(ValueSeed)?;
            out.insert(key_to_string(key), value);
        }
        Ok(Value::Object(out))
    }
}

/// A map key as kombu's JSON would write it (`1` -> `"1"`, `null` -> `"null"`).
fn key_to_string(key: Value) -> String {
    match key {
        Value::String(s) => s,
        other => String::from_utf8_lossy(&to_kombu_json(&other)).into_owned(),
    }
}

// ---------------------------------------------------------------------------
// YAML

/// kombu's `yaml` serializer (`application/x-yaml`, `utf-8`).
///
/// Decoding reads what PyYAML's `safe_dump` writes: non-string keys become
/// their JSON text, timestamps stay strings and `!!binary` values come back
/// as their base64 text (kombu-rs' YAML reader does not see core tags). Encoding sorts keys as `safe_dump` does and gives the same text
/// for plain data; quoting and float style may differ in corner cases
/// (PyYAML escapes non-ASCII text, kombu-rs writes UTF-8), which every YAML
/// reader, PyYAML included, reads back to the same values.
///
/// ```
/// use kombu_core::serialization::{Serializer, YamlSerializer};
/// let body = YamlSerializer.encode(&serde_json::json!({"n": 1, "l": ["x"]})).unwrap();
/// assert_eq!(body, b"l:\n- x\nn: 1\n");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct YamlSerializer;

impl Serializer for YamlSerializer {
    fn name(&self) -> &str {
        "yaml"
    }
    fn content_type(&self) -> &str {
        "application/x-yaml"
    }
    fn content_encoding(&self) -> &str {
        "utf-8"
    }
    fn encode(&self, value: &Value) -> Result<Vec<u8>> {
        serde_norway::to_string(&sorted_keys(value))
            .map(String::into_bytes)
            .map_err(|e| serialization_error(format!("cannot encode YAML: {e}")).with_source(e))
    }
    fn decode(&self, body: &[u8]) -> Result<Value> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null); // PyYAML: an empty document is None
        }
        let yaml: serde_norway::Value = serde_norway::from_slice(body)
            .map_err(|e| serialization_error(format!("cannot decode YAML: {e}")).with_source(e))?;
        Ok(yaml_to_json(yaml))
    }
}

fn sorted_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted_keys).collect()),
        other => other.clone(),
    }
}

fn yaml_to_json(yaml: serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (key_to_string(yaml_to_json(k)), yaml_to_json(v)))
                .collect(),
        ),
        // Local tags (`!thing`) are dropped; `!!binary` reaches us untagged
        // (serde_norway resolves core-schema tags), as its base64 text.
        Y::Tagged(tagged) => yaml_to_json(tagged.value),
    }
}

// ---------------------------------------------------------------------------
// Payload

/// A message body before serialization or after deserialization.
///
/// ```
/// use kombu_core::serialization::Payload;
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Job { id: u32 }
/// let p = Payload::serialize(&Job { id: 7 }).unwrap();
/// assert_eq!(p.deserialize::<Job>().unwrap(), Job { id: 7 });
/// assert_eq!(Payload::from("hi"), Payload::Text("hi".into()));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Payload {
    /// Structured data, sent with a serializer (json by default).
    Value(Value),
    /// Raw bytes: `application/data`, `binary`.
    Bytes(Bytes),
    /// Text: `text/plain`, `utf-8`.
    Text(String),
}

impl Payload {
    /// Structured data from anything serde can serialize.
    pub fn serialize<T: Serialize + ?Sized>(value: &T) -> Result<Payload> {
        Ok(Payload::Value(serde_json::to_value(value)?))
    }

    /// Read the payload as `T`.
    ///
    /// A [`Payload::Text`] reads as a JSON string. [`Payload::Bytes`] read as a
    /// string when they are UTF-8 and `T` takes one, otherwise as a sequence
    /// of byte values (`Vec<u8>`).
    ///
    /// ```
    /// use kombu_core::serialization::Payload;
    /// let p = Payload::from(vec![0u8, 255]);
    /// assert_eq!(p.deserialize::<Vec<u8>>().unwrap(), vec![0, 255]);
    /// assert!(p.deserialize::<String>().is_err());
    /// ```
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T> {
        match self {
            Payload::Value(v) => Ok(T::deserialize(v)?),
            Payload::Text(s) => Ok(T::deserialize(Value::String(s.clone()))?),
            Payload::Bytes(b) => {
                let as_array = || {
                    let items = b.iter().map(|x| Value::from(*x)).collect();
                    T::deserialize(Value::Array(items))
                };
                match std::str::from_utf8(b) {
                    Ok(s) => T::deserialize(Value::String(s.into())).or_else(|_| as_array()),
                    Err(_) => as_array(),
                }
                .map_err(Error::from)
            }
        }
    }
}

impl From<Value> for Payload {
    fn from(v: Value) -> Self {
        Payload::Value(v)
    }
}
impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload::Bytes(v.into())
    }
}
impl From<&[u8]> for Payload {
    fn from(v: &[u8]) -> Self {
        Payload::Bytes(Bytes::copy_from_slice(v))
    }
}
impl From<Bytes> for Payload {
    fn from(v: Bytes) -> Self {
        Payload::Bytes(v)
    }
}
impl From<String> for Payload {
    fn from(v: String) -> Self {
        Payload::Text(v)
    }
}
impl From<&str> for Payload {
    fn from(v: &str) -> Self {
        Payload::Text(v.into())
    }
}

// ---------------------------------------------------------------------------
// Accept

/// Which content types a consumer deserializes, like kombu's `accept`.
///
/// Entries are serializer names or content types: `["json"]` and
/// `["application/json"]` are the same list. The rules are kombu 5.7's
/// (`kombu.serialization.loads`):
///
/// * [`Accept::default()`] is `["json"]`, the accept list Celery and most
///   kombu deployments use: json, plus `application/data` and
///   `application/text`, which kombu always trusts.
/// * [`Accept::new`] is an explicit list: only the listed types pass, plus
///   `application/data` and `application/text`. Note that `text/plain` is
///   **not** trusted: list it to receive text bodies.
/// * [`Accept::kombu_unrestricted()`] is kombu's `accept=None`: everything
///   except the serializers kombu disables by default (pickle, yaml,
///   msgpack); unknown content types come back raw.
/// * [`Accept::all()`] passes everything.
///
/// A message without a content type counts as `application/data`.
///
/// ```
/// use kombu_core::serialization::{Accept, SerializerRegistry};
/// let reg = SerializerRegistry::default();
/// assert!(Accept::default().allows("application/json", &reg));
/// assert!(!Accept::default().allows("application/x-yaml", &reg));
/// assert!(Accept::kombu_unrestricted().allows("text/plain", &reg));
/// let json = Accept::new(["json"]);
/// assert!(json.allows("application/json", &reg));
/// assert!(json.allows("application/data", &reg));
/// assert!(!json.allows("text/plain", &reg));
/// assert!(Accept::all().allows("application/x-msgpack", &reg));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    rule: AcceptRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AcceptRule {
    All,
    Only(Vec<String>),
    AllExcept(Vec<String>),
}

impl Default for Accept {
    fn default() -> Self {
        Accept::new(["json"])
    }
}

impl Accept {
    /// An explicit accept list of serializer names and/or content types.
    pub fn new<I, S>(items: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Accept {
            rule: AcceptRule::Only(items.into_iter().map(Into::into).collect()),
        }
    }

    /// kombu's `accept=None`: all but pickle, yaml and msgpack.
    pub fn kombu_unrestricted() -> Self {
        let disabled = [
            CONTENT_TYPE_PICKLE,
            "application/x-yaml",
            "application/x-msgpack",
        ];
        Accept {
            rule: AcceptRule::AllExcept(disabled.iter().map(|s| s.to_string()).collect()),
        }
    }

    /// Accept every content type.
    pub fn all() -> Self {
        Accept {
            rule: AcceptRule::All,
        }
    }

    /// Whether a body of `content_type` may be deserialized. Names in the
    /// list are resolved through `registry`; an unknown name matches nothing.
    pub fn allows(&self, content_type: &str, registry: &SerializerRegistry) -> bool {
        let listed = |items: &[String]| {
            items.iter().any(|item| {
                item == content_type
                    || (!item.contains('/')
                        && registry
                            .by_name(item)
                            .is_some_and(|s| s.content_type() == content_type))
            })
        };
        match &self.rule {
            AcceptRule::All => true,
            AcceptRule::Only(items) => TRUSTED_CONTENT.contains(&content_type) || listed(items),
            AcceptRule::AllExcept(items) => !listed(items),
        }
    }
}

impl fmt::Display for Accept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            AcceptRule::All => f.write_str("all content types"),
            AcceptRule::Only(items) => write!(f, "[{}]", items.join(", ")),
            AcceptRule::AllExcept(items) => {
                write!(f, "the default (all but {})", items.join(", "))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Registry

/// The serializers known to a connection, found by name or content type.
///
/// ```
/// use kombu_core::serialization::{Accept, Payload, SerializerRegistry};
/// let reg = SerializerRegistry::default();
/// let (body, ct, ce) = reg.encode("json", &serde_json::json!([1])).unwrap();
/// assert_eq!((body.as_slice(), ct.as_str(), ce.as_str()), (&b"[1]"[..], "application/json", "utf-8"));
/// let p = reg.decode(Some(&ct), Some(&ce), &body, &Accept::default()).unwrap();
/// assert_eq!(p, Payload::Value(serde_json::json!([1])));
/// ```
#[derive(Clone)]
pub struct SerializerRegistry {
    serializers: Vec<Arc<dyn Serializer>>,
}

impl Default for SerializerRegistry {
    /// json, msgpack and yaml.
    fn default() -> Self {
        SerializerRegistry {
            serializers: vec![
                Arc::new(JsonSerializer),
                Arc::new(MsgpackSerializer),
                Arc::new(YamlSerializer),
            ],
        }
    }
}

impl fmt::Debug for SerializerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.serializers.iter().map(|s| s.name()))
            .finish()
    }
}

impl SerializerRegistry {
    /// A registry with no serializers (raw bytes and text still work).
    pub fn empty() -> Self {
        SerializerRegistry {
            serializers: Vec::new(),
        }
    }

    /// Add a serializer, replacing one with the same name.
    pub fn register(&mut self, serializer: Arc<dyn Serializer>) {
        self.serializers.retain(|s| s.name() != serializer.name());
        self.serializers.push(serializer);
    }

    /// The serializer called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<dyn Serializer>> {
        self.serializers.iter().rev().find(|s| s.name() == name)
    }

    /// The serializer for `content_type`.
    pub fn by_content_type(&self, content_type: &str) -> Option<&Arc<dyn Serializer>> {
        self.serializers
            .iter()
            .rev()
            .find(|s| s.content_type() == content_type)
    }

    /// Serialize `value` with the serializer called `name`: the body, its
    /// content type and its content encoding.
    pub fn encode(&self, name: &str, value: &Value) -> Result<(Vec<u8>, String, String)> {
        let serializer = self.by_name(name).ok_or_else(|| {
            if name == "pickle" {
                pickle_unsupported()
            } else {
                serialization_error(format!("no encoder installed for {name}"))
            }
        })?;
        let body = serializer.encode(value)?;
        Ok((
            body,
            serializer.content_type().into(),
            serializer.content_encoding().into(),
        ))
    }

    /// Serialize a payload as kombu's `dumps(data, serializer)` does.
    ///
    /// * `Some("raw")`: bytes as `application/data` + `binary`, text (or a JSON
    ///   string value) as `application/data` + `utf-8`.
    /// * `None` (or `Some("text")` for text): [`Payload::Bytes`] as
    ///   `application/data` + `binary`, [`Payload::Text`] as `text/plain` +
    ///   `utf-8`, [`Payload::Value`] with json.
    /// * `Some(name)`: that serializer, for any payload (bytes become a bytes
    ///   tag, text a string).
    ///
    /// ```
    /// use kombu_core::serialization::{Payload, SerializerRegistry};
    /// let reg = SerializerRegistry::default();
    /// let (body, ct, ce) = reg.encode_payload(&Payload::from("hé"), None).unwrap();
    /// assert_eq!((body, ct.as_str(), ce.as_str()), ("hé".as_bytes().to_vec(), "text/plain", "utf-8"));
    /// let (_, ct, ce) = reg.encode_payload(&Payload::from(vec![0u8]), None).unwrap();
    /// assert_eq!((ct.as_str(), ce.as_str()), ("application/data", "binary"));
    /// let (body, ct, _) = reg.encode_payload(&Payload::from("hi"), Some("json")).unwrap();
    /// assert_eq!((body, ct.as_str()), (b"\"hi\"".to_vec(), "application/json"));
    /// ```
    pub fn encode_payload(
        &self,
        payload: &Payload,
        serializer: Option<&str>,
    ) -> Result<(Vec<u8>, String, String)> {
        let raw = |body: &[u8], encoding: &str| {
            Ok((body.to_vec(), CONTENT_TYPE_DATA.into(), encoding.into()))
        };
        match (serializer, payload) {
            (Some("raw"), Payload::Bytes(b)) => raw(b, "binary"),
            (Some("raw"), Payload::Text(s)) => raw(s.as_bytes(), "utf-8"),
            (Some("raw"), Payload::Value(Value::String(s))) => raw(s.as_bytes(), "utf-8"),
            (Some("raw"), Payload::Value(_)) => Err(serialization_error(
                "the raw serializer needs bytes or text, not structured data",
            )),
            (None, Payload::Bytes(b)) => raw(b, "binary"),
            (None | Some("text"), Payload::Text(s)) => Ok((
                s.as_bytes().to_vec(),
                CONTENT_TYPE_TEXT.into(),
                "utf-8".into(),
            )),
            (name, Payload::Value(v)) => self.encode(name.unwrap_or("json"), v),
            (Some(name), Payload::Text(s)) => self.encode(name, &Value::String(s.clone())),
            (Some(name), Payload::Bytes(b)) => self.encode(name, &tagged_bytes(b)),
        }
    }

    /// Deserialize a body as kombu's `loads` does.
    ///
    /// A missing content type means `application/data`; a missing content
    /// encoding means `utf-8`. The content type must pass `accept`
    /// ([`ErrorKind::ContentDisallowed`] otherwise). Then a serializer for the
    /// content type decodes it into [`Payload::Value`]; without one the body
    /// is [`Payload::Bytes`] when the encoding is `binary` (or `ascii-8bit`)
    /// and [`Payload::Text`] otherwise (`utf-8`, `ascii`, `latin-1`). An empty
    /// body is returned as empty [`Payload::Bytes`], as kombu returns it as is.
    ///
    /// ```
    /// use kombu_core::{ErrorKind, serialization::{Accept, Payload, SerializerRegistry}};
    /// let reg = SerializerRegistry::default();
    /// let p = reg.decode(Some("text/plain"), Some("utf-8"), b"hi", &Accept::all()).unwrap();
    /// assert_eq!(p, Payload::Text("hi".into()));
    /// let err = reg.decode(Some("application/x-yaml"), None, b"a: 1", &Accept::new(["json"])).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::ContentDisallowed);
    /// ```
    pub fn decode(
        &self,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        body: &[u8],
        accept: &Accept,
    ) -> Result<Payload> {
        let content_type = content_type
            .filter(|s| !s.is_empty())
            .unwrap_or(CONTENT_TYPE_DATA);
        if !accept.allows(content_type, self) {
            let shown = match self.by_content_type(content_type) {
                Some(s) => format!("{} ({content_type})", s.name()),
                None => content_type.to_string(),
            };
            return Err(Error::new(
                ErrorKind::ContentDisallowed,
                format!("refusing to deserialize content of type {shown}; accepted: {accept}"),
            ));
        }
        if body.is_empty() {
            return Ok(Payload::Bytes(Bytes::new()));
        }
        if let Some(serializer) = self.by_content_type(content_type) {
            return serializer.decode(body).map(Payload::Value);
        }
        if content_type == CONTENT_TYPE_PICKLE {
            return Err(pickle_unsupported());
        }
        let encoding = content_encoding
            .filter(|s| !s.is_empty())
            .unwrap_or("utf-8")
            .to_ascii_lowercase();
        if SKIP_DECODE.contains(&encoding.as_str()) {
            return Ok(Payload::Bytes(Bytes::copy_from_slice(body)));
        }
        decode_text(body, &encoding).map(Payload::Text)
    }
}

/// Decode text in one of the charsets kombu-rs knows.
fn decode_text(body: &[u8], encoding: &str) -> Result<String> {
    let bad =
        |e: &dyn fmt::Display| serialization_error(format!("cannot decode {encoding} text: {e}"));
    match encoding.replace('_', "-").as_str() {
        "utf-8" | "utf8" | "u8" => String::from_utf8(body.to_vec()).map_err(|e| bad(&e)),
        "ascii" | "us-ascii" => match body.iter().position(|b| !b.is_ascii()) {
            Some(i) => Err(bad(&format!("byte {:#04x} at {i} is not ASCII", body[i]))),
            None => Ok(body.iter().map(|&b| b as char).collect()),
        },
        "latin-1" | "latin1" | "iso-8859-1" | "iso8859-1" => {
            Ok(body.iter().map(|&b| b as char).collect())
        }
        other => Err(serialization_error(format!(
            "unsupported content encoding {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

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

    const MSGPACK_INTS: &str = "gaRpbnRz3AAUAH/MgMz/zQEAzf//zgABAADO/////88AAAABAAAAAP/g0N/QgNH/f9GAANL//3//0oAAAADT/////3/////P///////////TgAAAAAAAAAA=";
    const MSGPACK_STRS: &str = "85a47374727396a0bf61616161616161616161616161616161616161616161616161616161616161d9206262626262626262626262626262626262626262626262626262626262626262d9ff636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363636363da010064646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464646464a2c3a9a16693cb3ff8000000000000cb8000000000000000cb7e37e43c8800759ca16ec0a174c3a66e657374656481a178929080";
    const MSGPACK_BIN: &str = "g6NiaW7EAgD/pWFycjE23AAQAAECAwQFBgcICQoLDA0OD6VtYXAxNt4AEKEwAKExAaEyAqEzA6E0BKE1BaE2BqE3B6E4CKE5CaIxMAqiMTELojEyDKIxMw2iMTQOojE1Dw==";

    fn msgpack_strs_value() -> Value {
        json!({"strs": ["", "a".repeat(31), "b".repeat(32), "c".repeat(255), "d".repeat(256), "\u{e9}"],
               "f": [1.5, -0.0, 1e300], "n": null, "t": true, "nested": {"x": [[], {}]}})
    }

    #[test]
    fn msgpack_matches_python() {
        let ints = json!({"ints": [0, 127, 128, 255, 256, 65535, 65536, 4294967295u64, 4294967296u64,
            -1, -32, -33, -128, -129, -32768, -32769, -2147483648i64, -2147483649i64,
            u64::MAX, i64::MIN]});
        let strs = msgpack_strs_value();
        let map16: Map<String, Value> = (0..16).map(|i| (i.to_string(), json!(i))).collect();
        let bin = json!({"bin": tagged_bytes(b"\x00\xff"), "arr16": (0..16).collect::<Vec<_>>(), "map16": map16});
        for (value, golden) in [
            (ints, b64(MSGPACK_INTS)),
            (strs, hex(MSGPACK_STRS)),
            (bin, b64(MSGPACK_BIN)),
        ] {
            assert_eq!(MsgpackSerializer.encode(&value).unwrap(), golden);
            assert_eq!(MsgpackSerializer.decode(&golden).unwrap(), value);
        }
    }

    #[test]
    fn msgpack_strs_exact_prefix_and_markers() {
        // Python: str8 (0xd9) from 32 bytes, str16 (0xda) from 256, float64 (0xcb).
        let body = MsgpackSerializer.encode(&msgpack_strs_value()).unwrap();
        let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"\xa0\xbfaaaa"));
        assert!(find(b"\xd9\x20bbbb"));
        assert!(find(b"\xd9\xffcccc"));
        assert!(find(b"\xda\x01\x00dddd"));
        assert!(find(b"\xa2\xc3\xa9"));
        assert!(find(b"\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00"));
        assert!(find(b"\xcb\x80\x00\x00\x00\x00\x00\x00\x00"));
    }

    #[test]
    fn msgpack_rejects_garbage_and_reads_int_keys() {
        assert!(MsgpackSerializer.decode(b"\x91").is_err());
        assert!(MsgpackSerializer.decode(b"\x01\x02").is_err());
        assert!(MsgpackSerializer.decode(&[0xc1]).is_err());
        // {1: "a", None: "b"} from Python
        assert_eq!(
            MsgpackSerializer.decode(b"\x82\x01\xa1a\xc0\xa1b").unwrap(),
            json!({"1": "a", "null": "b"})
        );
    }

    #[test]
    fn yaml_matches_pyyaml_for_plain_data() {
        let v = json!({"hello": "world", "n": 1, "f": 1.5, "l": [1, "x", null, true], "nested": {"b": {}, "a": []}});
        let golden =
            "f: 1.5\nhello: world\nl:\n- 1\n- x\n- null\n- true\nn: 1\nnested:\n  a: []\n  b: {}\n";
        assert_eq!(
            String::from_utf8(YamlSerializer.encode(&v).unwrap()).unwrap(),
            golden
        );
        assert_eq!(YamlSerializer.decode(golden.as_bytes()).unwrap(), v);
        let golden = "- 1\n- 2\n- a: 2\n  z: 1\n";
        assert_eq!(
            YamlSerializer
                .encode(&json!([1, 2, {"z": 1, "a": 2}]))
                .unwrap(),
            golden.as_bytes()
        );
    }

    #[test]
    fn yaml_reads_pyyaml_output() {
        let py = "big: 1.0e+20\ncolon: 'a: b'\ne: ''\nm: 'multi\n\n  line'\nneg: -3\none: 1.0\nq: '''q'''\ns: 'yes'\nt: '123'\nu: \"h\\xE9llo\"\n";
        assert_eq!(
            YamlSerializer.decode(py.as_bytes()).unwrap(),
            json!({"big": 1e20, "colon": "a: b", "e": "", "m": "multi\nline", "neg": -3, "one": 1.0,
                   "q": "'q'", "s": "yes", "t": "123", "u": "h\u{e9}llo"})
        );
        assert_eq!(
            YamlSerializer.decode(b"just a string\n...\n").unwrap(),
            json!("just a string")
        );
        let special = "dt: 2024-01-02 03:04:05\nd: 2024-01-02\nb: !!binary |\n  AP8=\n1: boolkey\nnull: nullkey\n1.5: fk\n";
        assert_eq!(
            YamlSerializer.decode(special.as_bytes()).unwrap(),
            json!({"dt": "2024-01-02 03:04:05", "d": "2024-01-02", "b": "AP8=\n",
                   "1": "boolkey", "null": "nullkey", "1.5": "fk"})
        );
        assert_eq!(YamlSerializer.decode(b"\n").unwrap(), Value::Null);
        assert!(YamlSerializer.decode(b"a: [1").is_err());
    }

    #[test]
    fn encode_payload_follows_kombu_dumps() {
        let reg = SerializerRegistry::default();
        let enc = |p: Payload, s: Option<&str>| reg.encode_payload(&p, s).unwrap();
        let t = |b: &[u8], ct: &str, ce: &str| (b.to_vec(), ct.to_string(), ce.to_string());
        assert_eq!(
            enc(b"\x00\x01\xffraw".to_vec().into(), None),
            t(b"\x00\x01\xffraw", "application/data", "binary")
        );
        assert_eq!(
            enc("h\u{e9}llo".into(), None),
            t("h\u{e9}llo".as_bytes(), "text/plain", "utf-8")
        );
        assert_eq!(
            enc("h".into(), Some("text")),
            t(b"h", "text/plain", "utf-8")
        );
        assert_eq!(
            enc("text".into(), Some("raw")),
            t(b"text", "application/data", "utf-8")
        );
        assert_eq!(
            enc(b"ab".to_vec().into(), Some("raw")),
            t(b"ab", "application/data", "binary")
        );
        assert_eq!(
            enc(json!({"hello": "world", "n": 1}).into(), None),
            t(
                br#"{"hello": "world", "n": 1}"#,
                "application/json",
                "utf-8"
            )
        );
        assert_eq!(
            enc(b"ab".to_vec().into(), Some("json")),
            t(
                br#"{"__type__": "bytes", "__value__": "ab"}"#,
                "application/json",
                "utf-8"
            )
        );
        // Python: dumps({"k": [1, "x", 1.5, b"\x00\xff"]}, serializer="msgpack")
        let v = json!({"k": [1, "x", 1.5, tagged_bytes(b"\x00\xff")]});
        assert_eq!(
            enc(v.into(), Some("msgpack")),
            t(
                &b64("gaFrlAGheMs/+AAAAAAAAMQCAP8="),
                "application/x-msgpack",
                "binary"
            )
        );
        let err = reg
            .encode_payload(&json!(1).into(), Some("pickle"))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Serialization);
        assert!(err.to_string().contains("pickle"), "{err}");
        assert!(reg.encode_payload(&json!(1).into(), Some("nope")).is_err());
        assert!(reg.encode_payload(&json!([1]).into(), Some("raw")).is_err());
    }

    #[test]
    fn decode_follows_kombu_loads() {
        let reg = SerializerRegistry::default();
        let dflt = Accept::kombu_unrestricted();
        let dec = |ct: Option<&str>, ce: Option<&str>, body: &[u8], accept: &Accept| {
            reg.decode(ct, ce, body, accept)
        };
        assert_eq!(
            dec(Some("application/data"), Some("binary"), b"\x00\xff", &dflt).unwrap(),
            Payload::Bytes(Bytes::from_static(b"\x00\xff"))
        );
        assert_eq!(
            dec(None, Some("binary"), b"x", &Accept::new(["json"])).unwrap(),
            Payload::Bytes(Bytes::from_static(b"x"))
        );
        assert_eq!(
            dec(Some("application/data"), Some("utf-8"), b"text", &dflt).unwrap(),
            Payload::Text("text".into())
        );
        assert_eq!(
            dec(Some("text/plain"), None, "h\u{e9}".as_bytes(), &dflt).unwrap(),
            Payload::Text("h\u{e9}".into())
        );
        assert_eq!(
            dec(Some("text/plain"), Some("latin-1"), b"h\xe9", &dflt).unwrap(),
            Payload::Text("h\u{e9}".into())
        );
        assert!(dec(Some("text/plain"), Some("utf-8"), b"\xff", &dflt).is_err());
        assert!(dec(Some("text/plain"), Some("klingon"), b"x", &dflt).is_err());
        assert_eq!(
            dec(Some("application/json"), Some("utf-8"), b"", &dflt).unwrap(),
            Payload::Bytes(Bytes::new())
        );
        // The accept list: names and content types are the same thing.
        for accept in [
            Accept::new(["msgpack"]),
            Accept::new(["application/x-msgpack"]),
            Accept::all(),
        ] {
            assert_eq!(
                dec(
                    Some("application/x-msgpack"),
                    Some("binary"),
                    b"\x01",
                    &accept
                )
                .unwrap(),
                Payload::Value(json!(1))
            );
        }
        let err = dec(
            Some("application/x-msgpack"),
            Some("binary"),
            b"\x01",
            &dflt,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ContentDisallowed);
        assert!(
            err.message().contains("msgpack (application/x-msgpack)"),
            "{err}"
        );
        let err = dec(Some("text/plain"), None, b"x", &Accept::new(["json"])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ContentDisallowed);
        assert!(
            err.message().contains("text/plain") && err.message().contains("[json]"),
            "{err}"
        );
        let err = dec(
            Some(CONTENT_TYPE_PICKLE),
            Some("binary"),
            b"\x80\x04",
            &Accept::all(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Serialization);
        assert!(err.to_string().contains("pickle"));
        assert_eq!(
            dec(Some(CONTENT_TYPE_PICKLE), None, b"x", &dflt)
                .unwrap_err()
                .kind(),
            ErrorKind::ContentDisallowed
        );
        assert_eq!(
            dec(Some("application/json"), None, b"{", &dflt)
                .unwrap_err()
                .kind(),
            ErrorKind::Serialization
        );
    }

    #[test]
    fn registry_register_and_lookup() {
        struct Upper;
        impl Serializer for Upper {
            fn name(&self) -> &str {
                "upper"
            }
            fn content_type(&self) -> &str {
                "application/x-upper"
            }
            fn content_encoding(&self) -> &str {
                "utf-8"
            }
            fn encode(&self, v: &Value) -> Result<Vec<u8>> {
                Ok(v.to_string().to_uppercase().into_bytes())
            }
            fn decode(&self, b: &[u8]) -> Result<Value> {
                Ok(Value::String(String::from_utf8_lossy(b).into()))
            }
        }
        let mut reg = SerializerRegistry::default();
        reg.register(Arc::new(Upper));
        assert_eq!(
            reg.by_content_type("application/x-upper").unwrap().name(),
            "upper"
        );
        assert_eq!(reg.encode("upper", &json!("a")).unwrap().0, b"\"A\"");
        assert!(Accept::new(["upper"]).allows("application/x-upper", &reg));
        assert!(Accept::kombu_unrestricted().allows("application/x-upper", &reg));
        assert!(SerializerRegistry::empty().by_name("json").is_none());
        assert_eq!(
            format!("{reg:?}"),
            r#"["json", "msgpack", "yaml", "upper"]"#
        );
    }

    #[test]
    fn payload_conversions() {
        assert_eq!(Payload::from(json!(1)), Payload::Value(json!(1)));
        assert_eq!(Payload::from(String::from("a")), Payload::Text("a".into()));
        assert_eq!(
            Payload::from(Bytes::from_static(b"a")),
            Payload::Bytes(Bytes::from_static(b"a"))
        );
        assert_eq!(
            Payload::from(&b"a"[..]),
            Payload::Bytes(Bytes::from_static(b"a"))
        );
        assert_eq!(Payload::from("abc").deserialize::<String>().unwrap(), "abc");
        assert_eq!(
            Payload::from(b"abc".to_vec())
                .deserialize::<String>()
                .unwrap(),
            "abc"
        );
        assert_eq!(
            Payload::from(b"abc".to_vec())
                .deserialize::<Vec<u8>>()
                .unwrap(),
            b"abc"
        );
        assert!(Payload::from("abc").deserialize::<u32>().is_err());
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

        #[test]
        fn msgpack_and_yaml_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = MsgpackSerializer.decode(&bytes);
            let _ = YamlSerializer.decode(&bytes);
            let _ = JsonSerializer.decode(&bytes);
        }
    }
}
